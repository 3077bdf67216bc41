// SharedMemory: memfd and POSIX shm mappings, the leak tracker, and handles
// that cross processes (name, passed fd, or /proc/<pid>/fd/<n>).
#include "mproc/shared_memory.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <limits>
#include <optional>
#include <random>
#include <stdexcept>
#include <system_error>
#include <utility>
#include <vector>

#include "sys/fd.hpp"
#include "sys/pidfd.hpp"

namespace mproc {

namespace {

constexpr std::uint64_t kMagic = 0x314d48535052434dULL;  // "MCRPSHM1"

// Lives in the first page of a named segment. magic is written last, so a
// sweeper never judges a segment whose creator is still filling this in.
struct NamedHeader {
  std::atomic<std::uint64_t> magic;
  std::uint64_t size;           // bytes of buf()
  std::int64_t creator_pid;     // 0: untracked (meant to outlive its creator)
  std::uint64_t creator_start;  // start time of the creator, against pid reuse
  std::uint64_t creator_pidns;  // its pid namespace: pids elsewhere cannot be judged
};
static_assert(sizeof(NamedHeader) <= SharedMemory::kHeaderSize);

std::string shm_error(const std::string& name, const char* what, int err) {
  return "shared memory '" + name + "': " + what + ": " + std::strerror(err);
}

// Field 22 of /proc/<pid>/stat (start time in clock ticks); nullopt when the
// process is gone or a zombie (dead, only waiting to be reaped).
std::optional<std::uint64_t> start_time(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 2 >= line.size()) return std::nullopt;
  if (line[close + 2] == 'Z' || line[close + 2] == 'X') return std::nullopt;
  std::size_t pos = close + 2;  // field 3 (state)
  for (int field = 3; field < 22; ++field) {
    pos = line.find(' ', pos);
    if (pos == std::string::npos) return std::nullopt;
    ++pos;
  }
  return std::strtoull(line.c_str() + pos, nullptr, 10);
}

std::uint64_t self_start_time() {
  // Not cached: a forked child has the same memory but another start time.
  return start_time(::getpid()).value_or(0);
}

std::uint64_t pid_namespace() {
  struct stat st {};
  return ::stat("/proc/self/ns/pid", &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : 0;
}

bool creator_alive(const NamedHeader& h) {
  if (h.creator_pid <= 0) return true;
  auto st = start_time(static_cast<pid_t>(h.creator_pid));
  return st && *st == h.creator_start;
}

// Named segments are files in this tmpfs directory, as glibc's shm_open makes
// them; MPROC_SHM_DIR moves them (tests, sandboxes with a private tmpfs).
std::string shm_dir() {
  const char* d = std::getenv("MPROC_SHM_DIR");
  return d && *d ? d : "/dev/shm";
}

std::string fresh_name() {
  static std::atomic<std::uint64_t> counter{0};
  thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[80];
  std::snprintf(buf, sizeof buf, "%.*s%d_%llu_%08llx", static_cast<int>(SharedMemory::kGeneratedPrefix.size()),
                SharedMemory::kGeneratedPrefix.data(), static_cast<int>(::getpid()),
                static_cast<unsigned long long>(counter.fetch_add(1)),
                static_cast<unsigned long long>(rng() & 0xffffffffULL));
  return buf;
}

}  // namespace

namespace detail {

struct Segment {
  sys::UniqueFd fd;
  std::byte* base = nullptr;
  std::size_t map_len = 0;
  std::size_t offset = 0;  // where buf() starts
  std::size_t size = 0;
  std::string name;
  std::string dir;  // where a named segment's file is
  std::string path() const { return dir + "/" + name; }
  Segment() = default;
  Segment(const Segment&) = delete;
  Segment& operator=(const Segment&) = delete;
  ~Segment() {
    if (base) ::munmap(base, map_len);
  }
  std::atomic<long> refs{1};  // SegmentRefs to this segment
  void map(const std::string& what) {
    void* p = ::mmap(nullptr, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (p == MAP_FAILED) throw SharedMemoryError(shm_error(what, "mmap", errno));
    base = static_cast<std::byte*>(p);
  }
};

void check_shm_name(std::string_view name) {
  auto bad = [&](const char* why) {
    throw InvalidSharedMemoryName("invalid shared memory name '" + std::string(name) + "': " + why);
  };
  if (name.empty()) bad("it is empty");
  if (name.size() > 255) bad("it is longer than 255 bytes");
  if (name.find('/') != std::string_view::npos) bad("it contains '/' (give the bare name, as in /dev/shm/<name>)");
  if (name.find('\0') != std::string_view::npos) bad("it contains a NUL byte");
  if (name == "." || name == "..") bad("it is a directory name");
}


SegmentRef::SegmentRef(const SegmentRef& other) noexcept : p_(other.p_) {
  if (p_) p_->refs.fetch_add(1, std::memory_order_relaxed);
}
SegmentRef& SegmentRef::operator=(const SegmentRef& other) noexcept {
  SegmentRef copy(other);
  std::swap(p_, copy.p_);
  return *this;
}
SegmentRef& SegmentRef::operator=(SegmentRef&& other) noexcept {
  if (this != &other) {
    reset();
    std::swap(p_, other.p_);
  }
  return *this;
}
void SegmentRef::reset() noexcept {
  Segment* p = std::exchange(p_, nullptr);
  if (p && p->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete p;
}

}  // namespace detail

using detail::Segment;

SharedMemory::SharedMemory(std::size_t size) {
  if (size == 0) throw SharedMemoryError("anonymous shared memory: size must be positive");
  auto s = detail::SegmentRef(new Segment());
  int fd = ::memfd_create("mproc-shared", MFD_CLOEXEC);
  if (fd < 0) throw SharedMemoryError(shm_error("<anonymous>", "memfd_create", errno));
  s->fd.reset(fd);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0)
    throw SharedMemoryError(shm_error("<anonymous>", "ftruncate", errno));
  s->map_len = s->size = size;
  s->map("<anonymous>");
  seg_ = std::move(s);
}

SharedMemory::SharedMemory(std::string_view name_in, bool create, std::size_t size, bool track)
    : SharedMemory(name_in, create, size, track, shm_dir()) {}

SharedMemory::SharedMemory(std::string_view name_in, bool create, std::size_t size, bool track, std::string dir,
                           int opened_fd) {
  sys::UniqueFd opened(opened_fd);
  std::string name(name_in);
  if (create && name.empty()) name = fresh_name();
  detail::check_shm_name(name);
  auto s = detail::SegmentRef(new Segment());
  s->name = name;
  s->dir = std::move(dir);
  const std::string path = s->path();
  if (create) {
    if (size == 0) throw SharedMemoryError("shared memory '" + name + "': size must be positive to create it");
    cleanup_leaked_segments(s->dir);
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == EEXIST) throw SharedMemoryExists("shared memory '" + name + "' already exists");
    if (fd < 0) throw SharedMemoryError(shm_error(name, "open(create)", errno));
    s->fd.reset(fd);
    s->map_len = kHeaderSize + size;
    if (::ftruncate(fd, static_cast<off_t>(s->map_len)) != 0) {
      int err = errno;
      ::unlink(path.c_str());
      throw SharedMemoryError(shm_error(name, "ftruncate", err));
    }
    try {
      s->map(name);
    } catch (...) {
      ::unlink(path.c_str());
      throw;
    }
    auto* h = reinterpret_cast<NamedHeader*>(s->base);
    h->size = size;
    h->creator_pid = track ? ::getpid() : 0;
    h->creator_start = track ? self_start_time() : 0;
    h->creator_pidns = pid_namespace();
    h->magic.store(kMagic, std::memory_order_release);
    s->offset = kHeaderSize;
    s->size = size;
  } else {
    // O_NONBLOCK: a FIFO planted under the name must not block the open.
    int fd = opened ? opened.release() : ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0 && errno == ENOENT) throw SharedMemoryNotFound("shared memory '" + name + "' does not exist");
    if (fd < 0 && errno == ELOOP) throw SharedMemoryError("shared memory '" + name + "' is a symbolic link: refused");
    if (fd < 0) throw SharedMemoryError(shm_error(name, "open(attach)", errno));
    s->fd.reset(fd);
    struct stat st {};
    sys::check(::fstat(fd, &st), "fstat(shared memory)");
    if (!S_ISREG(st.st_mode)) throw SharedMemoryError("shared memory '" + name + "' is not a regular file: refused");
    s->map_len = static_cast<std::size_t>(st.st_size);
    if (s->map_len == 0) throw SharedMemoryError("shared memory '" + name + "' is empty (0 bytes)");
    s->map(name);
    auto* h = reinterpret_cast<NamedHeader*>(s->base);
    if (s->map_len >= kHeaderSize && h->magic.load(std::memory_order_acquire) == kMagic &&
        h->size <= s->map_len - kHeaderSize) {
      s->offset = kHeaderSize;
      s->size = h->size;
    } else {
      s->size = s->map_len;  // made by someone else (CPython, shm_open): all of it is buf()
    }
    if (size > s->size)
      throw SharedMemoryError("shared memory '" + name + "' has " + std::to_string(s->size) +
                              " bytes, fewer than the " + std::to_string(size) + " asked for");
  }
  name_ = s->name;
  dir_ = s->dir;
  seg_ = std::move(s);
}

