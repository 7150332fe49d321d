// Training plans, operand routing (every operand grouped along its GEMM's reduction axis), the
// ShiftQuant and Flexpoint kernels, and resume / data-parallel equivalence of the trainer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

#include "tests/cli_run.hpp"
#include "lowbit/train/trainer.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/kernels/flexpoint.hpp"
#include "lowbit/train/recipes.hpp"
#include "lowbit/io/model_io.hpp"

namespace fs = std::filesystem;

namespace lowbit {
namespace {

// The largest |a - b| over two models' gradients is below rel * the largest |a|; returns that
// largest |a| (so a caller can check the gradients are not all zero).
double expect_grads_close(const std::vector<float>& a, const std::vector<float>& b, double rel, const std::string& what) {
  double max_diff = 0, max_g = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(a[i] - b[i])));
    max_g = std::max(max_g, double(std::fabs(a[i])));
  }
  EXPECT_LT(max_diff, rel * max_g) << what;
  return max_g;
}

TEST(TrainingPlan, PresetsNameTheirOperands) {
  auto p = parse_training_plan("sun2025:e4m3/g32");
  EXPECT_EQ(p.operands[0], "");
  EXPECT_EQ(p.operands[1], "e4m3fn/g32");  // docs/conventions.md §23: e4m3 is OCP e4m3fn
  EXPECT_EQ(p.operands[2], "");
  EXPECT_EQ(p.operands[3], "e4m3fn/g32");
  EXPECT_EQ(p.operands[4], "");
  EXPECT_EQ(p.operands[5], "e4m3fn/g32");
  EXPECT_FALSE(p.feature_axis);
  EXPECT_TRUE(parse_training_plan("sun2025:e2m1/g32,axis=din").feature_axis);
  auto f8 = parse_training_plan("fp8");
  EXPECT_EQ(f8.operands[2], f8.operands[4]);
  EXPECT_NE(f8.operands[0], f8.operands[2]);  // E4M3 forward, E5M2 gradients
  auto q = parse_training_plan("qat:int4/c");
  EXPECT_EQ(q.operands[1], "int4/c");
  EXPECT_EQ(q.operands[3], "int4/c");  // dX = dY Q(W): the forward's weights
  EXPECT_TRUE(q.feature_axis);
  for (int i : {0, 2, 4, 5}) EXPECT_EQ(q.operands[i], "");
  auto c = parse_training_plan("x=e4m3/g32;dy=e5m2/t;axis=din");
  EXPECT_EQ(c.operands[0], "e4m3fn/g32");
  EXPECT_FALSE(c.operands[2].empty());
  EXPECT_TRUE(c.feature_axis);
  EXPECT_TRUE(parse_training_plan("shiftquant:int4,l1").l1_norm);
  EXPECT_EQ(make_operand_quantizer(parse_training_plan("fp32")), nullptr);
}

