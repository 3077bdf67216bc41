// What the manager headers do without <memory>, <functional>, <map> and
// <chrono> (issue 15): registered classes served through type-erased
// methods (the member pointer kept as bytes), snapshot iterators sharing
// their items through a count of their own, serve_forever's callable, and
// ManagerOptions::handshake_deadline as a Timeout.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <iterator>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mproc/connection.hpp"
#include "mproc/managers.hpp"
#include "mproc/process.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Manager;

// ---- registered classes: every kind of member pointer survives the erasure ----------

struct Shape {
  virtual ~Shape() = default;
  virtual std::string name() const { return "shape"; }
};
struct Padding {
  long pad[3] = {1, 2, 3};
  long sum() const { return pad[0] + pad[1] + pad[2]; }
};
// A second base, a virtual override: pointers to member that carry a `this`
// adjustment or a vtable offset rather than an address.
struct Square : Padding, Shape {
  long side = 0;
  std::string name() const override { return "square"; }
  void set_side(long s) { side = s; }
  long area() const { return side * side; }
  std::string first() const { return "first"; }
  std::string second() const { return "second"; }
};

TEST(ManagerRegister, ErasedMethodsKeepVirtualAndAdjustedMemberPointers) {
  Manager m;
  m.register_type<Square>("Square", mproc::method("set_side", &Square::set_side),
                          mproc::method("area", &Square::area), mproc::method("name", &Square::name),
                          // Padding's, as a member of Square (its `this` is adjusted).
                          mproc::method("sum", static_cast<long (Square::*)() const>(&Square::sum)),
                          // A name given twice: the first serves, as before.
                          mproc::method("which", &Square::first), mproc::method("which", &Square::second));
  m.start();
  auto sq = m.create<Square>("Square");
  sq.call_method("set_side", &Square::set_side, 7L);
  EXPECT_EQ(sq.call_method("area", &Square::area), 49);
  EXPECT_EQ(sq.call_method("name", &Square::name), "square");  // the override, through the vtable
  EXPECT_EQ(sq.call_method<long>("sum"), 6);                   // Padding's, on the Square
  EXPECT_EQ(sq.call_method<std::string>("which"), "first");
  // Each instance is its own object, made by the erased factory.
  auto other = m.create<Square>("Square");
  EXPECT_EQ(other.call_method("area", &Square::area), 0);
  EXPECT_EQ(sq.call_method("area", &Square::area), 49);
}

struct Tally {
  long n = 0;
  long add(long k) { return n += k; }
};
struct Other {
  long get() const { return 42; }
};

TEST(ManagerRegister, TypesRegisteredAfterAMoveAndReregisteredAreServed) {
  Manager first;
  first.register_type<Tally>("Tally", mproc::method("add", &Tally::add));
  Manager m(std::move(first));  // the registry moves with it
  // A name registered again: the later registration replaces the earlier.
  m.register_type<Other>("Thing", mproc::method("get", &Other::get));
  m.register_type<Tally>("Thing", mproc::method("add", &Tally::add));
  first.register_type<Other>("Other", mproc::method("get", &Other::get));  // a moved-from one still works
  m.start();
  EXPECT_EQ(m.create<Tally>("Tally").call_method("add", &Tally::add, 5L), 5);
  EXPECT_EQ(m.create<Tally>("Thing").call_method("add", &Tally::add, 2L), 2);
  EXPECT_THROW(m.create<Other>("Other"), mproc::ValueError);  // registered with the moved-from manager only
}

// ---- snapshot iterators ------------------------------------------------------------

TEST(ManagerDict, SnapshotIteratorsCopyAndOutliveTheLoop) {
  Manager m;
  m.start();
  auto d = m.dict<std::string, int>({{"a", 1}, {"b", 2}, {"c", 3}});
  static_assert(std::input_iterator<decltype(d.begin())>);
  auto it = d.begin();  // the snapshot lives as long as an iterator on it
  auto copy = it;
  auto post = it++;
  EXPECT_EQ(post->first, "a");
  EXPECT_EQ(copy->first, "a");
  EXPECT_EQ(it->first, "b");
  d.clear();  // the snapshot keeps what it fetched
  std::vector<std::pair<std::string, int>> rest;
  for (; it != d.end(); ++it) rest.push_back(*it);
  EXPECT_EQ(rest, (std::vector<std::pair<std::string, int>>{{"b", 2}, {"c", 3}}));
  EXPECT_FALSE(copy == d.end());

  auto l = m.list<int>({4, 5, 6});
  auto items = d.snapshot_items();
  EXPECT_EQ(items.size(), 0u);
  int sum = 0;
  for (int x : l) sum += x;
  EXPECT_EQ(sum, 15);
  EXPECT_TRUE(decltype(d.begin()){} == std::default_sentinel);  // an empty iterator is at the end
}

TEST(ManagerDict, SnapshotIteratorCopiesAcrossThreads) {
  Manager m;
  m.start();
  auto l = m.list<int>({1, 2, 3});
  const auto it = l.begin();
  // Copies made and dropped on four threads at once: the count is atomic
  // (a lost update frees the items under the last copy: ASan/TSan see it).
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([it] {
      for (int i = 0; i < 20000; ++i) {
        auto c = it;
        ASSERT_EQ(*c, 1);
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(*it, 1);
}

// ---- serve_forever's callback --------------------------------------------------------

void serve_with_std_function(mproc::Connection report) {
  Manager server({.address = mproc::Address::tcp("127.0.0.1", 0), .authkey = "k"});
  std::function<void(const mproc::Address&)> ready = [&](const mproc::Address& a) { report.send(a); };
  server.serve_forever(ready);  // an lvalue std::function, as the old signature took
}

TEST(ManagerRemote, ServeForeverTakesAStdFunction) {
  auto [mine, theirs] = mproc::Pipe();
  mproc::Process server(serve_with_std_function, std::move(theirs));
  server.set_daemon(true);  // killed, not joined for ever, should a step below throw
  server.start();
  const auto address = mine.recv<mproc::Address>();
  Manager client({.address = address, .authkey = "k"});
  client.connect();
  client.stop_server();
  client.shutdown();
  server.join();
  EXPECT_EQ(server.exitcode(), 0);
}

// ---- handshake_deadline as a Timeout -----------------------------------------------------

TEST(ManagerOptions, HandshakeDeadlineIsATimeoutAndMustBeSet) {
  EXPECT_EQ(mproc::ManagerOptions{}.handshake_deadline.nanoseconds(), 3'000'000'000);  // the default, 3 s
  mproc::ManagerOptions o{.handshake_deadline = 250ms};
  EXPECT_EQ(o.handshake_deadline->count(), 250'000'000);
  // Empty would mean "no time limit" for silent peers: refused before
  // anything listens or forks.
  Manager m({.handshake_deadline = std::nullopt});
  try {
    m.start();
    ADD_FAILURE() << "start() accepted an empty handshake_deadline";
  } catch (const mproc::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("handshake_deadline"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(m.running());
  EXPECT_EQ(m.server_process(), nullptr);
  Manager s({.address = mproc::Address::tcp("127.0.0.1", 0), .handshake_deadline = std::nullopt});
  EXPECT_THROW(s.serve_forever([](const mproc::Address&) { ADD_FAILURE() << "listening"; }), mproc::ValueError);
  EXPECT_FALSE(s.running());
}

}  // namespace
