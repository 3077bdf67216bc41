// Connection's large-payload path (issue 13): messages at or above the bulk
// threshold travel as a header plus a sealed memfd (SCM_RIGHTS). Round trips
// across the threshold and across processes, slab reuse, and every hostile
// descriptor a peer can send, provoked on a real socket.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "alloc_counter.hpp"
#include "mproc/connection.hpp"
#include "mproc/process.hpp"
#include "sys/fd.hpp"
#include "ipc/connection_test_util.hpp"

namespace {

using namespace std::chrono_literals;
using mproc::Bytes;
using mproc::Connection;

constexpr std::uint32_t kBulkMagic = Connection::kBulkMagic;
constexpr std::uint32_t kSlabMagic = 0x4d505253;  // "MPRS", a slab's first word
constexpr std::size_t kSlabHeader = 4096;

mproc::ProcessOptions with(mproc::StartMethod m) {
  mproc::ProcessOptions o;
  o.start_method = m;
  return o;
}

Bytes pattern(std::size_t n, unsigned seed) {
  Bytes b(n);
  for (std::size_t i = 0; i < n; ++i) b[i] = static_cast<std::byte>((i * 131 + seed) >> 3);
  return b;
}

using connectiontest::header;  // a raw frame header, as a hostile or broken peer writes it

// What a hostile peer writes: `bytes` with `fd` attached (none if -1).
void send_raw(int sock, const std::vector<unsigned char>& bytes, int fd) {
  if (fd >= 0) {
    const int fds[] = {fd};
    mproc::sys::send_with_fds(sock, bytes.data(), bytes.size(), fds);
  } else {
    mproc::sys::send_with_fds(sock, bytes.data(), bytes.size(), {});
  }
}

// A memfd as a peer would forge it: `size` payload bytes after a slab
// header (with mproc's slab magic unless told not), written (so its memory
// is allocated) unless sparse, sealed against shrinking unless told not.
int forged_memfd(std::size_t size, bool seal = true, bool magic = true, bool sparse = false) {
  int fd = ::memfd_create("forged", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::ftruncate(fd, static_cast<off_t>(kSlabHeader + size)), 0);
  if (magic) {
    EXPECT_EQ(::pwrite(fd, &kSlabMagic, 4, 0), 4);
  }
  if (!sparse) {
    std::vector<char> chunk(1 << 16, 'f');
    for (std::size_t off = 0; off < size; off += chunk.size())
      EXPECT_GT(::pwrite(fd, chunk.data(), std::min(chunk.size(), size - off),
                         static_cast<off_t>(kSlabHeader + off)), 0);
  }
  if (seal) {
    EXPECT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
  }
  return fd;
}

// The receiver refuses the frame with a ProtocolError whose text has `why`,
// then reads the next, honest message: the stream kept its framing.
void expect_refused_then_usable(Connection& tx, Connection& rx, const std::string& why) {
  try {
    (void)rx.recv_bytes();
    ADD_FAILURE() << "expected ProtocolError (" << why << ")";
  } catch (const mproc::ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
  }
  tx.send_bytes("after");
  Bytes b = rx.recv_bytes();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(b.data()), b.size()), "after");
}

int count_bulk_slabs() {
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) {
    std::error_code ec;
    auto target = std::filesystem::read_symlink(e.path(), ec);
    if (!ec && target.string().find("memfd:mproc-bulk") != std::string::npos) ++n;
  }
  return n;
}

