// mproc's logger: constant-initialised atomics and one write(2) per line, so
// that it may be called from a fork child, a signal-free worker loop or any
// thread without a lock (see log.hpp).
#include "mproc/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "base/log_identity.hpp"

namespace mproc {

namespace {
constinit std::atomic<int> g_level{static_cast<int>(LogLevel::off)};
constinit std::atomic<int> g_fd{2};
constinit Logger g_logger{};
// The process name of the lines (log_identity.hpp). Written only by
// set_identity, before the process runs user code: fixed storage, so log()
// neither allocates nor locks for it.
constinit char g_name[128] = "MainProcess";

const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::debug: return "DEBUG";
    case LogLevel::info: return "INFO";
    case LogLevel::warning: return "WARNING";
    case LogLevel::error: return "ERROR";
    case LogLevel::off: break;
  }
  return "LOG";
}

// MPROC_LOG is read when the library loads, never lazily on a child's path.
[[maybe_unused]] const bool g_from_env = [] {
  if (const char* e = std::getenv("MPROC_LOG")) g_level.store(static_cast<int>(parse_log_level(e)));
  return true;
}();
}  // namespace

LogLevel parse_log_level(std::string_view name) noexcept {
  std::string n(name.substr(0, 16));
  std::transform(n.begin(), n.end(), n.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (n == "debug" || n == "1") return LogLevel::debug;
  if (n == "info") return LogLevel::info;
  if (n == "warning" || n == "warn") return LogLevel::warning;
  if (n == "error") return LogLevel::error;
  return LogLevel::off;
}

// Relaxed throughout: the level and the fd are independent settings read on
// their own; no other memory is published through them.
void Logger::set_level(LogLevel level) noexcept { g_level.store(static_cast<int>(level), std::memory_order_relaxed); }
LogLevel Logger::level() const noexcept { return static_cast<LogLevel>(g_level.load(std::memory_order_relaxed)); }
bool Logger::enabled_for(LogLevel level) const noexcept {
  return level != LogLevel::off && static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}
void Logger::set_fd(int fd) noexcept { g_fd.store(fd, std::memory_order_relaxed); }

void Logger::log(LogLevel level, std::string_view message) const noexcept {
  if (!enabled_for(level)) return;
  char line[kMaxLine];
  std::size_t n = 0;
  auto put = [&](std::string_view s) {
    const std::size_t k = std::min(s.size(), sizeof line - 1 - n);  // keep room for '\n'
    std::memcpy(line + n, s.data(), k);
    n += k;
  };
  const int saved_errno = errno;
  put("[");
  put(level_name(level));
  put("/");
  put(g_name);
  put(" ");
  put(std::to_string(::getpid()));
  put("] ");
  put(message);
  line[n++] = '\n';
  (void)!::write(g_fd.load(std::memory_order_relaxed), line, n);
  errno = saved_errno;
}

void detail::set_log_process_name(std::string_view name) noexcept {
  const std::size_t n = std::min(name.size(), sizeof g_name - 1);
  std::memcpy(g_name, name.data(), n);
  g_name[n] = '\0';
}

Logger& get_logger() noexcept { return g_logger; }

Logger& log_to_stderr(LogLevel level) noexcept {
  g_logger.set_fd(2);
  g_logger.set_level(level);
  return g_logger;
}

}  // namespace mproc