const Segment& SharedMemory::seg(const char* op) const {
  if (!seg_) throw SharedMemoryError(std::string("SharedMemory::") + op + " on a closed segment");
  return *seg_;
}

std::span<std::byte> SharedMemory::buf() const {
  const Segment& s = seg("buf");
  return {s.base + s.offset, s.size};
}
std::size_t SharedMemory::size() const { return seg("size").size; }
const std::string& SharedMemory::name() const { return name_; }
bool SharedMemory::anonymous() const { return seg("anonymous").name.empty(); }
int SharedMemory::fileno() const { return seg("fileno").fd.get(); }

// Works after close() too (Python's shm.close(); shm.unlink()): the name is
// kept by the handle, not by the mapping.
void SharedMemory::unlink() {
  if (name_.empty()) {
    if (!seg_) throw SharedMemoryError("SharedMemory::unlink on a closed anonymous segment");
    return;  // a memfd has no name: nothing to remove
  }
  const std::string path = dir_ + "/" + name_;
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) throw SharedMemoryNotFound("shared memory '" + name_ + "' was already unlinked");
    throw SharedMemoryError(shm_error(name_, "unlink", errno));
  }
}

std::size_t cleanup_leaked_segments() { return cleanup_leaked_segments(shm_dir()); }

std::size_t cleanup_leaked_segments(const std::string& dir) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return 0;
  std::size_t removed = 0;
  const uid_t me = ::geteuid();
  const std::uint64_t my_ns = pid_namespace();
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' || (e->d_type != DT_REG && e->d_type != DT_UNKNOWN)) continue;
    int fd = ::openat(::dirfd(d), e->d_name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) continue;
    sys::UniqueFd owned(fd);
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != me ||
        st.st_size < static_cast<off_t>(SharedMemory::kHeaderSize))
      continue;
    NamedHeader h{};
    std::uint64_t raw[5];
    if (::pread(fd, raw, sizeof raw, 0) != static_cast<ssize_t>(sizeof raw) || raw[0] != kMagic) continue;
    h.size = raw[1];
    std::memcpy(&h.creator_pid, &raw[2], sizeof h.creator_pid);
    h.creator_start = raw[3];
    if (raw[4] != my_ns || creator_alive(h)) continue;  // another pid namespace's: not ours to judge
    // Same file still behind the name (not removed and re-created meanwhile)?
    struct stat now {};
    if (::fstatat(::dirfd(d), e->d_name, &now, AT_SYMLINK_NOFOLLOW) != 0 || now.st_ino != st.st_ino) continue;
    if (::unlinkat(::dirfd(d), e->d_name, 0) == 0) ++removed;
  }
  ::closedir(d);
  return removed;
}

