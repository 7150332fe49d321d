// The one MPI world of a process. A process joins Open MPI only when mpirun started it (its
// environment names a rank); a plain run is one rank and needs no launcher. MPI is initialised
// once, on first use, with MPI_THREAD_FUNNELED (OpenMP threads never call MPI), and finalised
// when the process exits. Data-parallel training and sweeps across ranks both use it.
#pragma once

#include <cstdint>

namespace lowbit {

struct mpi_world {
  // The world, initialising MPI on first call when under mpirun.
  static mpi_world& world();
  // Whether mpirun started this process (without initialising anything).
  static bool under_mpirun();
  int rank = 0, size = 1;
  bool root() const { return rank == 0; }
  void allreduce_sum(float* x, int64_t n) const;
  double allreduce_sum(double x) const;
  double allreduce_max(double x) const;
  void barrier() const;
  // Ends every rank (MPI_Abort) when one fails, so the others do not wait forever in a
  // collective; a no-op with one rank.
  void abort(int code) const;
};

}  // namespace lowbit
