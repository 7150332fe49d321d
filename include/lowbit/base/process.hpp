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

}  // namespace lowbit
