// Helpers for the pool / executor / futures tests: task functions that run in
// worker processes, a temp dir, file gates (a task blocks until the test
// creates a file) and small measurements of this process.
//
// Workers are separate processes (forkserver): nothing in this process's
// memory is shared with them. Tasks report through return values, pids,
// exit statuses and files.
#pragma once
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace pooltest {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A fresh directory under /tmp, removed with everything in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mproc-pooltest-XXXXXX";
    if (!::mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  std::vector<std::string> entries() const {
    std::vector<std::string> out;
    for (const auto& e : std::filesystem::directory_iterator(path_)) out.push_back(e.path().filename());
    return out;
  }

 private:
  std::string path_;
};

inline bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// Written to a temp name and renamed, so a reader never sees it half-written.
inline void write_file(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp" + std::to_string(::getpid());
  {
    std::ofstream out(tmp);
    out << text;
  }
  std::filesystem::rename(tmp, path);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Polls for a file; false after `limit`.
inline bool wait_for_file(const std::string& path, std::chrono::milliseconds limit = 30s) {
  const auto end = Clock::now() + limit;
  while (!file_exists(path)) {
    if (Clock::now() > end) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Resident set size of this process, bytes.
inline std::size_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::size_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
}

inline std::size_t fd_count() {
  std::size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/fd")) ++n;
  return n;
}

// Pool::imap's result, whether it is returned by value or as a pointer.
template <class T>
auto& imap_of(T& x) {
  if constexpr (requires { x.operator->(); }) return *x;
  else return x;
}

// ---- tasks (run in workers) -----------------------------------------------

struct Point {
  int x = 0;
  double y = 0;
  std::string name;
  bool operator==(const Point&) const = default;
  template <class A>
  void serialize(A& ar) {
    ar(x, y, name);
  }
};

// A serializable function object: its state crosses with it.
struct Scale {
  int factor = 1;
  long operator()(int x) const { return static_cast<long>(x) * factor; }
  template <class A>
  void serialize(A& ar) {
    ar(factor);
  }
};

inline int square(int x) { return x * x; }
inline long twice_plus_one(long x) { return 2 * x + 1; }
inline int add(int a, int b) { return a + b; }
inline int mul(int a, int b) { return a * b; }
inline std::string greet(std::string who) { return "hello, " + who; }
inline std::vector<int> iota_vec(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = i;
  return v;
}
inline Point move_point(Point p, int dx) {
  p.x += dx;
  p.y *= 2;
  p.name += "!";
  return p;
}
inline void touch(std::string path) { write_file(path, "x"); }
inline void sleep_then_touch(int ms, std::string path) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  write_file(path, "x");
}
inline int sleep_ms(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ms;
}
inline pid_t my_pid() { return ::getpid(); }
inline pid_t pid_of_item(int) { return ::getpid(); }
inline pid_t sleep_then_pid(int ms) {
  std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  return ::getpid();
}
inline int throw_out_of_range(std::string msg) { throw std::out_of_range(msg); }
inline int fail_on(int x, int bad) {
  if (x == bad) throw std::invalid_argument("bad item " + std::to_string(x));
  return x;
}
// A real fault (not a raise): UBSan builds must not turn it into an abort.
__attribute__((no_sanitize("undefined"))) inline int segfault() {
  volatile int* p = nullptr;
  *p = 1;
  return 0;
}
inline int segfault_on(int x, int bad) {
  if (x == bad) segfault();
  return x * x;
}
inline int do_abort() { std::abort(); }
inline int do_exit(int code) { std::exit(code); }
inline int do__exit(int code) { ::_exit(code); }

// Blocks until `gate` exists; 1 if it appeared, 0 after 30 s.
inline int gated(std::string gate) { return wait_for_file(gate) ? 1 : 0; }
// Creates `mine`, waits for `other` (a task running at the same time makes
// it); returns its pid, or -1 if the other never came.
inline pid_t meet_then_pid(std::string mine, std::string other) {
  write_file(mine, "x");
  return wait_for_file(other) ? ::getpid() : -1;
}
// Blocks on `gate`, then creates `done`.
inline int gated_then_touch(std::string gate, std::string done) {
  const bool opened = wait_for_file(gate);
  write_file(done, "x");
  return opened ? 1 : 0;
}
// Writes its pid to `started`, then blocks on `gate`; returns its pid.
inline pid_t started_then_gated(std::string started, std::string gate) {
  write_file(started, std::to_string(::getpid()));
  wait_for_file(gate);
  return ::getpid();
}

// Allocates and touches `mib` MiB and keeps it (freed memory would leave the
// RSS again before the worker measures it). Returns the pid.
inline char* volatile g_kept = nullptr;
inline pid_t hog_memory(int mib) {
  const std::size_t n = static_cast<std::size_t>(mib) << 20;
  char* p = static_cast<char*>(std::malloc(n));
  if (!p) throw std::bad_alloc();
  for (std::size_t i = 0; i < n; i += 4096) p[i] = static_cast<char>(i);
  g_kept = p;
  return ::getpid();
}

// Initializers.
inline void init_record_pid(std::string dir) {
  // Append: a second run in the same worker would leave two lines.
  std::ofstream out(dir + "/" + std::to_string(::getpid()), std::ios::app);
  out << "init\n";
}
inline void init_throws(std::string msg) { throw std::runtime_error(msg); }
inline void init_sleep_ms(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

}  // namespace pooltest
