// shared layer (internal): the Queue's fault-injection hook, for the fault
// tests (tests/shared/test_queues.cpp); kept out of the public headers
// (issue 15). Defined in queues.cpp.
#pragma once

namespace mproc::detail {

// Called at "put:before-commit" and "get:before-commit", with the queue's
// lock held, and at "get:after-commit" (a large message copied out, its slot
// still held, no lock) (fault tests stop or kill a process there).
using QueueFaultHook = void (*)(const char* where);
void set_queue_fault_hook(QueueFaultHook hook) noexcept;

}  // namespace mproc::detail