// ---- handles ----------------------------------------------------------------
// A handle decoded from a message is a peer's word, so it never names a file
// (docs/security.md):
// - named: only a bare name, looked up in OUR configured directory (never a
//   directory from the message), opened without following links, and kept
//   only when it is a regular file of our uid carrying mproc's header, with
//   the device and inode the sender saw;
// - passed fd: the fd itself travelled (SCM_RIGHTS), so the peer held it;
// - /proc/<pid>/fd/<n> (pool-task arguments carry no fds): only when <pid> is
//   this process or one of its ancestors (the pool's owner), and the link
//   names one of mproc's memfds, checked before opening (nothing else is
//   opened) and again, with device and inode, after.
namespace {
// Written as one byte (cereal has no enum support in mproc's archives).
enum HandleKind : std::uint8_t { kClosed = 0, kNamed = 1, kPassedFd = 2, kProcPath = 3, kNamedPassedFd = 4 };

constexpr std::string_view kMemfdName = "mproc-shared";

[[noreturn]] void refuse(const std::string& what, const std::string& why) {
  throw SharedMemoryError("shared memory handle " + what + " refused: " + why);
}

// readlink of a /proc fd link: "/memfd:mproc-shared (deleted)" for ours.
bool is_mproc_memfd_link(const std::string& link_path) {
  char target[256];
  const ssize_t n = ::readlink(link_path.c_str(), target, sizeof target - 1);
  if (n <= 0) return false;
  const std::string_view t(target, static_cast<std::size_t>(n));
  return t == "/memfd:" + std::string(kMemfdName) + " (deleted)";
}

// The file behind a decoded named handle: dir/name, checked after opening.
sys::UniqueFd open_named_handle(const std::string& dir, const std::string& name, std::uint64_t dev,
                                std::uint64_t ino) {
  const std::string what = "'" + name + "'";
  try {
    detail::check_shm_name(name);
  } catch (const InvalidSharedMemoryName& e) {
    refuse(what, e.what());
  }
  sys::UniqueFd fd(::open((dir + "/" + name).c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY));
  if (!fd) {
    const int err = errno;
    if (err == ENOENT) throw SharedMemoryNotFound("shared memory '" + name + "' does not exist");
    refuse(what, err == ELOOP ? std::string("it is a symbolic link") : std::string("open: ") + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) refuse(what, std::string("fstat: ") + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) refuse(what, "not a regular file");
  if (st.st_uid != ::geteuid())
    refuse(what, "owned by uid " + std::to_string(st.st_uid) + ", not ours (" + std::to_string(::geteuid()) + ")");
  if (static_cast<std::uint64_t>(st.st_dev) != dev || static_cast<std::uint64_t>(st.st_ino) != ino)
    refuse(what, "not the file the sender named (device/inode differ: replaced, or never the sender's)");
  std::uint64_t magic = 0;
  if (st.st_size < static_cast<off_t>(SharedMemory::kHeaderSize) ||
      ::pread(fd.get(), &magic, sizeof magic, 0) != static_cast<ssize_t>(sizeof magic) || magic != kMagic)
    refuse(what, "not an mproc segment (no mproc header)");
  return fd;
}

// The memfd behind a /proc/<pid>/fd/<number> handle of a pool task.
sys::UniqueFd open_proc_handle(std::int64_t pid, std::int32_t number, std::uint64_t dev, std::uint64_t ino) {
  const std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(number);
  if (pid <= 0 || pid > std::numeric_limits<pid_t>::max() || number < 0) refuse(path, "not a process's fd");
  if (!sys::is_self_or_ancestor(static_cast<pid_t>(pid), ::getpid()))
    refuse(path, "process " + std::to_string(pid) + " is neither this process nor one of its ancestors");
  if (!is_mproc_memfd_link(path))
    throw SharedMemoryError("anonymous shared memory sent by process " + std::to_string(pid) +
                            " is no longer open there (" + path + " is not an mproc segment); keep it open until "
                            "the task has run");
  sys::UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC | O_NONBLOCK | O_NOCTTY));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 0 ||
      st.st_uid != ::geteuid() || static_cast<std::uint64_t>(st.st_dev) != dev ||
      static_cast<std::uint64_t>(st.st_ino) != ino ||
      !is_mproc_memfd_link("/proc/self/fd/" + std::to_string(fd.get())))
    throw SharedMemoryError("anonymous shared memory sent by process " + std::to_string(pid) +
                            " is no longer open there (" + path + "); keep it open until the task has run");
  return fd;
}