TEST(TrainingPlan, BadPlansAreRefusedWithTheirNames) {
  auto message = [](const std::string& spec) {
    try {
      parse_training_plan(spec);
    } catch (const error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(message("sun2026:e4m3").find("unknown training plan"), std::string::npos);
  EXPECT_NE(message("sun2025:e9m9/g32").find("e9m9"), std::string::npos);
  EXPECT_NE(message("sun2025").find("needs a format"), std::string::npos);
  EXPECT_NE(message("x=e4m3;grad=e5m2").find("unknown target 'grad'"), std::string::npos);
  EXPECT_NE(message("shiftquant:e4m3").find("integer element"), std::string::npos);
  EXPECT_NE(message("sun2025:e4m3,axis=tokens").find("axis"), std::string::npos);
  EXPECT_NE(message("flex16+5~sr").find("rounding"), std::string::npos);
  EXPECT_NE(message("shiftquant:int4,l1=0").find("l1"), std::string::npos);
  // Autoflex needs headroom for its additive constant: refused when the plan is made.
  EXPECT_THROW(make_operand_quantizer(parse_training_plan("flex6+5")), error);
}

// Records the shape each operand arrives in and passes values through (or scales one operand).
struct recording_quantizer : operand_quantizer {
  bool din = false;
  std::map<std::pair<int, int>, std::pair<int64_t, int64_t>> shapes;  // (linear, op) -> rows, cols
  int scaled = -1;                                                    // operand multiplied by 2
  bool quantizes(gemm_operand) const override { return true; }
  bool feature_axis_groups() const override { return din; }
  void apply(gemm_operand op, int linear, int64_t, const float* in, float* out, int64_t rows,
             int64_t cols) override {
    shapes[{linear, int(op)}] = {rows, cols};
    const float f = int(op) == scaled ? 2.0f : 1.0f;
    for (int64_t i = 0; i < rows * cols; ++i) out[i] = in[i] * f;
  }
  // columns: the row-grouped operands are handed over in their own layout (apply_columns).
  bool columns = false;
  std::map<std::pair<int, int>, std::pair<int64_t, int64_t>> column_shapes;
  bool apply_columns(gemm_operand op, int linear, int64_t, const float* in, float* out, int64_t rows,
                     int64_t cols) override {
    if (!columns) return false;
    column_shapes[{linear, int(op)}] = {rows, cols};
    const float f = int(op) == scaled ? 2.0f : 1.0f;
    for (int64_t i = 0; i < rows * cols; ++i) out[i] = in[i] * f;
    return true;
  }
};

model_config small_config() {
  model_config c;
  c.arch = architecture::llama;
  c.dim = 32, c.hidden_dim = 48, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.vocab_size = 20;
  c.max_seq_len = 8;
  return c;
}

struct batch_data {
  std::vector<int32_t> in, tg;
};
batch_data make_batch(int B, int T, int V) {
  batch_data d;
  for (int i = 0; i < B * T; ++i) d.in.push_back((i * 5 + 1) % V), d.tg.push_back((i * 3 + 2) % V);
  return d;
}

TEST(OperandRouting, EachOperandIsGroupedAlongItsGemmsReductionAxis) {
  const model_config c = small_config();
  const int B = 2, T = 8, N = B * T, F = c.hidden_dim, D = c.dim;
  const auto d = make_batch(B, T, c.vocab_size);
  for (bool din : {false, true}) {
    train_model m(c, 1);
    recording_quantizer q;
    q.din = din;
    m.forward_backward(d.in.data(), d.tg.data(), B, T, N, &q, 0);
    const int down = 6;  // ffn_down of block 0: in = F, out = D
    using P = std::pair<int64_t, int64_t>;
    EXPECT_EQ(q.shapes.at({down, 0}), P(N, F));  // P1 X, along in
    EXPECT_EQ(q.shapes.at({down, 1}), P(D, F));  // P2 W, along in
    EXPECT_EQ(q.shapes.at({down, 2}), P(N, D));  // P3 dY, along out
    EXPECT_EQ(q.shapes.at({down, 3}), din ? P(D, F) : P(F, D));  // P4 W along out (W^T)
    EXPECT_EQ(q.shapes.at({down, 4}), din ? P(N, D) : P(D, N));  // P5 dY along tokens
    EXPECT_EQ(q.shapes.at({down, 5}), din ? P(N, F) : P(F, N));  // P6 X along tokens
    // X is quantized once per tensor, for all the linears that read it (q/k/v share the attention
    // norm's output, gate/up the MLP norm's): per block 7 x (P2..P5) + 4 x (P1, P6).
    EXPECT_EQ(q.shapes.size(), size_t(2 * (7 * 4 + 4 * 2)));
  }
  // A quantizer with a column path gets P4, P5 and P6 in their own layouts, grouped along rows.
  train_model m(c, 1);
  recording_quantizer q;
  q.columns = true;
  m.forward_backward(d.in.data(), d.tg.data(), B, T, N, &q, 0);
  using P = std::pair<int64_t, int64_t>;
  EXPECT_EQ(q.column_shapes.at({6, 3}), P(D, F));  // W [out, in] along out
  EXPECT_EQ(q.column_shapes.at({6, 4}), P(N, D));  // dY [N, out] along tokens
  EXPECT_EQ(q.column_shapes.at({6, 5}), P(N, F));  // X [N, in] along tokens
  EXPECT_EQ(q.column_shapes.size(), size_t(2 * (7 * 2 + 4)));
  EXPECT_EQ(q.shapes.size(), size_t(2 * (7 * 2 + 4)));  // P1, P2, P3 as before
}

TEST(OperandRouting, PassThroughQuantizerGivesTheFloatGradients) {
  const model_config c = small_config();
  const int B = 2, T = 8;
  const auto d = make_batch(B, T, c.vocab_size);
  train_model a(c, 3), b(c, 3);
  a.forward_backward(d.in.data(), d.tg.data(), B, T, B * T, nullptr, 0);
  for (bool columns : {false, true}) {
    recording_quantizer q;
    q.columns = columns;
    b.forward_backward(d.in.data(), d.tg.data(), B, T, B * T, &q, 0);
    expect_grads_close(a.grads(), b.grads(), 1e-5, columns ? "columns" : "rows");
  }
}

// The column path (fake_quantize_columns, no transposed copies) gives the operands the values of
// the transposed path, stochastic rounding included: the same loss, and gradients equal up to the
// GEMMs' summation order.
TEST(OperandRouting, ColumnPathQuantizesLikeTheTransposedPath) {
  struct without_columns : operand_quantizer {
    std::unique_ptr<operand_quantizer> inner;
    bool quantizes(gemm_operand op) const override { return inner->quantizes(op); }
    void apply(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
               int64_t cols) override {
      inner->apply(op, linear, step, in, out, rows, cols);
    }
  };
  const model_config c = small_config();
  const int B = 2, T = 8;
  const auto d = make_batch(B, T, c.vocab_size);
  for (const char* plan : {"x=e4m3/g16;w=e4m3/g16;dy=e5m2/g16;w_bwd=e4m3/g16;dy_w=e5m2/g16~sr;x_bwd=e4m3/c",
                           "mxfp4", "flex16+5"}) {
    train_model a(c, 5), b(c, 5);
    auto qa = make_operand_quantizer(parse_training_plan(plan), 9);
    without_columns qb;
    qb.inner = make_operand_quantizer(parse_training_plan(plan), 9);
    const double la = a.forward_backward(d.in.data(), d.tg.data(), B, T, B * T, qa.get(), 0);
    const double lb = b.forward_backward(d.in.data(), d.tg.data(), B, T, B * T, &qb, 0);
    EXPECT_EQ(la, lb) << plan;
    EXPECT_GT(expect_grads_close(a.grads(), b.grads(), 1e-5, plan), 0) << plan;
  }
}

// Data-parallel shards without MPI: two halves of a token batch, each quantized with its
// set_token_shard, give bit for bit what the whole batch gives, for every token operand through
// apply (groups along features) and apply_columns (groups along tokens), stochastic rounding
// included. Groups along tokens that would straddle the halves are refused; whole-tensor scales
// are named in the notes.
TEST(OperandRouting, TokenShardsQuantizeLikeTheWholeBatch) {
  const int64_t tokens = 64, half = tokens / 2, features = 48;
  std::mt19937 gen(21);
  std::normal_distribution<float> nd(0, 1);
  std::vector<float> x(tokens * features);
  for (auto& v : x) v = nd(gen);
  const char* plan = "x=e2m1/g16~sr;dy=e5m2/g16~sr;dy_w=e2m1/g32~sr;x_bwd=int4/g16~sr:5";
  const auto whole = make_operand_quantizer(parse_training_plan(plan), 3);
  const auto shard = make_operand_quantizer(parse_training_plan(plan), 3);
  for (gemm_operand op : {gemm_operand::x_fwd, gemm_operand::dy_dx, gemm_operand::dy_dw, gemm_operand::x_dw}) {
    const bool columns = op == gemm_operand::dy_dw || op == gemm_operand::x_dw;
    std::vector<float> ref(x.size()), got(x.size());
    auto quantize = [&](operand_quantizer& q, const float* in, float* out, int64_t rows) {
      if (columns) ASSERT_TRUE(q.apply_columns(op, 2, 7, in, out, rows, features));
      else q.apply(op, 2, 7, in, out, rows, features);
    };
    quantize(*whole, x.data(), ref.data(), tokens);
    for (int64_t first : {int64_t{0}, half}) {
      EXPECT_TRUE(shard->set_token_shard(first, half, tokens).empty());
      quantize(*shard, x.data() + first * features, got.data() + first * features, half);
    }
    shard->set_token_shard(0, 0, -1);
    EXPECT_EQ(std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)), 0) << gemm_operand_label(op);
    // Without the shard, the second half draws the first half's noise: the test can fail.
    quantize(*shard, x.data() + half * features, got.data() + half * features, half);
    EXPECT_NE(std::memcmp(ref.data() + half * features, got.data() + half * features, half * features * sizeof(float)), 0)
        << gemm_operand_label(op);
  }
  // 32-token groups of dY along tokens straddle shards of 24 tokens; axis=din groups along features.
  EXPECT_THROW(shard->set_token_shard(24, 24, 48), error);
  EXPECT_TRUE(make_operand_quantizer(parse_training_plan(std::string(plan) + ";axis=din"), 3)
                  ->set_token_shard(24, 24, 48).empty());
  const auto notes = make_operand_quantizer(parse_training_plan("fp8"), 3)->set_token_shard(32, 32, 64);
  EXPECT_EQ(notes.size(), 4u);  // P1, P3, P5, P6: per-tensor scales; the weights are alike on every rank
  // ShiftQuant has no shard support: refused with a message.
  EXPECT_THROW(make_operand_quantizer(parse_training_plan("shiftquant:int4"), 3)->set_token_shard(0, 32, 64), error);
}

