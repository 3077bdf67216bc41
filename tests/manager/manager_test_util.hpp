// Helpers shared by the Manager test files.
#pragma once
#include <gtest/gtest.h>

#include <stdexcept>

#include "mproc/process.hpp"

// A check inside a child process: a failure throws, so the parent sees it as
// the child's exception and a non-zero exit code.
#define CHILD_CHECK(cond)                                                    \
  do {                                                                       \
    if (!(cond)) throw std::runtime_error("child check failed: " #cond);     \
  } while (0)

namespace managertest {

// Joins p and fails the test unless it exited 0, showing the child's error.
inline void expect_clean_exit(mproc::Process& p) {
  p.join();
  ASSERT_EQ(p.exitcode(), 0) << (p.exception() ? p.exception()->what() : "no exception");
}

// Runs fn(args...) in a child with the default start method (forkserver, so
// the proxies are serialized) and expects a clean exit.
template <class F, class... A>
void run_child(F fn, A... args) {
  mproc::Process p(fn, args...);
  p.start();
  expect_clean_exit(p);
}

}  // namespace managertest
