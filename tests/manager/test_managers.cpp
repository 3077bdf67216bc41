// Manager and its proxies: every proxy type used from two processes, proxies
// given to pool tasks, registered classes, named objects, remote use over TCP,
// and the server's death as the clients see it.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "manager/manager_test_util.hpp"
#include "mproc/connection.hpp"
#include "mproc/executor.hpp"
#include "mproc/managers.hpp"
#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "support.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Manager;
using mproc::Process;

using managertest::expect_clean_exit;
using managertest::run_child;

struct Point {
  int x = 0;
  double y = 0;
  std::string label;
  template <class A>
  void serialize(A& ar) {
    ar(x, y, label);
  }
  bool operator==(const Point&) const = default;
};

// ---- dict -------------------------------------------------------------------

void set_completed(mproc::DictProxy<std::string, std::string> d) { d.set("status", "completed"); }

TEST(ManagerDict, ChildSetsStatusParentReads) {
  Manager m;
  m.start();
  auto d = m.dict<std::string, std::string>();
  d.set("status", "pending");
  run_child(set_completed, d);
  EXPECT_EQ(d.get("status"), "completed");
}

void dict_child(mproc::DictProxy<std::string, int> d) {
  CHILD_CHECK(d.size() == 3);
  CHILD_CHECK(d.at("a") == 1);
  CHILD_CHECK(d.get("zz") == std::nullopt);
  CHILD_CHECK(d.get("zz", -1) == -1);
  CHILD_CHECK(d.contains("b") && !d.contains("zz"));
  auto items = d.items();
  CHILD_CHECK((items == std::vector<std::pair<std::string, int>>{{"a", 1}, {"b", 2}, {"c", 3}}));  // insertion order
  CHILD_CHECK((d.keys() == std::vector<std::string>{"a", "b", "c"}));
  CHILD_CHECK((d.values() == std::vector<int>{1, 2, 3}));
  CHILD_CHECK(d.pop("b") == 2);
  CHILD_CHECK(d.pop("b") == std::nullopt);
  CHILD_CHECK(d.erase("c") && !d.erase("c"));
  CHILD_CHECK(d.setdefault("a", 100) == 1);
  CHILD_CHECK(d.setdefault("n", 100) == 100);
  auto many = d.get_many({"a", "missing", "n"});
  CHILD_CHECK((many == std::vector<std::optional<int>>{1, std::nullopt, 100}));
  d.set("from_child", 42);
  bool threw = false;
  try {
    d.at("missing");
  } catch (const mproc::KeyError&) {
    threw = true;
  }
  CHILD_CHECK(threw);
}

TEST(ManagerDict, OperationsFromTwoProcesses) {
  Manager m;
  m.start();
  auto d = m.dict<std::string, int>();
  d.update(std::vector<std::pair<std::string, int>>{{"a", 1}, {"b", 2}, {"c", 3}});
  run_child(dict_child, d);
  EXPECT_EQ(d.get("from_child"), 42);
  EXPECT_EQ(d.keys(), (std::vector<std::string>{"a", "n", "from_child"}));
  d.set("a", 5);  // overwriting keeps the key's place
  EXPECT_EQ(d.keys().front(), "a");
  EXPECT_EQ(d.at("a"), 5);
  d.clear();
  EXPECT_EQ(d.size(), 0u);
}

TEST(ManagerDict, BatchedUpdateOfManyItemsAndStructValues) {
  Manager m;
  m.start();
  auto d = m.dict<int, Point>();
  std::map<int, Point> big;
  for (int i = 0; i < 100000; ++i) big[i] = Point{i, i * 0.5, "p" + std::to_string(i % 7)};
  d.update(big);
  EXPECT_EQ(d.size(), 100000u);
  auto items = d.items();
  ASSERT_EQ(items.size(), 100000u);
  for (std::size_t i = 0; i < items.size(); i += 997) {
    EXPECT_EQ(items[i].first, static_cast<int>(i));
    EXPECT_EQ(items[i].second, big[static_cast<int>(i)]);
  }
  EXPECT_EQ(d.at(99999), big[99999]);
}

