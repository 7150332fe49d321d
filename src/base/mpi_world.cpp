#include "lowbit/base/mpi_world.hpp"

#include <mpi.h>

#include <algorithm>
#include <cstdlib>

#include "lowbit/base/error.hpp"

namespace lowbit {

namespace {
struct mpi_guard {
  bool initialized = false;
  ~mpi_guard() {
    int finalized = 0;
    if (initialized && MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
  }
};
}  // namespace

bool mpi_world::under_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK") ||
         std::getenv("PMI_SIZE");
}

mpi_world& mpi_world::world() {
  static mpi_guard guard;
  static mpi_world w = [] {
    mpi_world d;
    if (!under_mpirun()) return d;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        throw error("MPI_Init_thread failed");
      guard.initialized = true;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &d.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &d.size);
    return d;
  }();
  return w;
}

void mpi_world::allreduce_sum(float* x, int64_t n) const {
  if (size == 1) return;
  for (int64_t off = 0; off < n; off += int64_t(1) << 30) {
    const int count = static_cast<int>(std::min<int64_t>(n - off, int64_t(1) << 30));
    MPI_Allreduce(MPI_IN_PLACE, x + off, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  }
}

double mpi_world::allreduce_max(double x) const {
  if (size == 1) return x;
  double out = 0;
  MPI_Allreduce(&x, &out, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
  return out;
}

double mpi_world::allreduce_sum(double x) const {
  if (size == 1) return x;
  double out = 0;
  MPI_Allreduce(&x, &out, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  return out;
}

void mpi_world::barrier() const {
  if (size > 1) MPI_Barrier(MPI_COMM_WORLD);
}

void mpi_world::abort(int code) const {
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace lowbit
