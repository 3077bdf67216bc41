// Internal to src/pool/engine.cpp: what the local pool engine keeps of a worker
// beside the scheduler core's slot (src/pool/scheduler.hpp, which owns the
// tasks, their state machine and the worker's phase: live, retiring,
// doomed). This is the transport: the process, its task socket, its result
// ring and doorbell.
#pragma once
#include <cstdint>

#include "mproc/connection.hpp"
#include "mproc/process.hpp"
#include "pool/scheduler.hpp"
#include "pool/task_arena.hpp"
#include "pool/result_ring.hpp"
#include "sys/fd.hpp"

namespace mproc::detail::engine_state {

using pool::Clock;

struct Worker {
  Process proc;
  Connection conn;      // tasks, engine → worker (the worker shut its side for writing)
  ResultRing ring;      // results, worker → engine
  sys::UniqueFd bell;   // the worker's doorbell (eventfd)
  TaskArena arena;      // large arguments and results (pool/task_arena.hpp)
  Bytes partial;        // the chunks of a large result read so far
  Bytes record;         // the last record read (kept: no allocation per result)
  pid_t pid = 0;
  std::uint64_t records = 0;  // results read: an initializer's failure can only be the first
  bool untrusted = false;     // doomed for a fault: its ring is not read any more
};

}  // namespace mproc::detail::engine_state
