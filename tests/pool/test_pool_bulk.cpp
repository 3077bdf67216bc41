// Large task arguments and results in the local pool (issue 13): above
// TaskArena::kThreshold they travel through the worker's memfd arena
// (src/pool/task_arena.hpp), the socket and the ring carry descriptors.
// Byte-exact round trips around the threshold; a worker killed (-9) while its
// task holds a large argument fails only that task and leaves no arena
// behind; a worker whose result descriptor lies fails its task with
// WorkerFault naming the byte count, and the pool goes on.
// Pool::map encodes large chunks when it sends them (Call::lazy), straight
// into the arena: the same bytes as the eager encoding; a chunk whose
// encoding throws then fails alone; map settles every chunk before it
// returns or throws (the items are read until the last one is sent).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "mproc/executor.hpp"
#include "mproc/pool.hpp"
#include "pool/task_arena.hpp"
#include "pool/pool_protocol.hpp"
#include "pool_test_util.hpp"
#include "pool/result_ring.hpp"
#include "support.hpp"

using namespace pooltest;
using Bytes = std::vector<unsigned char>;
using mproc::Pool;
using mproc::detail::TaskArena;

namespace {

constexpr std::size_t kThreshold = TaskArena::kThreshold;

Bytes pattern(std::size_t n, unsigned seed) {
  Bytes b(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : b) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<unsigned char>(x >> 24);
  }
  return b;
}

Bytes echo(Bytes b) { return b; }
std::uint64_t checksum(Bytes b) {
  std::uint64_t s = 0;
  for (std::size_t i = 0; i < b.size(); ++i) s = s * 31 + static_cast<std::uint64_t>(b[i]);
  return s;
}

// The memfds of this process whose name contains `name`.
int memfds_named(const std::string& name) {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().find("memfd:" + name) != std::string::npos) ++n;
  }
  return n;
}

// Writes its pid to `started` once it holds its (large) argument, then
// blocks on `gate`: the test kills it meanwhile.
std::uint64_t hold_then_checksum(Bytes b, std::string started, std::string gate) {
  write_file(started, std::to_string(::getpid()));
  wait_for_file(gate);
  return checksum(std::move(b));
}

// A lying worker: the task writes into its own worker's result ring a
// record for itself whose arena descriptor is [off, off + len), then waits
// to be killed (the engine finds the lie and kills this worker). It must be
// the worker's first record (the ring's producer index starts at 0).
int forge_result_descriptor(std::uint64_t off, std::uint64_t len) {
  int ring_fd = -1, bell_fd = -1;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (ec) continue;
    if (target.string().find("memfd:mproc-results") != std::string::npos)
      ring_fd = std::stoi(e.path().filename().string());
    if (target.string().find("eventfd") != std::string::npos) bell_fd = std::stoi(e.path().filename().string());
  }
  if (ring_fd < 0 || bell_fd < 0) return -1;
  auto ring = mproc::detail::ResultRing::attach(::dup(ring_fd));
  mproc::detail::ResultMsg msg{ring.running(), true, false, 0, false, {}};
  msg.bulk_off = off;
  msg.bulk_len = len;
  mproc::Bytes rec;
  mproc::serialize_into(rec, msg);
  if (!ring.try_push(rec)) return -2;
  const std::uint64_t one = 1;  // the engine may sleep: wake it, as the worker does
  if (::write(bell_fd, &one, sizeof one) != sizeof one) return -3;
  for (;;) ::pause();  // SIGKILL ends it
}

// A user type whose save() throws when it is poisoned: its encoding fails
// in the caller's process, when its chunk is sent (lazy) or at submit.
struct Blob {
  Bytes data;
  bool poisoned = false;
  template <class A>
  void save(A& ar) const {
    if (poisoned) throw std::runtime_error("this blob refuses to be encoded");
    ar(data);
  }
  template <class A>
  void load(A& ar) {
    ar(data);
  }
};
std::uint64_t blob_checksum(Blob b) { return checksum(std::move(b.data)); }

