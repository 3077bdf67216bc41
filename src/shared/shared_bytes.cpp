// SharedBytes: sealed memfd buffers that cross processes as handles
// (include/mproc/shared_bytes.hpp has the rules).
//
// A buffer's life in one process (BytesBlock, reference counted):
//
//   create(n) / load() ──▶ registered in live_blocks() by (device, inode)
//        │                    (so an echo of our own buffer finds it again)
//        ├── copies: refs++ / refs--
//        └── last copy goes ──▶ unregistered, munmap, close(fd)
//
// A buffer sent "by process" (no fd channel) while a SendPins scope is open
// is pinned (refs++) in that scope; the scope hands its pins to a future
// (released when the last of its futures settles) or to the worker's result
// pins (released once the pool's process fetched it: the shared file offset
// went from 0 to 1; or oldest first past 64; or when the worker exits).
#include "mproc/shared_bytes.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "mproc/detail/future_core.hpp"
#include "mproc/pool_share.hpp"
#include "mproc/process.hpp"
#include "mproc/serialize.hpp"
#include "sys/fd.hpp"
#include "sys/no_destroy.hpp"
#include "sys/pidfd.hpp"

namespace mproc {

namespace detail {
struct BytesBlock {
  std::atomic<long> refs{1};
  int fd = -1;
  std::byte* base = nullptr;  // null when size is 0 (never: empty handles have no block)
  std::size_t size = 0;
  std::uint64_t dev = 0, ino = 0;
  std::atomic<bool> sealed{false};
  std::mutex seal_mu;
  ~BytesBlock() {
    if (base) ::munmap(base, size);
    if (fd >= 0) ::close(fd);
  }
};
}  // namespace detail

namespace {
using detail::BytesBlock;

constexpr unsigned kRequiredSeals = F_SEAL_SHRINK | F_SEAL_GROW;
constexpr std::size_t kMaxResultPins = 512;  // fds: well under the usual soft limit of 1024

// Written as one byte.
enum Kind : std::uint8_t { kEmpty = 0, kPassedFd = 1, kByProcess = 2 };

struct LiveEntry {
  std::uint64_t dev, ino;
  BytesBlock* block;
};
// Process-wide state: constant-initialised, never destroyed (fork children
// and static destructors may reach it); the locks are taken around fork()
// (pthread_atfork below), so a fork child never inherits one held.
std::mutex g_live_mu;
sys::NoDestroy<std::vector<LiveEntry>> g_live;
std::mutex g_result_pins_mu;
sys::NoDestroy<std::deque<BytesBlock*>> g_result_pins;

struct AtFork {
  AtFork() {
    ::pthread_atfork(
        [] {  // the order release_fetched_pins takes them in
          g_result_pins_mu.lock();
          g_live_mu.lock();
        },
        [] {
          g_live_mu.unlock();
          g_result_pins_mu.unlock();
        },
        [] {
          g_live_mu.unlock();
          g_result_pins_mu.unlock();
        });
  }
} g_at_fork;

thread_local detail::SendPins* t_pins = nullptr;

[[noreturn]] void fail(const std::string& what) { throw SharedBytesError("mproc::SharedBytes: " + what); }
[[noreturn]] void fail_errno(const std::string& what) { fail(what + ": " + std::strerror(errno)); }

void retain(BytesBlock* b) noexcept { b->refs.fetch_add(1, std::memory_order_relaxed); }
void release(BytesBlock* b) noexcept {
  if (!b || b->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
  {
    std::lock_guard lock(g_live_mu);
    auto& live = g_live.value;
    for (auto it = live.begin(); it != live.end(); ++it)
      if (it->block == b) {
        live.erase(it);
        break;
      }
  }
  delete b;
}

// A live block of this process with that file, retained; null when none.
BytesBlock* find_live(std::uint64_t dev, std::uint64_t ino) {
  std::lock_guard lock(g_live_mu);
  for (auto& e : g_live.value) {
    if (e.dev != dev || e.ino != ino) continue;
    long r = e.block->refs.load(std::memory_order_relaxed);
    while (r > 0)  // a block going away (0) is not revived
      if (e.block->refs.compare_exchange_weak(r, r + 1, std::memory_order_acq_rel)) return e.block;
  }
  return nullptr;
}

void register_live(BytesBlock* b) {
  std::lock_guard lock(g_live_mu);
  g_live.value.push_back({b->dev, b->ino, b});
}

// Says "mapped here" to the sender of a by-process handle: the file offset
// is shared by every fd dup'ed from the sender's (pidfd_getfd), see
// keep_until_fetched.
void acknowledge(int fd) noexcept { (void)::lseek(fd, 1, SEEK_SET); }

// The received fd's checks, before anything maps it.
void verify(int fd, std::uint64_t size, const std::string& from) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) fail_errno("fstat of the fd " + from);
  if (!S_ISREG(st.st_mode))
    fail("the fd " + from + " is not a regular file (" +
         (S_ISFIFO(st.st_mode) ? "a pipe" : S_ISSOCK(st.st_mode) ? "a socket" : S_ISDIR(st.st_mode) ? "a directory" : "a device or other") +
         "), not a sealed memfd of " + std::to_string(size) + " bytes: refused");
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) fail("the fd " + from + " is not a memfd (it has no seals): refused");
  const bool write_sealed = (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0;
  if ((seals & kRequiredSeals) != kRequiredSeals || !write_sealed)
    fail("the memfd " + from + " is not sealed against " +
         std::string((seals & F_SEAL_SHRINK) ? "" : "shrinking ") + ((seals & F_SEAL_GROW) ? "" : "growing ") +
         (write_sealed ? "" : "writing ") + "(seals 0x" + [&] {
           char buf[16];
           std::snprintf(buf, sizeof buf, "%x", static_cast<unsigned>(seals));
           return std::string(buf);
         }() + "; a peer could change it or shrink it under a reader): refused");
  if (static_cast<std::uint64_t>(st.st_size) != size)
    fail("the memfd " + from + " has " + std::to_string(st.st_size) + " bytes, but its handle says " +
         std::to_string(size) + ": refused");
}

void seal_block(BytesBlock& b);

// A block over a checked fd (ownership taken); a live block of the same file
// is used instead (one mapping per buffer per process).
BytesBlock* adopt(sys::UniqueFd fd, std::uint64_t size) {
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_errno("fstat");
  if (BytesBlock* live = find_live(st.st_dev, st.st_ino)) {
    try {
      if (!live->sealed.load(std::memory_order_acquire)) seal_block(*live);  // see load()
    } catch (...) {
      release(live);
      throw;
    }
    return live;
  }
  auto b = std::make_unique<BytesBlock>();
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) fail_errno("mmap of " + std::to_string(size) + " bytes");
  b->base = static_cast<std::byte*>(p);
  b->size = size;
  b->fd = fd.release();
  b->dev = st.st_dev;
  b->ino = st.st_ino;
  b->sealed = true;
  register_live(b.get());
  return b.release();
}

