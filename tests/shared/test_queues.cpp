// Queue / SimpleQueue / JoinableQueue: semantics, every start method, large
// messages, MPMC count + checksum, and producers/consumers SIGKILLed inside
// put/get (at the fault hook, with the queue's lock held) or at random.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "mproc/queues.hpp"
#include "mproc/sharedctypes.hpp"
#include "mproc/synchronize.hpp"
#include "shared/queue_fault_hook.hpp"
#include "shared_test_util.hpp"
#include "support.hpp"

namespace {

using namespace sharedtest;
using mproc::JoinableQueue;
using mproc::Queue;
using Msg = std::tuple<int, std::string>;

TEST(Queue, FifoNowaitTimeoutsAndSizes) {
  Queue<Msg> q(2);
  EXPECT_TRUE(q.empty());
  EXPECT_THROW(q.get_nowait(), mproc::Empty);
  EXPECT_THROW(q.get(true, 10ms), mproc::Empty);
  q.put({1, "one"});
  q.put_nowait({2, "two"});
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.qsize(), 2u);
  EXPECT_THROW(q.put_nowait({3, "three"}), mproc::Full);
  EXPECT_THROW(q.put({3, "three"}, true, 10ms), mproc::Full);
  EXPECT_EQ(q.get(), Msg(1, "one"));
  EXPECT_EQ(q.get_nowait(), Msg(2, "two"));
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.qsize(), 0u);
  q.close();
  EXPECT_THROW(q.put({4, "four"}), mproc::Error);
}

TEST(Queue, RingFullBlocksUntilSpaceThenWrapsAround) {
  Queue<std::string> q(mproc::QueueOptions{.ring_bytes = 4096});
  const std::string item(500, 'x');
  int n = 0;
  try {
    for (;;) {
      q.put_nowait(item + std::to_string(n));
      ++n;
    }
  } catch (const mproc::Full&) {
  }
  EXPECT_GT(n, 3);
  EXPECT_LT(n, 10);
  for (int round = 0; round < 50; ++round) {  // many wrap-arounds of the ring
    EXPECT_EQ(q.get(), item + std::to_string(round));
    q.put(item + std::to_string(n++));
  }
}

struct Unserializable {
  int x = 0;
  template <class A>
  void save(A&) const {
    throw std::runtime_error("cannot serialize this one");
  }
  template <class A>
  void load(A&) {}
};

TEST(Queue, PutThatCannotSerializeFailsInTheCaller) {
  Queue<Unserializable> q;
  EXPECT_THROW(q.put(Unserializable{}), std::runtime_error);
  EXPECT_TRUE(q.empty());
}

void put_hello(Queue<Msg> q) { q.put({42, "hello"}); }
void echo_n(Queue<std::string> in, Queue<std::string> out, int n) {
  for (int i = 0; i < n; ++i) out.put(in.get(true, 60s));
}

class QueueByMethod : public testing::TestWithParam<StartMethod> {};

TEST_P(QueueByMethod, MessageFromChild) {
  Queue<Msg> q;
  mproc::Process p(with(GetParam()), put_hello, q);
  p.start();
  EXPECT_EQ(q.get(true, 60s), Msg(42, "hello"));
  join_ok(p);
}

TEST_P(QueueByMethod, MessagesLargerThanTheRingBothWays) {
  Queue<std::string> to(mproc::QueueOptions{.ring_bytes = 4096}), from(mproc::QueueOptions{.ring_bytes = 4096});
  mproc::Process p(with(GetParam()), echo_n, to, from, 4);
  p.start();
  std::vector<std::string> sent = {std::string(100000, 'a'), "small", std::string(3 << 20, 'b'),
                                   std::string(5000, 'c')};
  for (auto& s : sent) to.put(s);
  for (auto& s : sent) EXPECT_EQ(from.get(true, 60s), s);
  join_ok(p);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, QueueByMethod, MPROC_ALL_METHODS);

TEST(Queue, UnreadLargeMessagesLeaveNothingBehind) {
  Queue<std::vector<char>> q(mproc::QueueOptions{.ring_bytes = 4096});
  q.put(std::vector<char>(1 << 20, 'z'));
  q.put(std::vector<char>(1 << 20, 'y'));
  EXPECT_EQ(q.get().front(), 'z');
  // q goes away with a 1 MiB message unread: the leak check sees no fd, no /dev/shm entry.
}

// ---- many producers, many consumers ------------------------------------------------------
// A message is producer * kStride + seq; consumers mark it in `seen` (a
// second mark is a duplicate) and add it to their checksum.
constexpr std::uint64_t kStride = 1u << 24;