// Appends its item's checksum to `log` (one line per task that ran), and
// fails on the item that starts with `bad`.
std::uint64_t log_checksum(Bytes b, std::string log, unsigned char bad) {
  if (!b.empty() && b.front() == bad) throw std::invalid_argument("the bad item");
  const std::uint64_t sum = checksum(std::move(b));
  std::ofstream(log, std::ios::app) << sum << "\n";
  return sum;
}

// The first task (chunk) writes its pid to `started` and blocks on `gate`
// (the test kills its worker meanwhile); every task appends its checksum
// to `log` once the gate is open.
std::uint64_t gated_log_checksum(Bytes b, std::string started, std::string gate, std::string log) {
  if (!file_exists(started)) write_file(started, std::to_string(::getpid()));
  wait_for_file(gate);
  const std::uint64_t sum = checksum(std::move(b));
  std::ofstream(log, std::ios::app) << sum << "\n";
  return sum;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::vector<std::string> out;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

// The lazy encoding of a chunk: exactly the eager one's bytes, by write()
// (items of contiguous bytes) and by encode() alike.
template <class T>
T same(T x) {
  return x;
}
template <class Item>
void expect_lazy_matches_eager(const std::vector<Item>& items) {
  using Fn = Item (*)(Item);
  const Fn fn = &same<Item>;
  auto eager = mproc::detail::make_chunk_call<Fn, Item, false>(fn, items.begin(), items.end());
  auto lazy = mproc::detail::make_lazy_chunk_call<Fn, Item, false>(fn, items.begin(), items.end());
  ASSERT_TRUE(lazy.lazy);
  EXPECT_TRUE(lazy.payload.empty());
  mproc::Bytes encoded;
  lazy.lazy->encode(encoded);
  EXPECT_TRUE(encoded == eager.payload);
  if constexpr (mproc::detail::contiguous_item<Item>::value) {
    ASSERT_EQ(lazy.lazy->exact_size(), eager.payload.size());
    mproc::Bytes written(eager.payload.size());
    lazy.lazy->write(written.data());
    EXPECT_TRUE(written == eager.payload);
  } else {
    EXPECT_EQ(lazy.lazy->exact_size(), 0u);
  }
}

}  // namespace

TEST(PoolBulk, LazyChunkEncodingIsTheEagerOne) {
  expect_lazy_matches_eager(std::vector<Bytes>{pattern(1000, 1), {}, pattern(3, 2)});
  expect_lazy_matches_eager(std::vector<std::string>{"abc", "", std::string(5000, 'x')});
  expect_lazy_matches_eager(std::vector<std::vector<double>>{{1.5, -2.0}, {}, std::vector<double>(300, 0.25)});
  expect_lazy_matches_eager(std::vector<std::vector<std::string>>{{"a", "bc"}, {}});  // not contiguous: encode()
  expect_lazy_matches_eager(std::vector<Bytes>{});
}

// A chunk whose encoding throws when it is sent (a user type's save(), in
// the caller's process, long after map was called) fails with that error,
// alone: the chunks around it run, the worker and its arena go on (same
// pid), and the next map is byte-exact. (Before: the error escaped from
// the engine's send; the chunk never reached its worker and its future
// never settled.)
TEST(PoolBulk, AChunkThatFailsToEncodeWhenSentFailsAlone) {
  Pool pool(1);
  const auto pids = pool.worker_pids();
  std::vector<Blob> items;
  for (unsigned i = 0; i < 6; ++i) items.push_back(Blob{pattern(std::size_t{512} << 10, i), i == 2});
  try {
    (void)pool.map(blob_checksum, items, 1);  // the first chunk is encoded at once (large: the rest go lazy)
    FAIL() << "the poisoned blob was encoded";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "this blob refuses to be encoded");
  }
  items[2].poisoned = false;
  const auto sums = pool.map(blob_checksum, items, 1);
  ASSERT_EQ(sums.size(), items.size());
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(sums[i], checksum(items[i].data)) << i;
  EXPECT_EQ(pool.worker_pids(), pids);  // the worker was never replaced
  const Bytes big = pattern(std::size_t{2} << 20, 9);
  EXPECT_TRUE(pool.map(echo, std::vector<Bytes>{big, big}, 1).back() == big);
}

