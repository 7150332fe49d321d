// Training plans and the operand quantizer of the six GEMM operands (docs/training.md), for
// lowbit.torch's QuantLinear: the same plans, formats and stochastic-rounding streams as
// `lowbit train --plan`.
#include <algorithm>

#include "bindings.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/engine/train.hpp"
#include "lowbit/train/recipes.hpp"
#include "src/engine/decoder.hpp"

namespace lowbit::python {
namespace {

gemm_operand operand_of(const std::string& name) {
  for (int i = 0; i < gemm_operand_count; ++i) {
    const auto op = static_cast<gemm_operand>(i);
    if (name == gemm_operand_key(op) || name == gemm_operand_label(op)) return op;
  }
  throw py::value_error("unknown GEMM operand '" + name + "': one of x, w, dy, w_bwd, dy_w, x_bwd (or P1..P6)");
}

// The operand's GEMM reduces over its rows (tokens for X and dY in the dW GEMM, outputs for W in
// the dX GEMM) unless the plan groups every tensor along its own feature axis.
bool groups_along_rows(const operand_quantizer& q, gemm_operand op) {
  return !q.feature_axis_groups() &&
         (op == gemm_operand::w_dx || op == gemm_operand::x_dw || op == gemm_operand::dy_dw);
}

void transpose(const float* in, float* out, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = in[r * cols + c];
}

struct py_operand_quantizer {
  training_plan plan;
  std::unique_ptr<operand_quantizer> q;
};

// out = the operand as its GEMM reads it, in the tensor's own layout: X [n, in], W [out, in],
// dY [n, out], each grouped along its GEMM's reduction axis (or its feature axis with axis=din).
py::array quantize_operand(py_operand_quantizer& self, const std::string& name, int linear, int64_t step,
                           const py::handle& x) {
  const gemm_operand op = operand_of(name);
  auto a = float32_contiguous(x, "x");
  if (a.ndim() != 2) throw py::value_error("an operand is a 2-d matrix [rows, cols], got " + std::to_string(a.ndim()) + " dimensions");
  const int64_t rows = a.shape(0), cols = a.shape(1);
  py::array_t<float> out({rows, cols});
  if (!self.q->quantizes(op) || rows * cols == 0) {
    std::copy_n(a.data(), rows * cols, out.mutable_data());
    return out;
  }
  const float* in = a.data();
  float* o = out.mutable_data();
  py::gil_scoped_release release;
  if (!groups_along_rows(*self.q, op)) {
    self.q->apply(op, linear, step, in, o, rows, cols);
  } else if (!self.q->apply_columns(op, linear, step, in, o, rows, cols)) {
    std::vector<float> t(static_cast<size_t>(rows * cols));
    transpose(in, t.data(), rows, cols);
    self.q->apply(op, linear, step, t.data(), t.data(), cols, rows);
    transpose(t.data(), o, cols, rows);
  }
  return out;
}

// Records whether apply_columns took a call (then the operand is in the tensor's layout).
class recording_quantizer : public operand_quantizer {
 public:
  explicit recording_quantizer(operand_quantizer& inner) : inner_(inner) {}
  bool quantizes(gemm_operand op) const override { return inner_.quantizes(op); }
  bool feature_axis_groups() const override { return inner_.feature_axis_groups(); }
  void apply(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
             int64_t cols) override {
    inner_.apply(op, linear, step, in, out, rows, cols);
  }
  bool apply_columns(gemm_operand op, int linear, int64_t step, const float* in, float* out, int64_t rows,
                     int64_t cols) override {
    columns_ = inner_.apply_columns(op, linear, step, in, out, rows, cols);
    return columns_;
  }
  bool columns_ = false;

