// Pipe ping-pong: the parent and a child process bounce a typed message over
// an mproc::Pipe and the parent prints the round-trip time.
//
//   ./pipe_ping [rounds]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "mproc/mproc.hpp"

namespace {

struct Ping {  // trivially copyable: sent as its bytes, no user code needed
  long seq;
  double payload[4];
};

struct Report {  // a user type: adds cereal's serialize()
  std::string who;
  long handled = 0;
  template <class A>
  void serialize(A& ar) {
    ar(who, handled);
  }
};

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  const long rounds = argc > 1 ? std::atol(argv[1]) : 100000;

  auto [parent_end, child_end] = mproc::Pipe();
  mproc::ProcessOptions options;
  options.name = "ponger";
  options.start_method = mproc::StartMethod::fork;  // the child inherits the Connection
  mproc::Process child(options, [&parent_end, &child_end] {
    parent_end.close();
    long handled = 0;
    try {
      for (;;) {
        Ping p = child_end.recv<Ping>();
        if (p.seq < 0) break;  // the parent says stop
        p.payload[0] += 1;
        child_end.send(p);
        ++handled;
      }
    } catch (const mproc::ConnectionClosed&) {
      // the parent went away
    }
    child_end.send(Report{mproc::current_process().name, handled});
  });
  child.start();
  child_end.close();  // so that a dead child reads as end of file here

  // Warm up, then time `rounds` round trips.
  for (long i = 0; i < 1000; ++i) {
    parent_end.send(Ping{i, {}});
    (void)parent_end.recv<Ping>();
  }
  const auto t0 = std::chrono::steady_clock::now();
  Ping p{0, {}};
  for (long i = 0; i < rounds; ++i) {
    p.seq = i;
    parent_end.send(p);
    p = parent_end.recv<Ping>();
  }
  const auto elapsed = std::chrono::steady_clock::now() - t0;
  parent_end.send(Ping{-1, {}});
  Report report = parent_end.recv<Report>();
  child.join();

  const double us = std::chrono::duration<double, std::micro>(elapsed).count() / static_cast<double>(rounds);
  std::printf("pipe_ping: %ld round trips of a %zu-byte typed message\n", rounds, sizeof(Ping));
  std::printf("  mean round trip: %.2f us (%.0f round trips/s)\n", us, 1e6 / us);
  std::printf("  %s (pid %d) answered %ld pings, exit code %d; payload check %s\n", report.who.c_str(),
              static_cast<int>(child.pid()), report.handled, child.exitcode().value_or(-1),
              p.payload[0] == static_cast<double>(rounds) ? "ok" : "FAILED");
  return child.exitcode() == 0 && p.payload[0] == static_cast<double>(rounds) ? 0 : 1;
}
