// Format analysis of van Baalen et al. 2023 / Kuzmin et al. 2022 (docs/analysis.md §5.1): the SQNR of an
// element grid on a unit-variance density, with the clipping value chosen optimally, computed by
// integrating the squared error over the density cell by cell (not by sampling).
#pragma once

#include <string>
#include <string_view>

#include "lowbit/formats/element.hpp"

namespace lowbit {

enum class density_kind { gaussian, laplace, student_t, uniform };

struct density {
  density_kind kind = density_kind::gaussian;
  double nu = 3;  // student_t degrees of freedom (> 2, so the variance exists)
};

// "gaussian" | "laplace" | "student-t:NU" | "uniform"; throws lowbit::error otherwise.
density parse_density(std::string_view name);
std::string density_name(const density& d);

struct sqnr_result {
  double sqnr_db = 0;  // 10 log10(E[x^2] / MSE) at the optimal clip (E[x^2] = 1)
  double clip = 0;     // the clipping value c: the grid's largest magnitude is scaled to c
  double mse = 0;      // the MSE at that clip
};

// MSE of the grid scaled so that its largest magnitude equals `clip`, round-to-nearest cells
// (midpoint thresholds; the outermost cells extend to +-inf), on the unit-variance density.
double grid_mse(const element_format& e, const density& d, double clip);

// Minimises grid_mse over the clip (a grid search over log2(clip), then refinement).
sqnr_result analyze_sqnr(const element_format& e, const density& d);

}  // namespace lowbit