// Pool::map reads its (large) items until their chunks are sent, so it
// settles every chunk before it throws, as Python's map: when it throws,
// every other task has run. Over a temporary vector too (destroyed once map
// returns). (Before: map threw at the first failed chunk, with the others
// still queued.)
TEST(PoolBulk, MapSettlesEveryChunkBeforeItThrows) {
  TempDir dir;
  Pool pool(1);
  auto make_items = [] {
    std::vector<std::tuple<Bytes, std::string, unsigned char>> v;
    for (unsigned i = 0; i < 8; ++i) {
      Bytes b = pattern(std::size_t{1} << 20, i);
      b.front() = static_cast<unsigned char>(i == 0 ? 200 : 1);
      v.emplace_back(std::move(b), std::string(), static_cast<unsigned char>(200));
    }
    return v;
  };
  auto items = make_items();
  for (auto& t : items) std::get<1>(t) = dir.file("log");
  EXPECT_THROW((void)pool.starmap(log_checksum, std::move(items), 1), mproc::RemoteError);
  EXPECT_EQ(lines_of(dir.file("log")).size(), 7u);
  // And over a temporary vector whose items go lazy (contiguous bytes).
  auto bytes = [] {
    std::vector<Bytes> v;
    for (unsigned i = 0; i < 8; ++i) v.push_back(pattern(std::size_t{1} << 20, i + 20));
    return v;
  };
  const auto expected = bytes();
  const auto out = pool.map(echo, bytes(), 1);
  ASSERT_EQ(out.size(), expected.size());
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_TRUE(out[i] == expected[i]) << i;
}

// SIGKILL while the first chunk of a map runs and lazy chunks queue behind
// it in the arena: only that chunk fails (WorkerCrashed); the chunks
// behind are encoded again, from the caller's items, for the new worker,
// and run byte-exact; nothing is left behind.
TEST(PoolBulk, WorkerKilledUnderALazyMapFailsOnlyItsChunk) {
  TempDir dir;
  Pool pool(1);
  std::vector<std::tuple<Bytes, std::string, std::string, std::string>> items;
  for (unsigned i = 0; i < 5; ++i)
    items.emplace_back(pattern((std::size_t{1} << 20) + i, i + 40), dir.file("started"), dir.file("gate"),
                       dir.file("log"));
  std::thread killer([&] {
    if (!wait_for_file(dir.file("started"))) return;
    EXPECT_EQ(memfds_named("mproc-pool-bulk"), 1);
    ::kill(std::stoi(read_file(dir.file("started"))), SIGKILL);
    write_file(dir.file("gate"), "open");
  });
  try {
    (void)pool.starmap(gated_log_checksum, items, 1);
    ADD_FAILURE() << "the killed chunk returned";
  } catch (const mproc::WorkerCrashed& e) {
    EXPECT_EQ(e.signal(), SIGKILL);
  }
  killer.join();
  const auto logged = lines_of(dir.file("log"));
  ASSERT_EQ(logged.size(), items.size() - 1);
  for (std::size_t i = 1; i < items.size(); ++i)
    EXPECT_EQ(logged[i - 1], std::to_string(checksum(std::get<0>(items[i])))) << i;
  EXPECT_EQ(memfds_named("mproc-pool-bulk"), 1);
}