TEST(ConnectionBulk, RoundTripsAcrossTheThresholdAndAtOddSizes) {
  auto [a, b] = mproc::Pipe();
  ASSERT_TRUE(a.sends_through_shared_memory(Connection::kDefaultBulkThreshold));
  ASSERT_FALSE(a.sends_through_shared_memory(Connection::kDefaultBulkThreshold - 1));
  const std::size_t t = Connection::kDefaultBulkThreshold;
  unsigned seed = 1;
  for (std::size_t n : {t - 1, t, t + 1, t + 4093, std::size_t{3} << 20, (std::size_t{5} << 20) + 7}) {
    const Bytes data = pattern(n, seed++);
    std::thread tx([&] { a.send_bytes(data); });  // under the threshold it fills the socket
    EXPECT_EQ(b.recv_bytes(), data) << n;
    tx.join();
    std::thread tx2([&] { a.send_bytes(data, 3, n - 5); });
    Bytes into(n + 10, std::byte{0xee});
    ASSERT_EQ(b.recv_bytes_into(into, 7), n - 5) << n;
    EXPECT_TRUE(std::equal(data.begin() + 3, data.end() - 2, into.begin() + 7)) << n;
    EXPECT_EQ(into[6], std::byte{0xee});
    EXPECT_EQ(into[7 + n - 5], std::byte{0xee});
    tx2.join();
    std::vector<int> ints(n / sizeof(int) + 1, static_cast<int>(n));
    std::thread tx3([&] { b.send(ints); });  // typed, the other direction
    EXPECT_EQ(a.recv<std::vector<int>>(), ints);
    tx3.join();
  }
  EXPECT_FALSE(a.poll());
  EXPECT_FALSE(b.poll());
}

TEST(ConnectionBulk, FrameIsAHeaderWithASealedMemfd) {
  auto [a, b] = mproc::Pipe();
  const Bytes data = pattern(1 << 20, 3);
  a.send_bytes(data);
  unsigned char raw[32];
  mproc::sys::UniqueFd fds[4];
  std::size_t nfds = 0;
  ASSERT_EQ(mproc::sys::recv_with_fds(b.fileno(), raw, sizeof raw, fds, nfds), 16u);  // the header alone
  EXPECT_EQ(std::memcmp(raw, header(kBulkMagic, 0, data.size()).data(), 16), 0);
  ASSERT_EQ(nfds, 1u);  // exactly the slab's fd
  const int fd = fds[0].get();
  const int seals = ::fcntl(fd, F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(::ftruncate(fd, 0), 0);  // the receiver cannot pull the sender's pages away
  Bytes payload(data.size());
  ASSERT_EQ(::pread(fd, payload.data(), payload.size(), kSlabHeader), static_cast<ssize_t>(payload.size()));
  EXPECT_EQ(payload, data);
}

TEST(ConnectionBulk, SlabIsReusedAndNoFdIsLeft) {
  {
    auto [a, b] = mproc::Pipe();
    for (unsigned i = 0; i < 10; ++i) {
      const Bytes data = pattern((1 << 20) + i, i);
      a.send_bytes(data);
      EXPECT_EQ(b.recv_bytes(), data);
    }
    EXPECT_EQ(count_bulk_slabs(), 1);  // one slab, reused; the receiver closed each fd it got
    // Four in flight, unread: each its own slab (none is overwritten).
    std::vector<Bytes> sent;
    for (unsigned i = 0; i < 6; ++i) {
      sent.push_back(pattern(1 << 20, 50 + i));
      a.send_bytes(sent.back());
    }
    for (const Bytes& s : sent) EXPECT_EQ(b.recv_bytes(), s);
  }
  EXPECT_EQ(count_bulk_slabs(), 0);
}

TEST(ConnectionBulk, PipesAndTinyThresholds) {
  auto [r, w] = mproc::Pipe(false);  // a kernel pipe: no fds can travel, the stream is kept
  EXPECT_FALSE(w.sends_through_shared_memory(std::size_t{1} << 30));
  auto [a, b] = mproc::Pipe();
  a.set_bulk_threshold(1);
  EXPECT_TRUE(a.sends_through_shared_memory(1));
  a.send_bytes("x");
  a.send(std::string("typed"));
  a.send_bytes(std::span<const std::byte>{});  // empty: below any threshold
  EXPECT_EQ(b.recv_bytes().size(), 1u);
  EXPECT_EQ(b.recv<std::string>(), "typed");
  EXPECT_TRUE(b.recv_bytes().empty());
  a.set_bulk_threshold(SIZE_MAX);
  EXPECT_FALSE(a.sends_through_shared_memory(std::size_t{1} << 40));
}

// A peer that sends a large message and exits at once: the memfd in flight
// keeps the payload alive for the receiver.
void send_big_and_exit(Connection c, unsigned seed) { c.send_bytes(pattern((8 << 20) + 5, seed)); }
// Echoes until an empty message.
void bulk_echo(Connection c) {
  for (;;) {
    Bytes m = c.recv_bytes();
    if (m.empty()) return;
    c.send_bytes(m);
  }
}

class ConnectionBulkByMethod : public testing::TestWithParam<mproc::StartMethod> {};

TEST_P(ConnectionBulkByMethod, EchoAcrossProcesses) {
  auto [mine, theirs] = mproc::Pipe();
  mproc::Process p(with(GetParam()), bulk_echo, std::move(theirs));
  p.start();
  unsigned seed = 7;
  for (std::size_t n : {std::size_t{300} << 10, (std::size_t{4} << 20) + 1, std::size_t{1} << 20}) {
    const Bytes data = pattern(n, seed++);
    mine.send_bytes(data);
    EXPECT_EQ(mine.recv_bytes(), data) << n;
  }
  mine.send_bytes(std::span<const std::byte>{});
  p.join();
  EXPECT_EQ(p.exitcode(), 0);
}

TEST_P(ConnectionBulkByMethod, SenderThatExitsRightAfterSendingIsStillRead) {
  auto [mine, theirs] = mproc::Pipe();
  mproc::Process p(with(GetParam()), send_big_and_exit, std::move(theirs), 9u);
  p.start();
  p.join();  // gone before a byte is read
  EXPECT_EQ(p.exitcode(), 0);
  EXPECT_EQ(mine.recv_bytes(), pattern((8 << 20) + 5, 9));
  EXPECT_THROW((void)mine.recv_bytes(), mproc::ConnectionClosed);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, ConnectionBulkByMethod,
                         testing::Values(mproc::StartMethod::fork, mproc::StartMethod::spawn,
                                         mproc::StartMethod::forkserver),
                         [](const auto& info) { return std::string(mproc::to_string(info.param)); });

// ---- hostile peers ------------------------------------------------------------

TEST(ConnectionBulkHostile, HeaderWithoutAnFd) {
  auto [a, b] = mproc::Pipe();
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), -1);
  expect_refused_then_usable(a, b, "without a file descriptor");
}

