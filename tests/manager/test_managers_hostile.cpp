// Manager server against hostile peers, provoked for real on a live server
// (issue 12): other users, floods of silent connections, authenticated
// clients that announce huge requests and stall. After each, a well-behaved
// client checks its data, and the server's memory and fds are checked.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "manager/manager_server.hpp"
#include "mproc/listener.hpp"
#include "mproc/managers.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Bytes;
using mproc::Connection;
using mproc::Manager;
namespace wire = mproc::detail::wire;

Bytes header(std::uint64_t length) {
  Bytes h(Connection::kHeaderSize);
  const std::uint32_t magic = Connection::kMagic, tag = 0;
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &tag, 4);
  std::memcpy(h.data() + 8, &length, 8);
  return h;
}

// Resident memory of pid, in bytes.
std::uint64_t rss_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

std::size_t fd_count(pid_t pid) {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
  return n;
}

class ManagerHostile : public testing::Test {
 protected:
  void start(mproc::ManagerOptions o = {}) {
    m_ = Manager(std::move(o));
    m_.start();
    d_ = m_.dict<std::string, std::string>("data");
    d_.set("k", "v");
  }
  void expect_intact() {
    EXPECT_EQ(d_.get("k"), "v");
    EXPECT_EQ(d_.size(), 1u);
    // A brand-new client of the owner (new connection, full handshake).
    Manager again({.address = m_.address(), .authkey = m_.authkey()});
    again.connect();
  }
  Connection raw() { return mproc::detail::connect_unauthenticated(m_.address()); }
  Connection authed() {
    Connection c = raw();
    mproc::detail::authenticate_client(c, m_.authkey());
    return c;
  }
  Manager m_;
  mproc::DictProxy<std::string, std::string> d_;
};

TEST_F(ManagerHostile, DefaultSocketIsInAPrivateDirectoryRemovedWithTheServer) {
  start();
  const auto& a = m_.address();
  ASSERT_EQ(a.kind, mproc::Address::Kind::unix_socket);
  ASSERT_FALSE(a.path.empty());
  ASSERT_NE(a.path[0], '@') << "the abstract namespace is reachable by every local user";
  const std::filesystem::path sock(a.path), dir = sock.parent_path();
  struct stat st {};
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u) << "the socket's directory must be ours alone";
  EXPECT_EQ(st.st_uid, ::geteuid());
  expect_intact();
  m_.shutdown();
  EXPECT_FALSE(std::filesystem::exists(sock)) << "socket file left behind";
  EXPECT_FALSE(std::filesystem::exists(dir)) << "socket directory left behind";
}

TEST_F(ManagerHostile, PrivateDirectoryIsRemovedEvenWhenTheServerIsKilled) {
  start();
  const std::filesystem::path sock(m_.address().path);
  ::kill(m_.server_pid(), SIGKILL);
  m_.shutdown();
  EXPECT_FALSE(std::filesystem::exists(sock.parent_path())) << "socket directory left behind";
}

