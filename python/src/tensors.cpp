// fake_quantize, cast, quantize, dequantize and QuantizedTensor (docs/python.md "Tensors").
//
// Arrays of any shape and strides: the format's groups run along `axis`. The kernels take a
// row-major [rows, cols] matrix grouped along cols, so the array is seen as the matrix whose rows
// are every index of the other axes in C order and whose columns are `axis` (numpy.moveaxis(x,
// axis, -1).reshape(-1, n)); stochastic rounding's element index is that matrix's. Zero copies
// when the array is C-contiguous and `axis` is its last axis, or its first axis with the rest
// contiguous after it (the column kernel); otherwise one gather into that matrix and one scatter
// back.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>

#include "bindings.hpp"
#include "lowbit/base/error.hpp"
#include "lowbit/engine/model.hpp"
#include "lowbit/formats/element.hpp"
#include "lowbit/kernels/quantize.hpp"

namespace lowbit::python {
namespace {

// How an array maps onto the kernels' [rows, cols] matrix.
struct matrix_view {
  std::vector<int64_t> array_shape;  // the array's (empty for 0-d)
  std::vector<int64_t> shape;        // the same with a 0-d array seen as [1]
  int axis = 0;
  int64_t rows = 0, cols = 0;
  // The matrix is the array's memory as it stands: rows along cols (last axis, C-contiguous), or
  // the transposed matrix [cols, rows] for the column kernel (first axis, C-contiguous).
  bool direct_rows = false, direct_columns = false;
};

matrix_view view_of(const py::array& a, int axis) {
  matrix_view v;
  v.array_shape = v.shape = shape_of(a);
  if (v.shape.empty()) v.shape = {1};  // a 0-d array is one element
  const int nd = static_cast<int>(v.shape.size());
  if (axis < -nd || axis >= nd)
    throw py::value_error("axis " + std::to_string(axis) + " is out of range for an array of " +
                          std::to_string(nd) + " dimension" + (nd == 1 ? "" : "s"));
  v.axis = axis < 0 ? axis + nd : axis;
  v.cols = v.shape[v.axis];
  int64_t n = 1;
  for (int64_t s : v.shape) n *= s;
  v.rows = v.cols == 0 ? 0 : n / v.cols;
  const bool contiguous = (a.flags() & py::array::c_style) != 0;
  int64_t outer = 1;
  for (int i = 0; i < v.axis; ++i) outer *= v.shape[i];
  v.direct_rows = contiguous && v.axis == nd - 1;
  v.direct_columns = contiguous && !v.direct_rows && outer == 1;
  return v;
}

// Visits every element of `a` in the matrix's order (other axes in C order, then `axis`),
// calling f(byte offset into a, matrix index).
template <class F>
void for_each_moved(const py::array& a, const matrix_view& v, F&& f) {
  const int nd = static_cast<int>(v.shape.size());
  std::vector<int> order;
  for (int i = 0; i < nd; ++i)
    if (i != v.axis) order.push_back(i);
  order.push_back(v.axis);
  std::vector<int64_t> strides(nd, 0);
  for (int i = 0; i < nd && i < a.ndim(); ++i) strides[i] = a.strides(i);
  const int64_t total = v.rows * v.cols;
  std::vector<int64_t> idx(nd, 0);
  int64_t offset = 0;
  for (int64_t k = 0; k < total; ++k) {
    f(offset, k);
    for (int d = nd - 1; d >= 0; --d) {  // odometer over `order`
      const int ax = order[d];
      if (++idx[d] < v.shape[ax]) {
        offset += strides[ax];
        break;
      }
      offset -= strides[ax] * (v.shape[ax] - 1);
      idx[d] = 0;
    }
  }
}

void gather(const py::array& a, const matrix_view& v, float* dst) {
  const char* base = static_cast<const char*>(a.data());
  for_each_moved(a, v, [&](int64_t off, int64_t k) { std::memcpy(dst + k, base + off, sizeof(float)); });
}

void scatter(const float* src, py::array& a, const matrix_view& v) {
  char* base = static_cast<char*>(a.mutable_data());
  for_each_moved(a, v, [&](int64_t off, int64_t k) { std::memcpy(base + off, src + k, sizeof(float)); });
}

py::array checked_float32(const py::handle& x, const char* what) {
  // Leaked on purpose: a static py::object would be released after the interpreter is gone.
  static const py::handle numpy_scalar = py::object(py::module_::import("numpy").attr("float32")).release();
  if (py::isinstance(x, numpy_scalar)) return py::array::ensure(x);  // numpy.float32(3.3)
  if (!py::isinstance<py::array>(x)) {
    // Lists and scalars are welcome; other objects (a torch tensor) are the caller's to convert.
    if (py::isinstance<py::list>(x) || py::isinstance<py::tuple>(x) || py::isinstance<py::float_>(x) ||
        py::isinstance<py::int_>(x))
      throw py::type_error(std::string(what) + " must be a numpy float32 array (numpy.asarray(x, numpy.float32))");
    throw py::type_error(std::string(what) + " must be a numpy float32 array, got " +
                         std::string(py::str(py::type::of(x).attr("__name__"))) +
                         " (torch tensors: lowbit.torch.fake_quantize)");
  }
  auto a = py::reinterpret_borrow<py::array>(x);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(what) + " must be float32, got " + std::string(py::str(a.dtype())) +
                         " (convert with x.astype(numpy.float32))");
  return a;
}

// The output array: `out` checked against x's shape, or a new C-contiguous one.
py::array output_for(const matrix_view& v, const py::object& out) {
  if (out.is_none()) return py::array_t<float>(std::vector<py::ssize_t>(v.array_shape.begin(), v.array_shape.end()));
  py::array o = checked_float32(out, "out");
  if (shape_of(o) != v.array_shape) throw py::value_error("out has a different shape from the input");
  if (!o.writeable()) throw py::value_error("out is read-only");
  return o;
}

void run_fake_quantize(const float* in, float* out, const matrix_view& v, bool columns, const format& f,
                       uint64_t tensor_id, bool reference) {
  // columns: in is [cols, rows] (the array's own layout) grouped along its rows.
  if (columns) {
    (reference ? fake_quantize_columns_ref : fake_quantize_columns)(in, out, v.cols, v.rows, f, tensor_id, {});
  } else {
    (reference ? fake_quantize_ref : fake_quantize)(in, out, v.rows, v.cols, f, tensor_id, {});
  }
}

py::array fake_quantize_array(const py::handle& x, const py::handle& spec, int axis, uint64_t tensor_id,
                              const py::object& out_arg, bool reference) {
  const py::array a = checked_float32(x, "x");
  const format f = format_of(spec);
  const matrix_view v = view_of(a, axis);
  py::array out = output_for(v, out_arg);
  if (v.rows * v.cols == 0) return out;
  const bool out_direct = (out.flags() & py::array::c_style) != 0;
  if ((v.direct_rows || v.direct_columns) && out_direct) {
    const float* in = static_cast<const float*>(a.data());
    float* o = static_cast<float*>(out.mutable_data());
    py::gil_scoped_release release;
    run_fake_quantize(in, o, v, v.direct_columns, f, tensor_id, reference);
    return out;
  }
  std::vector<float> buf(static_cast<size_t>(v.rows * v.cols));
  {
    py::gil_scoped_release release;
    gather(a, v, buf.data());
    run_fake_quantize(buf.data(), buf.data(), v, false, f, tensor_id, reference);
    scatter(buf.data(), out, v);
  }
  return out;
}

// A quantized array: the kernels' quantized_tensor of the matrix view, and the array's shape.
struct py_quantized {
  quantized_tensor q;
  std::vector<int64_t> shape;
  int axis = 0;
};

py_quantized quantize_array(const py::handle& x, const py::handle& spec, int axis, uint64_t tensor_id,
                            bool reference) {
  const py::array a = checked_float32(x, "x");
  const format f = format_of(spec);
  const matrix_view v = view_of(a, axis);
  if (v.rows * v.cols == 0) throw py::value_error("cannot quantize an empty array");
  py_quantized r;
  r.shape = v.array_shape;
  r.axis = v.axis;
  py::gil_scoped_release release;
  if (v.direct_rows) {
    r.q = (reference ? quantize_ref : quantize)(static_cast<const float*>(a.data()), v.rows, v.cols, f, tensor_id);
  } else {
    std::vector<float> buf(static_cast<size_t>(v.rows * v.cols));
    gather(a, v, buf.data());
    r.q = (reference ? quantize_ref : quantize)(buf.data(), v.rows, v.cols, f, tensor_id);
  }
  return r;
}

py::array dequantize_array(const py_quantized& p) {
  matrix_view v;
  v.array_shape = v.shape = p.shape;
  if (v.shape.empty()) v.shape = {1};
  v.axis = p.axis;
  v.rows = p.q.rows;
  v.cols = p.q.cols;
  py::array out = py::array_t<float>(std::vector<py::ssize_t>(v.array_shape.begin(), v.array_shape.end()));
  if (v.axis == static_cast<int>(v.shape.size()) - 1) {
    float* o = static_cast<float*>(out.mutable_data());
    py::gil_scoped_release release;
    dequantize(p.q, o);
    return out;
  }
  std::vector<float> buf(static_cast<size_t>(v.rows * v.cols));
  py::gil_scoped_release release;
  dequantize(p.q, buf.data());
  scatter(buf.data(), out, v);
  return out;
}

// A read-only numpy view of a vector owned by `owner` (kept alive by the view).
template <class T>
py::array view_of_vector(const std::vector<T>& data, std::vector<py::ssize_t> shape, py::handle owner) {
  py::array a(py::dtype::of<T>(), shape, {}, data.data(), owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

// The element codes of q as [rows, cols] integers (uint8 / uint16 / uint32 by the element's bits).
py::array unpacked_codes(const quantized_tensor& q) {
  const int bits = q.fmt.element.bits;
  std::vector<uint32_t> row(static_cast<size_t>(q.cols));
  auto fill = [&](auto* dst) {
    for (int64_t r = 0; r < q.rows; ++r) {
      unpack_codes(q.codes.data() + r * q.row_bytes, q.cols, bits, row.data());
      for (int64_t c = 0; c < q.cols; ++c) dst[r * q.cols + c] = static_cast<std::remove_pointer_t<decltype(dst)>>(row[c]);
    }
  };
  const std::vector<py::ssize_t> shape{q.rows, q.cols};
  if (bits <= 8) {
    py::array_t<uint8_t> a(shape);
    fill(a.mutable_data());
    return a;
  }
  if (bits <= 16) {
    py::array_t<uint16_t> a(shape);
    fill(a.mutable_data());
    return a;
  }
  py::array_t<uint32_t> a(shape);
  fill(a.mutable_data());
  return a;
}

// Per-element bounds of the representable range of x's groups in f: the values the smallest and
// the largest element code take under each group's scale (and zero point). A value outside
// [lo, hi] is clipped by the quantizer (the clipped straight-through estimator's mask).
std::pair<py::array, py::array> clip_bounds(const py::handle& x, const py::handle& spec, int axis,
                                            uint64_t tensor_id) {
  py_quantized p = quantize_array(x, spec, axis, tensor_id, false);
  const element_format& e = p.q.fmt.element;
  const element_limits l = limits_of(e);
  const uint32_t code_hi = encode_ref(e, static_cast<float>(l.max), rounding_mode::rne);
  const uint32_t code_lo = encode_ref(e, static_cast<float>(l.min), rounding_mode::rne);
  py_quantized hi = p, lo = p;
  for (int64_t r = 0; r < p.q.rows; ++r)
    for (int64_t c = 0; c < p.q.cols; ++c) {
      hi.q.set_code(r, c, code_hi);
      lo.q.set_code(r, c, code_lo);
    }
  py::array a = dequantize_array(hi), b = dequantize_array(lo);
  // A negative scale (q4_0's d = max / -8, q5_0's max / -16) swaps the ends.
  auto* pa = static_cast<float*>(a.mutable_data());
  auto* pb = static_cast<float*>(b.mutable_data());
  for (py::ssize_t i = 0; i < a.size(); ++i)
    if (pb[i] > pa[i]) std::swap(pa[i], pb[i]);
  return {b, a};
}

double median_seconds(std::vector<double> t) {
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

}  // namespace

void register_tensors(py::module_& m) {
  m.def("fake_quantize", [](const py::handle& x, const py::handle& spec, int axis, uint64_t tensor_id,
                            const py::object& out, bool reference) {
    return fake_quantize_array(x, spec, axis, tensor_id, out, reference);
  }, py::arg("x"), py::arg("spec"), py::kw_only(), py::arg("axis") = -1, py::arg("tensor_id") = 0,
     py::arg("out") = py::none(), py::arg("reference") = false,
     "dequantize(quantize(x)) in format `spec`, groups along `axis` (float32 in, float32 out).\n"
     "reference=True runs the scalar _ref kernels (the specification) instead of the SIMD ones.");

  py::class_<py_quantized>(m, "QuantizedTensor",
                           "Codes and scales of an array in a format (kernels' quantized_tensor layout).")
      .def_property_readonly("format", [](const py_quantized& p) { return p.q.fmt; })
      .def_property_readonly("shape", [](const py_quantized& p) {
        py::tuple t(p.shape.size());
        for (size_t i = 0; i < p.shape.size(); ++i) t[i] = p.shape[i];
        return t;
      }, "the quantized array's shape")
      .def_readonly("axis", &py_quantized::axis, "the axis the groups run along")
      .def_property_readonly("rows", [](const py_quantized& p) { return p.q.rows; })
      .def_property_readonly("cols", [](const py_quantized& p) { return p.q.cols; })
      .def_property_readonly("codes", [](py::object self) {
        const auto& q = self.cast<const py_quantized&>().q;
        return view_of_vector(q.codes, {q.rows, q.row_bytes}, self);
      }, "packed codes, uint8 [rows, row_bytes]: element j of a row at bits [j*b, (j+1)*b), LSB first")
      .def("unpacked_codes", [](const py_quantized& p) { return unpacked_codes(p.q); },
           "the element codes as integers [rows, cols] (the matrix with `axis` last)")
      .def_property_readonly("scales", [](py::object self) {
        const auto& q = self.cast<const py_quantized&>().q;
        return view_of_vector(q.scales, {static_cast<py::ssize_t>(q.scales.size())}, self);
      }, "one float32 per group, row-major (row, group); K-quants: the sub-block scale codes")
      .def_property_readonly("zero_points", [](py::object self) -> py::object {
        const auto& q = self.cast<const py_quantized&>().q;
        if (q.zero_points.empty()) return py::none();
        return view_of_vector(q.zero_points, {static_cast<py::ssize_t>(q.zero_points.size())}, self);
      }, "int32 per group for formats with zero points (uint, q4_0/q5_0, the K-quants' mins); None otherwise")
      .def_property_readonly("super_scales", [](py::object self) -> py::object {
        const auto& q = self.cast<const py_quantized&>().q;
        if (q.super_scales.empty()) return py::none();
        return view_of_vector(q.super_scales, {static_cast<py::ssize_t>(q.super_scales.size())}, self);
      }, "K-quants (q2_k ... q6_k): the fp16 scales of each 256-value super-block; q4_1 / q5_1: each "
         "block's fp16 min; None otherwise")
      .def_property_readonly("tensor_scale", [](const py_quantized& p) { return p.q.tensor_scale; },
                             "nvfp4's second-level FP32 scale (1 otherwise)")
      .def_property_readonly("storage_bytes", [](const py_quantized& p) { return p.q.storage_bytes(); },
                             "codes plus scales as the format stores them")
      .def("parts", [](py::object self, const std::string& name) {
        const auto& q = self.cast<const py_quantized&>().q;
        const codes_layout l = layout_of(q);
        py::dict d;
        d[py::str(name + ".codes")] = view_of_vector(q.codes, {q.rows, q.row_bytes}, self);
        d[py::str(name + ".scales")] = view_of_vector(q.scales, {static_cast<py::ssize_t>(q.scales.size())}, self);
        if (l.n_zero_points > 0)
          d[py::str(name + ".zero_points")] =
              view_of_vector(q.zero_points, {static_cast<py::ssize_t>(q.zero_points.size())}, self);
        if (l.n_super_scales > 0)
          d[py::str(name + ".super_scales")] =
              view_of_vector(q.super_scales, {static_cast<py::ssize_t>(q.super_scales.size())}, self);
        if (l.tensor_scale) {
          py::array_t<float> t(1);
          t.mutable_data()[0] = q.tensor_scale;
          d[py::str(name + ".tensor_scale")] = t;
        }
        return d;
      }, py::arg("name"),
         "The arrays a packed safetensors model file stores for tensor `name` (docs/python.md): "
         "NAME.codes, NAME.scales and, when the format has them, NAME.zero_points, "
         "NAME.super_scales, NAME.tensor_scale.")
      .def("dequantize", [](const py_quantized& p) { return dequantize_array(p); },
           "the values, float32, in the original shape")
      .def("__eq__", [](const py_quantized& a, const py_quantized& b) {
        return a.q == b.q && a.shape == b.shape && a.axis == b.axis;
      })
      .def("__repr__", [](const py_quantized& p) {
        std::string s = "lowbit.QuantizedTensor(" + format_name(p.q.fmt) + ", shape=(";
        for (size_t i = 0; i < p.shape.size(); ++i) s += (i ? ", " : "") + std::to_string(p.shape[i]);
        return s + "), axis=" + std::to_string(p.axis) + ", " + std::to_string(p.q.storage_bytes()) + " bytes)";
      });

  m.def("quantize", [](const py::handle& x, const py::handle& spec, int axis, uint64_t tensor_id, bool reference) {
    return quantize_array(x, spec, axis, tensor_id, reference);
  }, py::arg("x"), py::arg("spec"), py::kw_only(), py::arg("axis") = -1, py::arg("tensor_id") = 0,
     py::arg("reference") = false, "Codes and scales of x in format `spec`, groups along `axis`.");
  m.def("dequantize", [](const py_quantized& q) { return dequantize_array(q); }, py::arg("q"));

  m.def("clip_bounds", [](const py::handle& x, const py::handle& spec, int axis, uint64_t tensor_id) {
    return clip_bounds(x, spec, axis, tensor_id);
  }, py::arg("x"), py::arg("spec"), py::kw_only(), py::arg("axis") = -1, py::arg("tensor_id") = 0,
     "(lo, hi): per element, the smallest and largest value its group can represent.");

  // The C++ kernel on the caller's buffer, timed in C++ (bench/bench_python.py's baseline).
  m.def("time_fake_quantize", [](const py::handle& x, const py::handle& spec, int repeats) {
    py::array a = checked_float32(x, "x");
    if (!(a.flags() & py::array::c_style) || a.ndim() < 1) throw py::value_error("x must be C-contiguous");
    if (repeats < 1) throw py::value_error("repeats must be >= 1");
    const format f = format_of(spec);
    const matrix_view v = view_of(a, -1);
    std::vector<float> out(static_cast<size_t>(v.rows * v.cols));
    std::vector<double> kernel, copy;
    const float* in = static_cast<const float*>(a.data());
    {
      py::gil_scoped_release release;
      using clock = std::chrono::steady_clock;
      for (int i = 0; i < repeats; ++i) {
        auto t0 = clock::now();
        fake_quantize(in, out.data(), v.rows, v.cols, f, 0, {});
        auto t1 = clock::now();
        std::memcpy(out.data(), in, out.size() * sizeof(float));
        auto t2 = clock::now();
        kernel.push_back(std::chrono::duration<double>(t1 - t0).count());
        copy.push_back(std::chrono::duration<double>(t2 - t1).count());
      }
    }
    py::dict d;
    d["kernel_seconds"] = median_seconds(kernel);
    d["memcpy_seconds"] = median_seconds(copy);
    return d;
  }, py::arg("x"), py::arg("spec"), py::arg("repeats") = 11,
     "Median seconds of the C++ fake_quantize kernel and of memcpy on x's buffer (no Python in the loop).");
}

}  // namespace lowbit::python
