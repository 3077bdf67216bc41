// SharedBytes (issue 13 item 2) and Pool::share (item 3): round trips through
// Process (every start method), Pool.map (argument and result), executor
// submit, Queue and Pipe, with the same memfd inode on both sides and no
// copy of the payload in the sender's allocations; lifetime under kill -9
// (argument in flight, result not yet read); forged descriptors refused with
// a typed error naming what was wrong.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "alloc_counter.hpp"
#include "mproc/connection.hpp"
#include "mproc/executor.hpp"
#include "mproc/pool.hpp"
#include "mproc/process.hpp"
#include "mproc/queues.hpp"
#include "mproc/shared_bytes.hpp"
#include "pool_test_util.hpp"
#include "shared_test_util.hpp"
#include "support.hpp"

namespace {

using mproc::SharedBytes;
using mproc::SharedBytesError;
using pooltest::read_file;
using pooltest::TempDir;
using pooltest::wait_for_file;
using pooltest::write_file;
using sharedtest::join_ok;
using sharedtest::with;

// This process's open SharedBytes memfds.
int buffers_open() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().find("memfd:mproc-bytes") != std::string::npos) ++n;
  }
  return n;
}

SharedBytes pattern(std::size_t n, unsigned seed) {
  SharedBytes b = SharedBytes::create(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& c : b.writable()) {
    x = x * 1664525u + 1013904223u;
    c = static_cast<std::byte>(x >> 24);
  }
  return b;
}
std::uint64_t checksum(std::span<const std::byte> b) {
  std::uint64_t s = 0;
  for (auto c : b) s = s * 31 + static_cast<std::uint64_t>(c);
  return s;
}
std::string describe(const SharedBytes& b) {
  return std::to_string(b.inode()) + " " + std::to_string(b.size()) + " " + std::to_string(checksum(b.bytes()));
}

// ---- tasks and targets (plain functions: they run under every method) ----
void describe_into(SharedBytes b, std::string out) { write_file(out, describe(b)); }
SharedBytes echo(SharedBytes b) { return b; }
std::uint64_t sum_of(SharedBytes b) { return checksum(b.bytes()); }
SharedBytes made_here(std::size_t n) { return pattern(n, 7); }
std::uint64_t inode_of(SharedBytes b) { return b.inode(); }
bool writable_refused(SharedBytes b) {
  try {
    (void)b.writable();
    return false;
  } catch (const SharedBytesError&) {
    return true;
  }
}
std::uint64_t hold_then_sum(SharedBytes b, std::string started, std::string gate) {
  write_file(started, std::to_string(::getpid()));
  wait_for_file(gate);
  return checksum(b.bytes());
}
SharedBytes made_here_tell_pid(std::size_t n, std::string pid_file) {
  write_file(pid_file, std::to_string(::getpid()));
  return pattern(n, 9);
}
void queue_round_trip(mproc::Queue<SharedBytes> in, mproc::Queue<SharedBytes> out, std::string gate) {
  SharedBytes got = in.get();
  out.put(got);                 // back to the parent: it finds its own buffer
  SharedBytes made = pattern(1 << 16, 5);
  out.put(made);        // a new one: the parent fetches it from us,
  wait_for_file(gate);  // so we hold it until the parent has got it (the Queue rule)
}
void pipe_reply(mproc::Connection conn, std::string gate) {
  SharedBytes got = conn.recv<SharedBytes>();
  conn.send(describe(got));
  SharedBytes mine = pattern(3 << 20, 11);
  conn.send(mine);
  wait_for_file(gate);
}

// Two children of this process: one makes a buffer and puts it on a Queue,
// the other (its sibling) gets it. Each writes what it saw.
void sibling_producer(mproc::Queue<SharedBytes> q, std::string out, std::string gate) {
  SharedBytes made = pattern(1 << 20, 13);
  q.put(made);                     // seals it
  write_file(out, describe(made));
  wait_for_file(gate);  // held until the sibling has mapped it (the Queue rule)
}
void sibling_consumer(mproc::Queue<SharedBytes> q, std::string out, std::string gate) {
  std::string seen;
  try {
    SharedBytes got = q.get();
    seen = describe(got);
  } catch (const SharedBytesError& e) {
    seen = std::string("error: ") + e.what();
  }
  write_file(gate, "x");
  write_file(out, seen);
}
// In a child: a forged by-process handle naming `pid`; what decoding it says.
void decode_forged_in_child(std::int64_t pid, std::string out) {
  mproc::Bytes bytes;
  mproc::OutputArchive ar(bytes);
  ar(std::uint8_t{2}, pid, std::int32_t{0}, std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{4096});
  mproc::InputArchive in(bytes);
  SharedBytes b;
  std::string what = "accepted";
  try {
    in(b);
  } catch (const SharedBytesError& e) {
    what = e.what();
  }
  write_file(out, what);
}

