// QAFT (docs/training.md §3.5): the start quantized by a PTQ method (explore/finetune.hpp, the
// composition of train/ and ptq/), and the export of a QAT run: `lowbit quantize --method rtn` in
// the plan's format writes exactly the Q(W) the QAT forward used, so the exported file evaluates
// as the QAT model under its own fake-quantized forward, to the last bit.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <bit>

#include "lowbit/engine/eval.hpp"
#include "lowbit/engine/train.hpp"
#include "lowbit/explore/finetune.hpp"
#include "lowbit/io/model_io.hpp"
#include "lowbit/kernels/quantize.hpp"
#include "lowbit/ptq/job.hpp"
#include "lowbit/ptq/pipeline.hpp"
#include "lowbit/runs/eval_job.hpp"
#include "lowbit/text/documents.hpp"
#include "tests/cli_run.hpp"
#include "tests/data.hpp"

namespace fs = std::filesystem;
using namespace lowbit;

namespace {

const std::string kModel = lowbit_test::data_path("llama2c/stories260K.bin");
const std::string kStories = lowbit_test::data_path("text/tinystories_val_sample.txt");

train_run_config qaft_config(const std::string& plan, const std::string& init_weights, const std::string& out = "") {
  train_run_config c;
  c.init = kModel, c.data_path = kStories, c.out_dir = out, c.plan = plan, c.init_weights = init_weights;
  c.ctx = 64, c.batch = 4, c.steps = 4, c.lr = 1e-3, c.val_batches = 1, c.eval_every = 4;
  c.calib_samples = 8, c.calib_ctx = 64;
  return c;
}

TEST(Qaft, TheStartIsThePtqMethodsModel) {
  ASSERT_TRUE(lowbit_test::have_data(kModel));
  ASSERT_TRUE(lowbit_test::have_data(kStories));
  const model original = load_model(kModel);
  // rtn: every linear weight is its RTN values in the plan's format; the rest is the model's.
  train_job rtn = prepare_train_job(qaft_config("qat:int4/g32", "rtn"), false, lowbit_test::data_dir());
  const format f = parse_format("int4/g32");
  const auto linear = original.linear_weight_names();
  for (const auto& [name, t] : original.tensors) {
    std::vector<float> want = t.data;
    if (std::find(linear.begin(), linear.end(), name) != linear.end())
      fake_quantize(t.data.data(), want.data(), t.rows(), t.cols(), f);
    ASSERT_EQ(rtn.init->get(name).data, want) << name;
  }
  EXPECT_EQ(rtn.init_report.at("method"), "rtn");
  // gptq: what ptq::quantize_model makes of the training part's documents with the run's
  // calibration settings (windows drawn with the run's seed from their second half).
  train_run_config cfg = qaft_config("sun2025:int3/g32", "gptq");
  train_job gptq = prepare_train_job(cfg, false, lowbit_test::data_dir());
  model want = original;
  ptq::quantize_options o;
  o.how = ptq::method::gptq, o.weights = parse_format("int3/g32");
  o.calib_samples = 8, o.calib_ctx = 64, o.seed = cfg.seed;
  ptq::quantize_model(want, training_tokens(gptq.config, *gptq.tok, true).train, o);
  for (const auto& [name, t] : want.tensors) ASSERT_EQ(gptq.init->get(name).data, t.data) << name;
  EXPECT_EQ(gptq.init_report.at("method"), "gptq");
  EXPECT_EQ(gptq.init_report.at("calib_samples"), 8);
  EXPECT_LT(gptq.init_report.at("error").get<double>(), gptq.init_report.at("rtn_error").get<double>());
  // A resumed run takes its weights from the checkpoint: no PTQ step.
  cfg.out_dir = lowbit::testing::scratch_path("lowbit_qaft_resume").string();
  EXPECT_TRUE(prepare_train_job(cfg, true, lowbit_test::data_dir()).init_report.is_null());
}

TEST(Qaft, TheExportedFileHoldsTheQuantizedWeightsTheQatForwardUsed) {
  const fs::path dir = lowbit::testing::scratch_path("lowbit_qaft_export");
  fs::remove_all(dir);
  const auto tok = tokenizer_for_model(load_model(kModel));
  const std::vector<int32_t> ids = encode_documents(*tok, lowbit::testing::read_file_bytes(kStories));
  for (const std::string fmt : {"int4/g32", "mxfp4", "nvfp4"}) {
    const fs::path out = dir / fs::path(fmt).filename();
    train_job job = prepare_train_job(qaft_config("qat:" + fmt, "rtn", out.string()), false, lowbit_test::data_dir());
    const train_result r = run_training(job);
    // The quantize job on the trained model: RTN in the plan's format.
    ptq::quantize_job_config qc;
    qc.model = (out / "model.safetensors").string();
    qc.data = kStories, qc.weights = fmt, qc.method = "rtn", qc.out = (out / "exported.safetensors").string();
    ptq::run_quantize_job(qc);
    const model exported = load_model(qc.out);
    // Its weights are the forward's Q(W), bit for bit: the operand quantizer's P2 on the trained
    // master weights; the other tensors are the trained ones.
    const auto linear = r.trained.linear_weight_names();
    for (const auto& [name, t] : r.trained.tensors) {
      std::vector<float> q = t.data;
      if (std::find(linear.begin(), linear.end(), name) != linear.end())
        job.quantizer->apply(gemm_operand::w_fwd, 0, 0, t.data.data(), q.data(), t.rows(), t.cols());
      ASSERT_EQ(exported.get(name).data.size(), q.size()) << fmt << " " << name;
      for (size_t i = 0; i < q.size(); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(exported.get(name).data[i]), std::bit_cast<uint32_t>(q[i]))
            << fmt << " " << name << " [" << i << "]";
    }
    // So the QAT model evaluated under its own fake-quantized weights and the exported file agree
    // to the last bit, in eval and in the training forward alike.
    // (`lowbit eval --model out/model.safetensors --weights FMT` and `lowbit eval --model exported`.)
    eval_job_config under_plan;
    under_plan.model = qc.model, under_plan.data = kStories, under_plan.weights = fmt, under_plan.max_tokens = 1024;
    eval_job_config from_file = under_plan;
    from_file.model = qc.out, from_file.weights = "";
    const double qat = run_eval_job(under_plan).result.mean_nll, file = run_eval_job(from_file).result.mean_nll;
    EXPECT_EQ(qat, file) << fmt;
    EXPECT_NE(qat, run_eval_job([&] {
      eval_job_config c;
      c.model = qc.model, c.data = kStories, c.max_tokens = 1024;
      return c;
    }()).result.mean_nll);
    train_model a(r.trained), b(exported);
    const int T = 64;
    std::vector<int32_t> in(ids.begin(), ids.begin() + T), tg(ids.begin() + 1, ids.begin() + T + 1);
    EXPECT_EQ(a.forward_loss(in.data(), tg.data(), 1, T, job.quantizer.get(), 0),
              b.forward_loss(in.data(), tg.data(), 1, T, nullptr, 0))
        << fmt;
  }
  fs::remove_all(dir);
}

}  // namespace