 private:
  operand_quantizer& inner_;
};

py::array matrix_copy(const float* p, int64_t rows, int64_t cols, bool transposed) {
  py::array_t<float> out({rows, cols});
  if (transposed) transpose(p, out.mutable_data(), cols, rows);  // p is [cols, rows]
  else std::copy_n(p, rows * cols, out.mutable_data());
  return out;
}

// The trainer's own GEMM path (src/engine/decoder.hpp quantized_gemms) on one linear layer: the
// six operands as its buffers hold them, each brought to the tensor's layout, plus Y, dX, dW.
py::dict trainer_operands(py_operand_quantizer& self, int linear, int64_t step, const py::handle& xh,
                          const py::handle& wh, const py::handle& dyh) {
  auto x = float32_contiguous(xh, "x"), w = float32_contiguous(wh, "w"), dy = float32_contiguous(dyh, "dy");
  if (x.ndim() != 2 || w.ndim() != 2 || dy.ndim() != 2 || x.shape(1) != w.shape(1) || dy.shape(0) != x.shape(0) ||
      dy.shape(1) != w.shape(0))
    throw py::value_error("shapes must be x [n, in], w [out, in], dy [n, out]");
  const int64_t n = x.shape(0);
  const int in = static_cast<int>(x.shape(1)), out = static_cast<int>(w.shape(0));
  recording_quantizer rq(*self.q);
  std::vector<float> a(n * std::max(in, out)), b(int64_t(out) * in), c(n * std::max(in, out));
  std::vector<float> y(n * out), dx(n * in, 0.0f), dw(int64_t(out) * in);
  decoder::quantized_gemms g(&rq, step, a, b, c);
  const bool din = self.q->feature_axis_groups();
  py::dict d;
  auto on = [&](gemm_operand op) { return self.q->quantizes(op); };
  const float* xq = g.input(x.data(), n, in, linear);
  d["x"] = matrix_copy(xq, n, in, false);
  g.forward(xq, n, in, w.data(), out, y.data(), linear);
  d["w"] = matrix_copy(on(gemm_operand::w_fwd) ? b.data() : w.data(), out, in, false);
  rq.columns_ = false;
  g.backward_input(dy.data(), n, out, w.data(), in, dx.data(), linear);
  d["dy"] = matrix_copy(on(gemm_operand::dy_dx) ? c.data() : dy.data(), n, out, false);
  d["w_bwd"] = on(gemm_operand::w_dx) ? matrix_copy(b.data(), out, in, !din && !rq.columns_)
                                      : matrix_copy(w.data(), out, in, false);
  rq.columns_ = false;
  const auto x6 = g.weight_grad_input(x.data(), n, in, linear);
  d["x_bwd"] = x6.data ? matrix_copy(x6.data, n, in, !x6.token_major) : matrix_copy(x.data(), n, in, false);
  rq.columns_ = false;
  g.backward_weight(dy.data(), n, out, x.data(), x6, in, dw.data(), linear);
  d["dy_w"] = on(gemm_operand::dy_dw) ? matrix_copy(c.data(), n, out, !din && !rq.columns_)
                                      : matrix_copy(dy.data(), n, out, false);
  d["y"] = matrix_copy(y.data(), n, out, false);
  d["dx"] = matrix_copy(dx.data(), n, in, false);
  d["dw"] = matrix_copy(dw.data(), out, in, false);
  return d;
}

}  // namespace

void register_training(py::module_& m) {
  py::class_<py_operand_quantizer>(m, "OperandQuantizer",
      "The quantizer of the six GEMM operands of a training plan (`lowbit train --plan` grammar).")
      .def(py::init([](const std::string& plan, uint64_t seed) {
        py_operand_quantizer p;
        p.plan = parse_training_plan(plan);
        p.q = make_operand_quantizer(p.plan, seed);
        return p;
      }), py::arg("plan"), py::arg("seed") = 0)
      .def_property_readonly("plan", [](const py_operand_quantizer& p) { return p.plan.spec; })
      .def_property_readonly("recipe", [](const py_operand_quantizer& p) { return p.plan.recipe; })
      .def_property_readonly("operands", [](const py_operand_quantizer& p) {
        py::dict d;
        for (int i = 0; i < gemm_operand_count; ++i)
          d[gemm_operand_key(static_cast<gemm_operand>(i))] =
              p.plan.operands[i].empty() ? py::object(py::none()) : py::str(p.plan.operands[i]);
        return d;
      }, "operand key (x, w, dy, w_bwd, dy_w, x_bwd) -> canonical format, None when fp32")
      .def_property_readonly("feature_axis", [](const py_operand_quantizer& p) { return p.plan.feature_axis; })
      .def_property_readonly("law_format", [](const py_operand_quantizer& p) { return p.plan.law_format; })
      .def("quantizes", [](const py_operand_quantizer& p, const std::string& op) {
        return p.q->quantizes(operand_of(op));
      }, py::arg("operand"))
      .def("quantize", &quantize_operand, py::arg("operand"), py::arg("linear"), py::arg("step"), py::arg("x"),
           "The operand as its GEMM reads it, in the tensor's layout (X [n, in], W [out, in], dY [n, out]).")
      .def("set_frozen", [](py_operand_quantizer& p, bool frozen) { p.q->set_frozen(frozen); }, py::arg("frozen"),
           "Frozen: quantize with the current state without updating it (Autoflex; evaluation).")
      .def("state", [](const py_operand_quantizer& p) { return p.q->state().dump(); },
           "Quantizer state as JSON text (Autoflex histories; 'null' when stateless).")
      .def("_trainer_operands", &trainer_operands, py::arg("linear"), py::arg("step"), py::arg("x"), py::arg("w"),
           py::arg("dy"), "Test oracle: one linear layer through the C++ trainer's GEMMs.");
}

}  // namespace lowbit::python