void produce(Queue<std::uint64_t> q, int id, int n, mproc::Array<std::uint64_t> progress) {
  for (int i = 0; i < n; ++i) {
    q.put(static_cast<std::uint64_t>(id) * kStride + static_cast<std::uint64_t>(i));
    progress.store(static_cast<std::size_t>(id), static_cast<std::uint64_t>(i) + 1);
  }
}

void consume(Queue<std::uint64_t> q, mproc::Array<std::uint8_t> seen, mproc::Array<std::uint64_t> stats, int n_per) {
  for (;;) {
    std::uint64_t m = q.get(true, 120s);
    if (m == ~std::uint64_t{0}) return;
    const std::size_t idx = (m / kStride) * static_cast<std::uint64_t>(n_per) + m % kStride;
    if (seen.fetch_add(idx, 1) != 0) stats.fetch_add(2, 1);  // duplicate
    stats.fetch_add(0, 1);  // count
    stats.fetch_add(1, m);  // checksum
  }
}

void run_mpmc(int producers, int consumers, int n_per, int kill_consumers, int kill_producer_at_ms) {
  Queue<std::uint64_t> q(mproc::QueueOptions{.maxsize = 10000, .ring_bytes = 1 << 16});
  const std::size_t total = static_cast<std::size_t>(producers) * static_cast<std::size_t>(n_per);
  mproc::Array<std::uint8_t> seen(total, mproc::no_lock);
  mproc::Array<std::uint64_t> stats(3, mproc::no_lock);
  mproc::Array<std::uint64_t> progress(static_cast<std::size_t>(producers), mproc::no_lock);
  std::vector<mproc::Process> ps, cs;
  for (int i = 0; i < producers; ++i) ps.emplace_back(with(StartMethod::fork), produce, q, i, n_per, progress);
  for (int i = 0; i < consumers + kill_consumers; ++i)
    cs.emplace_back(with(StartMethod::fork), consume, q, seen, stats, n_per);
  for (auto& c : cs) c.start();
  for (auto& p : ps) p.start();
  std::mt19937 rng(12345);
  for (int k = 0; k < kill_consumers; ++k) {  // victims: the last consumers, at random moments mid-stream
    ASSERT_TRUE(mproc::test::eventually([&] { return stats[0] > total / 8 * (k + 1); }, 60000));
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 2000));
    cs[static_cast<std::size_t>(consumers + k)].kill();
  }
  bool producer_killed = false;
  if (kill_producer_at_ms >= 0) {
    ASSERT_TRUE(mproc::test::eventually([&] { return progress[0] > 100; }, 60000));
    std::this_thread::sleep_for(std::chrono::milliseconds(kill_producer_at_ms));
    producer_killed = ps[0].is_alive();
    ps[0].kill();
    ps[0].join();
  }
  for (std::size_t i = 0; i < ps.size(); ++i)
    if (!(i == 0 && kill_producer_at_ms >= 0)) join_ok(ps[i], 120s);
  for (int i = 0; i < consumers; ++i) q.put(~std::uint64_t{0});
  for (int i = 0; i < consumers; ++i) join_ok(cs[static_cast<std::size_t>(i)], 120s);
  for (int k = 0; k < kill_consumers; ++k) cs[static_cast<std::size_t>(consumers + k)].join();
  EXPECT_EQ(stats[2], 0u) << "duplicates";
  EXPECT_TRUE(q.empty());
  const auto per = static_cast<std::uint64_t>(n_per);
  // A killed producer's messages that arrived are a prefix of its sequence:
  // all it saw put() return for (progress), and perhaps one more (killed
  // between the commit and the progress store). The rest never entered.
  std::uint64_t delivered0 = per;
  if (kill_producer_at_ms >= 0) {
    std::uint64_t k = 0;
    while (k < per && seen[k] != 0) ++k;
    for (std::uint64_t i = k; i < per; ++i) ASSERT_EQ(seen[i], 0) << "message " << i << " after a gap at " << k;
    EXPECT_GE(k, progress[0]);
    EXPECT_LE(k, progress[0] + 1);
    delivered0 = k;
    EXPECT_TRUE(producer_killed || k == per);
  }
  std::uint64_t expect_count = 0, expect_sum = 0, missing = 0;
  for (int p = 0; p < producers; ++p) {
    const std::uint64_t n = p == 0 ? delivered0 : per;
    expect_count += n;
    for (std::uint64_t i = 0; i < n; ++i) {
      expect_sum += static_cast<std::uint64_t>(p) * kStride + i;
      if (seen[static_cast<std::size_t>(static_cast<std::uint64_t>(p) * per + i)] == 0) ++missing;
    }
  }
  if (kill_consumers == 0) {
    EXPECT_EQ(missing, 0u);
    EXPECT_EQ(stats[0], expect_count);
    EXPECT_EQ(stats[1], expect_sum);
  } else {
    // A killed consumer loses at most the message in its hands.
    EXPECT_LE(missing, static_cast<std::uint64_t>(kill_consumers));
  }
}

