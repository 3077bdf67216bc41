// Listener / Client: Unix (path and abstract) and TCP (IPv4, IPv6) sockets,
// the HMAC handshake both ways, and what a wrong key, garbage or silence
// before authentication does.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "mproc/listener.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Address;
using mproc::AuthenticationError;
using mproc::Client;
using mproc::Connection;
using mproc::Listener;

const std::string kKey = "correct horse battery staple";

std::string temp_socket_path() {
  return (std::filesystem::temp_directory_path() /
          ("mproc-test-" + std::to_string(::getpid()) + "-" + std::to_string(std::rand()) + ".sock"))
      .string();
}

// Accepts one client on a thread, echoes one string back reversed.
void expect_echo(Listener& l) {
  auto server = std::async(std::launch::async, [&] {
    Connection c = l.accept();
    auto s = c.recv<std::string>();
    c.send(std::string(s.rbegin(), s.rend()));
  });
  Connection c = Client(l.address(), kKey);
  c.send(std::string("abc"));
  EXPECT_EQ(c.recv<std::string>(), "cba");
  server.get();
}

TEST(Listener, UnixPathRoundTripAndUnlinkOnClose) {
  const std::string path = temp_socket_path();
  {
    Listener l(Address::unix_socket(path), kKey);
    EXPECT_TRUE(std::filesystem::exists(path));
    expect_echo(l);
  }
  EXPECT_FALSE(std::filesystem::exists(path));
}

TEST(Listener, AbstractUnixRoundTrip) {
  Listener l(Address::unix_socket("@mproc-test-" + std::to_string(::getpid())), kKey);
  expect_echo(l);
}

TEST(Listener, TcpIPv4EphemeralPort) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  EXPECT_NE(l.address().port, 0);
  EXPECT_EQ(l.address().host, "127.0.0.1");
  expect_echo(l);
}

TEST(Listener, TcpDefaultsToLoopback) {
  Listener l(Address::tcp("", 0), kKey);
  EXPECT_EQ(l.address().host, "127.0.0.1");
}

TEST(Listener, TcpIPv6) {
  std::optional<Listener> l;
  try {
    l.emplace(Address::tcp("::1", 0), kKey);
  } catch (const mproc::OSError& e) {
    GTEST_SKIP() << "no IPv6 loopback here: " << e.what();
  }
  EXPECT_EQ(l->address().to_string().rfind("tcp://[::1]:", 0), 0u);
  expect_echo(*l);
}

TEST(Listener, ClientInAnotherProcess) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  mproc::ProcessOptions o;
  o.start_method = mproc::StartMethod::spawn;
  mproc::Process p(o, [](Address a, std::string key) {
    Connection c = Client(a, key);
    c.send(c.recv<int>() + 1);
  }, l.address(), kKey);
  p.start();
  Connection c = l.accept();
  c.send(41);
  EXPECT_EQ(c.recv<int>(), 42);
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST(Listener, WrongKeyFailsOnBothSides) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  auto server = std::async(std::launch::async, [&] { l.accept(); });
  EXPECT_THROW(Client(l.address(), "wrong key"), AuthenticationError);
  EXPECT_THROW(server.get(), AuthenticationError);
  // The listener still serves a client with the right key.
  expect_echo(l);
}

TEST(Listener, ServerWithWrongKeyIsRefusedByTheClient) {
  // The client checks the server too (mutual): a server holding another key
  // is refused even though the server spoke first.
  Listener l(Address::unix_socket("@mproc-test-mutual-" + std::to_string(::getpid())), "server key");
  auto server = std::async(std::launch::async, [&] { l.accept(); });
  EXPECT_THROW(Client(l.address(), kKey), AuthenticationError);
  EXPECT_THROW(server.get(), AuthenticationError);
}

TEST(Listener, EmptyKeysMatch) {
  Listener l(Address::tcp("127.0.0.1", 0), "");
  auto server = std::async(std::launch::async, [&] { return l.accept(); });
  Connection c = Client(l.address(), "");
  Connection s = server.get();
  c.send(7);
  EXPECT_EQ(s.recv<int>(), 7);
}

TEST(Listener, GarbageBeforeAuthIsRefused) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  auto server = std::async(std::launch::async, [&] { l.accept(); });
  {
    Connection raw = mproc::detail::connect_unauthenticated(l.address());
    raw.recv_bytes();  // the challenge
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    ASSERT_EQ(::write(raw.fileno(), junk, sizeof junk), static_cast<ssize_t>(sizeof junk));
    EXPECT_THROW(server.get(), AuthenticationError);
  }
  expect_echo(l);
}

TEST(Listener, HugeFrameBeforeAuthIsRefusedWithoutAllocating) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  auto server = std::async(std::launch::async, [&] { l.accept(); });
  Connection raw = mproc::detail::connect_unauthenticated(l.address());
  raw.recv_bytes();
  unsigned char h[16];
  const std::uint32_t magic = Connection::kMagic, tag = 0;
  const std::uint64_t length = std::uint64_t{1} << 40;
  std::memcpy(h, &magic, 4);
  std::memcpy(h + 4, &tag, 4);
  std::memcpy(h + 8, &length, 8);
  ASSERT_EQ(::write(raw.fileno(), h, sizeof h), static_cast<ssize_t>(sizeof h));
  EXPECT_THROW(server.get(), AuthenticationError);
}

TEST(Listener, SilentClientTimesOut) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  Connection raw = mproc::detail::connect_unauthenticated(l.address());
  Connection c = l.accept_unauthenticated();
  EXPECT_THROW(mproc::detail::authenticate_server(c, kKey, 100ms), AuthenticationError);
  EXPECT_TRUE(c.closed());
}