TEST(OperandRouting, TheWeightGradientGemmReadsP5AndP6Only) {
  // Doubling P6 (X in the dW GEMM) doubles exactly the block linears' weight gradients and
  // nothing else; doubling P1 changes the forward.
  const model_config c = small_config();
  const int B = 2, T = 8;
  const auto d = make_batch(B, T, c.vocab_size);
  train_model a(c, 4), b(c, 4);
  for (bool columns : {false, true}) {
    recording_quantizer qa, qb;
    qa.columns = qb.columns = columns;
    qb.scaled = 5;
    const double la = a.forward_backward(d.in.data(), d.tg.data(), B, T, B * T, &qa, 0);
    const double lb = b.forward_backward(d.in.data(), d.tg.data(), B, T, B * T, &qb, 0);
    EXPECT_EQ(la, lb);
    for (const auto& v : a.views()) {
      const bool linear = v.name.rfind("blk.", 0) == 0 && v.shape.size() == 2;
      for (int64_t i = v.offset; i < v.offset + v.size; ++i)
        ASSERT_EQ(b.grads()[i], linear ? 2 * a.grads()[i] : a.grads()[i]) << v.name << " columns " << columns;
    }
  }
}

TEST(OperandRouting, QatForwardEqualsTheFakeQuantizedModel) {
  const model_config c = small_config();
  const int B = 2, T = 8;
  const auto d = make_batch(B, T, c.vocab_size);
  train_model a(c, 5), b(c, 5);
  auto q = make_operand_quantizer(parse_training_plan("qat:int4/c"));
  const double la = a.forward_loss(d.in.data(), d.tg.data(), B, T, q.get(), 0);
  const format f = parse_format("int4/c");
  for (const auto& v : b.views())
    if (v.name.rfind("blk.", 0) == 0 && v.shape.size() == 2)
      fake_quantize(b.params().data() + v.offset, b.params().data() + v.offset, v.shape[0], v.shape[1], f);
  const double lb = b.forward_loss(d.in.data(), d.tg.data(), B, T, nullptr, 0);
  EXPECT_EQ(la, lb);
  EXPECT_NE(la, a.forward_loss(d.in.data(), d.tg.data(), B, T, nullptr, 0));
}