TEST(ConnectionBulkHostile, PipeRegularFileAndDevZeroAreRefused) {
  auto [a, b] = mproc::Pipe();
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), p[0]);
  expect_refused_then_usable(a, b, "not a shared-memory file");
  ::close(p[0]);
  ::close(p[1]);

  char path[] = "/tmp/mproc-bulk-test-XXXXXX";
  int file = ::mkostemp(path, O_CLOEXEC);
  ASSERT_GE(file, 0);
  ::unlink(path);
  ASSERT_EQ(::ftruncate(file, 8 << 20), 0);
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), file);
  expect_refused_then_usable(a, b, "not a memfd");
  ::close(file);

  int zero = ::open("/dev/zero", O_RDWR | O_CLOEXEC);
  ASSERT_GE(zero, 0);
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), zero);
  expect_refused_then_usable(a, b, "not a shared-memory file");
  ::close(zero);
}

TEST(ConnectionBulkHostile, MemfdSmallerThanStated) {
  auto [a, b] = mproc::Pipe();
  int fd = forged_memfd(100);
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), fd);
  ::close(fd);
  expect_refused_then_usable(a, b, "holds 100 bytes");
}

TEST(ConnectionBulkHostile, UnsealedMemfdTruncatedUnderTheReceiverIsRefusedWithoutSigbus) {
  auto [a, b] = mproc::Pipe();
  const std::size_t n = 4 << 20;
  int fd = forged_memfd(n, /*seal=*/false);
  send_raw(a.fileno(), header(kBulkMagic, 0, n), fd);
  ASSERT_EQ(::ftruncate(fd, 0), 0);  // pulled away before (or while) the receiver reads
  ::close(fd);
  expect_refused_then_usable(a, b, "not sealed against shrinking");
  // Truncated while the receiver copies: a sealed file cannot be, and an
  // unsealed one is refused before any read; the read is a pread, so even a
  // shrinking file would give a short read, never SIGBUS. Racing a
  // truncating thread against the receive shows no crash either way.
  for (int round = 0; round < 5; ++round) {
    int racy = forged_memfd(n, false);
    send_raw(a.fileno(), header(kBulkMagic, 0, n), racy);
    std::thread cut([racy] { (void)!::ftruncate(racy, 0); });
    EXPECT_THROW((void)b.recv_bytes(), mproc::ProtocolError);
    cut.join();
    ::close(racy);
  }
}