// A client that hangs up before answering is dropped quietly: accept() goes
// on to serve the next one (a peer's hang-up must not end the owner's accept).
TEST(Listener, ClientHangsUpDuringHandshake) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  auto server = std::async(std::launch::async, [&] { return l.accept(); });
  {
    Connection raw = mproc::detail::connect_unauthenticated(l.address());
    raw.recv_bytes();  // the challenge: it is pending on the server now
  }
  Connection c = Client(l.address(), kKey);
  Connection s = server.get();
  c.send(3);
  EXPECT_EQ(s.recv<int>(), 3);
}

TEST(Listener, NothingListeningIsASystemError) {
  Address a;
  {
    Listener l(Address::tcp("127.0.0.1", 0), kKey);
    a = l.address();
  }
  EXPECT_THROW(Client(a, kKey), mproc::OSError);
  EXPECT_THROW(Client(Address::unix_socket(temp_socket_path()), kKey), mproc::OSError);
}

TEST(Listener, PortInUseIsASystemError) {
  Listener l(Address::tcp("127.0.0.1", 0), kKey);
  EXPECT_THROW(Listener(l.address(), kKey), mproc::OSError);
}

TEST(Address, ParseAndPrint) {
  EXPECT_EQ(Address::parse("tcp://127.0.0.1:5000"), Address::tcp("127.0.0.1", 5000));
  EXPECT_EQ(Address::parse("tcp://[::1]:80"), Address::tcp("::1", 80));
  EXPECT_EQ(Address::parse("unix:/tmp/x.sock"), Address::unix_socket("/tmp/x.sock"));
  EXPECT_EQ(Address::parse("unix:@abstract"), Address::unix_socket("@abstract"));
  for (auto text : {"tcp://[::1]:80", "tcp://10.0.0.1:65535", "unix:/a/b", "unix:@n"})
    EXPECT_EQ(Address::parse(text).to_string(), text);
  for (auto bad : {"", "tcp://", "tcp://1.2.3.4", "tcp://1.2.3.4:99999", "tcp://1.2.3.4:x", "udp://1.2.3.4:5",
                   "unix:", "tcp://[::1:80"})
    EXPECT_THROW(Address::parse(bad), mproc::ValueError) << bad;
  EXPECT_THROW(Listener(Address::tcp("localhost", 0), kKey), mproc::ValueError);
  EXPECT_THROW(Listener(Address::unix_socket(std::string(200, 'x')), kKey), mproc::ValueError);
}

TEST(Address, Serializes) {
  const Address a = Address::tcp("::1", 1234);
  EXPECT_EQ(mproc::from_bytes<Address>(mproc::to_bytes(a)), a);
  mproc::Bytes bad = mproc::to_bytes(a);
  bad[0] = std::byte{9};
  EXPECT_THROW(mproc::from_bytes<Address>(bad), mproc::DeserializeError);
}

TEST(Listener, RandomAuthkeysDiffer) {
  EXPECT_EQ(mproc::random_authkey().size(), 32u);
  EXPECT_NE(mproc::random_authkey(), mproc::random_authkey());
}

// ---- hostile access (issue 12 item 4) ---------------------------------------

TEST(Listener, DefaultAddressIsAPrivateDirectoryRemovedOnClose) {
  Listener l(kKey);
  const std::filesystem::path sock(l.address().path), dir = sock.parent_path();
  ASSERT_EQ(l.address().kind, Address::Kind::unix_socket);
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  EXPECT_EQ(st.st_uid, ::geteuid());
  expect_echo(l);
  l.close();
  EXPECT_FALSE(std::filesystem::exists(sock)) << "socket file left behind";
  EXPECT_FALSE(std::filesystem::exists(dir)) << "socket directory left behind";
}

// 1,000 connections that never say a word do not delay accept(): the owner's
// client, arriving after all of them, is served while they are still open.
TEST(Listener, ThousandSilentConnectionsDoNotDelayTheOwner) {
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  const rlimit saved = lim;
  if (lim.rlim_cur < 2300) {  // both ends of each connection live in this process
    if (lim.rlim_max < 2300) GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << lim.rlim_max << " < 2300";
    lim.rlim_cur = 2300;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0);
  }
  {
    Listener l(kKey);
    auto server = std::async(std::launch::async, [&] { return l.accept(); });
    std::vector<Connection> silent;
    for (int i = 0; i < 1000; ++i) silent.push_back(mproc::detail::connect_unauthenticated(l.address()));
    const auto t0 = std::chrono::steady_clock::now();
    Connection c = Client(l.address(), kKey);
    Connection s = server.get();
    // Wide margin (a loaded machine); one silent peer used to cost 10 s.
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 9s);
    c.send(7);
    EXPECT_EQ(s.recv<int>(), 7);
    silent.clear();
    expect_echo(l);  // and the next client too
  }
  ::setrlimit(RLIMIT_NOFILE, &saved);
}

TEST(Listener, AnotherUsersProcessIsClosedBeforeTheHandshake) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  Listener l(Address::unix_socket("@mproc-test-listener-" + std::to_string(::getpid())), kKey);
  auto server = std::async(std::launch::async, [&] { return l.accept(); });
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(99);
    try {
      Connection c = mproc::detail::connect_unauthenticated(l.address());
      if (!c.poll(30s)) ::_exit(3);
      (void)c.recv_bytes();
      ::_exit(4);  // it got a challenge
    } catch (const mproc::ConnectionClosed&) {
      ::_exit(0);
    } catch (...) {
      ::_exit(5);
    }
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit " << WEXITSTATUS(status);
  Connection c = Client(l.address(), kKey);  // the owner is served; accept() never threw
  Connection s = server.get();
  c.send(1);
  EXPECT_EQ(s.recv<int>(), 1);
}

}  // namespace