class SharedBytesByMethod : public testing::TestWithParam<mproc::StartMethod> {};

}  // namespace

TEST(SharedBytes, WritableUntilSealedThenReadOnlyInPlace) {
  SharedBytes b = SharedBytes::create(10000);
  EXPECT_EQ(b.size(), 10000u);
  EXPECT_FALSE(b.sealed());
  auto w = b.writable();
  std::memset(w.data(), 0x5a, w.size());
  SharedBytes copy = b;  // shares the mapping
  EXPECT_EQ(copy.bytes().data(), b.bytes().data());
  b.seal();
  EXPECT_TRUE(copy.sealed());
  EXPECT_EQ(b.bytes().data(), w.data()) << "sealing keeps the address";
  EXPECT_EQ(static_cast<unsigned char>(b.bytes()[9999]), 0x5au);
  EXPECT_THROW((void)copy.writable(), SharedBytesError);
  SharedBytes mine = b.copy();
  EXPECT_FALSE(mine.sealed());
  EXPECT_NE(mine.inode(), b.inode());
  mine.writable()[0] = std::byte{1};
  EXPECT_EQ(static_cast<unsigned char>(b.bytes()[0]), 0x5au);
  EXPECT_TRUE(SharedBytes::create(0).empty());
  EXPECT_EQ(SharedBytes::copy_of(b.bytes()).size(), 10000u);
}