// Target arguments decoded while this is set stay mapped until the process
// exits (see retain_decoded_segments in shared_memory.hpp). Leaked on
// purpose: never destroyed, so nothing unmaps them at exit either.
thread_local bool t_retain = false;
std::vector<detail::SegmentRef>* g_retained = nullptr;
}  // namespace

detail::RetainDecodedSegments::RetainDecodedSegments() noexcept : previous_(t_retain) { t_retain = true; }
detail::RetainDecodedSegments::~RetainDecodedSegments() { t_retain = previous_; }

void SharedMemory::save(OutputArchive& ar) const {
  if (!seg_) {
    ar(std::uint8_t{kClosed});
    return;
  }
  if (!seg_->name.empty()) {
    // To a child process the fd itself travels: no lookup by name at all.
    try {
      const std::uint32_t index = ar.attach_fd(seg_->fd.get(), "mproc shared object");
      ar(std::uint8_t{kNamedPassedFd}, index, seg_->name);
      return;
    } catch (const ValueError&) {  // no fd channel: by name, checked by the receiver
    }
    struct stat st {};
    sys::check(::fstat(seg_->fd.get(), &st), "fstat(shared memory)");
    ar(std::uint8_t{kNamed}, seg_->name, static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino));
    return;
  }
  std::uint32_t index = 0;
  bool passed = true;
  try {
    index = ar.attach_fd(seg_->fd.get(), "mproc shared object");
  } catch (const ValueError&) {
    passed = false;  // no fd channel (a pool task's arguments): name the fd through /proc instead
  }
  const auto len = static_cast<std::uint64_t>(seg_->map_len);
  if (passed) {
    ar(std::uint8_t{kPassedFd}, index, len);
    return;
  }
  struct stat st {};
  sys::check(::fstat(seg_->fd.get(), &st), "fstat(shared memory)");
  ar(std::uint8_t{kProcPath}, static_cast<std::int64_t>(::getpid()), static_cast<std::int32_t>(seg_->fd.get()),
     static_cast<std::uint64_t>(st.st_dev), static_cast<std::uint64_t>(st.st_ino), len);
}

