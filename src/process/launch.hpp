// Internal: how a child learns what to run, and how it reports back.
//
// Every child has a control socket to its parent. Under spawn and forkserver
// the parent first writes a LaunchMessage on it (the target as a FunctionRef
// to a typed entry point + serialized arguments). Whatever the start method,
// a target that throws writes one error frame (ErrorInfo) back before the
// child exits with code 1.
#pragma once
#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>

#include "mproc/function_ref.hpp"
#include "mproc/process.hpp"
#include "mproc/serialize.hpp"

namespace mproc::detail {

struct LaunchMessage {
  std::string name;
  bool daemon = false;
  pid_t parent_pid = 0;
  std::string parent_name;
  FunctionRef entry;
  Bytes payload;
  template <class A>
  void serialize(A& ar) {
    ar(name, daemon, parent_pid, parent_name, entry, payload);
  }
};

// fds travel with the first bytes (SCM_RIGHTS).
void write_launch(int ctrl_fd, const LaunchMessage& msg, std::span<const int> fds);

// Child side. Each sets up the child (death signal, identity), runs the
// target, reports an exception, flushes stdio and _exits.
[[noreturn]] void run_forked_child(int ctrl_fd, pid_t parent, const ProcessInfo& self,
                                   const std::function<void()>& target);
[[noreturn]] void run_launched_child(int ctrl_fd, pid_t parent);

// Writes out what this process's stdio (C and C++ streams) holds. Called
// before every fork, spawn and fork-server request, as CPython flushes
// sys.stdout/sys.stderr: a fork child would print the parent's unwritten
// lines again, and under any method they would come out after the child's.
void flush_stdio() noexcept;

// Kills this process if `parent` is not its parent any more, and arranges
// SIGKILL when the parent dies (closing the fork race).
void die_with_parent(pid_t parent) noexcept;

// Parent side: the error a finished child reported, if any (never blocks).
std::optional<ErrorInfo> read_child_error(int ctrl_fd);

// Identity of this process as current_process()/parent_process() report it.
void set_identity(const ProcessInfo& self, std::optional<ProcessInfo> parent);

}  // namespace mproc::detail