// ---- list -------------------------------------------------------------------

void list_child(mproc::ListProxy<int> l) {
  CHILD_CHECK(l.size() == 5);
  CHILD_CHECK(l.get(0) == 0 && l.get(-1) == 4);
  CHILD_CHECK((l.slice(1, 3) == std::vector<int>{1, 2}));
  CHILD_CHECK((l.slice(-2, std::nullopt) == std::vector<int>{3, 4}));
  CHILD_CHECK((l.slice(std::nullopt, -3) == std::vector<int>{0, 1}));
  CHILD_CHECK((l.slice(3, 1).empty()));
  CHILD_CHECK((l.slice(-100, 100) == std::vector<int>{0, 1, 2, 3, 4}));
  l.set(-1, 40);
  l.append(5);
  l.extend(std::vector<int>{6, 7});
  l.insert(0, -1);
  l.insert(1000, 8);  // clamps, as Python's insert
}

TEST(ManagerList, OperationsFromTwoProcesses) {
  Manager m;
  m.start();
  auto l = m.list<int>();
  l.extend(std::vector<int>{0, 1, 2, 3, 4});
  run_child(list_child, l);
  EXPECT_EQ(l.tolist(), (std::vector<int>{-1, 0, 1, 2, 3, 40, 5, 6, 7, 8}));
  EXPECT_EQ(l.pop(), 8);
  EXPECT_EQ(l.pop(0), -1);
  EXPECT_EQ(l.index(40), 4u);
  EXPECT_EQ(l.count(2), 1u);
  l.remove(2);
  EXPECT_EQ(l.count(2), 0u);
  EXPECT_THROW(l.remove(2), mproc::ValueError);
  EXPECT_THROW(l.get(100), mproc::IndexError);
  EXPECT_THROW(l.set(-100, 1), mproc::IndexError);
  l.clear();
  EXPECT_THROW(l.pop(), mproc::IndexError);
  EXPECT_EQ(l.size(), 0u);
}

// ---- set ----------------------------------------------------------------------

void set_child(mproc::SetProxy<std::string> s) {
  CHILD_CHECK(s.contains("a") && !s.contains("z"));
  CHILD_CHECK(!s.add("a"));
  CHILD_CHECK(s.add("child"));
  CHILD_CHECK(s.discard("b"));
  s.update(std::vector<std::string>{"x", "y", "x"});
}

TEST(ManagerSet, OperationsFromTwoProcesses) {
  Manager m;
  m.start();
  auto s = m.set<std::string>();
  s.update(std::vector<std::string>{"a", "b", "c"});
  run_child(set_child, s);
  auto items = s.items();
  EXPECT_EQ(std::set<std::string>(items.begin(), items.end()),
            (std::set<std::string>{"a", "c", "child", "x", "y"}));
  EXPECT_EQ(s.size(), 5u);
  EXPECT_THROW(s.remove("nope"), mproc::KeyError);
  s.remove("a");
  s.clear();
  EXPECT_EQ(s.size(), 0u);
}

// ---- value + lock: a counter shared by several processes ----------------------

void add_under_lock(mproc::ValueProxy<long> v, mproc::LockProxy lock, int n) {
  for (int i = 0; i < n; ++i) {
    std::lock_guard g(lock);
    v.set(v.get() + 1);
  }
}

TEST(ManagerValue, CounterUnderLockFromThreeProcesses) {
  Manager m;
  m.start();
  auto v = m.value<long>(100);
  auto lock = m.lock();
  EXPECT_EQ(v.get(), 100);
  std::vector<Process> ps;
  for (int i = 0; i < 3; ++i) ps.emplace_back(add_under_lock, v, lock, 200);
  for (auto& p : ps) p.start();
  for (auto& p : ps) {
    p.join();
    EXPECT_EQ(p.exitcode(), 0);
  }
  EXPECT_EQ(v.get(), 700);
  EXPECT_FALSE(lock.locked());
}

