// The Python module lowbit._core (docs/python.md): pybind11 bindings over the libraries, one
// register_* per area. Conventions shared by every binding:
//   - arrays cross as numpy float32, checked here (a wrong dtype is a TypeError naming it);
//   - every lowbit::error becomes lowbit.Error, a subclass of ValueError, with the library's
//     message (the CLI's words, suggestions included);
//   - kernels and jobs run with the GIL released, on the library's OpenMP threads.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "lowbit/formats/format.hpp"

namespace lowbit::python {

namespace py = pybind11;

// A float32 array as C-contiguous memory: the array itself when it already is, else a copy.
// Throws TypeError for any other dtype.
py::array_t<float, py::array::c_style> float32_contiguous(const py::handle& x, const char* what);
// The same check without a copy: x must be a writable, C-contiguous float32 array (out=).
py::array_t<float, py::array::c_style> writable_float32(const py::handle& x, const char* what);

// A spec string or a lowbit.Format as a format.
format format_of(const py::handle& spec);

// The shape of an array as int64s.
std::vector<int64_t> shape_of(const py::array& a);

void register_formats(py::module_& m);
void register_tensors(py::module_& m);
void register_training(py::module_& m);
void register_jobs(py::module_& m);
void register_ptq(py::module_& m);

}  // namespace lowbit::python
