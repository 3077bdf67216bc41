// Connection round trips and bandwidth, against raw floors measured in this
// same binary: a 1-byte ping-pong over two pipes and over a socketpair, and a
// 64 MiB stream over a socketpair.
//
// Issue 2 target: a small typed object's round trip through mproc::Pipe
// >= 4x faster than CPython's Pipe send/recv and within 1.5x of
// BM_RawPipePingPong.
#include <benchmark/benchmark.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "mproc/connection.hpp"
#include "mproc/process.hpp"

namespace {

constexpr std::size_t kBandwidthSize = std::size_t{64} << 20;

// ---- raw helpers (floors) ---------------------------------------------------
bool write_all(int fd, const void* data, std::size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

// Reads exactly n bytes; false on EOF or error.
bool read_all(int fd, void* data, std::size_t n) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<std::size_t>(r);
  }
  return true;
}

void reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

// Child side of a 1-byte ping-pong: echo until EOF.
[[noreturn]] void raw_echo(int in, int out) {
  char c = 0;
  while (read_all(in, &c, 1) && write_all(out, &c, 1)) {
  }
  ::_exit(0);
}

// Parent side: one warm-up round trip, then the timed loop.
void raw_pingpong(benchmark::State& state, int out, int in) {
  char c = 1;
  if (!write_all(out, &c, 1) || !read_all(in, &c, 1)) {
    state.SkipWithError("raw warm-up round trip failed");
    return;
  }
  for (auto _ : state) {
    if (!write_all(out, &c, 1) || !read_all(in, &c, 1)) {
      state.SkipWithError("raw round trip failed");
      break;
    }
  }
}

// Floor: 1-byte round trip over two pipes between parent and forked child.
void BM_RawPipePingPong(benchmark::State& state) {
  int down[2], up[2];
  if (::pipe(down) != 0 || ::pipe(up) != 0) {
    state.SkipWithError("pipe failed");
    return;
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(down[1]);
    ::close(up[0]);
    raw_echo(down[0], up[1]);
  }
  ::close(down[0]);
  ::close(up[1]);
  raw_pingpong(state, down[1], up[0]);
  ::close(down[1]);  // EOF: the child leaves its loop
  ::close(up[0]);
  reap(pid);
}
BENCHMARK(BM_RawPipePingPong)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Floor: 1-byte round trip over a Unix stream socketpair.
void BM_RawSocketPingPong(benchmark::State& state) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    state.SkipWithError("socketpair failed");
    return;
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    raw_echo(sv[1], sv[1]);
  }
  ::close(sv[1]);
  raw_pingpong(state, sv[0], sv[0]);
  ::close(sv[0]);
  reap(pid);
}
BENCHMARK(BM_RawSocketPingPong)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Floor: 64 MiB over a socketpair, then a 1-byte ack (the child reads into a
// reused 1 MiB buffer: no allocation, no framing).
void BM_RawSocketStream64MiB(benchmark::State& state) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
    state.SkipWithError("socketpair failed");
    return;
  }
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(sv[0]);
    std::vector<char> buf(std::size_t{1} << 20);
    for (;;) {
      for (std::size_t got = 0; got < kBandwidthSize;) {
        ssize_t r = ::read(sv[1], buf.data(), buf.size());
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) ::_exit(0);
        got += static_cast<std::size_t>(r);
      }
      char ack = 'k';
      if (!write_all(sv[1], &ack, 1)) ::_exit(0);
    }
  }
  ::close(sv[1]);
  std::vector<char> data(kBandwidthSize, 3);
  char ack = 0;
  for (auto _ : state) {
    if (!write_all(sv[0], data.data(), data.size()) || !read_all(sv[0], &ack, 1)) {
      state.SkipWithError("raw stream failed");
      break;
    }
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kBandwidthSize));
  ::close(sv[0]);
  reap(pid);
}
BENCHMARK(BM_RawSocketStream64MiB)->UseRealTime()->Unit(benchmark::kMillisecond);

// ---- mproc ------------------------------------------------------------------
mproc::ProcessOptions fork_options() {
  mproc::ProcessOptions o;
  o.start_method = mproc::StartMethod::fork;
  return o;
}
const mproc::ProcessOptions kFork = fork_options();

// Echoes ints until a negative one arrives.
void echo_ints(mproc::Connection& in, mproc::Connection& out) {
  for (;;) {
    int x = in.recv<int>();
    if (x < 0) return;
    out.send(x);
  }
}

// Parent side of the typed ping-pong: warm-up, timed loop, sentinel.
void typed_pingpong(benchmark::State& state, mproc::Connection& out, mproc::Connection& in) {
  out.send(0);
  if (in.recv<int>() != 0) {
    state.SkipWithError("warm-up echo mismatch");
    return;
  }
  int i = 0;
  for (auto _ : state) {
    out.send(i);
    int back = in.recv<int>();
    benchmark::DoNotOptimize(back);
    i = (i + 1) & 0x3fffffff;
  }
}

// A small int through a duplex mproc::Pipe (Python's default Pipe()) to a
// forked child that sends it back.
void BM_PipeRoundTrip(benchmark::State& state, bool duplex) {
  try {
    if (duplex) {
      auto ends = mproc::Pipe(true);
      mproc::Connection parent = std::move(ends.first), child = std::move(ends.second);
      mproc::Process p(kFork, [&parent, &child] {
        parent.close();
        echo_ints(child, child);
      });
      p.start();
      child.close();
      typed_pingpong(state, parent, parent);
      parent.send(-1);
      p.join();
    } else {
      // Two one-way pipes, the same shape as the raw pipe floor.
      auto down = mproc::Pipe(false);  // (reader, writer)
      auto up = mproc::Pipe(false);
      mproc::Process p(kFork, [&] {
        down.second.close();
        up.first.close();
        echo_ints(down.first, up.second);
      });
      p.start();
      down.first.close();
      up.second.close();
      typed_pingpong(state, down.second, up.first);
      down.second.send(-1);
      p.join();
    }
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK_CAPTURE(BM_PipeRoundTrip, duplex, true)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK_CAPTURE(BM_PipeRoundTrip, simplex, false)->UseRealTime()->Unit(benchmark::kMicrosecond);

// 64 MiB through send_bytes to a forked child that answers each message with
// a 1-byte ack (an empty message ends it).
void BM_PipeBandwidth64MiB(benchmark::State& state) {
  try {
    auto ends = mproc::Pipe(true);
    mproc::Connection parent = std::move(ends.first), child = std::move(ends.second);
    mproc::Process p(kFork, [&parent, &child] {
      parent.close();
      for (;;) {
        mproc::Bytes m = child.recv_bytes();
        if (m.empty()) return;
        child.send_bytes("k");
      }
    });
    p.start();
    child.close();
    std::vector<std::byte> data(kBandwidthSize, std::byte{3});
    parent.send_bytes(data);  // warm-up
    (void)parent.recv_bytes();
    for (auto _ : state) {
      parent.send_bytes(data);
      mproc::Bytes ack = parent.recv_bytes();
      benchmark::DoNotOptimize(ack.data());
    }
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(kBandwidthSize));
    parent.send_bytes(std::span<const std::byte>{});
    p.join();
  } catch (const std::exception& e) {
    state.SkipWithError((std::string("exception: ") + e.what()).c_str());
  }
}
BENCHMARK(BM_PipeBandwidth64MiB)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
