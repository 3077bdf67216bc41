// Connection / Pipe: typed and raw messages, every bad-input case, peers that
// close or die, poll and wait.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <variant>
#include <vector>

#include "mproc/connection.hpp"
#include "mproc/context.hpp"
#include "mproc/process.hpp"
#include "mproc/serialize.hpp"  // sends a std::variant
#include "ipc/connection_test_util.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Connection;
using Clock = std::chrono::steady_clock;

struct Pod {  // trivially copyable, no serialize(): copied as bytes
  int a;
  double b;
  char c[4];
  bool operator==(const Pod&) const = default;
};

struct User {  // user type with cereal's serialize()
  std::string name;
  std::vector<int> values;
  std::map<std::string, double> scores;
  template <class A>
  void serialize(A& ar) {
    ar(name, values, scores);
  }
  bool operator==(const User&) const = default;
};

mproc::ProcessOptions forked() {
  mproc::ProcessOptions o;  // (a designated initializer warns under -Wextra)
  o.start_method = mproc::StartMethod::fork;
  return o;
}

using connectiontest::header;  // a raw frame header, as a hostile or broken peer writes it

void raw_write(int fd, const void* p, std::size_t n) { ASSERT_EQ(::write(fd, p, n), static_cast<ssize_t>(n)); }
void raw_write(int fd, const std::vector<unsigned char>& v) { raw_write(fd, v.data(), v.size()); }

std::string as_string(const mproc::Bytes& b) { return std::string(reinterpret_cast<const char*>(b.data()), b.size()); }

template <class T>
void expect_round_trip(Connection& tx, Connection& rx, const T& value) {
  tx.send(value);
  EXPECT_EQ(rx.recv<T>(), value);
}

TEST(Connection, RoundTripsStandardAndUserTypes) {
  auto [a, b] = mproc::Pipe();
  expect_round_trip(a, b, 42);
  expect_round_trip(a, b, -1.5);
  expect_round_trip(a, b, std::string("hello, world"));
  expect_round_trip(a, b, std::string());
  expect_round_trip(a, b, std::vector<double>{1.0, 2.5, -3.25});
  expect_round_trip(a, b, std::map<std::string, int>{{"a", 1}, {"b", 2}});
  expect_round_trip(a, b, std::tuple<int, std::string, double>{7, "seven", 7.7});
  expect_round_trip(a, b, std::optional<int>{5});
  expect_round_trip(a, b, std::optional<int>{});
  expect_round_trip(a, b, std::variant<int, std::string>{std::string("alt")});
  expect_round_trip(a, b, Pod{1, 2.0, {'x', 'y', 'z', '\0'}});
  expect_round_trip(b, a, User{"ann", {1, 2, 3}, {{"math", 9.5}}});  // the other direction
  EXPECT_FALSE(a.poll());
  EXPECT_FALSE(b.poll());
}