// Runs body as another uid in a forked child; returns its exit code.
template <class F>
int as_other_user(F body) {
  pid_t pid = ::fork();
  if (pid == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(99);
    ::_exit(body());
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

TEST_F(ManagerHostile, AnotherUserCannotReachTheManager) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  start();
  const std::string path = m_.address().path;
  // The default socket: its directory keeps other users from connecting.
  EXPECT_EQ(as_other_user([&] {
              try {
                (void)mproc::detail::connect_unauthenticated(mproc::Address::unix_socket(path));
                return 1;
              } catch (const mproc::OSError& e) {
                return e.code().value() == EACCES ? 0 : 2;
              }
            }),
            0)
      << "another user connected to the default manager socket";
  // An abstract address is reachable by anyone: the peer's uid is checked,
  // and it is closed before the handshake (it never sees a challenge).
  Manager open_door({.address = mproc::Address::unix_socket("@mproc-test-" + std::to_string(::getpid()))});
  open_door.start();
  const mproc::Address door = open_door.address();
  EXPECT_EQ(as_other_user([&] {
              try {
                Connection c = mproc::detail::connect_unauthenticated(door);
                if (!c.poll(30s)) return 3;
                (void)c.recv_bytes();
                return 4;  // got a challenge
              } catch (const mproc::ConnectionClosed&) {
                return 0;
              } catch (...) {
                return 5;
              }
            }),
            0)
      << "another user's connection got past the uid check";
  auto q = open_door.list<int>();
  q.append(7);
  EXPECT_EQ(q.tolist(), std::vector<int>{7});
  expect_intact();
}

// 1,000 silent connections (never a byte): the owner's new clients are
// served all the while, and the server holds only a few of them.
TEST_F(ManagerHostile, ThousandSilentConnectionsDoNotLockTheOwnerOut) {
  rlimit lim{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
  const rlimit saved = lim;
  if (lim.rlim_cur < 1200) {
    if (lim.rlim_max < 1200) GTEST_SKIP() << "RLIMIT_NOFILE hard limit " << lim.rlim_max << " < 1200";
    lim.rlim_cur = 1200;
    ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &lim), 0);
  }
  start();
  const pid_t server = m_.server_pid();
  const std::size_t server_fds = fd_count(server);
  {
    std::vector<Connection> silent;
    silent.reserve(1000);
    for (int i = 0; i < 1000; ++i) silent.push_back(raw());
    // The owner's new clients, at once (no waiting for the silent ones to
    // time out), while all 1,000 are still open on this side.
    expect_intact();
    auto l = m_.list<int>();
    l.append(1);
    EXPECT_EQ(l.tolist(), std::vector<int>{1});
    // The server keeps at most max_unauthenticated (32) handshakes open;
    // the rest were dropped (oldest first). Slack: fds of threads ending.
    EXPECT_TRUE(mproc::test::eventually([&] { return fd_count(server) <= server_fds + 40; }, 30000))
        << fd_count(server) << " fds in the server, " << server_fds << " before";
  }
  expect_intact();
  EXPECT_TRUE(mproc::test::eventually([&] { return fd_count(server) <= server_fds + 2; }, 30000))
      << fd_count(server) << " fds in the server, " << server_fds << " before";
  m_.shutdown();
  ::setrlimit(RLIMIT_NOFILE, &saved);
}

TEST_F(ManagerHostile, SilentHandshakeIsDroppedAtTheDeadline) {
  // 1 s, not less: the owner's own handshakes (the proxies of start() and
  // expect_intact()) run under the same deadline, and took over 300 ms under
  // ThreadSanitizer beside three other tests (its send then got EPIPE).
  start({.handshake_deadline = 1000ms});
  Connection c = raw();
  const auto t0 = std::chrono::steady_clock::now();
  (void)c.recv_bytes();  // the challenge; we never answer
  ASSERT_TRUE(c.poll(30s)) << "the server kept a silent handshake";
  EXPECT_THROW(c.recv_bytes(), mproc::ConnectionClosed);
  EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms) << "dropped before its deadline";
  expect_intact();
}

