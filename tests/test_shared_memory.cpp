// SharedMemory: anonymous and named segments, handles across start methods,
// typed errors, and the tracker that removes segments of dead creators.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "mproc/process.hpp"
#include "mproc/shared_memory.hpp"
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

}  // namespace