TEST(Connection, RoundTripAcrossProcessesWithLargeMessage) {
  auto [parent, child] = mproc::Pipe();
  mproc::Process p(forked(), [&parent, &child] {
    parent.close();
    for (;;) {
      try {
        child.send(child.recv<User>());
      } catch (const mproc::ConnectionClosed&) {
        return;
      }
    }
  });
  p.start();
  child.close();
  User small{"bob", {4, 5}, {}};
  parent.send(small);
  EXPECT_EQ(parent.recv<User>(), small);
  User big{"big", std::vector<int>(4 << 20, 7), {}};  // 16 MiB: more than the socket buffers
  std::thread sender([&] { parent.send(big); });
  User back = parent.recv<User>();
  sender.join();
  EXPECT_EQ(back, big);
  parent.close();
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(Connection, SendBytesWithOffsetAndSize) {
  auto [a, b] = mproc::Pipe();
  const std::string text = "0123456789";
  auto bytes = std::as_bytes(std::span(text.data(), text.size()));
  a.send_bytes(bytes, 2, 5);
  EXPECT_EQ(as_string(b.recv_bytes()), "23456");
  a.send_bytes(bytes, 7);
  EXPECT_EQ(as_string(b.recv_bytes()), "789");
  a.send_bytes(bytes, 10);  // empty message at the very end
  EXPECT_TRUE(b.recv_bytes().empty());
  a.send_bytes("plain string");
  EXPECT_EQ(as_string(b.recv_bytes()), "plain string");
  EXPECT_THROW(a.send_bytes(bytes, 11), mproc::ValueError);
  EXPECT_THROW(a.send_bytes(bytes, 4, 7), mproc::ValueError);
  EXPECT_FALSE(b.poll());  // nothing was sent by the refused calls
}

TEST(Connection, LargeRawBytesInOrder) {
  auto [a, b] = mproc::Pipe();
  std::vector<std::byte> big(1 << 20);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<std::byte>(i * 31);
  std::thread t([&] {
    a.send_bytes(big);
    a.send(1);
  });
  EXPECT_EQ(b.recv_bytes(), big);
  EXPECT_EQ(b.recv<int>(), 1);
  t.join();
}

TEST(Connection, RecvBytesInto) {
  auto [a, b] = mproc::Pipe();
  std::vector<std::byte> buf(16, std::byte{'.'});
  a.send_bytes("hello");
  EXPECT_EQ(b.recv_bytes_into(buf, 4), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), buf.size()), "....hello.......");

  a.send_bytes("this message has 26 bytes");
  try {
    b.recv_bytes_into(buf, 4);
    FAIL() << "expected MessageTooLarge";
  } catch (const mproc::MessageTooLarge& e) {
    EXPECT_EQ(e.size(), 25u);
    EXPECT_EQ(e.limit(), 12u);
  }
  EXPECT_TRUE(b.has_pending());
  EXPECT_TRUE(b.poll());
  std::vector<std::byte> larger(32);
  EXPECT_EQ(b.recv_bytes_into(larger), 25u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(larger.data()), 25), "this message has 26 bytes");
  EXPECT_FALSE(b.has_pending());
  EXPECT_THROW(b.recv_bytes_into(buf, 17), mproc::ValueError);
}

TEST(Connection, MaxLengthThenStillReadable) {
  auto [a, b] = mproc::Pipe();
  std::string msg(100, 'z');
  a.send_bytes(msg);
  a.send(2);
  try {
    b.recv_bytes(10);
    FAIL() << "expected MessageTooLarge";
  } catch (const mproc::MessageTooLarge& e) {
    EXPECT_EQ(e.size(), 100u);
    EXPECT_EQ(e.limit(), 10u);
  }
  EXPECT_TRUE(b.has_pending());
  std::error_code ec;
  b.set_max_message_size(50);
  EXPECT_TRUE(b.recv_bytes(ec).empty());
  EXPECT_EQ(ec, std::errc::message_size);
  b.set_max_message_size(Connection::kDefaultMaxMessageSize);
  EXPECT_EQ(as_string(b.recv_bytes(100)), msg);
  EXPECT_EQ(b.recv<int>(), 2);  // the stream is still in step
}

