// Tests of include/mproc/function_ref.hpp: a function named as (build-id,
// offset) survives serialization and resolves to the same code; every kind of
// mismatch is a FunctionRefError, never a jump.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstring>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "mproc/function_ref.hpp"

namespace {

int add_one(int x) { return x + 1; }
long scale(long x, double f) { return static_cast<long>(static_cast<double>(x) * f); }

int g_data = 5;  // lives in a writable, non-executable segment

std::string what_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const mproc::FunctionRefError& e) {
    return e.what();
  }
  return "<no FunctionRefError>";
}

mproc::FunctionRef through_bytes(const mproc::FunctionRef& r) {
  return mproc::from_bytes<mproc::FunctionRef>(mproc::to_bytes(r));
}

// A FunctionRef as another build or a hostile peer sends it: its wire bytes
// edited (build-id: 32 bytes, its length: 1, offset: u64, signature: u32).
constexpr std::size_t kBuildIdBytes = 32, kOffsetAt = kBuildIdBytes + 1;
mproc::FunctionRef with_build_id_byte_flipped(const mproc::FunctionRef& r, std::size_t i) {
  auto bytes = mproc::to_bytes(r);
  const auto len = std::to_integer<std::size_t>(bytes.at(kBuildIdBytes));
  bytes.at(i % (len != 0 ? len : kBuildIdBytes)) ^= std::byte{0xff};
  return mproc::from_bytes<mproc::FunctionRef>(bytes);
}
mproc::FunctionRef with_offset(const mproc::FunctionRef& r, std::uint64_t offset) {
  auto bytes = mproc::to_bytes(r);
  std::memcpy(bytes.data() + kOffsetAt, &offset, sizeof offset);
  auto back = mproc::from_bytes<mproc::FunctionRef>(bytes);
  EXPECT_EQ(back.offset(), offset);  // the layout above is the wire's
  return back;
}

}  // namespace

TEST(FunctionRef, FreeFunctionRoundTripsAndCalls) {
  const auto ref = mproc::FunctionRef::of(&add_one);
  ASSERT_FALSE(ref.empty());
  const mproc::Bytes bytes = mproc::to_bytes(ref);
  // FunctionRef is trivially copyable but has serialize(): 32 + 1 + 8 + 4 bytes.
  EXPECT_EQ(bytes.size(), 45u);
  const auto back = mproc::from_bytes<mproc::FunctionRef>(bytes);
  EXPECT_EQ(back, ref);
  int (*fn)(int) = back.get<int(int)>();
  EXPECT_EQ(fn, &add_one);
  EXPECT_EQ(fn(41), 42);

  const auto ref2 = through_bytes(mproc::FunctionRef::of(&scale));
  EXPECT_EQ((ref2.get<long(long, double)>()(10, 2.5)), 25);
}

TEST(FunctionRef, CaptureLessLambda) {
  auto* fp = +[](int a, int b) { return a * b; };
  const auto ref = through_bytes(mproc::FunctionRef::of(fp));
  auto* back = ref.get<int(int, int)>();
  EXPECT_EQ(back, fp);
  EXPECT_EQ(back(6, 7), 42);
}

TEST(FunctionRef, FunctionInASharedLibrary) {
  // getpid lives in libc, a module other than the test program.
  const auto ref = through_bytes(mproc::FunctionRef::of(&::getpid));
  const auto here = mproc::FunctionRef::of(&add_one);
  EXPECT_NE(ref.build_id_hex(), here.build_id_hex());
  EXPECT_EQ(ref.get<pid_t()>()(), ::getpid());
}

TEST(FunctionRef, BuildIdAndToString) {
  const auto ref = mproc::FunctionRef::of(&add_one);
  const std::string id = ref.build_id_hex();
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(id.size() % 2, 0u);
  for (char c : id) EXPECT_TRUE(std::isxdigit(static_cast<unsigned char>(c)) && !std::isupper(c)) << id;
  const std::string s = ref.to_string();
  EXPECT_EQ(s.rfind(id + "+0x", 0), 0u) << s;
  EXPECT_GT(ref.offset(), 0u);
  // Two references to the same function are equal; to different ones are not.
  EXPECT_EQ(mproc::FunctionRef::of(&add_one), ref);
  EXPECT_NE(mproc::FunctionRef::of(+[](int x) { return x; }), ref);
}

TEST(FunctionRef, EmptyReference) {
  const mproc::FunctionRef empty;
  EXPECT_TRUE(empty.empty());
  EXPECT_EQ(empty.build_id_hex(), "");
  EXPECT_NE(what_of([&] { (void)empty.get<int(int)>(); }).find("empty"), std::string::npos);
  const auto back = through_bytes(empty);
  EXPECT_TRUE(back.empty());
}

TEST(FunctionRef, CorruptedBuildIdIsRejected) {
  for (std::size_t i : {0u, 5u, 19u, 100u}) {
    const auto back = with_build_id_byte_flipped(mproc::FunctionRef::of(&add_one), i);
    ASSERT_NE(back.build_id_hex(), mproc::FunctionRef::of(&add_one).build_id_hex());
    const std::string msg = what_of([&] { (void)back.get<int(int)>(); });
    EXPECT_NE(msg.find("unknown build-id " + back.build_id_hex()), std::string::npos) << msg;
    EXPECT_NE(msg.find("different binary"), std::string::npos) << msg;
  }
}