TEST(ConnectionBulkHostile, ForeignMemfdWithoutSlabMagic) {
  auto [a, b] = mproc::Pipe();
  int fd = forged_memfd(1 << 20, true, /*magic=*/false);
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), fd);
  ::close(fd);
  expect_refused_then_usable(a, b, "not an mproc bulk slab");
}

TEST(ConnectionBulkHostile, SparseMemfdCostsTheReceiverNothing) {
  auto [a, b] = mproc::Pipe();
  const std::size_t n = std::size_t{512} << 20;  // announced, sized, never written
  int fd = forged_memfd(n, true, true, /*sparse=*/true);
  send_raw(a.fileno(), header(kBulkMagic, 0, n), fd);
  ::close(fd);
  {
    mproc::test::AllocCounter count;
    EXPECT_THROW((void)b.recv_bytes(), mproc::ProtocolError);
    EXPECT_LT(count.peak(), std::size_t{1} << 20);
  }
  send_raw(a.fileno(), header(kBulkMagic, 0, n), fd = forged_memfd(n, true, true, true));
  ::close(fd);
  expect_refused_then_usable(a, b, "memory allocated");
}

TEST(ConnectionBulkHostile, StatedSizeOfTwoToThe63) {
  auto [a, b] = mproc::Pipe();
  const std::uint64_t huge = std::uint64_t{1} << 63;
  int fd = forged_memfd(4096);
  send_raw(a.fileno(), header(kBulkMagic, 0, huge), fd);
  ::close(fd);
  mproc::test::AllocCounter count;
  EXPECT_THROW((void)b.recv_bytes(), mproc::MessageTooLarge);  // over the limit: stays pending
  b.set_max_message_size(UINT64_MAX);
  try {
    (void)b.recv_bytes();
    ADD_FAILURE() << "expected ProtocolError";
  } catch (const mproc::ProtocolError& e) {
    EXPECT_NE(std::string(e.what()).find("9223372036854775808"), std::string::npos) << e.what();
  }
  EXPECT_LT(count.peak(), std::size_t{1} << 20);
  a.send_bytes("after");
  EXPECT_EQ(b.recv_bytes().size(), 5u);  // the refused frame is gone, the stream goes on
}

TEST(ConnectionBulkHostile, FdsAttachedToOrdinaryFramesAreClosed) {
  auto [a, b] = mproc::Pipe();
  int fd = forged_memfd(1 << 20);
  auto frame = header(Connection::kMagic, 0, 5);
  frame.insert(frame.end(), {'h', 'e', 'l', 'l', 'o'});
  send_raw(a.fileno(), frame, fd);
  ::close(fd);
  Bytes m = b.recv_bytes();
  EXPECT_EQ(m.size(), 5u);
  // The stray fd was dropped by the receiver (the leak check would see it),
  // and a bulk header next to it cannot borrow it.
  send_raw(a.fileno(), header(kBulkMagic, 0, 1 << 20), -1);
  EXPECT_THROW((void)b.recv_bytes(), mproc::ProtocolError);
}

TEST(ConnectionBulkHostile, PeerDiesInsideABulkHeader) {
  auto [a, b] = mproc::Pipe();
  mproc::Process p(with(mproc::StartMethod::fork), [&a, &b] {
    b.close();
    auto h = header(kBulkMagic, 0, 1 << 20);
    (void)!::write(a.fileno(), h.data(), 8);
    ::_exit(0);
  });
  p.start();
  a.close();
  p.join();
  try {
    (void)b.recv_bytes();
    FAIL() << "expected TruncatedMessage";
  } catch (const mproc::TruncatedMessage& e) {
    EXPECT_EQ(e.received(), 8u);
  }
}

}  // namespace
