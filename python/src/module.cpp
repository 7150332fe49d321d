// lowbit._core: the compiled half of the `lowbit` Python package (python/lowbit/__init__.py).
#include <omp.h>

#include "bindings.hpp"
#include "lowbit/base/error.hpp"

namespace lowbit::python {

py::array_t<float, py::array::c_style> float32_contiguous(const py::handle& x, const char* what) {
  if (!py::isinstance<py::array>(x))
    throw py::type_error(std::string(what) + " must be a numpy float32 array, got " +
                         std::string(py::str(py::type::of(x).attr("__name__"))));
  auto a = py::reinterpret_borrow<py::array>(x);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(what) + " must be float32, got " + std::string(py::str(a.dtype())) +
                         " (convert with x.astype(numpy.float32))");
  return py::array_t<float, py::array::c_style>::ensure(a);
}

py::array_t<float, py::array::c_style> writable_float32(const py::handle& x, const char* what) {
  if (!py::isinstance<py::array>(x)) throw py::type_error(std::string(what) + " must be a numpy float32 array");
  auto a = py::reinterpret_borrow<py::array>(x);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(what) + " must be float32, got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(what) + " must be C-contiguous");
  if (!a.writeable()) throw py::value_error(std::string(what) + " is read-only");
  return py::reinterpret_borrow<py::array_t<float, py::array::c_style>>(a);
}

std::vector<int64_t> shape_of(const py::array& a) {
  std::vector<int64_t> s(a.ndim());
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s[i] = a.shape(i);
  return s;
}

}  // namespace lowbit::python

PYBIND11_MODULE(_core, m) {
  namespace py = pybind11;
  using namespace lowbit::python;
  m.doc() = "lowbit: bit-exact low-precision formats, kernels, models and jobs (docs/python.md)";
  // lowbit.Error is a ValueError: `except ValueError` catches a bad spec, shape or file.
  static py::exception<lowbit::error> error_type(m, "Error", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const lowbit::error& e) {
      error_type(e.what());
    }
  });
  m.def("set_threads", [](int n) {
    if (n < 1) throw py::value_error("threads must be >= 1, got " + std::to_string(n));
    omp_set_num_threads(n);
  }, py::arg("n"), "Threads of lowbit's kernels and jobs (OpenMP) on this Python thread.");
  m.def("threads", [] { return omp_get_max_threads(); }, "Threads lowbit's kernels use now.");
  m.attr("default_data_dir") = LOWBIT_DEFAULT_DATA_DIR;
  register_formats(m);
  register_tensors(m);
  register_training(m);
  register_jobs(m);
  register_ptq(m);
}
