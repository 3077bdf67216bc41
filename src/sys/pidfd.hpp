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

// Parent pid of pid (field 4 of /proc/<pid>/stat), or 0 when unknown.
pid_t parent_of(pid_t pid);
// Whether `up` is `down` itself or one of its ancestors, walking at most 64
// generations up from `down`. Used to accept a peer's fd handle only from a
// relative (an unrelated local process is not trusted).
bool is_self_or_ancestor(pid_t up, pid_t down);

}  // namespace mproc::sys
