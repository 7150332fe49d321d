// Running another program (the plotting scripts) without a shell: the arguments go to the child
// as they are, so no path or name can be read as shell syntax.
#pragma once

#include <string>
#include <vector>

namespace lowbit {

// Runs argv[0] (a path, or a name looked up in PATH) with arguments argv[1..], its standard
// output and error appended to `log_path` ("/dev/null" discards them), and waits for it. Returns
// its exit status, 128 + the signal when a signal ended it, or 127 when it could not be started.
int run_program(const std::vector<std::string>& argv, const std::string& log_path = "/dev/null");

// Bounds how long OpenMP's idle team threads spin before they sleep, for every parallel loop,
// kernel and OpenBLAS GEMM of the process (OpenBLAS is the OpenMP build, one libgomp). libgomp spins
// GOMP_SPINCOUNT = 300000 rounds (milliseconds) by default after each parallel region; when other
// processes keep the cores busy, those spinning threads take the time slices the working thread
// needs (stories15M eval fell from 892 to 164 tokens/s under two busy processes). libgomp reads its
// environment once, when it is loaded, before main: so when neither OMP_WAIT_POLICY nor
// GOMP_SPINCOUNT is set, this sets GOMP_SPINCOUNT=kOpenmpSpinCount and starts the program anew
// (execv of /proc/self/exe, same pid, same arguments; LOWBIT_OPENMP_SETTLED marks the second start).
// A user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT is left as it is. Returns only when no restart
// happened (already settled, user setting, or execv failed). docs/architecture.md §17b.
inline constexpr const char* kOpenmpSpinCount = "10000";
void settle_openmp_waiting(char** argv);

}  // namespace lowbit
