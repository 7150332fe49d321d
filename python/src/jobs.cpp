// Models and jobs as library calls (docs/python.md "Models and jobs").
#include "bindings.hpp"

namespace lowbit::python {

void register_jobs(py::module_& m) {}

}  // namespace lowbit::python