TEST(PoolBulk, EchoIsByteExactAroundTheThreshold) {
  Pool pool(2);
  // The serialized payload carries a size tag: sizes on both sides of it.
  const std::vector<std::size_t> sizes = {kThreshold - 64, kThreshold - 1, kThreshold, kThreshold + 1,
                                          std::size_t{1} << 20, std::size_t{16} << 20};
  std::vector<Bytes> items;
  for (std::size_t i = 0; i < sizes.size(); ++i) items.push_back(pattern(sizes[i], static_cast<unsigned>(i)));
  auto out = pool.map(echo, items, 1);
  ASSERT_EQ(out.size(), items.size());
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_TRUE(out[i] == items[i]) << "size " << sizes[i];
  // Again, so reused arena regions are checked too (the same pages, new bytes).
  std::reverse(items.begin(), items.end());
  for (auto& b : items) b = pattern(b.size(), static_cast<unsigned>(b.size()));
  out = pool.map(echo, items, 1);
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_TRUE(out[i] == items[i]) << "round 2, item " << i;
}

TEST(PoolBulk, ManyLargeTasksInFlightStayInOrderAndExact) {
  Pool pool(2);
  std::vector<Bytes> items;
  for (unsigned i = 0; i < 64; ++i) items.push_back(pattern((std::size_t{1} << 20) + i * 4097, i));
  auto sums = pool.map(checksum, items, 1);
  auto back = pool.map(echo, items, 1);
  for (std::size_t i = 0; i < items.size(); ++i) {
    EXPECT_EQ(sums[i], checksum(items[i])) << i;
    EXPECT_TRUE(back[i] == items[i]) << i;
  }
}

TEST(PoolBulk, ExecutorSubmitOf16MiBVector) {
  mproc::ProcessPoolExecutor ex(1);
  std::vector<std::uint32_t> v(std::size_t{4} << 20);
  std::iota(v.begin(), v.end(), 7u);
  auto f = ex.submit([](std::vector<std::uint32_t> x) {
    for (auto& e : x) e = e * 3 + 1;
    return x;
  }, v);
  auto r = f.get();
  ASSERT_EQ(r.size(), v.size());
  for (std::size_t i = 0; i < v.size(); ++i)
    if (r[i] != v[i] * 3 + 1) FAIL() << "element " << i;
}

// SIGKILL while the task reads its large argument from the arena (the
// regions of it and of the task queued behind it are held): only that task
// fails; the one queued behind runs on the new worker, byte-exact; the dead
// worker's arena is gone (one per live worker: the memfd count), no fd or
// /dev/shm entry is left (tests/main.cpp checks).
TEST(PoolBulk, WorkerKilledHoldingALargeArgumentFailsOnlyItsTask) {
  TempDir dir;
  mproc::ProcessPoolExecutor ex(1);
  const Bytes big = pattern(std::size_t{3} << 20, 1);
  const Bytes next = pattern(std::size_t{2} << 20, 2);
  auto held = ex.submit(hold_then_checksum, big, dir.file("started"), dir.file("gate"));
  auto behind = ex.submit(checksum, next);
  ASSERT_TRUE(wait_for_file(dir.file("started")));
  EXPECT_EQ(memfds_named("mproc-pool-bulk"), 1);  // the large arguments went through the arena
  const pid_t pid = std::stoi(read_file(dir.file("started")));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  try {
    held.get();
    FAIL() << "the killed task returned";
  } catch (const mproc::WorkerCrashed& e) {
    EXPECT_EQ(e.signal(), SIGKILL);
    EXPECT_EQ(e.pid(), pid);
  }
  EXPECT_EQ(behind.get(), checksum(next));
  EXPECT_EQ(ex.submit(checksum, big).get(), checksum(big));
  EXPECT_EQ(memfds_named("mproc-pool-bulk"), 1);  // the dead worker's arena went with it
  ex.shutdown();
  EXPECT_EQ(memfds_named("mproc-pool-bulk"), 0);
}

// A result descriptor outside the results area, or over the pool's result
// limit: WorkerFault for that task, naming the byte count; nothing is read
// or allocated on its word; the pool replaces the worker and goes on.
class PoolBulkLie : public ::testing::TestWithParam<std::pair<std::uint64_t, std::uint64_t>> {};

