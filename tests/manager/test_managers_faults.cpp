// Manager server against bad input, provoked for real on a live server:
// garbage, oversized and truncated frames, wrong keys, unknown ids and
// methods, wrong argument types, clients killed mid-call. After each, a
// well-behaved client checks that the server still serves it, data intact.
// Also: the frame decoder + dispatcher fed thousands of seeded random and
// mutated inputs (the same entry point as fuzz/fuzz_manager.cpp).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "manager/manager_server.hpp"
#include "mproc/listener.hpp"
#include "mproc/managers.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Bytes;
using mproc::Connection;
using mproc::Manager;
namespace wire = mproc::detail::wire;

Bytes header(std::uint32_t magic, std::uint32_t tag, std::uint64_t length) {
  Bytes h(Connection::kHeaderSize);
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &tag, 4);
  std::memcpy(h.data() + 8, &length, 8);
  return h;
}

void raw_write(int fd, const Bytes& b) {
  ASSERT_EQ(::send(fd, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
}

namespace proto = mproc::detail::proto;

// A request for method index `method` of object id, as a client builds it.
Bytes request_at(std::uint64_t id, std::uint16_t method) {
  Bytes r;
  wire::put_u64(r, id);
  wire::put_u16(r, method);
  return r;
}
// The same, by the method's name in protocol P's table.
template <class P>
Bytes request(std::uint64_t id, std::string_view method) {
  const std::size_t i = P::find(method);
  EXPECT_LT(i, P::size) << method;
  return request_at(id, static_cast<std::uint16_t>(i));
}
// A "create" of the server (object 0), up to the creation data.
Bytes create_request(std::string_view kind, std::uint64_t fingerprint, std::string_view name = "",
                     std::string_view types = "") {
  Bytes r = request<proto::ServerProtocol>(0, "create");
  wire::put_str(r, kind);
  wire::put_u64(r, fingerprint);
  wire::put_str(r, name);
  wire::put_str(r, types);
  return r;
}

mproc::ManagerOptions small_frames() {
  mproc::ManagerOptions o;
  o.max_message_size = 1 << 20;
  return o;
}

class ManagerFaults : public testing::Test {
 protected:
  void SetUp() override {
    m_.start();
    d_ = m_.dict<std::string, std::string>("data");
    d_.set("k", "v");
    l_ = m_.list<int>();
    l_.extend(std::vector<int>{1, 2, 3});
  }
  // The well-behaved client: everything as it was.
  void expect_intact() {
    EXPECT_EQ(d_.get("k"), "v");
    EXPECT_EQ(d_.size(), 1u);
    EXPECT_EQ(l_.tolist(), (std::vector<int>{1, 2, 3}));
  }
  Connection raw() { return mproc::detail::connect_unauthenticated(m_.address()); }
  Connection authed() {
    Connection c = raw();
    mproc::detail::authenticate_client(c, m_.authkey());
    return c;
  }
  // The server hung up on c.
  static void expect_dropped(Connection& c) {
    ASSERT_TRUE(c.poll(30s)) << "the server kept the connection";
    EXPECT_THROW(c.recv_bytes(), mproc::ConnectionClosed);
  }
  // One request on c; returns the reply's status byte (0 ok, 1 error) and text.
  static std::pair<int, std::string> exchange(Connection& c, const Bytes& req) {
    c.send_bytes(req);
    Bytes rep = c.recv_bytes();
    EXPECT_FALSE(rep.empty());
    if (rep.empty()) return {-1, ""};
    if (rep[0] == std::byte{0}) return {0, ""};
    wire::Reader rd(std::span<const std::byte>(rep).subspan(1));
    std::string type(rd.str());
    return {1, type + ": " + std::string(rd.str())};
  }

  Manager m_{small_frames()};
  mproc::DictProxy<std::string, std::string> d_;
  mproc::ListProxy<int> l_;
};

TEST_F(ManagerFaults, GarbageBeforeAuthentication) {
  Connection c = raw();
  c.recv_bytes();  // the challenge
  Bytes junk(200);
  for (std::size_t i = 0; i < junk.size(); ++i) junk[i] = static_cast<std::byte>(i * 37);
  raw_write(c.fileno(), junk);
  expect_dropped(c);
  expect_intact();
}

TEST_F(ManagerFaults, WrongAuthkey) {
  EXPECT_THROW(mproc::Client(m_.address(), "guess"), mproc::AuthenticationError);
  Manager intruder({.address = m_.address(), .authkey = "guess"});
  EXPECT_THROW(intruder.connect(), mproc::AuthenticationError);
  expect_intact();
}

TEST_F(ManagerFaults, SilentUnauthenticatedClientBlocksNobody) {
  Connection silent = raw();
  expect_intact();
}

TEST_F(ManagerFaults, RequestBeforeAuthenticationIsNeverDispatched) {
  Connection c = raw();
  c.recv_bytes();  // the challenge
  // A well-formed "clear" request where the digest should be.
  Bytes req = request<proto::DictProtocol>(d_.id(), "clear");
  c.send_bytes(req);
  Bytes verdict = c.recv_bytes();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(verdict.data()), verdict.size()), "#FAILURE#");
  expect_dropped(c);
  expect_intact();
}

