// The pool engine's log lines and trace spans (engine_events.hpp).
#include "pool/engine_events.hpp"

#include <fmt/format.h>
#include <signal.h>
#include <string.h>

#include "mproc/log.hpp"

namespace mproc::detail {

namespace {
using Clock = std::chrono::steady_clock;

std::string describe_exit(int exitcode) {
  if (exitcode < 0) {
    const char* name = ::sigabbrev_np(-exitcode);
    return fmt::format("signal {} (SIG{})", -exitcode, name ? name : "?");
  }
  return fmt::format("status {}", exitcode);
}
}  // namespace

EngineEvents::EngineEvents(std::string pool, std::size_t workers, const std::optional<std::string>& trace_file)
    : pool_(std::move(pool)), pids_(workers), trace_(TraceWriter::open_for_pool(trace_file, pool_)) {
  if (trace_) get_logger().info(fmt::format("pool {}: task trace in {}", pool_, trace_->path()));
}

EngineEvents::~EngineEvents() { close(); }

void EngineEvents::close() {
  if (trace_) trace_->close();
}

void EngineEvents::worker_started(pool::WorkerId slot, pid_t pid, std::string_view name, bool respawn) {
  if (slot < pids_.size()) pids_[slot] = pid;
  const Logger& log = get_logger();
  if (log.enabled_for(LogLevel::info))
    log.info(fmt::format("pool {}: worker {} started (pid {}){}", pool_, name, pid, respawn ? ", a replacement" : ""));
  if (trace_) trace_->worker_started(pid, name, Clock::now());
}

void EngineEvents::tasks_sent(pool::WorkerId slot, const std::deque<pool::InFlight>& flight, std::size_t first) {
  const Logger& log = get_logger();
  if (!log.enabled_for(LogLevel::debug)) return;
  for (std::size_t k = first; k < flight.size(); ++k)
    log.debug(fmt::format("pool {}: task {} sent to worker pid {}", pool_, flight[k].task.state->id, pid_of(slot)));
}

void EngineEvents::task_ended(pool::WorkerId slot, const pool::InFlight& task, std::string_view outcome) {
  const Logger& log = get_logger();
  const std::uint64_t id = task.task.state->id;
  if (log.enabled_for(LogLevel::debug))
    log.debug(fmt::format("pool {}: task {} ended ({}) on worker pid {}", pool_, id, outcome, pid_of(slot)));
  if (trace_) {
    const auto now = Clock::now();
    trace_->task(pid_of(slot), id, task.started == Clock::time_point{} ? now : task.started, now, outcome);
  }
}

void EngineEvents::worker_died(pool::WorkerId slot, int exitcode, std::uint64_t running, bool retiring,
                               bool doomed) {
  const Logger& log = get_logger();
  const pid_t pid = pid_of(slot);
  if (retiring && exitcode == 0) {
    if (log.enabled_for(LogLevel::info)) log.info(fmt::format("pool {}: worker pid {} recycled", pool_, pid));
    if (trace_) trace_->marker(pid, "recycled", Clock::now());
    return;
  }
  if (doomed) {  // killed by the engine: the timeout or fault was logged already
    if (log.enabled_for(LogLevel::debug))
      log.debug(fmt::format("pool {}: worker pid {} killed, {}", pool_, pid, describe_exit(exitcode)));
    return;
  }
  if (log.enabled_for(LogLevel::warning)) {
    if (running != 0)
      log.warning(fmt::format("pool {}: worker pid {} crashed with {} while running task {}", pool_, pid,
                              describe_exit(exitcode), running));
    else
      log.warning(fmt::format("pool {}: worker pid {} died with {} between tasks", pool_, pid, describe_exit(exitcode)));
  }
  if (trace_) trace_->marker(pid, "crashed: " + describe_exit(exitcode), Clock::now());
}

void EngineEvents::task_timed_out(pool::WorkerId slot, std::uint64_t task, std::chrono::nanoseconds limit) {
  const Logger& log = get_logger();
  if (log.enabled_for(LogLevel::warning))
    log.warning(fmt::format("pool {}: task {} timed out after {} ms on worker pid {}; killing the worker", pool_,
                            task, std::chrono::duration<double, std::milli>(limit).count(), pid_of(slot)));
  if (trace_) trace_->marker(pid_of(slot), "timeout: task " + std::to_string(task), Clock::now());
}

void EngineEvents::worker_fault(pool::WorkerId slot, std::string_view what) {
  const Logger& log = get_logger();
  if (log.enabled_for(LogLevel::warning))
    log.warning(fmt::format("pool {}: worker pid {} broke the protocol ({}); killing it", pool_, pid_of(slot), what));
  if (trace_) trace_->marker(pid_of(slot), "worker fault", Clock::now());
}

}  // namespace mproc::detail