void SharedMemory::load(InputArchive& ar) {
  std::uint8_t kind = 0;
  ar(kind);
  *this = SharedMemory();
  if (kind == kClosed) return;
  if (kind == kNamed) {
    std::string name;
    std::uint64_t dev = 0, ino = 0;
    ar(name, dev, ino);
    const std::string dir = shm_dir();  // ours, never the sender's word
    sys::UniqueFd fd = open_named_handle(dir, name, dev, ino);
    // Attach through the checked fd, not the name again (it may have been
    // replaced meanwhile).
    *this = SharedMemory(name, false, 0, true, dir, fd.release());
  } else if (kind == kNamedPassedFd) {
    std::uint32_t index = 0;
    std::string name;
    ar(index, name);
    sys::UniqueFd fd(ar.take_fd(index, "mproc shared object"));
    try {
      detail::check_shm_name(name);
    } catch (const InvalidSharedMemoryName& e) {
      refuse("'" + name + "'", e.what());
    }
    *this = SharedMemory(name, false, 0, true, shm_dir(), fd.release());
  } else {
    sys::UniqueFd fd;
    std::uint64_t len = 0;
    if (kind == kPassedFd) {
      std::uint32_t index = 0;
      ar(index, len);
      fd.reset(ar.take_fd(index, "mproc shared object"));
    } else if (kind == kProcPath) {
      std::int64_t pid = 0;
      std::int32_t number = 0;
      std::uint64_t dev = 0, ino = 0;
      ar(pid, number, dev, ino, len);
      fd = open_proc_handle(pid, number, dev, ino);
    } else {
      throw DeserializeError("mproc shared object: unknown handle kind " + std::to_string(static_cast<int>(kind)));
    }
    auto s = detail::SegmentRef(new Segment());
    s->fd = std::move(fd);
    struct stat st {};
    sys::check(::fstat(s->fd.get(), &st), "fstat(shared memory)");
    if (!S_ISREG(st.st_mode)) refuse("(passed fd)", "not a regular file");
    // Map what the sender mapped: the file may be longer (a queue's big-message
    // file grows past its first page).
    if (len == 0 || static_cast<std::uint64_t>(st.st_size) < len)
      throw SharedMemoryError("anonymous shared memory received with " + std::to_string(st.st_size) +
                              " bytes, expected " + std::to_string(len));
    s->map_len = s->size = static_cast<std::size_t>(len);
    s->map("<anonymous>");
    seg_ = std::move(s);
  }
  if (t_retain) {
    if (!g_retained) g_retained = new std::vector<detail::SegmentRef>();
    g_retained->push_back(seg_);
  }
}

}  // namespace mproc
