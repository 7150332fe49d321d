// lowbit._core.ptq: the per-layer post-training quantization algorithms of docs/ptq.md §4
// (include/lowbit/ptq/ptq.hpp) on numpy arrays, for lowbit.torch.quantize_weights. Shapes as
// there: W, Q [out, in]; X [n, in]; H [in, in] float64.
#include <cstring>

#include "bindings.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/ptq/ptq.hpp"

namespace lowbit::python {
namespace {

// A 2-d float32 array [rows, cols], C-contiguous (copied when it is not).
py::array_t<float, py::array::c_style> matrix_arg(const py::handle& x, const char* what) {
  auto a = float32_contiguous(x, what);
  if (a.ndim() != 2)
    throw py::value_error(std::string(what) + " must be a 2-d matrix, got " + std::to_string(a.ndim()) +
                          " dimensions");
  return a;
}

py::array_t<float> matrix_of(const std::vector<float>& v, int64_t rows, int64_t cols) {
  py::array_t<float> out({rows, cols});
  std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(float));
  return out;
}

template <class T>
py::array_t<T> vector_of(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::dict gptq(const py::handle& wh, const py::handle& hh, const py::handle& spec, double percdamp,
              int64_t block_size, bool act_order, bool static_groups, bool float64, uint64_t tensor_id) {
  auto w = matrix_arg(wh, "w");
  auto h = py::array_t<double, py::array::c_style | py::array::forcecast>::ensure(hh);
  if (!h || h.ndim() != 2 || h.shape(0) != w.shape(1) || h.shape(1) != w.shape(1))
    throw py::value_error("h must be the float64 Hessian [in, in] of w [out, in]");
  const format f = format_of(spec);
  ptq::gptq_options o;
  o.percdamp = percdamp;
  o.block_size = block_size;
  o.act_order = act_order;
  o.static_groups = static_groups;
  o.float64 = float64;
  o.tensor_id = tensor_id;
  const int64_t out = w.shape(0), in = w.shape(1);
  ptq::gptq_result r;
  {
    py::gil_scoped_release release;
    r = ptq::gptq_quantize(w.data(), out, in, h.data(), f, o);
  }
  py::dict d;
  d["weights"] = matrix_of(r.weights, out, in);
  d["loss"] = r.loss;
  d["column_loss"] = vector_of(r.column_loss);
  d["dead_columns"] = r.dead_columns;
  return d;
}

py::dict awq(const py::handle& xh, const py::list& weights, const py::handle& spec, int n_grid, bool clip,
             int clip_grid, double max_shrink, int64_t clip_sample_tokens, uint64_t tensor_id) {
  auto x = matrix_arg(xh, "x");
  const int64_t n = x.shape(0), in = x.shape(1);
  std::vector<py::array_t<float, py::array::c_style>> ws;
  std::vector<ptq::linear_weight> layers;
  for (const auto& wh : weights) {
    ws.push_back(matrix_arg(wh, "weights[i]"));
    if (ws.back().shape(1) != in)
      throw py::value_error("every weight must be [out, in] with in = x.shape[1] = " + std::to_string(in));
    layers.push_back({ws.back().data(), ws.back().shape(0)});
  }
  if (layers.empty()) throw py::value_error("awq_quantize needs at least one weight");
  const format f = format_of(spec);
  ptq::awq_options o;
  o.n_grid = n_grid;
  o.clip = clip;
  o.clip_grid = clip_grid;
  o.max_shrink = max_shrink;
  o.clip_sample_tokens = clip_sample_tokens;
  o.tensor_id = tensor_id;
  ptq::awq_result r;
  {
    py::gil_scoped_release release;
    r = ptq::awq_quantize(x.data(), n, in, layers, f, o);
  }
  py::dict d;
  d["scales"] = vector_of(r.scales);
  d["ratio"] = r.ratio;
  d["ratio_loss"] = vector_of(r.ratio_loss);
  py::list qs, clips;
  for (size_t i = 0; i < r.layers.size(); ++i) {
    qs.append(matrix_of(r.layers[i].weights, layers[i].out, in));
    const auto& c = r.layers[i].clip_max;
    if (c.empty()) clips.append(py::none());
    else clips.append(matrix_of(c, layers[i].out, static_cast<int64_t>(c.size()) / layers[i].out));
  }
  d["weights"] = qs;
  d["clip_max"] = clips;
  return d;
}

}  // namespace

void register_ptq(py::module_& m) {
  auto p = m.def_submodule("ptq", "Per-layer post-training quantization (docs/ptq.md §4): RTN, GPTQ, AWQ.");

  py::class_<ptq::hessian_accumulator>(p, "HessianAccumulator",
      "GPTQ's H = (2/n) sum_t x_t x_t^T over every calibration row added, float64 (a running average).")
      .def(py::init([](int64_t in) {
        if (in < 1) throw py::value_error("in_features must be >= 1");
        return ptq::hessian_accumulator(in);
      }), py::arg("in_features"))
      .def("add", [](ptq::hessian_accumulator& h, const py::handle& xh) {
        auto x = matrix_arg(xh, "x");
        if (x.shape(1) != h.in)
          throw py::value_error("x must be [n, " + std::to_string(h.in) + "], got [" + std::to_string(x.shape(0)) +
                                ", " + std::to_string(x.shape(1)) + "]");
        if (x.shape(0) == 0) return;
        py::gil_scoped_release release;
        h.add(x.data(), x.shape(0));
      }, py::arg("x"), "Adds the rows of x [n, in] (float32).")
      .def_readonly("count", &ptq::hessian_accumulator::count, "rows (tokens) added")
      .def_readonly("in_features", &ptq::hessian_accumulator::in)
      .def("matrix", [](const ptq::hessian_accumulator& h) {
        const std::vector<double> H = h.matrix();
        py::array_t<double> out({h.in, h.in});
        std::memcpy(out.mutable_data(), H.data(), H.size() * sizeof(double));
        return out;
      }, "H [in, in], full symmetric, float64");

  p.def("gptq_quantize", &gptq, py::arg("w"), py::arg("h"), py::arg("spec"), py::kw_only(),
        py::arg("percdamp") = 0.01, py::arg("block_size") = 128, py::arg("act_order") = false,
        py::arg("static_groups") = false, py::arg("float64") = false, py::arg("tensor_id") = 0,
        "GPTQ of w [out, in] with the Hessian h [in, in] (Frantar et al. 2023, Alg. 1; docs/ptq.md §4.1).\n"
        "Returns {'weights': Q [out, in], 'loss', 'column_loss' [in], 'dead_columns'}.");

  p.def("awq_quantize", &awq, py::arg("x"), py::arg("weights"), py::arg("spec"), py::kw_only(),
        py::arg("n_grid") = 20, py::arg("clip") = true, py::arg("clip_grid") = 20, py::arg("max_shrink") = 0.5,
        py::arg("clip_sample_tokens") = 512, py::arg("tensor_id") = 0,
        "AWQ's scale search (and clipping search) for the layers [out_i, in] that read x [n, in] "
        "(Lin et al. 2024; docs/ptq.md §4.3).\nReturns {'scales': s [in], 'ratio', 'ratio_loss', "
        "'weights': [Q_i = Q(clip(W_i diag(s)))], 'clip_max': [[out_i, groups] or None]}; run Q_i on x diag(s)^-1.");

  p.def("output_error", [](const py::handle& xh, const py::handle& wh, const py::handle& qh) {
    auto x = matrix_arg(xh, "x");
    auto w = matrix_arg(wh, "w");
    auto q = matrix_arg(qh, "q");
    if (w.shape(1) != x.shape(1) || q.shape(0) != w.shape(0) || q.shape(1) != w.shape(1))
      throw py::value_error("shapes must be x [n, in], w [out, in], q [out, in]");
    py::gil_scoped_release release;
    return ptq::output_error(x.data(), x.shape(0), x.shape(1), w.data(), q.data(), w.shape(0));
  }, py::arg("x"), py::arg("w"), py::arg("q"), "||x w^T - x q^T||_F^2 (float64 sum of squares).");
}

}  // namespace lowbit::python