TEST(FunctionRef, OffsetOutsideCodeIsRejected) {
  const auto good = mproc::FunctionRef::of(&add_one);
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(&add_one) - good.offset();

  for (std::uint64_t off : {std::uint64_t{1} << 60, ~std::uint64_t{0}}) {
    const auto ref = with_offset(good, off);
    const std::string msg = what_of([&] { (void)ref.get<int(int)>(); });
    EXPECT_NE(msg.find("outside the executable segments"), std::string::npos) << off << ": " << msg;
  }
  // An offset that lands on data of the same module (a global variable).
  const auto on_data = with_offset(good, reinterpret_cast<std::uintptr_t>(&g_data) - base);
  const std::string msg = what_of([&] { (void)on_data.get<int(int)>(); });
  EXPECT_NE(msg.find("outside the executable segments"), std::string::npos) << msg;
}

TEST(FunctionRef, MakeRejectsNonCode) {
  EXPECT_NE(what_of([] { (void)mproc::FunctionRef::make(&g_data, 0); }).find("non-executable"), std::string::npos);
  int on_stack = 0;
  EXPECT_NE(what_of([&] { (void)mproc::FunctionRef::make(&on_stack, 0); }).find("not inside any loaded module"),
            std::string::npos);
  EXPECT_NE(what_of([] { (void)mproc::FunctionRef::make(nullptr, 0); }).find("null"), std::string::npos);
}

TEST(FunctionRef, WrongSignatureIsRejected) {
  const auto ref = through_bytes(mproc::FunctionRef::of(&add_one));
  const std::string msg = what_of([&] { (void)ref.get<long(int)>(); });
  EXPECT_NE(msg.find("signature mismatch"), std::string::npos) << msg;
  EXPECT_THROW((void)ref.get<int(int, int)>(), mproc::FunctionRefError);
  EXPECT_THROW((void)ref.get<void()>(), mproc::FunctionRefError);
  EXPECT_EQ(ref.get<int(int)>()(1), 2);
}

TEST(FunctionRef, ConcurrentMakeAndResolve) {
  const auto expected = mproc::FunctionRef::of(&add_one);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 2000; ++i) {
        const auto r = mproc::FunctionRef::of(&add_one);
        if (!(r == expected) || r.get<int(int)>() != &add_one) ++bad;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

TEST(FunctionRef, UsableInAChildForkedWhileAnotherThreadUsesIt) {
  // Warm the module cache first: only a cache miss walks the loader's list, and
  // a fork during that walk is what glibc cannot make safe.
  (void)mproc::FunctionRef::of(&add_one);
  std::atomic<bool> stop{false};
  std::thread busy([&] {
    while (!stop) (void)mproc::FunctionRef::of(&add_one).get<int(int)>();
  });
  int ok = 0;
  for (int i = 0; i < 20; ++i) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::alarm(5);  // a deadlock in the child ends as SIGALRM, not a hung test
      const auto r = mproc::FunctionRef::of(&add_one);
      ::_exit(r.get<int(int)>()(1) == 2 ? 0 : 1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ++ok;
  }
  stop = true;
  busy.join();
  EXPECT_EQ(ok, 20);
}

TEST(FunctionRef, FollowsDlopenAndDlclose) {
  // A library that this program has not loaded yet.
  void* lib = nullptr;
  const char* symbol = nullptr;
  for (auto [name, sym] : {std::pair{"libz.so.1", "zlibVersion"}, std::pair{"libcrypto.so.3", "OpenSSL_version_num"}}) {
    if (void* already = dlopen(name, RTLD_NOW | RTLD_NOLOAD)) {
      dlclose(already);
      continue;
    }
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) {
      symbol = sym;
      break;
    }
  }
  if (lib == nullptr) GTEST_SKIP() << "no unloaded test library (libz, libcrypto) available";

  // The module snapshot taken by the earlier tests must notice the new library.
  (void)mproc::FunctionRef::of(&add_one);
  void* fn = dlsym(lib, symbol);
  ASSERT_NE(fn, nullptr);
  const std::uint32_t sig = mproc::type_fingerprint<const char* (*)()>();
  const auto ref = mproc::FunctionRef::make(fn, sig);
  EXPECT_EQ(through_bytes(ref).resolve(sig), fn);

  ASSERT_EQ(dlclose(lib), 0);
  if (void* still = dlopen(symbol[0] == 'z' ? "libz.so.1" : "libcrypto.so.3", RTLD_NOW | RTLD_NOLOAD)) {
    dlclose(still);
    GTEST_SKIP() << "the library stayed loaded after dlclose";
  }
  // Gone: its build-id is no longer known here.
  const std::string msg = what_of([&] { (void)ref.resolve(sig); });
  EXPECT_NE(msg.find("unknown build-id"), std::string::npos) << msg;
}