TEST_F(ManagerFaults, GarbageAfterAuthentication) {
  Connection c = authed();
  Bytes junk(64, std::byte{0x5a});
  raw_write(c.fileno(), junk);
  expect_dropped(c);
  expect_intact();
}

// An oversized request gets an error reply naming its size, then the
// connection ends (its payload is never read).
TEST_F(ManagerFaults, OversizedFrames) {
  for (std::uint64_t size : {std::uint64_t{1} << 40, std::uint64_t{(1 << 20) + 1}}) {  // the latter: just over 1 MiB
    Connection c = authed();
    raw_write(c.fileno(), header(Connection::kMagic, 0, size));
    Bytes rep = c.recv_bytes();
    ASSERT_EQ(rep.at(0), std::byte{1});
    wire::Reader rd(std::span<const std::byte>(rep).subspan(1));
    EXPECT_EQ(rd.str(), "mproc::MessageTooLarge");
    EXPECT_NE(std::string(rd.str()).find(std::to_string(size)), std::string::npos);
    expect_dropped(c);
  }
  expect_intact();
}

TEST_F(ManagerFaults, TruncatedFrame) {
  Connection c = authed();
  raw_write(c.fileno(), header(Connection::kMagic, 0, 100));
  raw_write(c.fileno(), Bytes(10, std::byte{1}));
  ::shutdown(c.fileno(), SHUT_WR);
  expect_dropped(c);
  expect_intact();
}

TEST_F(ManagerFaults, UnknownIdsMethodsAndMalformedRequestsGetErrorReplies) {
  Connection c = authed();
  auto [s1, e1] = exchange(c, request<proto::DictProtocol>(987654321, "len"));
  EXPECT_EQ(s1, 1);
  EXPECT_NE(e1.find("no object with id 987654321"), std::string::npos) << e1;
  // A method index past the object's table: a typed error naming both.
  auto [s2, e2] = exchange(c, request_at(d_.id(), 999));
  EXPECT_EQ(s2, 1);
  EXPECT_NE(e2.find("mproc::ValueError"), std::string::npos) << e2;
  EXPECT_NE(e2.find("a dict has no method #999"), std::string::npos) << e2;
  auto [s2b, e2b] = exchange(c, request_at(d_.id(), 0xffff));
  EXPECT_EQ(s2b, 1);
  EXPECT_NE(e2b.find("#65535"), std::string::npos) << e2b;
  auto [s3, e3] = exchange(c, request_at(0, 77));
  EXPECT_EQ(s3, 1);
  EXPECT_NE(e3.find("a server has no method #77"), std::string::npos) << e3;
  auto [s4, e4] = exchange(c, Bytes{std::byte{1}, std::byte{2}, std::byte{3}});  // not even an id
  EXPECT_EQ(s4, 1);
  EXPECT_NE(e4.find("DeserializeError"), std::string::npos) << e4;
  Bytes lie = request<proto::DictProtocol>(d_.id(), "get");
  wire::put_u64(lie, std::uint64_t{1} << 60);  // a key "of 2^60 bytes"
  auto [s5, e5] = exchange(c, lie);
  EXPECT_EQ(s5, 1);
  auto [s6, e6] = exchange(c, create_request("hashmap", 0));
  EXPECT_EQ(s6, 1);
  EXPECT_NE(e6.find("unknown object kind"), std::string::npos) << e6;
  // A client built from another table (a method added, say): refused at
  // create, not misread later.
  auto [s8, e8] = exchange(c, create_request("dict", proto::DictProtocol::fingerprint ^ 1));
  EXPECT_EQ(s8, 1);
  EXPECT_NE(e8.find("differs from this server's"), std::string::npos) << e8;
  // Bytes after a method's arguments: refused, nothing applied.
  Bytes extra = request<proto::DictProtocol>(d_.id(), "clear");
  wire::put_u8(extra, 0);
  auto [s9, e9] = exchange(c, extra);
  EXPECT_EQ(s9, 1);
  EXPECT_NE(e9.find("1 bytes after the arguments"), std::string::npos) << e9;
  // The connection still works after all of that.
  auto [s7, e7] = exchange(c, request<proto::DictProtocol>(d_.id(), "len"));
  EXPECT_EQ(s7, 0) << e7;
  expect_intact();
}