TEST(ManagerValue, StructValue) {
  Manager m;
  m.start();
  auto v = m.value<Point>(Point{1, 2.5, "start"});
  EXPECT_EQ(v.get(), (Point{1, 2.5, "start"}));
  v.set(Point{2, 0, "next"});
  EXPECT_EQ(v.get().label, "next");
}

// ---- lock, event ----------------------------------------------------------------

void hold_lock_until(mproc::LockProxy lock, mproc::EventProxy held, mproc::EventProxy release) {
  CHILD_CHECK(lock.acquire());
  held.set();
  CHILD_CHECK(release.wait(30s));
  lock.release();
}

TEST(ManagerLock, HeldByAnotherProcess) {
  Manager m;
  m.start();
  auto lock = m.lock();
  auto held = m.event(), release = m.event();
  Process p(hold_lock_until, lock, held, release);
  p.start();
  ASSERT_TRUE(held.wait(30s));
  EXPECT_TRUE(lock.locked());
  EXPECT_FALSE(lock.try_lock());
  EXPECT_FALSE(lock.acquire(true, 10ms));
  release.set();
  EXPECT_TRUE(lock.acquire(true, 30s));  // waits for the child's release
  lock.release();
  EXPECT_THROW(lock.release(), mproc::ValueError);  // not locked
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

void wait_then_set(mproc::EventProxy go, mproc::EventProxy done) {
  CHILD_CHECK(go.wait(30s));
  CHILD_CHECK(go.is_set());
  done.set();
}

TEST(ManagerEvent, WaitSetClearAcrossProcesses) {
  Manager m;
  m.start();
  auto go = m.event(), done = m.event();
  EXPECT_FALSE(go.is_set());
  EXPECT_FALSE(go.wait(10ms));
  Process p(wait_then_set, go, done);
  p.start();
  go.set();
  EXPECT_TRUE(done.wait(30s));
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
  go.clear();
  EXPECT_FALSE(go.is_set());
}

// ---- queue ------------------------------------------------------------------------

void produce(mproc::QueueProxy<std::string> q, int n) {
  for (int i = 0; i < n; ++i) q.put("item" + std::to_string(i));
  q.put_many(std::vector<std::string>{"last1", "last2"});
}

TEST(ManagerQueue, ProducerChildConsumerParent) {
  Manager m;
  m.start();
  auto q = m.queue<std::string>();
  Process p(produce, q, 50);
  p.start();
  for (int i = 0; i < 50; ++i) EXPECT_EQ(q.get(true, 30s), "item" + std::to_string(i));
  std::vector<std::string> rest;
  while (rest.size() < 2) {
    auto part = q.get_many(10, true, 30s);
    rest.insert(rest.end(), part.begin(), part.end());
  }
  EXPECT_EQ(rest, (std::vector<std::string>{"last1", "last2"}));
  p.join();
  EXPECT_TRUE(q.empty());
  EXPECT_THROW(q.get_nowait(), mproc::Empty);
  EXPECT_THROW(q.get(true, 20ms), mproc::Empty);
}

TEST(ManagerQueue, BoundedQueueIsFull) {
  Manager m;
  m.start();
  auto q = m.queue<int>(2);
  q.put(1);
  q.put(2);
  EXPECT_TRUE(q.full());
  EXPECT_THROW(q.put_nowait(3), mproc::Full);
  EXPECT_THROW(q.put(3, true, 20ms), mproc::Full);
  EXPECT_EQ(q.get(), 1);
  q.put(3);
  EXPECT_EQ(q.qsize(), 2u);
  EXPECT_EQ(q.get_many(5), (std::vector<int>{2, 3}));
}

TEST(ManagerQueue, BlockingGetDoesNotHoldUpOtherThreadsOfTheProcess) {
  Manager m;
  m.start();
  auto q = m.queue<int>();
  auto copy = q;  // copies share the process's connection pool
  std::thread consumer([&] { EXPECT_EQ(copy.get(true, 30s), 7); });
  std::this_thread::sleep_for(20ms);  // (the get is likely waiting now; the result holds either way)
  q.put(7);
  consumer.join();
  EXPECT_EQ(q.qsize(), 0u);
}

// ---- barrier ------------------------------------------------------------------------

void barrier_party(mproc::BarrierProxy b, mproc::ListProxy<std::size_t> out) { out.append(b.wait(30s)); }

TEST(ManagerBarrier, ThreeParties) {
  Manager m;
  m.start();
  auto b = m.barrier(3);
  auto out = m.list<std::size_t>();
  EXPECT_EQ(b.parties(), 3u);
  Process p1(barrier_party, b, out), p2(barrier_party, b, out);
  p1.start();
  p2.start();
  out.append(b.wait(30s));
  p1.join();
  p2.join();
  EXPECT_EQ(p1.exitcode(), 0);
  EXPECT_EQ(p2.exitcode(), 0);
  auto idx = out.tolist();
  EXPECT_EQ(std::set<std::size_t>(idx.begin(), idx.end()), (std::set<std::size_t>{0, 1, 2}));
  EXPECT_FALSE(b.broken());
}

TEST(ManagerBarrier, TimeoutBreaksItAndResetRepairs) {
  Manager m;
  m.start();
  auto b = m.barrier(2);
  EXPECT_THROW(b.wait(20ms), mproc::BrokenBarrierError);
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(b.wait(), mproc::BrokenBarrierError);
  b.reset();
  EXPECT_FALSE(b.broken());
  b.abort();
  EXPECT_TRUE(b.broken());
  EXPECT_THROW(m.barrier(0), mproc::ValueError);
}

// ---- namespace ----------------------------------------------------------------------

void namespace_child(mproc::NamespaceProxy ns) {
  CHILD_CHECK(ns.get<int>("x") == 10);
  CHILD_CHECK(ns.get<std::string>("name") == "parent");
  ns.set("reply", std::vector<double>{1.5, 2.5});
  ns.set("name", "child");
}

TEST(ManagerNamespace, NamedValuesOfAnyType) {
  Manager m;
  m.start();
  auto ns = m.namespace_();
  ns.set("x", 10);
  ns.set("name", "parent");
  run_child(namespace_child, ns);
  EXPECT_EQ(ns.get<std::string>("name"), "child");
  EXPECT_EQ(ns.get<std::vector<double>>("reply"), (std::vector<double>{1.5, 2.5}));
  EXPECT_THROW(ns.get<double>("x"), mproc::ValueError);  // set as int
  EXPECT_THROW(ns.get<int>("nope"), mproc::AttributeError);
  EXPECT_TRUE(ns.contains("x"));
  EXPECT_TRUE(ns.erase("x"));
  EXPECT_FALSE(ns.contains("x"));
  EXPECT_EQ(ns.names(), (std::vector<std::string>{"name", "reply"}));
}

// ---- proxies in pool tasks ------------------------------------------------------------

int square_into(mproc::DictProxy<int, int> d, int i) {
  d.set(i, i * i);
  return i;
}

void append_to(std::pair<mproc::ListProxy<int>, int> arg) { arg.first.append(arg.second); }

TEST(ManagerPool, ProxiesGivenToExecutorAndPoolTasks) {
  Manager m;
  m.start();
  auto d = m.dict<int, int>();
  {
    mproc::ProcessPoolExecutor ex(2);
    std::vector<mproc::Future<int>> fs;
    for (int i = 0; i < 20; ++i) fs.push_back(ex.submit(square_into, d, i));
    for (int i = 0; i < 20; ++i) EXPECT_EQ(fs[static_cast<std::size_t>(i)].get(), i);
  }
  EXPECT_EQ(d.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(d.get(i), i * i);

  auto l = m.list<int>();
  {
    mproc::Pool pool(2);
    std::vector<std::pair<mproc::ListProxy<int>, int>> args;
    for (int i = 0; i < 10; ++i) args.emplace_back(l, i);
    pool.map(append_to, args);
  }
  auto got = l.tolist();
  EXPECT_EQ(std::set<int>(got.begin(), got.end()), (std::set<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
}

// ---- registered classes ----------------------------------------------------------------

struct Counter {
  long total = 0;
  long inc(long by) { return total += by; }
  long get() const { return total; }
  void reset() { total = 0; }
  std::string describe(const std::string& prefix, int width) const {
    return prefix + ":" + std::to_string(total) + "/" + std::to_string(width);
  }
};

void register_counter(Manager& m) {
  m.register_type<Counter>("Counter", mproc::method("inc", &Counter::inc), mproc::method("get", &Counter::get),
                           mproc::method("reset", &Counter::reset),
                           mproc::method("describe", &Counter::describe));
}

void bump(mproc::ObjectProxy<Counter> c, int n) {
  for (int i = 0; i < n; ++i) c.call_method("inc", &Counter::inc, 1);
}

TEST(ManagerRegister, UserClassServedByMethodName) {
  Manager m;
  register_counter(m);
  m.start();
  auto c = m.create<Counter>("Counter");
  EXPECT_EQ(c.call_method<long>("inc", 5L), 5);
  Process p1(bump, c, 100), p2(bump, c, 100);
  p1.start();
  p2.start();
  p1.join();
  p2.join();
  EXPECT_EQ(c.call_method("get", &Counter::get), 205);
  EXPECT_EQ(c.call_method<std::string>("describe", "n", 3), "n:205/3");
  c.call_method("reset", &Counter::reset);
  EXPECT_EQ(c.call_method<long>("get"), 0);
  // Wrong argument types, unknown methods and unregistered types: error replies.
  try {
    c.call_method<long>("inc", 5);  // int, not long
    ADD_FAILURE() << "no error";
  } catch (const mproc::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("takes (long), not (int)"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c.call_method<long>("nope"), mproc::ValueError);
  EXPECT_THROW(m.create<Counter>("NotRegistered"), mproc::ValueError);
  EXPECT_EQ(c.call_method<long>("get"), 0);
}

// ---- named objects, release, lifecycle ----------------------------------------------------

TEST(ManagerObjects, NamedObjectsAreSharedAndTypeChecked) {
  Manager m;
  m.start();
  auto a = m.dict<std::string, int>("board");
  auto b = m.dict<std::string, int>("board");
  EXPECT_EQ(a.id(), b.id());
  a.set("x", 1);
  EXPECT_EQ(b.get("x"), 1);
  EXPECT_THROW((m.dict<std::string, double>("board")), mproc::ValueError);
  EXPECT_THROW(m.list<int>("board"), mproc::ValueError);
  EXPECT_NE((m.dict<std::string, int>().id()), a.id());  // anonymous: always new
}

TEST(ManagerObjects, ReleaseDropsTheObject) {
  Manager m;
  m.start();
  const std::size_t before = m.object_count();
  auto d = m.dict<int, int>();
  EXPECT_EQ(m.object_count(), before + 1);
  m.release(d);
  EXPECT_EQ(m.object_count(), before);
  EXPECT_THROW(d.size(), mproc::ValueError);
}

TEST(ManagerLifecycle, MisuseIsAValueError) {
  Manager m;
  EXPECT_THROW((m.dict<int, int>()), mproc::ValueError);
  m.start();
  EXPECT_THROW(m.start(), mproc::ValueError);
  mproc::DictProxy<int, int> empty;
  EXPECT_THROW(empty.size(), mproc::ValueError);
  m.shutdown();
  EXPECT_FALSE(m.running());
  m.shutdown();  // twice is fine
}

TEST(ManagerLifecycle, ServerDeathIsConnectionClosed) {
  Manager m;
  m.start();
  auto d = m.dict<int, int>();
  d.set(1, 1);
  ASSERT_NE(m.server_process(), nullptr);
  m.server_process()->kill();
  m.server_process()->join();
  EXPECT_THROW(d.set(2, 2), mproc::ConnectionClosed);  // the pooled connection
  EXPECT_THROW(d.get(1), mproc::ConnectionClosed);     // a new connection is refused
  auto other = d;
  EXPECT_THROW(other.size(), mproc::ConnectionClosed);
  m.shutdown();
}

TEST(ManagerLifecycle, ShutdownThenProxyIsConnectionClosed) {
  Manager m;
  m.start();
  auto d = m.dict<int, int>();
  d.set(1, 1);
  m.shutdown();
  EXPECT_THROW(d.get(1), mproc::ConnectionClosed);
}

void start_manager_and_wait(mproc::Connection report) {
  Manager m;
  m.start();
  report.send(static_cast<int>(m.server_process()->pid()));
  for (;;) ::pause();
}

TEST(ManagerLifecycle, ServerDiesWithItsOwner) {
  auto [mine, theirs] = mproc::Pipe();
  mproc::ProcessOptions o;
  o.start_method = mproc::StartMethod::fork;
  Process owner(o, start_manager_and_wait, std::move(theirs));
  owner.start();
  const pid_t server = mine.recv<int>();
  owner.kill();
  owner.join();
  EXPECT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(server); }, 10000));
  EXPECT_TRUE(mproc::test::reap_orphans());
}

void write_pid(mproc::DictProxy<std::string, int> d) { d.set("child", static_cast<int>(::getpid())); }

TEST(ManagerAddresses, StartOnAUnixPathTcpV4AndV6) {
  const std::string path = (std::filesystem::temp_directory_path() /
                            ("mproc-mgr-test-" + std::to_string(::getpid()) + ".sock")).string();
  std::vector<mproc::Address> where = {mproc::Address::unix_socket(path), mproc::Address::tcp("127.0.0.1", 0),
                                       mproc::Address::tcp("::1", 0)};
  for (const auto& a : where) {
    Manager m({.address = a});
    try {
      m.start();
    } catch (const mproc::OSError& e) {
      if (a.host == "::1") continue;  // no IPv6 loopback here
      throw;
    }
    auto d = m.dict<std::string, int>();
    run_child(write_pid, d);
    EXPECT_GT(d.get("child", 0), 0) << a.to_string();
    if (a.kind == mproc::Address::Kind::unix_socket) {
      EXPECT_TRUE(std::filesystem::exists(path));
    }
    m.shutdown();
  }
  EXPECT_FALSE(std::filesystem::exists(path));  // the server unlinked its socket
}

// ---- remote use over TCP ----------------------------------------------------------------

void serve_on(mproc::Address where, std::string key, mproc::Connection report) {
  Manager server({.address = where, .authkey = key});
  register_counter(server);
  server.serve_forever([&](const mproc::Address& a) { report.send(a); });
}

TEST(ManagerRemote, ServeForeverOverTcpAndConnect) {
  const std::string key = "remote-key";
  auto [mine, theirs] = mproc::Pipe();
  Process server(serve_on, mproc::Address::tcp("127.0.0.1", 0), key, std::move(theirs));
  // A daemon: should a step below throw before stop_server(), the destructor
  // kills the server instead of joining one that serves for ever (a hang).
  server.set_daemon(true);
  server.start();
  const auto address = mine.recv<mproc::Address>();
  EXPECT_NE(address.port, 0);
  {
    Manager a({.address = address, .authkey = key});
    register_counter(a);
    a.connect();
    auto board = a.dict<std::string, std::string>("board");
    board.set("job-1", "done");
    auto c = a.create<Counter>("Counter", "counter");
    c.call_method("inc", &Counter::inc, 3);

    Manager b({.address = address, .authkey = key});
    b.connect();
    EXPECT_EQ((b.dict<std::string, std::string>("board").get("job-1")), "done");
    EXPECT_EQ(b.create<Counter>("Counter", "counter").call_method("get", &Counter::get), 3);

    Manager wrong({.address = address, .authkey = "not the key"});
    EXPECT_THROW(wrong.connect(), mproc::AuthenticationError);
    EXPECT_EQ(board.size(), 1u);  // still serving

    b.stop_server();
  }
  server.join();
  EXPECT_EQ(server.exitcode(), 0);
}

}  // namespace
