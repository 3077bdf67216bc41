// Internal: what process.cpp needs from the start-method machinery
// (context.cpp for spawn, forkserver.cpp for the fork server).
#pragma once
#include <sys/types.h>

#include <optional>

#include "sys/fd.hpp"

namespace mproc::detail {

// posix_spawn of this binary (argv saved by init); the child's init() reads
// its target from child_ctrl.
pid_t spawn_child(int child_ctrl);

struct ServerChild {
  pid_t pid = 0;
  sys::UniqueFd pidfd;   // for signals
  sys::UniqueFd status;  // readable (exit status) once the server reaped it
};
// Asks the fork server (started on demand) for a child that runs what the
// parent then writes on the other end of child_ctrl.
ServerChild forkserver_child(sys::UniqueFd child_ctrl);
// The exit code the server reported on status, or nullopt if not yet.
std::optional<int> forkserver_exit_status(int status_fd);

pid_t forkserver_pid() noexcept;
// Starts the server by fork (init, single-threaded) or by spawn (later).
void start_forkserver_by_fork();
// Closes the server's socket and reaps it (at exit).
void stop_forkserver() noexcept;
[[noreturn]] void forkserver_main(int cmd_fd, pid_t owner);

// Saved by init() for spawn.
bool have_argv() noexcept;

}  // namespace mproc::detail

namespace mproc::detail {
// Re-executes this binary with its socket at fd 3; its init() becomes `role`
// ("spawn" or "forkserver").
pid_t spawn_self(int fd, const char* role);
}  // namespace mproc::detail
