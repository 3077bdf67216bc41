// SharedMemory: anonymous and named segments, handles across start methods,
// typed errors, and the tracker that removes segments of dead creators.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <vector>
#include <filesystem>
#include <string>

#include "mproc/process.hpp"
#include "mproc/managers.hpp"
#include "mproc/pool.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/sharedctypes.hpp"
#include "mproc/synchronize.hpp"
#include "shared_test_util.hpp"
#include "support.hpp"

namespace {

using mproc::SharedMemory;
using namespace sharedtest;

// Named segments of these tests live in a private directory ($MPROC_SHM_DIR):
// ctest runs tests in parallel and every test's leak check lists /dev/shm, so
// a segment there, even for a millisecond, would fail a neighbour's check.
// Each test checks instead that its directory is empty at the end.
class PrivateShmDir : public testing::Test {
 protected:
  PrivateShmDir() {
    char tmpl[] = "/tmp/mproc-shm-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    dir_ = tmpl;
    ::setenv("MPROC_SHM_DIR", dir_.c_str(), 1);
  }
  ~PrivateShmDir() override {
    for (const auto& e : std::filesystem::directory_iterator(dir_))
      ADD_FAILURE() << "shared memory segment " << e.path().filename() << " left behind";
    std::filesystem::remove_all(dir_);
    ::unsetenv("MPROC_SHM_DIR");
  }
  bool shm_exists(const std::string& name) const { return std::filesystem::exists(dir_ + "/" + name); }
  std::string dir_;
};

class NamedShm : public PrivateShmDir {};
class ShmTracker : public PrivateShmDir {};

void fill(std::span<std::byte> b, unsigned char seed) {
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<std::byte>(seed + i * 7);
}
bool has(std::span<const std::byte> b, unsigned char seed) {
  for (std::size_t i = 0; i < b.size(); ++i)
    if (b[i] != static_cast<std::byte>(seed + i * 7)) return false;
  return true;
}

// Child side: checks the parent's bytes, then writes its own.
void check_and_rewrite(SharedMemory shm) {
  if (shm.size() != 10000 || !has(shm.buf(), 1)) ::_exit(3);
  fill(shm.buf(), 2);
}

// The fork server started before the test chose its directory: say it here.
void attach_by_name_and_write(std::string dir, std::string name) {
  ::setenv("MPROC_SHM_DIR", dir.c_str(), 1);
  auto shm = SharedMemory::attach(name);
  fill(shm.buf(), 9);
  shm.close();  // closing (and exiting) must not unlink a segment we did not create
}

class SharedMemoryByMethod : public PrivateShmDir, public testing::WithParamInterface<StartMethod> {};

TEST_P(SharedMemoryByMethod, AnonymousSegmentIsSharedWithChild) {
  SharedMemory shm(10000);
  EXPECT_TRUE(shm.anonymous());
  EXPECT_TRUE(shm.name().empty());
  fill(shm.buf(), 1);
  mproc::Process p(with(GetParam()), check_and_rewrite, shm);
  p.start();
  join_ok(p);
  EXPECT_TRUE(has(shm.buf(), 2));
}

TEST_P(SharedMemoryByMethod, NamedSegmentAttachedByNameInChildStaysUntilUnlinked) {
  auto shm = SharedMemory::create("", 5000);
  const std::string name = shm.name();
  EXPECT_TRUE(name.starts_with(SharedMemory::kGeneratedPrefix));
  EXPECT_TRUE(shm_exists(name));
  mproc::Process p(with(GetParam()), attach_by_name_and_write, dir_, name);
  p.start();
  join_ok(p);
  EXPECT_TRUE(has(shm.buf(), 9));
  EXPECT_TRUE(shm_exists(name)) << "a child's attach/close/exit removed the segment";
  shm.unlink();
  EXPECT_FALSE(shm_exists(name));
  EXPECT_TRUE(has(shm.buf(), 9)) << "the mapping outlives the name";
}

TEST_P(SharedMemoryByMethod, NamedHandleTravelsToChild) {
  auto shm = SharedMemory::create("", 10000);
  fill(shm.buf(), 1);
  mproc::Process p(with(GetParam()), check_and_rewrite, shm);
  p.start();
  join_ok(p);
  EXPECT_TRUE(has(shm.buf(), 2));
  shm.unlink();
}

INSTANTIATE_TEST_SUITE_P(AllMethods, SharedMemoryByMethod, MPROC_ALL_METHODS);

TEST_F(NamedShm, CreateAttachWithinOneProcess) {
  const std::string name = "mproc_test_" + std::to_string(::getpid());
  auto a = SharedMemory::create(name, 100);
  EXPECT_EQ(a.name(), name);
  EXPECT_EQ(a.size(), 100u);
  auto b = SharedMemory::attach(name);
  EXPECT_EQ(b.size(), 100u);
  EXPECT_NE(a.data(), b.data());
  a.buf()[42] = std::byte{0x5a};
  EXPECT_EQ(b.buf()[42], std::byte{0x5a});
  auto c = SharedMemory::attach(name, 60);  // a smaller size is fine (Python's too)
  EXPECT_EQ(c.size(), 100u);
  b.unlink();
  EXPECT_THROW(a.unlink(), mproc::SharedMemoryNotFound);
}

TEST_F(NamedShm, TypedErrorsNameWhatWasWrong) {
  const std::string missing = "mproc_missing_" + std::to_string(::getpid());
  try {
    SharedMemory::attach(missing);
    FAIL() << "attached a missing segment";
  } catch (const mproc::SharedMemoryNotFound& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  auto shm = SharedMemory::create("", 100);
  try {
    SharedMemory::attach(shm.name(), 101);
    FAIL() << "attached with a size larger than the segment";
  } catch (const mproc::SharedMemoryError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("100 bytes"), std::string::npos) << what;
    EXPECT_NE(what.find("101"), std::string::npos) << what;
  }
  EXPECT_THROW(SharedMemory::create(shm.name(), 10), mproc::SharedMemoryExists);
  try {
    SharedMemory::attach("dir/name");
    FAIL() << "accepted a name with '/'";
  } catch (const mproc::InvalidSharedMemoryName& e) {
    EXPECT_NE(std::string(e.what()).find("'/'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(SharedMemory::create("/leading", 10), mproc::InvalidSharedMemoryName);
  EXPECT_THROW(SharedMemory::create(std::string(300, 'x'), 10), mproc::InvalidSharedMemoryName);
  EXPECT_THROW(SharedMemory::create("", 0), mproc::SharedMemoryError);
  EXPECT_THROW(SharedMemory(0), mproc::SharedMemoryError);
  shm.unlink();
}

// Without an fd channel (a pool task's arguments) an anonymous segment is
// named as /proc/<pid>/fd/<n> + inode: valid while the sender holds it.
TEST_F(NamedShm, AnonymousHandleWithoutFdChannelNeedsALiveHolder) {
  SharedMemory shm(4096);
  shm.buf()[7] = std::byte{42};
  const mproc::Bytes handle = mproc::to_bytes(shm);
  EXPECT_LT(handle.size(), 64u) << "a handle, not the data";
  {
    auto other = mproc::from_bytes<SharedMemory>(handle);
    EXPECT_EQ(other.buf()[7], std::byte{42});
    other.buf()[8] = std::byte{43};
    EXPECT_EQ(shm.buf()[8], std::byte{43});
  }
  shm.close();
  try {
    (void)mproc::from_bytes<SharedMemory>(handle);
    FAIL() << "opened a segment nobody holds any more";
  } catch (const mproc::SharedMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find("no longer open"), std::string::npos) << e.what();
  }
}

TEST_F(NamedShm, CopiesShareOneMappingAndCloseIsPerHandle) {
  SharedMemory a(64);
  SharedMemory b = a;
  EXPECT_EQ(a.data(), b.data());
  a.close();
  EXPECT_TRUE(a.closed());
  EXPECT_THROW((void)a.buf(), mproc::SharedMemoryError);
  b.buf()[0] = std::byte{1};  // still mapped through the copy
  EXPECT_EQ(b.buf()[0], std::byte{1});
}

TEST_F(NamedShm, AttachesSegmentsMadeByOthersWhole) {
  const std::string name = "mproc_foreign_" + std::to_string(::getpid());
  int fd = ::open((dir_ + "/" + name).c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);  // as shm_open does
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::ftruncate(fd, 8192), 0);
  ASSERT_EQ(::pwrite(fd, "hi", 2, 0), 2);
  ::close(fd);
  auto shm = SharedMemory::attach(name);
  EXPECT_EQ(shm.size(), 8192u);
  EXPECT_EQ(std::memcmp(shm.data(), "hi", 2), 0);
  shm.unlink();
  EXPECT_EQ(mproc::cleanup_leaked_segments(), 0u);  // the sweep never touches what is not mproc's
}

void create_and_die(std::string name, bool track, bool by_signal) {
  auto shm = SharedMemory::create(name, 4096, track);
  fill(shm.buf(), 5);
  if (by_signal) ::kill(::getpid(), SIGKILL);
  ::_exit(0);  // no unlink, no destructors
}

TEST_F(ShmTracker, SegmentOfDeadCreatorIsRemovedOnNextCreate) {
  const std::string name = "mproc_orphan_" + std::to_string(::getpid());
  mproc::Process p(with(StartMethod::fork), create_and_die, name, true, true);
  p.start();
  p.join();
  EXPECT_EQ(p.exitcode(), -SIGKILL);
  ASSERT_TRUE(shm_exists(name)) << "the child did not leave its segment";
  // Still attachable until swept: a dead creator does not make it vanish under a reader.
  EXPECT_TRUE(has(SharedMemory::attach(name).buf(), 5));
  auto fresh = SharedMemory::create("", 100);  // creating sweeps
  EXPECT_FALSE(shm_exists(name)) << "the tracker left a dead creator's segment in /dev/shm";
  EXPECT_TRUE(shm_exists(fresh.name())) << "the sweep removed a live creator's segment";
  fresh.unlink();
}

TEST_F(ShmTracker, LiveCreatorAndUntrackedSegmentsAreKept) {
  auto mine = SharedMemory::create("", 100);
  const std::string untracked = "mproc_untracked_" + std::to_string(::getpid());
  mproc::Process p(with(StartMethod::fork), create_and_die, untracked, false, false);
  p.start();
  join_ok(p);
  // A sweep from another process (spawned: a different image) keeps both.
  mproc::Process sweeper(with(StartMethod::spawn), +[](std::string dir) { mproc::cleanup_leaked_segments(dir); }, dir_);
  sweeper.start();
  join_ok(sweeper);
  EXPECT_TRUE(shm_exists(mine.name()));
  EXPECT_TRUE(shm_exists(untracked)) << "track=false segments outlive their creator";
  SharedMemory::attach(untracked).unlink();
  mine.unlink();
}

// The header (see docs/architecture.md): magic, size, creator pid, creator
// start time, creator pid namespace. Rewritten here to fake another creator.
TEST_F(ShmTracker, JudgesOnlyCreatorsOfItsOwnPidNamespaceAndPid) {
  auto shm = SharedMemory::create("", 64);
  const std::string path = dir_ + "/" + shm.name();
  mproc::Process gone(with(StartMethod::fork), [] {});
  gone.start();
  join_ok(gone);
  const std::int64_t dead = gone.pid();
  std::uint64_t ns = 0;
  int fd = ::open(path.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pread(fd, &ns, 8, 32), 8);
  const std::uint64_t other_ns = ns + 1;
  ASSERT_EQ(::pwrite(fd, &dead, 8, 16), 8);
  ASSERT_EQ(::pwrite(fd, &other_ns, 8, 32), 8);
  EXPECT_EQ(mproc::cleanup_leaked_segments(), 0u) << "judged a creator from another pid namespace";
  EXPECT_TRUE(shm_exists(shm.name()));
  ASSERT_EQ(::pwrite(fd, &ns, 8, 32), 8);
  ::close(fd);
  EXPECT_EQ(mproc::cleanup_leaked_segments(), 1u);
  EXPECT_FALSE(shm_exists(shm.name())) << "a dead creator's segment survived the sweep";
  EXPECT_EQ(shm.buf().size(), 64u);  // our mapping is untouched
}

// ---- hostile handles (issue 12 item 3) -------------------------------------
// A peer's bytes, made with the archive itself (what save() would write, or a
// forgery of it). The victim is a file of the attacker's choosing outside the
// segment directory: after every refusal it must be unchanged.
template <class... T>
mproc::Bytes crafted(const T&... fields) {
  mproc::Bytes b;
  mproc::OutputArchive ar(b);
  ar(fields...);
  return b;
}

struct Victim {
  static constexpr std::size_t kSize = 8192;
  std::string path;
  std::uint64_t dev = 0, ino = 0;
  Victim() {
    char t[] = "/tmp/mproc-victim-XXXXXX";
    int fd = ::mkstemp(t);
    if (fd < 0) throw std::runtime_error("mkstemp");
    std::string data(kSize, 'V');
    if (::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) throw std::runtime_error("write");
    struct stat st {};
    ::fstat(fd, &st);
    dev = st.st_dev;
    ino = st.st_ino;
    ::close(fd);
    path = t;
  }
  ~Victim() { ::unlink(path.c_str()); }
  bool untouched() const {
    std::ifstream in(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    return data == std::string(kSize, 'V');
  }
};

class HostileHandle : public PrivateShmDir {
 protected:
  // A well-behaved sender's handle still works, data intact.
  void expect_honest_handles_work() {
    auto shm = SharedMemory::create("", 128);
    fill(shm.buf(), 3);
    auto back = mproc::from_bytes<SharedMemory>(mproc::to_bytes(shm));
    EXPECT_TRUE(has(back.buf(), 3));
    shm.unlink();
    SharedMemory anon(256);
    fill(anon.buf(), 4);
    EXPECT_TRUE(has(mproc::from_bytes<SharedMemory>(mproc::to_bytes(anon)).buf(), 4));
  }
  template <class T = SharedMemory>
  void expect_refused(const mproc::Bytes& bytes, const Victim& v) {
    EXPECT_THROW((void)mproc::from_bytes<T>(bytes), mproc::Error);
    EXPECT_TRUE(v.untouched()) << v.path << " was changed";
  }
};

constexpr std::uint8_t kNamedHandle = 1, kProcHandle = 3;

TEST_F(HostileHandle, DirectoryFromTheMessageIsNeverUsed) {
  Victim v;
  const auto slash = v.path.rfind('/');
  // The old layout: kind, name, directory.
  expect_refused(crafted(kNamedHandle, v.path.substr(slash + 1), v.path.substr(0, slash)), v);
  expect_refused(crafted(kNamedHandle, std::string("../../") + v.path, v.dev, v.ino), v);
  expect_honest_handles_work();
}

TEST_F(HostileHandle, SymlinkInTheSegmentDirectoryIsRefused) {
  Victim v;
  ASSERT_EQ(::symlink(v.path.c_str(), (dir_ + "/evil").c_str()), 0);
  expect_refused(crafted(kNamedHandle, std::string("evil"), v.dev, v.ino), v);
  EXPECT_THROW((void)SharedMemory::attach("evil"), mproc::SharedMemoryError);
  EXPECT_TRUE(v.untouched());
  ::unlink((dir_ + "/evil").c_str());
  expect_honest_handles_work();
}

TEST_F(HostileHandle, FileWithoutMprocHeaderIsRefused) {
  Victim v;
  const std::string in_dir = dir_ + "/plain";
  if (::link(v.path.c_str(), in_dir.c_str()) != 0) GTEST_SKIP() << "no hard link from " << dir_ << " to /tmp";
  expect_refused(crafted(kNamedHandle, std::string("plain"), v.dev, v.ino), v);
  ::unlink(in_dir.c_str());
  // A real segment, but not the inode the sender named (replaced meanwhile).
  auto shm = SharedMemory::create("real", 64);
  EXPECT_THROW((void)mproc::from_bytes<SharedMemory>(crafted(kNamedHandle, std::string("real"), v.dev, v.ino)),
               mproc::SharedMemoryError);
  shm.unlink();
  expect_honest_handles_work();
}

TEST_F(HostileHandle, ProcFdOfThisProcessNamingAFileIsRefused) {
  Victim v;
  int fd = ::open(v.path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  const auto bytes = crafted(kProcHandle, std::int64_t{::getpid()}, std::int32_t{fd}, v.dev, v.ino,
                             std::uint64_t{Victim::kSize});
  expect_refused(bytes, v);
  // Value, Array and locks hold a SharedMemory: same rule.
  expect_refused<mproc::Value<int>>(
      crafted(kProcHandle, std::int64_t{::getpid()}, std::int32_t{fd}, v.dev, v.ino, std::uint64_t{Victim::kSize},
              std::uint64_t{1}, false),
      v);
  expect_refused<mproc::Lock>(crafted(kProcHandle, std::int64_t{::getpid()}, std::int32_t{fd}, v.dev, v.ino,
                                      std::uint64_t{Victim::kSize}, std::uint64_t{0}),
                              v);
  ::close(fd);
  expect_honest_handles_work();
}

TEST_F(HostileHandle, ProcFdOfAnotherProcessIsRefused) {
  Victim v;
  int fd = ::open(v.path.c_str(), O_RDWR | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  int go[2];
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  const pid_t holder = ::fork();  // holds the victim open at fd until told to go
  if (holder == 0) {
    ::close(go[1]);
    char c;
    [[maybe_unused]] auto r = ::read(go[0], &c, 1);
    ::_exit(0);
  }
  ::close(fd);
  ::close(go[0]);
  expect_refused(crafted(kProcHandle, std::int64_t{holder}, std::int32_t{fd}, v.dev, v.ino,
                         std::uint64_t{Victim::kSize}),
                 v);
  ::close(go[1]);
  int status = 0;
  ::waitpid(holder, &status, 0);
  // Even an mproc segment, when its holder is not this process or an ancestor
  // (here: a child, which sends us its handle and waits).
  int back[2], done[2];
  ASSERT_EQ(::pipe2(back, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(done, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    ::close(done[1]);
    ::close(back[0]);
    SharedMemory anon(4096);
    const mproc::Bytes h = mproc::to_bytes(anon);
    [[maybe_unused]] auto w = ::write(back[1], h.data(), h.size());
    char c;
    [[maybe_unused]] auto r = ::read(done[0], &c, 1);
    ::_exit(0);
  }
  ::close(back[1]);
  ::close(done[0]);
  mproc::Bytes h(256);
  const ssize_t n = ::read(back[0], h.data(), h.size());
  ASSERT_GT(n, 0);
  h.resize(static_cast<std::size_t>(n));
  try {
    (void)mproc::from_bytes<SharedMemory>(h);
    ADD_FAILURE() << "opened a memfd of a process that is not an ancestor";
  } catch (const mproc::SharedMemoryError& e) {
    EXPECT_NE(std::string(e.what()).find("ancestor"), std::string::npos) << e.what();
  }
  ::close(done[1]);
  ::close(back[0]);
  ::waitpid(child, &status, 0);
  // An ancestor's (a Process child decoding its parent's handle): honoured.
  SharedMemory anon(4096);
  fill(anon.buf(), 8);
  mproc::Process p(with(StartMethod::fork), +[](mproc::Bytes handle) {
    try {
      if (!has(mproc::from_bytes<SharedMemory>(handle).buf(), 8)) ::_exit(4);
    } catch (...) {
      ::_exit(3);
    }
  }, mproc::to_bytes(anon));
  p.start();
  join_ok(p);
  expect_honest_handles_work();
}

// ---- close/unlink, attach sizes, the sweep at start (issue 12 item 6) -------

TEST_F(NamedShm, CloseThenUnlinkAsInPython) {
  auto shm = SharedMemory::create("", 100);
  const std::string name = shm.name();
  shm.close();
  EXPECT_EQ(shm.name(), name);
  EXPECT_NO_THROW(shm.unlink());
  EXPECT_FALSE(shm_exists(name));
  EXPECT_THROW(shm.unlink(), mproc::SharedMemoryNotFound);
}

// Mirrors CPython's _TestSharedMemory.test_shared_memory_basics (its POSIX
// part): attach, write through one handle and read through the other, unlink
// through the attached handle after which both close, a second unlink is
// FileNotFoundError, and a name in use cannot be created again.
TEST_F(NamedShm, TestSharedMemory_test_shared_memory_basics) {
  const std::string name = "mproc_tsmb_" + std::to_string(::getpid());
  auto sms = SharedMemory::create(name, 512);
  EXPECT_EQ(sms.name(), name);
  EXPECT_GE(sms.size(), 512u);
  sms.buf()[0] = std::byte{42};
  auto also_sms = SharedMemory::attach(name);
  EXPECT_EQ(also_sms.buf()[0], std::byte{42});
  also_sms.close();
  EXPECT_THROW(SharedMemory::create(name, 512), mproc::SharedMemoryExists);

  auto sms_uno = SharedMemory::create(name + "_dbl", 5000);
  auto sms_duo = SharedMemory::attach(name + "_dbl");
  sms_duo.unlink();
  sms_duo.close();
  sms_uno.close();
  EXPECT_THROW(sms_uno.unlink(), mproc::SharedMemoryNotFound);  // Python: FileNotFoundError
  EXPECT_THROW(SharedMemory::attach(name + "_notthere"), mproc::SharedMemoryNotFound);
  sms.close();
  sms.unlink();  // close() then unlink(), as Python's cleanup does
  EXPECT_FALSE(shm_exists(name));
}

TEST_F(NamedShm, AttachAcceptsASizeUpToTheSegments) {
  auto shm = SharedMemory::create("", 10000);
  fill(shm.buf(), 6);
  auto smaller = SharedMemory::attach(shm.name(), 5000);
  EXPECT_EQ(smaller.size(), 10000u) << "buf() is the whole segment, as in Python";
  EXPECT_TRUE(has(smaller.buf(), 6));
  EXPECT_EQ(SharedMemory::attach(shm.name(), 10000).size(), 10000u);
  try {
    (void)SharedMemory::attach(shm.name(), 10001);
    ADD_FAILURE() << "attached with a size larger than the segment";
  } catch (const mproc::SharedMemoryError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("10000"), std::string::npos) << what;
    EXPECT_NE(what.find("10001"), std::string::npos) << what;
  }
  shm.unlink();
}

TEST_F(ShmTracker, SegmentOfDeadCreatorIsGoneOnceAManagerStarts) {
  const std::string name = "mproc_orphan_m_" + std::to_string(::getpid());
  mproc::Process p(with(StartMethod::fork), create_and_die, name, true, true);
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  ASSERT_TRUE(shm_exists(name));
  mproc::Manager m;
  m.start();
  EXPECT_FALSE(shm_exists(name)) << "a SIGKILLed creator's segment outlived Manager::start";
  auto l = m.list<int>();
  l.append(1);
  EXPECT_EQ(l.tolist(), std::vector<int>{1});
  m.shutdown();
}

int twice(int x) { return 2 * x; }

TEST_F(ShmTracker, SegmentOfDeadCreatorIsGoneOnceAPoolStarts) {
  const std::string name = "mproc_orphan_p_" + std::to_string(::getpid());
  mproc::Process p(with(StartMethod::fork), create_and_die, name, true, true);
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  ASSERT_TRUE(shm_exists(name));
  mproc::Pool pool(1);
  EXPECT_FALSE(shm_exists(name)) << "a SIGKILLed creator's segment outlived Pool's start";
  EXPECT_EQ(pool.apply(twice, 21), 42);
}

TEST_F(ShmTracker, SegmentOfDeadCreatorIsGoneOnceAProgramCallsInit) {
  const std::string name = "mproc_orphan_i_" + std::to_string(::getpid());
  mproc::Process p(with(StartMethod::fork), create_and_die, name, true, true);
  p.start();
  p.join();
  ASSERT_EQ(p.exitcode(), -SIGKILL);
  ASSERT_TRUE(shm_exists(name));
  // A fresh program (this test binary, running no test): main() calls init().
  const pid_t prog = ::fork();
  if (prog == 0) {
    int devnull = ::open("/dev/null", O_WRONLY);
    ::dup2(devnull, 1);
    ::execl("/proc/self/exe", "mproc_tests", "--gtest_filter=NoSuchSuite.NoSuchTest", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(prog, &status, 0), prog);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  EXPECT_FALSE(shm_exists(name)) << "a SIGKILLed creator's segment outlived init()";
}

}  // namespace