// ---- kernels ---------------------------------------------------------------------------------------

TEST(ShiftQuant, GroupScalesArePowerOfTwoFractionsOfTheRowScale) {
  const int rows = 3, cols = 64, group = 16, bits = 4;
  std::vector<float> x(rows * cols), y(x.size());
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  // groups of very different magnitude in each row
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) x[r * cols + c] = nd(rng) * std::ldexp(1.0f, -3 * (c / group));
  shiftquant_fake_quantize(x.data(), y.data(), rows, cols, bits, group, 7, false, 0, 0);
  for (int r = 0; r < rows; ++r) {
    double amax_row = 0;
    for (int c = 0; c < cols; ++c) amax_row = std::max(amax_row, std::fabs(double(x[r * cols + c])));
    const double s_row = amax_row / 7;
    for (int g = 0; g < cols / group; ++g) {
      double amax = 0;
      for (int c = g * group; c < (g + 1) * group; ++c) amax = std::max(amax, std::fabs(double(x[r * cols + c])));
      const int k = std::min(7, int(std::floor(std::log2(amax_row / amax))));
      const double s = std::ldexp(s_row, -k);
      EXPECT_LE(amax / s, 7 + 1e-9);  // the group fits
      for (int c = g * group; c < (g + 1) * group; ++c) {
        const double expect = std::clamp(std::nearbyint(double(x[r * cols + c]) / s), -7.0, 7.0) * s;
        ASSERT_EQ(y[r * cols + c], float(expect)) << r << " " << c;
      }
    }
  }
}