TEST(QueueStress, FourProducersFourConsumersNothingLostOrDuplicated) { run_mpmc(4, 4, 100000, 0, -1); }

// The full-size run (4 x 4 x 10^6): MPROC_STRESS_FULL=1 or --gtest_also_run_disabled_tests.
TEST(QueueStress, DISABLED_FourProducersFourConsumersMillionEach) { run_mpmc(4, 4, 1000000, 0, -1); }
TEST(QueueStress, FullSizeWhenAsked) {
  if (!std::getenv("MPROC_STRESS_FULL")) GTEST_SKIP() << "set MPROC_STRESS_FULL=1 for 4 x 4 x 10^6";
  run_mpmc(4, 4, 1000000, 0, -1);
}

TEST(QueueFaults, ConsumersKilledAtRandomNeverWedgeTheOthers) { run_mpmc(4, 2, 20000, 2, -1); }
TEST(QueueFaults, ProducerKilledAtRandomLosesAtMostItsMessageInHand) { run_mpmc(4, 4, 20000, 0, 5); }

// ---- killed inside put/get, with the lock held --------------------------------------------
mproc::Event* g_at_hook = nullptr;
const char* g_hook_point = nullptr;
void stop_here(const char* where) {
  if (std::strcmp(where, g_hook_point) == 0) {
    g_at_hook->set();
    for (;;) ::pause();
  }
}

TEST(QueueFaults, ConsumerKilledMidGetLosesNothing) {
  Queue<int> q;
  for (int i = 0; i < 5; ++i) q.put(i);
  mproc::Event at_hook;
  mproc::Process victim(with(StartMethod::fork), [&] {
    g_at_hook = &at_hook;
    g_hook_point = "get:before-commit";
    mproc::detail::set_queue_fault_hook(stop_here);
    (void)q.get();
  });
  victim.start();
  ASSERT_TRUE(at_hook.wait(60s));
  victim.kill();  // inside get, holding the queue's lock, message copied but not committed
  victim.join();
  for (int i = 0; i < 5; ++i) EXPECT_EQ(q.get(true, 30s), i);  // the lock recovered; nothing lost
  EXPECT_TRUE(q.empty());
  q.put(7);
  EXPECT_EQ(q.get(true, 30s), 7);
}

TEST(QueueFaults, ProducerKilledMidPutLeavesQueueConsistent) {
  Queue<int> q(3);
  q.put(1);
  mproc::Event at_hook;
  mproc::Process victim(with(StartMethod::fork), [&] {
    g_at_hook = &at_hook;
    g_hook_point = "put:before-commit";
    mproc::detail::set_queue_fault_hook(stop_here);
    q.put(2);
  });
  victim.start();
  ASSERT_TRUE(at_hook.wait(60s));
  victim.kill();
  victim.join();
  q.put(3, true, 30s);
  EXPECT_EQ(q.qsize(), 2u);  // the half-written 2 never counted
  q.put(4, true, 30s);
  EXPECT_TRUE(q.full());
  EXPECT_EQ(q.get(), 1);
  EXPECT_EQ(q.get(), 3);
  EXPECT_EQ(q.get(), 4);
  EXPECT_TRUE(q.empty());
}

// ---- large messages: slots reused, taken back from dead holders ----------------------------
// Bytes of memory and the largest file size over this process's mproc
// memfds (the queue's ring and its large-message file among them).
struct MemfdUse {
  std::uint64_t allocated = 0, largest_size = 0;
};
MemfdUse memfd_use() {
  MemfdUse u;
  for (int fd : mproc::test::open_fds()) {
    if (mproc::test::describe_fd(fd).find("memfd:mproc-shared") == std::string::npos) continue;
    struct stat st{};
    if (::fstat(fd, &st) != 0) continue;
    u.allocated += static_cast<std::uint64_t>(st.st_blocks) * 512;
    u.largest_size = std::max<std::uint64_t>(u.largest_size, static_cast<std::uint64_t>(st.st_size));
  }
  return u;
}

