// Value / Array against CPython's own tests (Lib/test/_test_multiprocessing.py:
// _TestValue, _TestArray, _TestSharedCTypes): a caller's lock or none
// (RawValue / RawArray), and the c_char array's value / raw.
#include <chrono>
#include <concepts>
#include <mutex>
#include <numeric>
#include <string>
#include <vector>

#include "mproc/process.hpp"
#include "mproc/sharedctypes.hpp"
#include "mproc/synchronize.hpp"
#include "shared_test_util.hpp"
#include "support.hpp"

namespace {

using namespace sharedtest;
using mproc::Array;
using mproc::Lock;
using mproc::NoLock;
using mproc::RawArray;
using mproc::RawValue;
using mproc::RLock;
using mproc::Value;

template <class V>
concept HasGetLock = requires(const V& v) { v.get_lock(); };

class SharedCTypesByMethod : public testing::TestWithParam<StartMethod> {};

// ---- _TestValue.test_value / test_rawvalue -----------------------------------

template <class L>
void set_values(Value<int, L> i, Value<short, L> h, Value<double, L> d, Value<char, L> c) {
  i.store(-7);
  h.store(-2);
  d.store(-4.25);
  c.store('y');
}

template <class L>
void check_test_value(StartMethod m) {
  Value<int, L> i(4);
  Value<short, L> h(13);
  Value<double, L> d(3.625);
  Value<char, L> c('x');
  EXPECT_EQ(i.value(), 4);
  EXPECT_EQ(h.value(), 13);
  EXPECT_EQ(d.value(), 3.625);
  EXPECT_EQ(c.value(), 'x');
  mproc::Process p(with(m), set_values<L>, i, h, d, c);
  p.start();
  join_ok(p);
  EXPECT_EQ(i.value(), -7);
  EXPECT_EQ(h.value(), -2);
  EXPECT_EQ(d.value(), -4.25);
  EXPECT_EQ(c.value(), 'y');
}

TEST_P(SharedCTypesByMethod, TestValue_test_value) { check_test_value<RLock>(GetParam()); }
TEST_P(SharedCTypesByMethod, TestValue_test_rawvalue) { check_test_value<NoLock>(GetParam()); }

// ---- _TestValue.test_getobj_getlock -----------------------------------------

TEST(SharedCTypesParity, TestValue_test_getobj_getlock) {
  Value<int> val1(5);  // lock=True (or None): a new RLock
  static_assert(std::same_as<decltype(val1.get_lock()), RLock&>);
  EXPECT_TRUE(val1.has_lock());

  Lock lock;  // lock=<a Lock>: get_lock() is that very lock
  Value val3(5, lock);
  static_assert(std::same_as<decltype(val3), Value<int, Lock>>);
  static_assert(std::same_as<decltype(val3.get_lock()), Lock&>);
  ASSERT_TRUE(lock.acquire());
  EXPECT_TRUE(val3.get_lock().locked());
  EXPECT_FALSE(val3.get_lock().acquire(false)) << "get_lock() is not the caller's Lock";
  lock.release();
  ASSERT_TRUE(val3.get_lock().acquire(false));
  EXPECT_TRUE(lock.locked());
  val3.get_lock().release();
  EXPECT_FALSE(lock.locked());

  RLock rlock;  // an RLock likewise
  Value<double> val4(1.5, rlock);
  ASSERT_TRUE(rlock.acquire());
  EXPECT_TRUE(val4.get_lock().acquire(false));  // recursive: the holder again
  val4.get_lock().release();
  rlock.release();
  EXPECT_FALSE(val4.get_lock().locked());

  // lock=False / RawValue: no get_lock at all (Python: hasattr is False).
  RawValue<int> arr5(5);
  static_assert(!HasGetLock<RawValue<int>>);
  static_assert(HasGetLock<Value<int>> && HasGetLock<Value<int, Lock>>);
  EXPECT_FALSE(arr5.has_lock());
  EXPECT_EQ(arr5.value(), 5);

  // mproc::no_lock on a Value<T> (kept for source compatibility) says so at run time.
  Value<int> old_style(5, mproc::no_lock);
  EXPECT_THROW(old_style.get_lock(), mproc::ValueError);
}

// ---- a caller's lock guards load/store in every process ------------------------

struct Big {  // not lock-free: load/store go through the lock
  long a[6];
};

void store_sevens(Value<Big, Lock> v) { v.store(Big{{7, 7, 7, 7, 7, 7}}); }

TEST_P(SharedCTypesByMethod, CallersLockGuardsLoadAndStoreInAChild) {
  Lock lock;
  Value<Big, Lock> v(Big{{1, 2, 3, 4, 5, 6}}, lock);
  ASSERT_TRUE(lock.acquire());
  {
    // The holder's own store() does not take the (non-recursive) lock again.
    v.store(Big{{2, 2, 2, 2, 2, 2}});
  }
  mproc::Process p(with(GetParam()), store_sevens, v);
  p.start();
  // A lower bound only: the child cannot finish while we hold the lock it
  // needs for store(), however long it is given.
  EXPECT_FALSE(p.join(300ms)) << "the child stored without taking the caller's lock";
  EXPECT_EQ(v.ref().a[0], 2);
  lock.release();
  join_ok(p);
  EXPECT_EQ(v.load().a[5], 7);
  EXPECT_FALSE(lock.locked());
}

// ---- _TestArray.test_array / test_rawarray / test_getobj_getlock_obj ---------

template <class L>
void running_sum(Array<int, L> seq) {  // CPython's _TestArray.f
  for (std::size_t i = 1; i < seq.size(); ++i) seq[i] += seq[i - 1];
}

template <class L>
void check_test_array(StartMethod m) {
  std::vector<int> seq{680, 626, 934, 821, 150, 233, 548, 982, 714, 831};
  Array<int, L> arr{std::span<const int>(seq)};
  EXPECT_EQ(arr.size(), seq.size());
  EXPECT_EQ(arr[3], seq[3]);
  for (int k = 0; k < 4; ++k) arr[4 + static_cast<std::size_t>(k)] = seq[4 + static_cast<std::size_t>(k)] = k + 1;
  EXPECT_TRUE(std::equal(arr.begin(), arr.end(), seq.begin(), seq.end()));
  std::partial_sum(seq.begin(), seq.end(), seq.begin());
  mproc::Process p(with(m), running_sum<L>, arr);
  p.start();
  join_ok(p);
  EXPECT_EQ(std::vector<int>(arr.begin(), arr.end()), seq);
}

TEST_P(SharedCTypesByMethod, TestArray_test_array) { check_test_array<RLock>(GetParam()); }
TEST_P(SharedCTypesByMethod, TestArray_test_rawarray) { check_test_array<NoLock>(GetParam()); }

TEST(SharedCTypesParity, TestArray_test_getobj_getlock_obj) {
  std::vector<int> ten(10);
  std::iota(ten.begin(), ten.end(), 0);
  Array<int> arr1{std::span<const int>(ten)};
  static_assert(std::same_as<decltype(arr1.get_lock()), RLock&>);

  Lock lock;
  Array<int, Lock> arr3(std::span<const int>(ten), lock);
  ASSERT_TRUE(lock.acquire());
  EXPECT_FALSE(arr3.get_lock().acquire(false)) << "get_lock() is not the caller's Lock";
  lock.release();
  Array<int, Lock> from_list({1, 2, 3}, lock);
  Array<char, Lock> sized(20, lock);
  EXPECT_EQ(from_list.size(), 3u);
  EXPECT_EQ(from_list[2], 3);
  ASSERT_TRUE(sized.get_lock().acquire(false));
  EXPECT_TRUE(arr3.get_lock().locked()) << "arrays given one lock share it";
  sized.get_lock().release();

  RawArray<int> arr5{std::span<const int>(ten)};
  static_assert(!HasGetLock<RawArray<int>>);
  EXPECT_FALSE(arr5.has_lock());
  EXPECT_EQ(arr5[9], 9);
}

// ---- a c_char array's value and raw (_TestSharedCTypes, ctypes' test_stringarray) --

TEST(SharedCTypesParity, CharArrayValueIsUpToTheFirstNul) {
  Array<char> name(20);
  name.set_value("John Doe");
  EXPECT_EQ(name.value(), "John Doe");
  EXPECT_EQ(name.value().size(), 8u);
  EXPECT_EQ(name.raw(), std::string("John Doe") + std::string(12, '\0'));

  try {
    name.set_value(std::string(21, 'x'));
    FAIL() << "a 21-character value fitted a 20-character array";
  } catch (const mproc::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("21"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("20"), std::string::npos) << e.what();
  }
  EXPECT_EQ(name.value(), "John Doe") << "a refused value changed the array";
  EXPECT_THROW(name.set_raw(std::string(21, 'x')), mproc::ValueError);

  // Exactly full: no room for a NUL, value() is the whole array.
  name.set_value("abcdefghijklmnopqrst");
  EXPECT_EQ(name.value(), "abcdefghijklmnopqrst");
  // Shorter: a NUL ends it, what follows stays (ctypes: buf.raw == b"x\0CD").
  name.set_value("x");
  EXPECT_EQ(name.value(), "x");
  EXPECT_EQ(name.raw(), std::string("x\0cdefghijklmnopqrst", 20));
  name[1] = 'Z';
  EXPECT_EQ(name.value(), "xZcdefghijklmnopqrst");
  name.set_raw("AB");  // no NUL added
  EXPECT_EQ(name.value(), "ABcdefghijklmnopqrst");

  RawArray<char> raw(4);
  EXPECT_EQ(raw.value(), "");
  raw.set_value("ABCD");
  EXPECT_EQ(raw.raw(), "ABCD");
}

template <class L>
void double_the_string(Array<char, L> s) {  // CPython: string.value *= 2
  s.set_value(s.value() + s.value());
}

template <class L>
void check_test_sharedctypes(StartMethod m) {
  Array<char, L> string(20);
  string.set_value("hello");
  mproc::Process p(with(m), double_the_string<L>, string);
  p.start();
  join_ok(p);
  EXPECT_EQ(string.value(), "hellohello");
}

// CPython's _TestSharedCTypes.test_sharedctypes (lock=False) / test_synchronize (lock=True).
TEST_P(SharedCTypesByMethod, TestSharedCTypes_test_sharedctypes) { check_test_sharedctypes<NoLock>(GetParam()); }
TEST_P(SharedCTypesByMethod, TestSharedCTypes_test_synchronize) { check_test_sharedctypes<RLock>(GetParam()); }

INSTANTIATE_TEST_SUITE_P(AllMethods, SharedCTypesByMethod, MPROC_ALL_METHODS);

}  // namespace