// Whether a handle may name process `pid`: this process, an ancestor, a
// descendant, or, in a process mproc started, another descendant of the
// process that started it (a sibling's buffer, through a Queue or Pipe the
// parent made). That parent must still be an ancestor: once it is gone its
// pid may belong to anyone, and only the first three remain.
bool may_fetch_from(pid_t pid, pid_t self) {
  if (sys::is_self_or_ancestor(pid, self) || sys::is_self_or_ancestor(self, pid)) return true;
  const std::optional<ProcessInfo> parent = parent_process();
  return parent && parent->pid > 1 && sys::is_self_or_ancestor(parent->pid, self) &&
         sys::is_self_or_ancestor(parent->pid, pid);
}

// The fd `number` of process `pid` (see may_fetch_from), as a new fd of
// ours. pidfd_getfd dups the sender's open file (so acknowledge() reaches
// it); where that is refused (ptrace rules), the /proc/<pid>/fd link is
// opened, but only when it names a memfd.
sys::UniqueFd fetch(pid_t pid, int number, const std::string& from) {
  const pid_t self = ::getpid();
  if (!may_fetch_from(pid, self))
    fail("the handle " + from + " names process " + std::to_string(pid) +
         ", neither this process nor one of its ancestors or descendants, nor a descendant of the process that "
         "started it (or it is gone): refused");
  if (pid == self) {
    sys::UniqueFd fd(::fcntl(number, F_DUPFD_CLOEXEC, 0));
    if (!fd) fail("this process no longer holds the buffer " + from);
    return fd;
  }
  sys::UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) fail("process " + std::to_string(pid) + " that sent the buffer " + from + " is gone");
  sys::UniqueFd fd(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), number, 0)));
  if (fd) return fd;
  if (errno == EBADF) fail("process " + std::to_string(pid) + " no longer holds the buffer " + from);
  if (errno == ESRCH) fail("process " + std::to_string(pid) + " that sent the buffer " + from + " is gone");
  const std::string link = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(number);
  char target[256];
  const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
  if (n <= 0 || std::string_view(target, static_cast<std::size_t>(n)).rfind("/memfd:", 0) != 0)
    fail("process " + std::to_string(pid) + " no longer holds the buffer " + from + " (" + link +
         " is not a memfd)");
  fd.reset(::open(link.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  if (!fd) fail_errno("open " + link);
  return fd;
}

BytesBlock* new_block(std::size_t n) {
  auto b = std::make_unique<BytesBlock>();
  b->fd = ::memfd_create("mproc-bytes", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (b->fd < 0) fail_errno("memfd_create");
  if (::ftruncate(b->fd, static_cast<off_t>(n)) != 0) fail_errno("ftruncate to " + std::to_string(n) + " bytes");
  void* p = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, b->fd, 0);
  if (p == MAP_FAILED) fail_errno("mmap of " + std::to_string(n) + " bytes");
  b->base = static_cast<std::byte*>(p);
  b->size = n;
  struct stat st {};
  if (::fstat(b->fd, &st) != 0) fail_errno("fstat");
  b->dev = st.st_dev;
  b->ino = st.st_ino;
  register_live(b.get());
  return b.release();
}

void seal_block(BytesBlock& b) {
  if (b.sealed.load(std::memory_order_acquire)) return;
  std::lock_guard lock(b.seal_mu);
  if (b.sealed.load(std::memory_order_relaxed)) return;
  // Read-only in place (spans stay valid), then no new writable mapping,
  // no write(), no resize by anyone. F_SEAL_FUTURE_WRITE rather than
  // F_SEAL_WRITE: the latter fails while any process (a fork child that
  // inherited the buffer) still maps it writable.
  if (::mprotect(b.base, b.size, PROT_READ) != 0) fail_errno("mprotect(PROT_READ)");
  // EPERM: F_SEAL_SEAL is there already — another process sealed it (a fork
  // child's inherited copy of a buffer its parent then sent).
  if (::fcntl(b.fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0 &&
      !(errno == EPERM && (::fcntl(b.fd, F_GET_SEALS) & kRequiredSeals) == kRequiredSeals))
    fail_errno("sealing the memfd");
  b.sealed.store(true, std::memory_order_release);
}

using PinList = std::vector<BytesBlock*>;
void release_all(PinList& pins) noexcept {
  for (BytesBlock* b : pins) release(b);
  pins.clear();
}
}  // namespace

// ---- SharedBytes --------------------------------------------------------------

SharedBytes SharedBytes::create(std::size_t n) { return n == 0 ? SharedBytes() : SharedBytes(new_block(n)); }

SharedBytes SharedBytes::copy_of(std::span<const std::byte> bytes) {
  SharedBytes out = create(bytes.size());
  if (!bytes.empty()) std::memcpy(out.b_->base, bytes.data(), bytes.size());
  out.seal();
  return out;
}

SharedBytes::SharedBytes(const SharedBytes& other) noexcept : b_(other.b_) {
  if (b_) retain(b_);
}
SharedBytes& SharedBytes::operator=(const SharedBytes& other) noexcept {
  if (other.b_) retain(other.b_);
  release(std::exchange(b_, other.b_));
  return *this;
}
SharedBytes& SharedBytes::operator=(SharedBytes&& other) noexcept {
  if (this != &other) release(std::exchange(b_, std::exchange(other.b_, nullptr)));
  return *this;
}
SharedBytes::~SharedBytes() { release(b_); }

std::size_t SharedBytes::size() const noexcept { return b_ ? b_->size : 0; }
std::span<const std::byte> SharedBytes::bytes() const noexcept {
  return b_ ? std::span<const std::byte>(b_->base, b_->size) : std::span<const std::byte>();
}
std::span<std::byte> SharedBytes::writable() const {
  if (!b_) return {};
  if (b_->sealed.load(std::memory_order_acquire))
    fail("writable() on a sealed buffer of " + std::to_string(b_->size) +
         " bytes (it was sent or received: take copy() to write)");
  return {b_->base, b_->size};
}
bool SharedBytes::sealed() const noexcept { return !b_ || b_->sealed.load(std::memory_order_acquire); }
void SharedBytes::seal() const {
  if (b_) seal_block(*b_);
}
SharedBytes SharedBytes::copy() const {
  SharedBytes out = create(size());
  if (b_) std::memcpy(out.b_->base, b_->base, b_->size);
  return out;
}
std::uint64_t SharedBytes::inode() const noexcept { return b_ ? b_->ino : 0; }

void SharedBytes::save(OutputArchive& ar) const {
  if (!b_) {
    ar(std::uint8_t{kEmpty});
    return;
  }
  seal();
  try {
    const std::uint32_t index = ar.attach_fd(b_->fd, "mproc::SharedBytes");
    ar(std::uint8_t{kPassedFd}, index, static_cast<std::uint64_t>(b_->size));
    return;
  } catch (const ValueError&) {  // no fd channel: by process, the sender keeps it open
  }
  if (t_pins) {
    if (!t_pins->list_) t_pins->list_ = new PinList;
    retain(b_);
    static_cast<PinList*>(t_pins->list_)->push_back(b_);
  }
  ar(std::uint8_t{kByProcess}, static_cast<std::int64_t>(::getpid()), static_cast<std::int32_t>(b_->fd), b_->dev,
     b_->ino, static_cast<std::uint64_t>(b_->size));
}

namespace {

// A decoded handle: its kind and the fields that kind carries (one reader
// for load() and skip_shared_bytes(), so the two cannot drift).
struct Handle {
  std::uint8_t kind = kEmpty;
  std::uint32_t index = 0;  // kPassedFd: the fd's place among those received
  std::int64_t pid = 0;     // kByProcess: whose fd `number` it is
  std::int32_t number = 0;
  std::uint64_t dev = 0, ino = 0;
  std::uint64_t size = 0;
};

Handle read_handle(InputArchive& ar) {
  Handle h;
  ar(h.kind);
  if (h.kind == kEmpty) return h;
  if (h.kind == kPassedFd) {
    ar(h.index, h.size);
    return h;
  }
  if (h.kind != kByProcess)
    throw DeserializeError("mproc::SharedBytes: unknown handle kind " + std::to_string(h.kind));
  ar(h.pid, h.number, h.dev, h.ino, h.size);
  return h;
}

}  // namespace

void SharedBytes::load(InputArchive& ar) {
  const Handle h = read_handle(ar);
  *this = SharedBytes();
  if (h.kind == kEmpty) return;
  if (h.kind == kPassedFd) {
    sys::UniqueFd fd(ar.take_fd(h.index, "mproc::SharedBytes"));
    verify(fd.get(), h.size, "passed with the message");
    b_ = adopt(std::move(fd), h.size);
    return;
  }
  const std::string from = "(fd " + std::to_string(h.number) + " of process " + std::to_string(h.pid) + ", " +
                           std::to_string(h.size) + " bytes)";
  if (BytesBlock* live = find_live(h.dev, h.ino)) {  // ours already: an echo, or a second copy
    SharedBytes held(live);
    if (held.size() != h.size)
      fail("the buffer " + from + " is " + std::to_string(held.size()) + " bytes here: refused");
    acknowledge(live->fd);
    // It came back sealed from elsewhere (a fork child's inherited copy of
    // its parent's buffer): read-only here too from now on.
    if (!live->sealed.load(std::memory_order_acquire)) seal_block(*live);
    *this = std::move(held);
    return;
  }
  if (h.pid <= 0 || h.pid > 0x3fffffff || h.number < 0) fail("the handle " + from + " names no process's fd: refused");
  sys::UniqueFd fd = fetch(static_cast<pid_t>(h.pid), h.number, from);
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) fail_errno("fstat");
  if (static_cast<std::uint64_t>(st.st_dev) != h.dev || static_cast<std::uint64_t>(st.st_ino) != h.ino)
    fail("the fd " + from + " is not the buffer its handle names (device/inode differ): refused");
  verify(fd.get(), h.size, from);
  acknowledge(fd.get());
  b_ = adopt(std::move(fd), h.size);
}