TEST(Queue, LargeMessagesAcrossTheThresholdReuseOneSlot) {
  Queue<std::string> q(mproc::QueueOptions{.ring_bytes = 4096});  // over 1 KiB goes aside
  for (std::size_t n : {std::size_t{1000}, std::size_t{1024}, std::size_t{1025}, std::size_t{12289}}) {
    const std::string s(n, static_cast<char>('a' + n % 26));
    q.put(s);
    EXPECT_EQ(q.get(), s) << n;
  }
  const std::string big((1 << 20) + 3, 'q');
  for (int i = 0; i < 20; ++i) {
    q.put(big);
    EXPECT_EQ(q.get(), big);
  }
  // One slot of 2 MiB, written and read 20 times: the file did not grow by
  // a fresh region per message (it was 20 MiB and more with fresh offsets).
  EXPECT_LE(memfd_use().largest_size, std::uint64_t{4} << 20);
}

TEST(QueueFaults, HoldersOfLargeMessagesKilledLeaveNoSlotBehind) {
  Queue<std::string> q(mproc::QueueOptions{.ring_bytes = 4096});
  const std::string big(1 << 20, 'k');
  for (int round = 0; round < 6; ++round) {
    const bool consumer = round % 2 == 0;
    if (consumer) q.put(big);
    mproc::Event at_hook;
    mproc::Process victim(with(StartMethod::fork), [&] {
      g_at_hook = &at_hook;
      g_hook_point = consumer ? "get:after-commit" : "put:before-commit";
      mproc::detail::set_queue_fault_hook(stop_here);
      if (consumer) (void)q.get();  // stops holding the message's slot
      else q.put(big);              // stops with its slot written, lock held
    });
    victim.start();
    ASSERT_TRUE(at_hook.wait(60s));
    victim.kill();
    victim.join();
  }
  EXPECT_TRUE(q.empty());
  for (int i = 0; i < 3; ++i) {
    q.put(big);
    EXPECT_EQ(q.get(), big);
  }
  // Every dead holder's slot was taken back: about one slot's memory, not
  // one per kill (6 MiB and more).
  EXPECT_LE(memfd_use().allocated, std::uint64_t{3} << 20);
}

// ---- JoinableQueue, SimpleQueue, pool tasks ------------------------------------------------
void worker(JoinableQueue<int> jobs, Queue<int> results) {
  for (;;) {
    int j = jobs.get(true, 60s);
    if (j < 0) {
      jobs.task_done();
      return;
    }
    results.put(j * j);
    jobs.task_done();
  }
}

TEST(JoinableQueue, JoinReturnsWhenEveryItemIsDone) {
  JoinableQueue<int> jobs;
  Queue<int> results;
  EXPECT_TRUE(jobs.join(0ns));
  for (int i = 1; i <= 50; ++i) jobs.put(i);
  EXPECT_FALSE(jobs.join(10ms));
  std::vector<mproc::Process> ws;
  for (int i = 0; i < 2; ++i) ws.emplace_back(with(StartMethod::spawn), worker, jobs, results);
  for (auto& w : ws) w.start();
  EXPECT_TRUE(jobs.join(60s));
  long sum = 0;
  for (int i = 0; i < 50; ++i) sum += results.get(true, 60s);
  EXPECT_EQ(sum, 50L * 51 * 101 / 6);
  jobs.put(-1);
  jobs.put(-1);
  for (auto& w : ws) join_ok(w);
  jobs.join();
  EXPECT_THROW(jobs.task_done(), mproc::Error);
}

void simple_put(mproc::SimpleQueue<std::string> q) { q.put("from child"); }

TEST(SimpleQueue, AcrossForkserver) {
  mproc::SimpleQueue<std::string> q;
  EXPECT_TRUE(q.empty());
  mproc::Process p(with(StartMethod::forkserver), simple_put, q);
  p.start();
  EXPECT_EQ(q.get(), "from child");
  join_ok(p);
}

int pool_put(Queue<int> q, int i) {
  q.put(i * 10);
  return i;
}

TEST(Queue, PoolTasksPutIntoAQueueHandle) {
  Queue<int> q;
  {
    mproc::Pool pool(2);
    std::vector<mproc::AsyncResult<int>> rs;
    for (int i = 0; i < 10; ++i) rs.push_back(pool.apply_async(pool_put, q, i));
    for (auto& r : rs) r.get();
  }
  int sum = 0;
  for (int i = 0; i < 10; ++i) sum += q.get(true, 30s);
  EXPECT_EQ(sum, 450);
}

}  // namespace
