#include <sched.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <sstream>

#include "mproc/process.hpp"

namespace mproc {

namespace detail {

std::optional<unsigned> parse_cpu_max(std::string_view text) noexcept {
  auto sp = text.find(' ');
  if (sp == std::string_view::npos) return std::nullopt;
  std::string_view quota = text.substr(0, sp), period = text.substr(sp + 1);
  while (!period.empty() && (period.back() == '\n' || period.back() == ' ')) period.remove_suffix(1);
  if (quota == "max") return std::nullopt;
  unsigned long long q = 0, p = 0;
  if (std::from_chars(quota.data(), quota.data() + quota.size(), q).ec != std::errc{}) return std::nullopt;
  if (std::from_chars(period.data(), period.data() + period.size(), p).ec != std::errc{}) return std::nullopt;
  if (q == 0 || p == 0) return std::nullopt;
  return static_cast<unsigned>((q + p - 1) / p);
}

std::optional<unsigned> cgroup_cpu_limit(const std::string& cgroup_root) {
  std::ifstream cg("/proc/self/cgroup");
  std::string line, path;
  while (std::getline(cg, line))
    if (line.rfind("0::", 0) == 0) path = line.substr(3);
  if (path.empty()) return std::nullopt;
  std::optional<unsigned> best;
  // Every ancestor's quota applies too: take the tightest.
  for (;;) {
    std::ifstream f(cgroup_root + (path == "/" ? "" : path) + "/cpu.max");
    std::stringstream ss;
    if (f) {
      ss << f.rdbuf();
      if (auto n = parse_cpu_max(ss.str()); n && (!best || *n < *best)) best = n;
    }
    if (path == "/" || path.empty()) break;
    auto slash = path.rfind('/');
    path = slash == 0 ? "/" : path.substr(0, slash);
  }
  return best;
}

}  // namespace detail

unsigned cpu_count() {
  unsigned n = 0;
  cpu_set_t* set = CPU_ALLOC(4096);
  const std::size_t size = CPU_ALLOC_SIZE(4096);
  if (set && ::sched_getaffinity(0, size, set) == 0) n = static_cast<unsigned>(CPU_COUNT_S(size, set));
  if (set) CPU_FREE(set);
  if (n == 0) n = static_cast<unsigned>(std::max(1L, ::sysconf(_SC_NPROCESSORS_ONLN)));
  if (auto quota = detail::cgroup_cpu_limit(); quota && *quota < n) n = *quota;
  return n == 0 ? 1 : n;
}

}  // namespace mproc