void detail::skip_shared_bytes(InputArchive& ar) {
  const Handle h = read_handle(ar);
  if (h.kind == kPassedFd) sys::UniqueFd(ar.take_fd(h.index, "mproc::SharedBytes"));  // closed: not needed
}

// ---- pins ---------------------------------------------------------------------

namespace detail {

SendPins::SendPins() noexcept : previous_(t_pins) { t_pins = this; }
SendPins::~SendPins() {
  t_pins = static_cast<SendPins*>(previous_);
  if (auto* pins = static_cast<PinList*>(list_)) {
    release_all(*pins);
    delete pins;
  }
}

void SendPins::keep_until_settled(const FutureCore* cores, std::size_t n) {
  auto* pins = static_cast<PinList*>(list_);
  if (!pins || pins->empty()) return;
  if (n == 0) return;  // nothing will run: released by the destructor
  // The last of the n futures to settle releases them (settling runs each
  // callback once: done, failed or cancelled).
  struct Held {
    PinList pins;
    std::atomic<std::size_t> left;
    ~Held() { release_all(pins); }
  };
  auto held = std::make_shared<Held>();
  held->pins.swap(*pins);
  held->left = n;
  for (std::size_t i = 0; i < n; ++i)
    cores[i].add_callback([held] {
      if (held->left.fetch_sub(1) == 1) release_all(held->pins);
    });
}

void SendPins::keep_until_fetched() {
  auto* pins = static_cast<PinList*>(list_);
  if (!pins || pins->empty()) return;
  std::lock_guard lock(g_result_pins_mu);
  for (BytesBlock* b : *pins) {
    // Offset 0 = not fetched yet; the receiver moves it to 1 (acknowledge).
    (void)::lseek(b->fd, 0, SEEK_SET);
    g_result_pins.value.push_back(b);
  }
  pins->clear();
  while (g_result_pins.value.size() > kMaxResultPins) {
    release(g_result_pins.value.front());
    g_result_pins.value.pop_front();
  }
}

void release_fetched_pins() noexcept {
  std::lock_guard lock(g_result_pins_mu);
  auto& pins = g_result_pins.value;
  for (auto it = pins.begin(); it != pins.end();) {
    if (::lseek((*it)->fd, 0, SEEK_CUR) != 0) {
      release(*it);
      it = pins.erase(it);
    } else {
      ++it;
    }
  }
}

}  // namespace detail
}  // namespace mproc
