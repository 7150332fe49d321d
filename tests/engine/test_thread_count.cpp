// Results do not depend on the thread count (docs/conventions.md §47): an eval's NLL, float and
// with int8 activations (whose roundings amplify a last-bit change), and a short training run's
// losses and weights are the same bits at one and two threads. The model is big enough that its
// linear products are cut into several tiles shared by the team (kernels/gemm.hpp).
#include <gtest/gtest.h>
#include <omp.h>

#include <cstring>
#include <vector>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/forward.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/engine/plan.hpp"
#include "lowbit/engine/train.hpp"
#include "lowbit/formats/format.hpp"
#include "lowbit/kernels/gemm.hpp"
#include "lowbit/kernels/threads.hpp"

namespace {

using namespace lowbit;

// dim 256 at 256 tokens: the smallest forward that runs on the team (forward_prefers_one_thread,
// src/engine/layers.hpp's thread_scope); its [256, 256] x [256, 256]^T products are cut into 4
// tiles, the classifier's [256, 512] x k 256 into 4.
model_config small_llama() {
  model_config c;
  c.dim = 256, c.hidden_dim = 768, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 4, c.vocab_size = 512,
  c.max_seq_len = 256;
  return c;
}

std::vector<int32_t> some_ids(size_t n, int vocab) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = int32_t((i * 37 + 11) % size_t(vocab));
  return ids;
}

// Runs f at `threads` threads (the team asked for, whatever the machine's load).
template <class F>
auto at_threads(int threads, F f) {
  const int saved = omp_get_max_threads();
  set_threads_follow_load(false);
  omp_set_num_threads(threads);
  auto r = f();
  omp_set_num_threads(saved);
  set_threads_follow_load(true);
  return r;
}

TEST(ThreadCount, EvalNllIsTheSameAtOneAndTwoThreads) {
  const model_config c = small_llama();
  ASSERT_FALSE(forward_prefers_one_thread(c.max_seq_len, c.dim));
  ASSERT_GT(sgemm_tiles(c.max_seq_len, c.dim, c.dim).count(c.max_seq_len, c.dim), 1);
  const model m = synthesize_model(c, 5);
  const auto ids = some_ids(513, c.vocab_size);  // two windows of 256
  eval_options o;
  quant_plan int8_acts;
  int8_acts.acts = parse_format("int8/c");
  int8_acts.kv = parse_format("e4m3fn/c");
  for (const quant_plan& plan : {quant_plan{}, int8_acts}) {
    const double one = at_threads(1, [&] { return evaluate(m, plan, ids, o).mean_nll; });
    const double two = at_threads(2, [&] { return evaluate(m, plan, ids, o).mean_nll; });
    EXPECT_EQ(one, two) << plan.describe();
  }
}

TEST(ThreadCount, TrainingLossesAndWeightsAreTheSameAtOneAndTwoThreads) {
  const model_config c = small_llama();
  const int batch = 2, ctx = 128;  // 256 tokens: on the team
  const auto in = some_ids(size_t(batch * ctx), c.vocab_size);
  std::vector<int32_t> tg(in.size());
  for (size_t i = 0; i < tg.size(); ++i) tg[i] = int32_t((i * 13 + 5) % size_t(c.vocab_size));
  auto run = [&] {
    train_model m(c, 3);
    adamw opt;
    std::vector<double> losses;
    for (int step = 1; step <= 3; ++step) {
      losses.push_back(m.forward_backward(in.data(), tg.data(), batch, ctx, double(batch * ctx), nullptr, step));
      clip_gradients(m.grads(), 1.0);
      opt.step(m, 1e-3, step);
    }
    losses.push_back(m.forward_loss(in.data(), tg.data(), batch, ctx, nullptr, 4));
    return std::make_pair(losses, m.params());
  };
  const auto one = at_threads(1, run), two = at_threads(2, run);
  EXPECT_EQ(one.first, two.first);
  // The same bits (float == would take -0 for +0).
  ASSERT_EQ(one.second.size(), two.second.size());
  EXPECT_EQ(std::memcmp(one.second.data(), two.second.data(), one.second.size() * sizeof(one.second[0])), 0)
      << "the trained weights differ";
}

}  // namespace