TEST(ShiftQuant, StochasticRoundingIsUnbiased) {
  const int cols = 32;
  std::vector<float> x(cols), y(cols);
  for (int c = 0; c < cols; ++c) x[c] = 0.37f + 0.01f * c;
  x[0] = 7.0f;  // sets the row scale to 1: values are rounded to integers
  std::vector<double> mean(cols, 0.0);
  const int draws = 4000;
  for (int t = 0; t < draws; ++t) {
    shiftquant_fake_quantize(x.data(), y.data(), 1, cols, 4, cols, 0, true, 0, uint64_t(t));
    for (int c = 0; c < cols; ++c) mean[c] += y[c] / draws;
  }
  for (int c = 1; c < cols; ++c) EXPECT_NEAR(mean[c], x[c], 0.03) << c;
}

TEST(Flexpoint, InPlaceUseAndFrozenValidationKeepTheState) {
  // The first use initialises the exponent by trial; in place and out of place agree, and a
  // frozen (validation) use leaves the histories as they were.
  auto a = make_operand_quantizer(parse_training_plan("flex16+5"));
  auto b = make_operand_quantizer(parse_training_plan("flex16+5"));
  std::vector<float> x(256), ya(256);
  for (int i = 0; i < 256; ++i) x[i] = 0.02f * std::sin(0.37f * i);
  auto xb = x;
  a->apply(gemm_operand::w_dx, 3, 0, x.data(), ya.data(), 16, 16);
  b->apply(gemm_operand::w_dx, 3, 0, xb.data(), xb.data(), 16, 16);
  EXPECT_EQ(ya, xb);
  EXPECT_NE(ya, std::vector<float>(256, 0.0f));
  const auto before = a->state();
  a->set_frozen(true);
  for (int k = 0; k < 5; ++k) a->apply(gemm_operand::w_dx, 3, 1, x.data(), ya.data(), 16, 16);
  a->apply(gemm_operand::x_fwd, 9, 1, x.data(), ya.data(), 16, 16);  // unseen use: not remembered
  a->set_frozen(false);
  EXPECT_EQ(a->state(), before);
}

TEST(Flexpoint, MantissasAreIntegersTimesTheSharedScale) {
  std::vector<float> x = {1.0f, -2.5f, 1000.0f, 3e-6f, -70000.0f, NAN};
  std::vector<float> y(x.size());
  const double gamma = flexpoint_fake_quantize(x.data(), y.data(), 5, 16, -4).gamma;  // kappa = 1/16
  EXPECT_EQ(y[0], 1.0f);
  EXPECT_EQ(y[1], -2.5f);
  EXPECT_EQ(y[2], 1000.0f);
  EXPECT_EQ(y[3], 0.0f);
  EXPECT_EQ(y[4], float(-32767.0 / 16));  // saturated
  EXPECT_EQ(gamma, 70000.0 * 16);
  flexpoint_fake_quantize(x.data() + 5, y.data() + 5, 1, 16, 0);
  EXPECT_TRUE(std::isnan(y[5]));  // docs/conventions.md §4: NaN propagates
}

// ---- the loop --------------------------------------------------------------------------------------

std::string write_corpus() {
  const fs::path p = lowbit::testing::scratch_path("lowbit_train_corpus").concat(".txt");
  std::ofstream f(p);
  std::mt19937 rng(7);
  const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat ", "and ", "dog ", "ran ", "\n"};
  for (int i = 0; i < 6000; ++i) f << words[rng() % 10];
  return p.string();
}

train_run_config loop_config(const std::string& data, const std::string& out, const std::string& plan) {
  train_run_config c;
  c.data_path = data, c.out_dir = out, c.plan = plan;
  c.dim = 32, c.n_layers = 2, c.n_heads = 4, c.ctx = 16, c.batch = 4, c.steps = 12, c.lr = 3e-3;
  c.checkpoint_every = 5, c.eval_every = 4, c.val_batches = 2;
  return c;
}