TEST_F(ManagerFaults, WrongArgumentsChangeNothing) {
  mproc::detail::ProxyBase p(m_.address(), m_.authkey(), d_.id());
  Bytes set_half = request<proto::DictProtocol>(d_.id(), "set");
  wire::put_value(set_half, std::string("only a key"));
  EXPECT_THROW(p.call(std::move(set_half)), mproc::RemoteError);
  // A batch that is cut short: validated whole, so its first item is not applied.
  Bytes batch = request<proto::DictProtocol>(d_.id(), "update");
  wire::put_u64(batch, 2);
  wire::put_value(batch, std::string("k"));
  wire::put_value(batch, std::string("overwritten"));
  wire::put_value(batch, std::string("k2"));
  EXPECT_THROW(p.call(std::move(batch)), mproc::RemoteError);
  Bytes huge = request<proto::DictProtocol>(d_.id(), "update");
  wire::put_u64(huge, std::uint64_t{1} << 62);
  EXPECT_THROW(p.call(std::move(huge)), mproc::RemoteError);
  mproc::detail::ProxyBase lp(m_.address(), m_.authkey(), l_.id());
  EXPECT_THROW(lp.call(request<proto::ListProtocol>(l_.id(), "get")), mproc::RemoteError);  // no index
  // A proxy of other types on the same object: the client refuses the bytes.
  mproc::DictProxy<std::string, std::uint64_t> wrong(p);
  EXPECT_THROW(wrong.values(), mproc::DeserializeError);
  expect_intact();
}

void block_on_get(mproc::QueueProxy<int> q, mproc::EventProxy ready) {
  ready.set();
  q.get();  // killed while waiting here
}

TEST_F(ManagerFaults, ClientKilledWhileBlockedLeavesTheItemToOthers) {
  auto q = m_.queue<int>();
  auto ready = m_.event();
  mproc::Process p(block_on_get, q, ready);
  p.start();
  ASSERT_TRUE(ready.wait(30s));
  std::this_thread::sleep_for(50ms);  // (likely blocked on the server now; the checks hold either way)
  p.kill();
  p.join();
  q.put(42);
  EXPECT_EQ(q.get(true, 30s), 42);  // not swallowed by the dead client's call
  expect_intact();
}

TEST_F(ManagerFaults, ClientKilledMidFrame) {
  mproc::ProcessOptions o;
  o.start_method = mproc::StartMethod::fork;
  const mproc::Address a = m_.address();
  const std::string key = m_.authkey();
  mproc::Process p(o, [a, key] {
    Connection c = mproc::detail::connect_unauthenticated(a);
    mproc::detail::authenticate_client(c, key);
    Bytes h = header(Connection::kMagic, 0, 1000);
    ::send(c.fileno(), h.data(), h.size(), MSG_NOSIGNAL);
    ::kill(::getpid(), SIGKILL);
  });
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  expect_intact();
}

void hammer(mproc::DictProxy<std::string, std::string> d, int who) {
  for (int i = 0; i < 300; ++i) {
    const std::string key = std::to_string(who) + "/" + std::to_string(i);
    d.set(key, key + "=v");
    if (d.at(key) != key + "=v") throw std::runtime_error("lost " + key);
  }
}

void spew_garbage(mproc::Address a, std::string key, int rounds) {
  for (int i = 0; i < rounds; ++i) {
    Connection c = mproc::detail::connect_unauthenticated(a);
    if (i % 2 == 0) mproc::detail::authenticate_client(c, key);
    Bytes junk(100 + i, static_cast<std::byte>(i));
    ::send(c.fileno(), junk.data(), junk.size(), MSG_NOSIGNAL);
  }
}

TEST_F(ManagerFaults, WellBehavedClientsUnharmedByAConcurrentGarbageClient) {
  std::vector<mproc::Process> ps;
  for (int w = 0; w < 3; ++w) ps.emplace_back(hammer, d_, w);
  ps.emplace_back(spew_garbage, m_.address(), m_.authkey(), 100);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0) << (p.exception() ? p.exception()->what() : "");
  }
  EXPECT_EQ(d_.size(), 1u + 3 * 300);
  EXPECT_EQ(d_.get("2/299"), "2/299=v");
  d_.erase("2/299");
  EXPECT_EQ(d_.size(), 3u * 300);
}

