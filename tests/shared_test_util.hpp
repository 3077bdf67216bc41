// Helpers for the shared-state tests (shared memory, locks, Value/Array,
// queues): start-method parameters and a hang guard for joins.
#pragma once
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "mproc/process.hpp"

namespace sharedtest {

using namespace std::chrono_literals;
using mproc::StartMethod;

inline mproc::ProcessOptions with(StartMethod m) {
  mproc::ProcessOptions o;
  o.start_method = m;
  return o;
}

inline std::string method_name(const testing::TestParamInfo<StartMethod>& info) {
  return std::string(mproc::to_string(info.param));
}

// Joins with a generous hang guard; kills (and fails) a child that hangs.
inline void join_ok(mproc::Process& p, std::chrono::seconds guard = 60s) {
  if (!p.join(guard)) {
    ADD_FAILURE() << "child " << p.pid() << " still running after " << guard.count() << " s (hang)";
    p.kill();
    p.join();
    return;
  }
  EXPECT_EQ(p.exitcode(), 0) << "child " << p.pid();
}

}  // namespace sharedtest

#define MPROC_ALL_METHODS                                                                                  \
  testing::Values(mproc::StartMethod::fork, mproc::StartMethod::spawn, mproc::StartMethod::forkserver), \
      sharedtest::method_name
