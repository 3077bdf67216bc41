// Logging of mproc's lifecycle events, as Python's multiprocessing.
// log_to_stderr() / get_logger(): one line per event (a worker started or
// crashed with its signal, a task sent or timed out, a worker recycled, the
// fork server restarted), each naming the pid and the task id:
//
//   mproc::log_to_stderr(mproc::LogLevel::debug);
//   [DEBUG/MainProcess 4711] pool PoolWorker: task 17 sent to worker pid 4720
//
// Or without changing the program: MPROC_LOG=debug (or info, warning, error,
// off), read when the library loads.
//
// Thread- and fork-safe: the level and the destination are atomics, and a
// line is one write(2) of at most kMaxLine bytes, so lines of concurrent
// processes never interleave and a fork child never waits on a lock.
#pragma once
#include <string_view>

namespace mproc {

enum class LogLevel : int { debug = 10, info = 20, warning = 30, error = 40, off = 100 };

class Logger {
 public:
  static constexpr std::size_t kMaxLine = 1024;  // longer messages are cut

  // Events below `level` are dropped; LogLevel::off (the default) drops all.
  void set_level(LogLevel level) noexcept;
  LogLevel level() const noexcept;
  bool enabled_for(LogLevel level) const noexcept;
  // Where lines go: a file descriptor the caller keeps open (default 2).
  void set_fd(int fd) noexcept;
  // Writes "[LEVEL/process-name pid] message\n" when enabled.
  void log(LogLevel level, std::string_view message) const noexcept;

  void debug(std::string_view m) const noexcept { log(LogLevel::debug, m); }
  void info(std::string_view m) const noexcept { log(LogLevel::info, m); }
  void warning(std::string_view m) const noexcept { log(LogLevel::warning, m); }
  void error(std::string_view m) const noexcept { log(LogLevel::error, m); }
};

// mproc's logger (one per process; children inherit its settings).
Logger& get_logger() noexcept;
// Python's log_to_stderr(level): sends mproc's events to stderr from `level` up.
Logger& log_to_stderr(LogLevel level = LogLevel::info) noexcept;
// "debug", "info", "warning", "error", "off" (any case); nullopt-like `off` for others.
LogLevel parse_log_level(std::string_view name) noexcept;

}  // namespace mproc