TEST_P(PoolBulkLie, ALyingResultDescriptorFailsOnlyItsTask) {
  const auto [off, len] = GetParam();
  mproc::ProcessPoolExecutor ex(1);
  auto f = ex.submit(forge_result_descriptor, off, len);
  try {
    (void)f.get();
    FAIL() << "the forged result was accepted";
  } catch (const mproc::WorkerFault& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(len) + " bytes"), std::string::npos) << e.what();
  }
  const Bytes big = pattern(std::size_t{1} << 20, 3);
  EXPECT_TRUE(ex.submit(echo, big).get() == big);
}

INSTANTIATE_TEST_SUITE_P(
    Descriptors, PoolBulkLie,
    ::testing::Values(std::pair<std::uint64_t, std::uint64_t>{TaskArena::kResultsCap - 4096, std::uint64_t{1} << 20},
                      std::pair<std::uint64_t, std::uint64_t>{0, TaskArena::kResultsCap + 1},
                      std::pair<std::uint64_t, std::uint64_t>{0, std::uint64_t{1} << 40},
                      std::pair<std::uint64_t, std::uint64_t>{~std::uint64_t{0} - 10, 4096}));

// The arena's allocator: regions in FIFO order, back to the start as soon
// as it is free there, never overlapping what is held.
TEST(PoolBulk, RegionFifoReusesTheStartAndNeverOverlaps) {
  mproc::detail::RegionFifo fifo(1024);
  EXPECT_EQ(fifo.take(300, 1), std::optional<std::size_t>(0));
  EXPECT_EQ(fifo.take(300, 2), std::optional<std::size_t>(320));  // aligned to 64
  EXPECT_EQ(fifo.take(300, 3), std::optional<std::size_t>(640));
  EXPECT_EQ(fifo.take(300, 4), std::nullopt);  // 960..1024 is too small, the start is held
  EXPECT_TRUE(fifo.give_back(1));
  EXPECT_EQ(fifo.take(300, 4), std::optional<std::size_t>(0));  // the start again
  EXPECT_EQ(fifo.take(64, 5), std::nullopt);  // [320, 1024) and [0, 320) held
  EXPECT_TRUE(fifo.give_back(3));             // out of order: a hole until 2 goes
  EXPECT_EQ(fifo.take(64, 5), std::nullopt);
  EXPECT_TRUE(fifo.give_back(2));
  EXPECT_EQ(fifo.take(64, 5), std::optional<std::size_t>(320));
  EXPECT_EQ(fifo.take(2048, 6), std::nullopt);  // larger than the area
  EXPECT_FALSE(fifo.give_back(99));
}

// A stream whose tasks in flight vary (the scheduler's prefetch grows and
// shrinks) always finds room and stays near the start of the area. Before,
// the allocator went back to the start as soon as one region fitted there,
// and the next task found [end, first) full although nearly all the area was
// free: it went inline, through fresh memory (about 60 tasks in a
// benchmark's 36,000).
TEST(PoolBulk, RegionFifoVaryingStreamAlwaysFindsRoomNearTheStart) {
  constexpr std::size_t kUnit = 1024, kMaxInFlight = 4;
  mproc::detail::RegionFifo fifo(64 * kUnit);
  std::deque<std::uint64_t> held;
  std::uint64_t tag = 0, rng = 12345;
  std::size_t high = 0;
  for (int step = 0; step < 20000; ++step) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    const std::size_t want = 1 + (rng >> 33) % kMaxInFlight;  // in flight after this step: 1..4
    while (held.size() >= want) {
      ASSERT_TRUE(fifo.give_back(held.front()));
      held.pop_front();
    }
    while (held.size() < want) {
      const auto off = fifo.take(kUnit - 64, ++tag);  // a payload that aligns up to one unit
      ASSERT_TRUE(off.has_value()) << "no room at step " << step << " with " << held.size() << " held";
      high = std::max(high, *off + kUnit);
      held.push_back(tag);
    }
  }
  // Wrapped when [0, first) holds what is held plus one: at most
  // 2 * 4 + 1 units end to end (the area has 64).
  EXPECT_LE(high, (2 * kMaxInFlight + 1) * kUnit);
}