// 8 authenticated clients announce 64 MiB requests and stall: the server
// reserves at most max_buffered_bytes (128 MiB: two of them) and tells the
// others, with the byte counts, that their request does not fit.
TEST_F(ManagerHostile, StalledHugeRequestsCostAtMostTheServerBudget) {
  constexpr std::uint64_t kBudget = std::uint64_t{128} << 20, kAnnounced = std::uint64_t{64} << 20;
  start({.max_message_size = kAnnounced, .max_buffered_bytes = kBudget});
  const pid_t server = m_.server_pid();
  const std::uint64_t rss0 = rss_of(server);
  const std::size_t fds0 = fd_count(server);
  std::vector<Connection> offenders;
  for (int i = 0; i < 8; ++i) {
    offenders.push_back(authed());
    Bytes h = header(kAnnounced);
    h.resize(h.size() + 100, std::byte{0});  // and a few payload bytes, then nothing
    ASSERT_EQ(::send(offenders.back().fileno(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
  }
  // The six that do not fit are answered at once; wait for them (30 s: a
  // loaded machine), then the other two must still be waiting.
  auto answered = [&] {
    int n = 0;
    for (auto& c : offenders) n += c.poll() ? 1 : 0;
    return n;
  };
  EXPECT_TRUE(mproc::test::eventually([&] { return answered() >= 6; }, 30000)) << answered() << " answered";
  int refused = 0;
  for (auto& c : offenders) {
    if (!c.poll()) continue;  // one of the two whose request fits: still waited for
    Bytes rep = c.recv_bytes();
    ASSERT_FALSE(rep.empty());
    ASSERT_EQ(rep[0], std::byte{1}) << "an error reply";
    wire::Reader rd(std::span<const std::byte>(rep).subspan(1));
    EXPECT_EQ(rd.str(), "mproc::MessageTooLarge");
    const std::string what(rd.str());
    EXPECT_NE(what.find(std::to_string(kAnnounced)), std::string::npos) << what;
    EXPECT_NE(what.find(std::to_string(kBudget)), std::string::npos) << what;
    ASSERT_TRUE(c.poll(30s));
    EXPECT_THROW(c.recv_bytes(), mproc::ConnectionClosed) << "the refused client is dropped";
    ++refused;
  }
  EXPECT_EQ(refused, 6) << "two 64 MiB requests fit a 128 MiB budget, six do not";
  const std::uint64_t rss1 = rss_of(server);
  std::printf("server RSS %+.1f MiB with 8 clients stalled on 64 MiB requests (budget 128 MiB)\n",
              (static_cast<double>(rss1) - static_cast<double>(rss0)) / (1 << 20));
  // Bound: the budget, plus 32 MiB for threads and allocator slack.
  EXPECT_LT(rss1, rss0 + kBudget + (32u << 20)) << "server RSS " << rss0 << " -> " << rss1;
  expect_intact();  // small requests never wait for the budget
  offenders.clear();
  // The server has let go of them all (their fds), and of their memory.
  EXPECT_TRUE(mproc::test::eventually([&] { return fd_count(server) <= fds0; }, 30000))
      << fd_count(server) << " fds in the server, " << fds0 << " before";
  EXPECT_TRUE(mproc::test::eventually([&] { return rss_of(server) < rss0 + (16u << 20); }, 30000))
      << "server RSS " << rss0 << " -> " << rss_of(server) << " after the offenders left";
  // The budget is free again: a large request from a well-behaved client.
  auto big = m_.value<std::string>(std::string(1 << 20, 'x'));
  EXPECT_EQ(big.get().size(), 1u << 20);
}

TEST_F(ManagerHostile, RequestOverTheLimitGetsAnErrorNamingBothSizes) {
  start({.max_message_size = 1 << 20});
  Connection c = authed();
  const Bytes h = header((1 << 20) + 1);
  ASSERT_EQ(::send(c.fileno(), h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
  Bytes rep = c.recv_bytes();
  ASSERT_EQ(rep.at(0), std::byte{1});
  wire::Reader rd(std::span<const std::byte>(rep).subspan(1));
  EXPECT_EQ(rd.str(), "mproc::MessageTooLarge");
  const std::string what(rd.str());
  EXPECT_NE(what.find(std::to_string((1 << 20) + 1)), std::string::npos) << what;
  EXPECT_NE(what.find(std::to_string(1 << 20)), std::string::npos) << what;
  ASSERT_TRUE(c.poll(30s));
  EXPECT_THROW(c.recv_bytes(), mproc::ConnectionClosed);
  expect_intact();
}

}  // namespace