TEST(Connection, TypeMismatchKeepsMessagePending) {
  auto [a, b] = mproc::Pipe();
  a.send(std::string("text"));
  try {
    (void)b.recv<std::vector<int>>();
    FAIL() << "expected TypeMismatch";
  } catch (const mproc::TypeMismatch& e) {
    EXPECT_NE(std::string(e.what()).find("std::vector<int"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)b.recv<int>(), mproc::TypeMismatch);
  EXPECT_EQ(b.recv<std::string>(), "text");

  a.send_bytes("raw");
  try {
    (void)b.recv<int>();
    FAIL() << "expected TypeMismatch";
  } catch (const mproc::TypeMismatch& e) {
    EXPECT_NE(std::string(e.what()).find("raw bytes"), std::string::npos) << e.what();
  }
  EXPECT_EQ(as_string(b.recv_bytes()), "raw");  // recv_bytes takes any message
}

TEST(Connection, GarbageIsProtocolErrorAndStaysBroken) {
  auto [a, b] = mproc::Pipe();
  raw_write(b.fileno(), "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
  try {
    (void)a.recv_bytes();
    FAIL() << "expected ProtocolError";
  } catch (const mproc::MessageTooLarge&) {
    FAIL() << "garbage must not be read as a length";
  } catch (const mproc::ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("47 45 54"), std::string::npos) << e.what();  // "GET"
  }
  b.send(1);  // a valid frame cannot resynchronise the stream
  EXPECT_THROW((void)a.recv<int>(), mproc::ProtocolError);
  std::error_code ec;
  (void)a.recv_bytes(ec);
  EXPECT_EQ(ec, std::errc::bad_message);
  EXPECT_TRUE(a.poll());  // ready: a recv answers at once
}

TEST(Connection, HugeLengthRefusedBeforeAllocation) {
  auto [a, b] = mproc::Pipe();
  const std::uint64_t huge = std::uint64_t{1} << 62;
  raw_write(b.fileno(), header(Connection::kMagic, 0, huge));
  auto t0 = Clock::now();
  try {
    (void)a.recv_bytes();
    FAIL() << "expected MessageTooLarge";
  } catch (const mproc::MessageTooLarge& e) {
    EXPECT_EQ(e.size(), huge);
    EXPECT_EQ(e.limit(), Connection::kDefaultMaxMessageSize);
  }
  EXPECT_THROW((void)a.recv<int>(), mproc::MessageTooLarge);
  EXPECT_LT(Clock::now() - t0, 10s);  // refused, not read: wide for load
  // Nothing but the header is on the socket, yet the pending frame is ready.
  EXPECT_TRUE(a.has_pending());
  EXPECT_TRUE(a.poll());
  auto ready = mproc::wait({a, b}, 0ns);
  EXPECT_EQ(ready, std::vector<std::size_t>{0});
}

TEST(Connection, TruncatedFrame) {
  auto [a, b] = mproc::Pipe();
  raw_write(b.fileno(), header(Connection::kMagic, 0, 100));
  raw_write(b.fileno(), "0123456789", 10);
  b.close();
  try {
    (void)a.recv_bytes();
    FAIL() << "expected TruncatedMessage";
  } catch (const mproc::TruncatedMessage& e) {
    EXPECT_EQ(e.received(), 10u);
    EXPECT_EQ(e.expected(), 100u);
  }
  try {
    (void)a.recv_bytes();
    FAIL() << "expected ConnectionClosed";
  } catch (const mproc::TruncatedMessage&) {
    FAIL() << "the next read is a clean end of file";
  } catch (const mproc::ConnectionClosed&) {
  }
}

TEST(Connection, TruncatedHeader) {
  auto [a, b] = mproc::Pipe();
  raw_write(b.fileno(), header(Connection::kMagic, 0, 4).data(), 7);
  b.close();
  try {
    (void)a.recv<int>();
    FAIL() << "expected TruncatedMessage";
  } catch (const mproc::TruncatedMessage& e) {
    EXPECT_EQ(e.received(), 7u);
    EXPECT_EQ(e.expected(), Connection::kHeaderSize);
  }
}

TEST(Connection, EndOfFileIsConnectionClosed) {
  auto [a, b] = mproc::Pipe();
  b.send(3);
  b.close();
  EXPECT_EQ(a.recv<int>(), 3);  // what was sent before the close still arrives
  EXPECT_TRUE(a.poll());        // EOF counts as ready
  try {
    (void)a.recv<int>();
    FAIL() << "expected ConnectionClosed";
  } catch (const mproc::TruncatedMessage&) {
    FAIL() << "EOF at a message boundary is not a truncation";
  } catch (const mproc::ConnectionClosed& e) {
    EXPECT_NE(std::string(e.what()).find("closed"), std::string::npos) << e.what();
  }
  std::error_code ec;
  EXPECT_TRUE(a.recv_bytes(ec).empty());
  EXPECT_EQ(ec, std::errc::connection_reset);
}

TEST(Connection, PeerProcessExitsMidMessage) {
  auto [a, b] = mproc::Pipe();
  mproc::Process p(forked(), [&a, &b] {
    a.close();
    auto h = header(Connection::kMagic, 0, 1000);
    (void)!::write(b.fileno(), h.data(), h.size());
    (void)!::write(b.fileno(), "half", 4);
    ::_exit(0);
  });
  p.start();
  b.close();
  EXPECT_THROW((void)a.recv_bytes(), mproc::ConnectionClosed);
  p.join();
}

TEST(Connection, PeerProcessKilledMidMessage) {
  auto [a, b] = mproc::Pipe();
  mproc::Process p(forked(), [&a, &b] {
    a.close();
    auto h = header(Connection::kMagic, 0, 1000);
    (void)!::write(b.fileno(), h.data(), 8);
    for (;;) ::pause();
  });
  p.start();
  b.close();
  ASSERT_TRUE(a.poll(5s));  // the half header is there; the child is still alive
  p.kill();
  try {
    (void)a.recv_bytes();
    FAIL() << "expected ConnectionClosed";
  } catch (const mproc::TruncatedMessage& e) {
    EXPECT_EQ(e.received(), 8u);
    EXPECT_EQ(e.expected(), Connection::kHeaderSize);
  }
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
}

TEST(Connection, PollTimesOutThenSeesData) {
  auto [a, b] = mproc::Pipe();
  auto t0 = Clock::now();
  EXPECT_FALSE(a.poll(100ms));
  auto waited = Clock::now() - t0;
  EXPECT_GE(waited, 90ms);
  EXPECT_LT(waited, 10s);  // a hang guard: load can delay the wake-up
  EXPECT_FALSE(a.poll());  // default: no wait

  std::thread t([&b] {
    std::this_thread::sleep_for(100ms);
    b.send(9);
  });
  t0 = Clock::now();
  EXPECT_TRUE(a.poll(30s));
  EXPECT_LT(Clock::now() - t0, 20s);  // woken by the data, not the 30 s timeout
  t.join();
  EXPECT_EQ(a.recv<int>(), 9);
  EXPECT_FALSE(a.poll(0ns));
}

TEST(Connection, WaitOverConnectionsAndSentinel) {
  auto [a1, b1] = mproc::Pipe();
  auto [a2, b2] = mproc::Pipe();
  auto [a3, b3] = mproc::Pipe();
  auto t0 = Clock::now();
  EXPECT_TRUE(mproc::wait({a1, a2, a3}, 50ms).empty());
  EXPECT_GE(Clock::now() - t0, 45ms);

  b2.send(2);
  b3.send_bytes("3");
  EXPECT_EQ(mproc::wait({a1, a2, a3}, 1s), (std::vector<std::size_t>{1, 2}));
  (void)a2.recv<int>();
  EXPECT_EQ(mproc::wait({a1, a2, a3}), (std::vector<std::size_t>{2}));

  std::vector<mproc::Waitable> objs{a1, a2};
  b1.close();  // EOF is ready too
  EXPECT_EQ(mproc::wait(objs, 1s), (std::vector<std::size_t>{0}));
  EXPECT_THROW(mproc::wait({mproc::Waitable(-1)}, 0ns), mproc::Error);

  mproc::Process p(forked(), [] { std::this_thread::sleep_for(50ms); });
  p.start();
  EXPECT_EQ(mproc::wait({a2, p}, 10s), (std::vector<std::size_t>{1}));
  p.join();
}

TEST(Pipe, OneWayDirections) {
  auto [r, w] = mproc::Pipe(false);
  EXPECT_TRUE(r.readable());
  EXPECT_FALSE(r.writable());
  EXPECT_FALSE(w.readable());
  EXPECT_TRUE(w.writable());
  w.send(std::string("one way"));
  EXPECT_EQ(r.recv<std::string>(), "one way");
  try {
    r.send(1);
    FAIL() << "expected mproc::Error";
  } catch (const mproc::Error& e) {
    EXPECT_NE(std::string(e.what()).find("read-only"), std::string::npos) << e.what();
  }
  try {
    (void)w.recv<int>();
    FAIL() << "expected mproc::Error";
  } catch (const mproc::Error& e) {
    EXPECT_NE(std::string(e.what()).find("recv on a write-only connection"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)w.poll(), mproc::Error);
  EXPECT_THROW(w.recv_bytes(), mproc::Error);
  std::error_code ec;
  (void)w.recv_bytes(ec);
  EXPECT_EQ(ec, std::errc::operation_not_permitted);
  // A raw write on the reader's socket fails: the direction is enforced by the kernel.
  EXPECT_LT(::send(r.fileno(), "x", 1, MSG_NOSIGNAL), 0);
  w.close();
  EXPECT_THROW((void)r.recv<int>(), mproc::ConnectionClosed);
}

TEST(Pipe, SendToClosedPeerThrowsWithoutSigpipe) {
  {
    auto [a, b] = mproc::Pipe();
    b.close();
    EXPECT_THROW(a.send(1), mproc::ConnectionClosed);
  }
  {
    auto [a, b] = mproc::Pipe();
    a.send(1);
    b.close();  // closed with unread data: ECONNRESET rather than EPIPE
    EXPECT_THROW(a.send(2), mproc::ConnectionClosed);
  }
  {
    auto [r, w] = mproc::Pipe(false);
    r.close();
    try {
      w.send_bytes(std::vector<std::byte>(1 << 20));  // the large, two-write path
      FAIL() << "expected ConnectionClosed";
    } catch (const mproc::ConnectionClosed& e) {
      EXPECT_NE(std::string(e.what()).find("peer closed"), std::string::npos) << e.what();
    }
  }
}

TEST(Connection, MalformedPayloadIsDeserializeError) {
  auto [a, b] = mproc::Pipe();
  a.send(std::vector<int>{1, 2, 3});
  // Take the genuine frame off the wire and make its element count a lie.
  std::vector<unsigned char> frame(Connection::kHeaderSize + 8 + 3 * sizeof(int));
  ASSERT_EQ(::read(b.fileno(), frame.data(), frame.size()), static_cast<ssize_t>(frame.size()));
  std::uint64_t count = 0;
  std::memcpy(&count, frame.data() + Connection::kHeaderSize, 8);
  ASSERT_EQ(count, 3u);
  count = std::uint64_t{1} << 60;
  std::memcpy(frame.data() + Connection::kHeaderSize, &count, 8);
  raw_write(b.fileno(), frame);
  auto t0 = Clock::now();
  EXPECT_THROW((void)a.recv<std::vector<int>>(), mproc::DeserializeError);
  EXPECT_LT(Clock::now() - t0, 10s);  // wide for load
  EXPECT_FALSE(a.has_pending());  // the bad message was consumed; the stream is in step
  b.send(std::vector<int>{4});
  EXPECT_EQ(a.recv<std::vector<int>>(), std::vector<int>{4});
}

TEST(Connection, ClosedConnectionAndMoves) {
  auto [a, b] = mproc::Pipe();
  Connection c = std::move(a);
  EXPECT_TRUE(a.closed());  // NOLINT(bugprone-use-after-move)
  c.send(5);
  EXPECT_EQ(b.recv<int>(), 5);

  auto [x, y] = mproc::Pipe();
  c = std::move(x);  // the old fd of c is closed: b sees end of file
  EXPECT_THROW((void)b.recv<int>(), mproc::ConnectionClosed);
  y.send(6);
  EXPECT_EQ(c.recv<int>(), 6);

  c.close();
  c.close();  // twice is fine
  EXPECT_TRUE(c.closed());
  EXPECT_THROW((void)c.fileno(), mproc::Error);
  EXPECT_THROW(c.send(1), mproc::Error);
  EXPECT_THROW((void)c.recv<int>(), mproc::Error);
  EXPECT_THROW((void)c.poll(), mproc::Error);
  std::error_code ec;
  (void)c.recv_bytes(ec);
  EXPECT_EQ(ec, std::errc::bad_file_descriptor);
  Connection empty;
  EXPECT_TRUE(empty.closed());
}

TEST(Connection, AdoptsRawFileDescriptors) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  Connection r(fds[0], true, false);  // a plain pipe, not a socket
  Connection w(fds[1], false, true);
  w.send(std::string("through a pipe(2)"));
  EXPECT_EQ(r.recv<std::string>(), "through a pipe(2)");
  r.close();
  EXPECT_THROW(w.send(1), mproc::ConnectionClosed);  // EPIPE, SIGPIPE suppressed
  EXPECT_THROW(Connection(-1, true, true), mproc::Error);
}

}  // namespace