struct killed : std::exception {};

TEST(Trainer, AKilledRunResumesBitExactly) {
  const std::string data = write_corpus();
  for (const std::string plan : {"fp32", "flex16+5", "sun2025:e2m1/g16~sr"}) {
    const fs::path dir = lowbit::testing::scratch_path("lowbit_resume_" + std::to_string(std::hash<std::string>{}(plan)));
    fs::remove_all(dir);
    auto tok = make_byte_tokenizer();
    const auto tp = parse_training_plan(plan);
    auto q1 = make_operand_quantizer(tp);
    const train_result whole = run_training(loop_config(data, (dir / "a").string(), plan), *tok, {"bytes", ""},
                                            q1.get(), false);
    auto q2 = make_operand_quantizer(tp);
    EXPECT_THROW(run_training(loop_config(data, (dir / "b").string(), plan), *tok, {"bytes", ""}, q2.get(), false,
                              [](const train_point& p, int64_t) {
                                if (p.step == 8) throw killed();  // after the checkpoint at step 5
                              }),
                 killed);
    auto q3 = make_operand_quantizer(tp);
    const train_result resumed = run_training(loop_config(data, (dir / "b").string(), plan), *tok,
                                              {"bytes", ""}, q3.get(), true);
    EXPECT_EQ(resumed.resumed_from, 5) << plan;
    ASSERT_EQ(resumed.curve.size(), whole.curve.size()) << plan;
    for (size_t i = 0; i < whole.curve.size(); ++i) {
      EXPECT_EQ(resumed.curve[i].train_loss, whole.curve[i].train_loss) << plan << " step " << i + 1;
      EXPECT_EQ(resumed.curve[i].val_loss, whole.curve[i].val_loss) << plan << " step " << i + 1;
    }
    for (const auto& [name, t] : whole.trained.tensors)
      ASSERT_EQ(resumed.trained.get(name).data, t.data) << plan << " " << name;
    // The log holds every step exactly once.
    std::ifstream log(dir / "b" / "log.jsonl");
    std::string line;
    std::vector<int64_t> steps;
    while (std::getline(log, line)) steps.push_back(nlohmann::json::parse(line).at("step").get<int64_t>());
    ASSERT_EQ(steps.size(), 12u) << plan;
    for (int i = 0; i < 12; ++i) EXPECT_EQ(steps[i], i + 1);
    // The checkpointed model is what eval loads.
    const model saved = load_model((dir / "b" / "model.safetensors").string());
    EXPECT_EQ(saved.get("blk.1.ffn_down.weight").data, whole.trained.get("blk.1.ffn_down.weight").data);
    fs::remove_all(dir);
  }
}

TEST(Trainer, ResumeRefusesAnotherConfiguration) {
  const std::string data = write_corpus();
  const fs::path dir = lowbit::testing::scratch_path("lowbit_resume_other");
  fs::remove_all(dir);
  auto tok = make_byte_tokenizer();
  auto cfg = loop_config(data, dir.string(), "fp32");
  cfg.steps = 5;
  run_training(cfg, *tok, {"bytes", ""}, nullptr, false);
  cfg.lr = 1e-3;
  cfg.steps = 10;
  EXPECT_THROW(run_training(cfg, *tok, {"bytes", ""}, nullptr, true), error);
  fs::remove_all(dir);
}

TEST(Trainer, LossFallsAndQuantizedTrainingTracksFloat) {
  const std::string data = write_corpus();
  auto tok = make_byte_tokenizer();
  auto cfg = loop_config(data, "", "fp32");
  cfg.steps = 60, cfg.eval_every = 60;
  const auto f = run_training(cfg, *tok, {"bytes", ""}, nullptr, false);
  EXPECT_LT(f.curve.back().train_loss, f.curve.front().train_loss - 1.0);
  cfg.plan = "sun2025:e4m3/g16";
  auto q = make_operand_quantizer(parse_training_plan(cfg.plan));
  const auto e = run_training(cfg, *tok, {"bytes", ""}, q.get(), false);
  EXPECT_NEAR(e.val_loss, f.val_loss, 0.05 * f.val_loss);
  EXPECT_NE(e.val_loss, f.val_loss);
}

}  // namespace
}  // namespace lowbit
