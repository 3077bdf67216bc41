// sys layer (internal): pidfds. A pidfd names one process for good (no pid
// reuse race), polls readable when it ends, and can be signalled and reaped.
#pragma once
#include <sys/types.h>

#include <optional>

#include "sys/fd.hpp"

namespace mproc::sys {

UniqueFd pidfd_open(pid_t pid);
// False when the process is already gone.
bool pidfd_signal(int pidfd, int sig);
// Reaps the child behind pidfd without blocking: its exit code (negative
// signal number when killed by one), or nullopt while it runs.
std::optional<int> pidfd_try_reap(int pidfd);
// A waitpid() status as Python's exitcode.
int exitcode_from_status(int status) noexcept;

}  // namespace mproc::sys
