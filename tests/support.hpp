// Test support: leak checks run around every test (see main.cpp), and small
// helpers for fault tests.
#pragma once
#include <sys/types.h>

#include <set>
#include <string>
#include <vector>

namespace mproc::detail {
pid_t forkserver_pid() noexcept;
}

namespace mproc::test {

std::set<int> open_fds();
std::string describe_fd(int fd);
// Direct children of this process (all threads), minus mproc's fork server.
std::vector<pid_t> child_pids();
std::set<std::string> shm_entries();
// For tests that orphan processes on purpose (this process is a subreaper):
// waits up to timeout_ms for every child to end, reaps them, and tells
// whether all did.
// (Waits return as soon as they can: the default bounds are wide so that a
// loaded machine or a sanitizer build does not fail them.)
bool reap_orphans(int timeout_ms = 30000);
// True when pid no longer exists (or is a zombie that nobody will see).
bool pid_gone(pid_t pid);
// Polls until pred() or timeout_ms; returns pred().
template <class Pred>
bool eventually(Pred pred, int timeout_ms = 30000);

}  // namespace mproc::test

#include <chrono>
#include <thread>
template <class Pred>
bool mproc::test::eventually(Pred pred, int timeout_ms) {
  auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return pred();
}

#include <ostream>

#include "mproc/process.hpp"
namespace mproc {
// Readable test names in ctest/gtest output.
inline void PrintTo(StartMethod m, std::ostream* os) { *os << to_string(m); }
}  // namespace mproc