// Valid framing, random payloads, on a live server: every frame gets a reply
// and the server survives. Ids are fixed to this client's own scratch objects.
TEST_F(ManagerFaults, RandomPayloadsOnALiveServer) {
  auto scratch = m_.dict<int, int>();
  auto sl = m_.list<int>();  // (no blocking kinds: a random "wait forever" would be obeyed)
  const std::uint64_t ids[] = {scratch.id(), sl.id(), 0};
  std::mt19937_64 rng(20240611);
  Connection c = authed();
  for (int i = 0; i < 300; ++i) {
    const std::uint64_t id = ids[rng() % 3];
    Bytes req = request_at(id, static_cast<std::uint16_t>(rng() % 16));  // some past the tables
    if (id == 0) req = request<proto::ServerProtocol>(0, "count");  // the server's own methods stay harmless
    const std::size_t n = rng() % 40;
    for (std::size_t j = 0; j < n; ++j) req.push_back(static_cast<std::byte>(rng() % 4 == 0 ? 0 : rng()));
    c.send_bytes(req);
    Bytes rep = c.recv_bytes();
    ASSERT_FALSE(rep.empty());
    ASSERT_TRUE(rep[0] == std::byte{0} || rep[0] == std::byte{1});
  }
  expect_intact();
}

// ---- the fuzzing entry point, seeded (fuzz/fuzz_manager.cpp runs it unseeded) ----

Bytes frame(const Bytes& payload) {
  Bytes f = header(Connection::kMagic, 0, payload.size());
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

std::vector<Bytes> seed_requests() {
  std::vector<Bytes> out;
  // Every method of every object (ids 1.. in fuzz_kinds() order), with a few
  // argument shapes, and one past each table.
  const std::uint64_t objects = mproc::detail::fuzz_kinds().size();
  for (std::uint64_t id = 0; id <= objects + 1; ++id)
    for (std::uint16_t m = 0; m <= 14; ++m) {
      Bytes r = request_at(id, m);
      out.push_back(r);
      wire::put_u64(r, 1);
      wire::put_str(r, "key");
      wire::put_str(r, "value");
      out.push_back(r);
      Bytes w = request_at(id, m);  // an owner, then a wait/timeout
      wire::put_u64(w, 7);
      wire::put_u64(w, 8);
      wire::put_u8(w, 0);
      wire::put_f64(w, 0.0);
      out.push_back(w);
    }
  for (const auto& k : mproc::detail::fuzz_kinds()) {
    Bytes create = create_request(k.kind, k.fingerprint, "named", "sig");
    create.insert(create.end(), k.init.begin(), k.init.end());
    out.push_back(create);
  }
  return out;
}

TEST(ManagerFuzz, SeededRandomAndMutatedInputs) {
  std::mt19937_64 rng(424242);
  const auto seeds = seed_requests();
  int inputs = 0;
  for (int round = 0; round < 3000; ++round, ++inputs) {
    Bytes data;
    const int frames = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < frames; ++f) {
      Bytes payload = seeds[rng() % seeds.size()];
      switch (rng() % 5) {
        case 0:  // flip bytes
          for (int k = 0; k < 3 && !payload.empty(); ++k) payload[rng() % payload.size()] ^= static_cast<std::byte>(rng());
          break;
        case 1:  // cut short
          payload.resize(rng() % (payload.size() + 1));
          break;
        case 2:  // append noise
          for (int k = 0; k < 16; ++k) payload.push_back(static_cast<std::byte>(rng()));
          break;
        case 3: {  // a length field that lies
          if (payload.size() >= 24) {
            const std::uint64_t big = rng();
            std::memcpy(payload.data() + 16 + rng() % (payload.size() - 23), &big, 8);
          }
          break;
        }
        default:
          break;
      }
      Bytes fr = frame(payload);
      if (rng() % 10 == 0) fr[rng() % fr.size()] ^= std::byte{0xff};  // break the framing itself
      data.insert(data.end(), fr.begin(), fr.end());
    }
    if (rng() % 10 == 0) data.resize(rng() % (data.size() + 1));  // truncated stream
    mproc::detail::dispatch_for_fuzz(data);
  }
  for (int round = 0; round < 500; ++round, ++inputs) {  // pure noise
    Bytes data(rng() % 200);
    for (auto& b : data) b = static_cast<std::byte>(rng());
    mproc::detail::dispatch_for_fuzz(data);
  }
  EXPECT_EQ(inputs, 3500);
}

}  // namespace