TEST_P(SharedBytesByMethod, ProcessArgumentIsTheSameBuffer) {
  TempDir dir;
  const int before = buffers_open();
  {
    SharedBytes b = pattern(5 << 20, 1);
    b.seal();  // under fork an unsealed buffer is inherited writable: seal first to compare
    mproc::Process p(with(GetParam()), describe_into, b, dir.file("out"));
    p.start();
    join_ok(p);
    EXPECT_EQ(p.exitcode(), 0);
    EXPECT_EQ(read_file(dir.file("out")), describe(b)) << "same inode, size and bytes in the child";
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST_P(SharedBytesByMethod, QueueBothWays) {
  TempDir dir;
  const int before = buffers_open();
  {
    mproc::Queue<SharedBytes> to_child, to_parent;
    SharedBytes b = pattern(1 << 20, 2);
    mproc::Process p(with(GetParam()), queue_round_trip, to_child, to_parent, dir.file("gate"));
    p.start();
    to_child.put(b);
    SharedBytes back = to_parent.get();
    EXPECT_EQ(back.bytes().data(), b.bytes().data()) << "our own buffer comes back as the same mapping";
    SharedBytes made = to_parent.get();
    EXPECT_EQ(made.size(), std::size_t{1} << 16);
    EXPECT_EQ(checksum(made.bytes()), checksum(pattern(1 << 16, 5).bytes()));
    write_file(dir.file("gate"), "x");
    join_ok(p);
    EXPECT_EQ(p.exitcode(), 0);
    EXPECT_EQ(checksum(made.bytes()), checksum(pattern(1 << 16, 5).bytes())) << "still mapped after the sender left";
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST_P(SharedBytesByMethod, PipeBothWays) {
  TempDir dir;
  const int before = buffers_open();
  {
    auto [mine, theirs] = mproc::Pipe();
    mproc::Process p(with(GetParam()), pipe_reply, std::move(theirs), dir.file("gate"));
    p.start();
    SharedBytes b = pattern(2 << 20, 3);
    mine.send(b);
    EXPECT_EQ(mine.recv<std::string>(), describe(b));
    SharedBytes got = mine.recv<SharedBytes>();
    write_file(dir.file("gate"), "x");
    EXPECT_EQ(got.size(), std::size_t{3} << 20);
    EXPECT_EQ(checksum(got.bytes()), checksum(pattern(3 << 20, 11).bytes()));
    join_ok(p);
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST_P(SharedBytesByMethod, QueueBetweenSiblings) {
  TempDir dir;
  const int before = buffers_open();
  {
    mproc::Queue<SharedBytes> q;
    mproc::Process producer(with(GetParam()), sibling_producer, q, dir.file("made"), dir.file("gate"));
    mproc::Process consumer(with(GetParam()), sibling_consumer, q, dir.file("got"), dir.file("gate"));
    producer.start();
    consumer.start();
    join_ok(consumer);
    join_ok(producer);
    const std::string made = read_file(dir.file("made"));
    const std::string got = read_file(dir.file("got"));
    EXPECT_EQ(got, made) << "the sibling maps the producer's memfd: same inode, size and bytes";
    const SharedBytes expected = pattern(1 << 20, 13);
    EXPECT_TRUE(got.ends_with(" " + std::to_string(std::size_t{1} << 20) + " " +
                              std::to_string(checksum(expected.bytes()))))
        << got;
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST_P(SharedBytesByMethod, AChildStillRefusesHandlesNamingProcessesOutsideItsParentsTree) {
  // pid 1 is neither the child's relative nor a descendant of this process
  // (the test binary is a subreaper, not init).
  TempDir dir;
  mproc::Process p(with(GetParam()), decode_forged_in_child, std::int64_t{1}, dir.file("why"));
  p.start();
  join_ok(p);
  const std::string why = read_file(dir.file("why"));
  EXPECT_NE(why.find("neither this process"), std::string::npos) << why;
}

INSTANTIATE_TEST_SUITE_P(AllMethods, SharedBytesByMethod, MPROC_ALL_METHODS);

TEST(SharedBytesPool, MapEchoReturnsTheSameBufferWithoutCopying) {
  const int before = buffers_open();
  {
    mproc::Pool pool(2);
    std::vector<SharedBytes> items;
    for (unsigned i = 0; i < 6; ++i) items.push_back(pattern(4 << 20, i));
    for (auto& b : items) b.seal();  // sealing remaps; not what we count below
    std::vector<SharedBytes> back;
    std::size_t allocated = 0;
    {
      mproc::test::AllocCounter count;
      back = pool.map(echo, items, 1);
      allocated = count.total();
    }
    ASSERT_EQ(back.size(), items.size());
    for (std::size_t i = 0; i < items.size(); ++i) {
      EXPECT_EQ(back[i].inode(), items[i].inode());
      EXPECT_EQ(back[i].bytes().data(), items[i].bytes().data()) << "the parent's own mapping";
    }
    // 24 MiB went out and came back; only handles (~40 bytes each) and the
    // pool's bookkeeping were allocated here. 1 MiB: a wide margin over
    // that, and a quarter of one item.
    EXPECT_LT(allocated, std::size_t{1} << 20) << "payload copied in the parent";
    // The workers saw the same inode too, read-only.
    auto inodes = pool.map(inode_of, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(inodes[i], items[i].inode());
    for (bool refused : pool.map(writable_refused, items)) EXPECT_TRUE(refused);
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST(SharedBytesPool, ResultsMadeInWorkersAndTemporaryArguments) {
  const int before = buffers_open();
  {
    mproc::Pool pool(2);
    auto made = pool.map(made_here, std::vector<std::size_t>{1 << 20, 3, 16 << 20, 0}, 1);
    ASSERT_EQ(made.size(), 4u);
    EXPECT_EQ(checksum(made[0].bytes()), checksum(pattern(1 << 20, 7).bytes()));
    EXPECT_EQ(checksum(made[2].bytes()), checksum(pattern(16 << 20, 7).bytes()));
    EXPECT_EQ(made[1].size(), 3u);
    EXPECT_TRUE(made[3].empty());
    EXPECT_TRUE(made[0].sealed());

    mproc::ProcessPoolExecutor ex(2);
    const std::uint64_t want = checksum(pattern(1 << 20, 4).bytes());
    // The argument is a temporary: only the pool's pin keeps it open until
    // the worker has mapped it.
    std::vector<mproc::Future<std::uint64_t>> sums;
    for (int i = 0; i < 8; ++i) sums.push_back(ex.submit(sum_of, pattern(1 << 20, 4)));
    for (auto& f : sums) EXPECT_EQ(f.get(), want);
    auto r = pool.apply_async(echo, pattern(1 << 20, 4));
    EXPECT_EQ(checksum(r.get().bytes()), want);
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST(SharedBytesPool, WorkerKilledHoldingAnArgumentFailsOnlyItsTask) {
  TempDir dir;
  const int before = buffers_open();
  {
    mproc::ProcessPoolExecutor ex(1);
    auto held = ex.submit(hold_then_sum, pattern(8 << 20, 6), dir.file("started"), dir.file("gate"));
    ASSERT_TRUE(wait_for_file(dir.file("started")));
    const pid_t pid = std::stoi(read_file(dir.file("started")));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    EXPECT_THROW(held.get(), mproc::WorkerCrashed);
    write_file(dir.file("gate"), "x");
    EXPECT_EQ(ex.submit(sum_of, pattern(1 << 20, 4)).get(), checksum(pattern(1 << 20, 4).bytes()));
  }
  EXPECT_EQ(buffers_open(), before) << "the killed task's pinned argument was released";
}

TEST(SharedBytesPool, ResultWhoseWorkerDiedBeforeItWasReadIsATypedError) {
  TempDir dir;
  const int before = buffers_open();
  {
    mproc::Pool pool(1);
    auto r = pool.apply_async(made_here_tell_pid, std::size_t{2 << 20}, dir.file("pid"));
    ASSERT_TRUE(r.wait());  // settled; AsyncResult decodes at get()
    const pid_t pid = std::stoi(read_file(dir.file("pid")));
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    ASSERT_TRUE(mproc::test::eventually([&] { return mproc::test::pid_gone(pid); }));
    try {
      (void)r.get();
      ADD_FAILURE() << "a result from a dead worker decoded";
    } catch (const SharedBytesError& e) {
      EXPECT_NE(std::string(e.what()).find(std::to_string(2 << 20) + " bytes"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::to_string(pid)), std::string::npos) << e.what();
    }
    EXPECT_EQ(checksum(pool.apply(made_here, std::size_t{4096}).bytes()), checksum(pattern(4096, 7).bytes()));
  }
  EXPECT_EQ(buffers_open(), before);
}

// ---- forged descriptors ----------------------------------------------------
// What a receiver decodes is exactly what arrives after recvmsg: the handle's
// bytes and the fds that came with them. Each forgery must be refused before
// anything is mapped, with a typed error saying what was wrong.
namespace {

std::string refusal(int fd, std::uint64_t claimed_size) {
  mproc::Bytes bytes;
  std::vector<int> fds;
  mproc::OutputArchive out(bytes, &fds);
  out(std::uint8_t{1}, out.attach_fd(fd, "forged"), claimed_size);
  std::vector<int> received{::fcntl(fd, F_DUPFD_CLOEXEC, 0)};
  mproc::InputArchive in(bytes, &received);
  SharedBytes b;
  try {
    in(b);
  } catch (const SharedBytesError& e) {
    for (int f : received)
      if (f >= 0) ::close(f);
    return e.what();
  }
  for (int f : received)
    if (f >= 0) ::close(f);
  return "accepted a buffer of " + std::to_string(b.size()) + " bytes";
}

int memfd_of(std::size_t size, unsigned seals) {
  int fd = ::memfd_create("forged", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(size)), 0);
  if (seals) {
    EXPECT_EQ(::fcntl(fd, F_ADD_SEALS, seals), 0);
  }
  return fd;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

}  // namespace

TEST(SharedBytesHostile, WrongSizeIsRefusedNamingBothByteCounts) {
  int fd = memfd_of(4096, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW);
  const std::string why = refusal(fd, 1 << 20);
  EXPECT_TRUE(contains(why, "has 4096 bytes") && contains(why, "says 1048576")) << why;
  ::close(fd);
}

TEST(SharedBytesHostile, UnsealedMemfdIsRefusedSoItCannotShrinkUnderAReader) {
  int fd = memfd_of(4096, 0);
  const std::string why = refusal(fd, 4096);
  EXPECT_TRUE(contains(why, "not sealed against shrinking growing writing")) << why;
  // What the refusal prevents: the sender shrinks the file under the mapping.
  EXPECT_EQ(::ftruncate(fd, 0), 0);
  ::close(fd);
  int sealed_size_only = memfd_of(4096, F_SEAL_SHRINK | F_SEAL_GROW);
  EXPECT_TRUE(contains(refusal(sealed_size_only, 4096), "not sealed against writing")) << "writable by its sender";
  ::close(sealed_size_only);
}

TEST(SharedBytesHostile, RegularFileAndPipeAreRefused) {
  TempDir dir;
  write_file(dir.file("f"), std::string(4096, 'x'));
  int file = ::open(dir.file("f").c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  const std::string why_file = refusal(file, 4096);
  EXPECT_TRUE(contains(why_file, "not a memfd") && contains(why_file, "refused")) << why_file;
  ::close(file);
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  const std::string why_pipe = refusal(p[0], 4096);
  EXPECT_TRUE(contains(why_pipe, "a pipe") && contains(why_pipe, "4096 bytes")) << why_pipe;
  ::close(p[0]);
  ::close(p[1]);
}

TEST(SharedBytesHostile, ByProcessHandlesNamingOtherProcessesOrOtherFilesAreRefused) {
  auto decode = [](std::int64_t pid, std::int32_t fd, std::uint64_t ino) -> std::string {
    mproc::Bytes bytes;
    mproc::OutputArchive out(bytes);
    out(std::uint8_t{2}, pid, fd, std::uint64_t{0}, ino, std::uint64_t{4096});
    mproc::InputArchive in(bytes);
    SharedBytes b;
    try {
      in(b);
    } catch (const SharedBytesError& e) {
      return e.what();
    }
    return "accepted";
  };
  // pid 1 is no relative of ours (the test binary is a subreaper, not init).
  EXPECT_TRUE(contains(decode(1, 0, 1), "neither this process")) << decode(1, 0, 1);
  // Our own fd, but not the file the handle names.
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  const std::string why = decode(::getpid(), p[0], 12345);
  EXPECT_TRUE(contains(why, "device/inode differ") || contains(why, "not the buffer")) << why;
  ::close(p[0]);
  ::close(p[1]);
  mproc::Bytes bytes;
  mproc::OutputArchive out(bytes);
  out(std::uint8_t{9});
  mproc::InputArchive in(bytes);
  SharedBytes b;
  EXPECT_THROW(in(b), mproc::DeserializeError);
}

// ---- Pool::share -------------------------------------------------------------
namespace {
using Table = std::vector<std::int64_t>;
using Job = std::pair<mproc::Shared<Table>, int>;
struct Seen {
  std::int64_t pid = 0;
  std::uint64_t address = 0;  // of the worker's decoded copy
  std::int64_t value = 0;
  template <class A>
  void serialize(A& ar) {
    ar(pid, address, value);
  }
};
Seen look_up(Job job) {
  const Table& t = *job.first;
  return {::getpid(), reinterpret_cast<std::uintptr_t>(t.data()), t[static_cast<std::size_t>(job.second)]};
}
Table make_table() {
  Table t(1 << 18);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<std::int64_t>(i * i);
  return t;
}
}  // namespace

TEST(PoolShare, EachWorkerDecodesTheValueOnce) {
  const int before = buffers_open();
  {
    mproc::Pool pool(2);
    auto table = pool.share(make_table());
    EXPECT_GT(table.buffer().size(), std::size_t{2} << 20);
    std::vector<Job> jobs;
    for (int i = 0; i < 64; ++i) jobs.emplace_back(table, i * 1000);
    auto seen = pool.map(look_up, jobs, 4);
    std::map<std::int64_t, std::set<std::uint64_t>> copies;
    for (std::size_t i = 0; i < seen.size(); ++i) {
      EXPECT_EQ(seen[i].value, static_cast<std::int64_t>(i * 1000) * static_cast<std::int64_t>(i * 1000));
      copies[seen[i].pid].insert(seen[i].address);
    }
    for (auto& [pid, addresses] : copies) EXPECT_EQ(addresses.size(), 1u) << "worker " << pid << " decoded again";
    // The executor's face, and the local value in the parent.
    mproc::ProcessPoolExecutor ex(1);
    auto t2 = ex.share(make_table());
    EXPECT_EQ(ex.submit(look_up, Job{t2, 7}).get().value, 49);
    EXPECT_EQ((*t2)[7], 49);
  }
  EXPECT_EQ(buffers_open(), before);
}

TEST(PoolShare, ReplacementWorkersGetItToo) {
  mproc::Pool pool(mproc::PoolOptions{.max_workers = 1, .max_tasks_per_child = 1});
  auto table = pool.share(make_table());
  std::set<std::int64_t> pids;
  for (int i = 1; i <= 4; ++i) {
    Seen s = pool.apply(look_up, Job{table, i});
    EXPECT_EQ(s.value, i * i);
    pids.insert(s.pid);
  }
  EXPECT_EQ(pids.size(), 4u) << "each task in a fresh worker";
}

// The pool's workers under each start method: echo and new buffers.
TEST_P(SharedBytesByMethod, PoolEchoAndNewBuffers) {
  const int before = buffers_open();
  {
    mproc::Pool pool(mproc::PoolOptions{.max_workers = 2, .start_method = GetParam()});
    std::vector<SharedBytes> items{pattern(1 << 20, 1), pattern(300000, 2), pattern(5, 3)};
    auto back = pool.map(echo, items, 1);
    for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(back[i].bytes().data(), items[i].bytes().data());
    auto made = pool.map(made_here, std::vector<std::size_t>{1 << 20, 7}, 1);
    EXPECT_EQ(checksum(made[0].bytes()), checksum(pattern(1 << 20, 7).bytes()));
    EXPECT_EQ(checksum(made[1].bytes()), checksum(pattern(7, 7).bytes()));
  }
  EXPECT_EQ(buffers_open(), before);
}
