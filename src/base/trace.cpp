// The Chrome-trace writer of the pool engine (trace.hpp).
#include "base/trace.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>

#include "mproc/errors.hpp"

namespace mproc::detail {

namespace {
constexpr std::size_t kFlushAt = 64 << 10;
constinit std::atomic<unsigned> g_pools{0};  // pools that opened a trace in this process
// Read at load, never lazily on a fork child's path.
const char* const g_env_path = std::getenv("MPROC_TRACE");

std::string escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

std::string expand(std::string path, unsigned n) {
  bool numbered = false;
  for (std::size_t i = 0; (i = path.find('%', i)) != std::string::npos;) {
    if (i + 1 < path.size() && path[i + 1] == 'p') {
      path.replace(i, 2, std::to_string(::getpid()));
    } else if (i + 1 < path.size() && path[i + 1] == 'n') {
      path.replace(i, 2, std::to_string(n));
      numbered = true;
    } else {
      ++i;
    }
  }
  if (!numbered && n > 1) {
    const auto slash = path.rfind('/');
    auto dot = path.rfind('.');
    if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) dot = path.size();
    path.insert(dot, "-" + std::to_string(n));
  }
  return path;
}
}  // namespace

std::unique_ptr<TraceWriter> TraceWriter::open_for_pool(const std::optional<std::string>& path,
                                                        std::string_view pool) {
  std::string p = path ? *path : (g_env_path && *g_env_path ? g_env_path : "");
  if (p.empty()) return nullptr;
  return std::make_unique<TraceWriter>(std::move(p), pool);
}

TraceWriter::TraceWriter(std::string path, std::string_view pool)
    : pool_id_(g_pools.fetch_add(1, std::memory_order_relaxed) + 1), origin_(Clock::now()) {
  path_ = expand(std::move(path), pool_id_);
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) throw OSError(errno, "open(" + path_ + ") for the task trace");
  buf_ = "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
  event(fmt::format(R"J({{"ph":"M","name":"process_name","pid":{},"args":{{"name":"pool {} (pid {})"}}}})J", pool_id_,
                    escape(pool), ::getpid()));
}

TraceWriter::~TraceWriter() { close(); }

double TraceWriter::us(Clock::time_point t) const {
  return std::chrono::duration<double, std::micro>(t - origin_).count();
}

void TraceWriter::event(std::string_view json) {
  if (fd_ < 0) return;
  if (!first_) buf_ += ",\n";
  first_ = false;
  buf_ += json;
  if (buf_.size() >= kFlushAt) flush();
}

void TraceWriter::flush() {
  std::size_t done = 0;
  while (done < buf_.size()) {
    const ssize_t w = ::write(fd_, buf_.data() + done, buf_.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) break;  // disk full or the like: the trace is cut, the pool goes on
    done += static_cast<std::size_t>(w);
  }
  buf_.clear();
}

void TraceWriter::worker_started(pid_t worker, std::string_view name, Clock::time_point at) {
  event(fmt::format(R"J({{"ph":"M","name":"thread_name","pid":{},"tid":{},"args":{{"name":"{} pid {}"}}}})J", pool_id_,
                    worker, escape(name), worker));
  marker(worker, "worker started", at);
}

void TraceWriter::task(pid_t worker, std::uint64_t task, Clock::time_point begin, Clock::time_point end,
                       std::string_view outcome) {
  const double b = us(begin);
  event(fmt::format(R"J({{"ph":"X","name":"task {}","cat":"task","pid":{},"tid":{},"ts":{:.3f},"dur":{:.3f},)J"
                    R"J("args":{{"task":{},"outcome":"{}"}}}})J",
                    task, pool_id_, worker, b, std::max(0.0, us(end) - b), task, escape(outcome)));
}

void TraceWriter::marker(pid_t worker, std::string_view what, Clock::time_point at) {
  event(fmt::format(R"J({{"ph":"i","s":"t","name":"{}","cat":"worker","pid":{},"tid":{},"ts":{:.3f}}})J", escape(what),
                    pool_id_, worker, us(at)));
}

void TraceWriter::close() {
  if (fd_ < 0) return;
  buf_ += "\n]}\n";
  flush();
  ::close(fd_);
  fd_ = -1;
}

}  // namespace mproc::detail
