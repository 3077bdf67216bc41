// Process: Python's multiprocessing.Process for C++ callables.
//
//   mproc::Process p(work, 42);        // any callable + arguments
//   p.start();
//   p.join();                          // p.exitcode() == 0
//
// Start methods (see context.hpp): fork runs any callable; spawn and
// forkserver start a fresh image of this binary, so the target must be a
// plain function, a captureless lambda or a serializable function object, and
// its arguments serializable. Such targets are encoded as a FunctionRef to a
// typed entry point plus the serialized arguments.
//
// RAII: the destructor never leaves a zombie. A running non-daemon process is
// joined (as std::jthread joins); a running daemon process is killed first.
// Children are set to die with their parent (PR_SET_PDEATHSIG, checked
// against the fork race). Note: the kernel sends that signal when the
// *thread* that started the child exits, so start long-lived processes from
// a long-lived thread (the main thread, or use forkserver).
#pragma once
#include <sys/types.h>

#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "mproc/call.hpp"
#include "mproc/detail/owned.hpp"
#include "mproc/errors.hpp"
#include "mproc/function_ref.hpp"
#include "mproc/detail/codec.hpp"
#include "mproc/shared_memory.hpp"
#include "mproc/timeout.hpp"

namespace mproc {

enum class StartMethod { fork, spawn, forkserver };
std::string_view to_string(StartMethod m) noexcept;
std::optional<StartMethod> parse_start_method(std::string_view name) noexcept;

struct ProcessOptions {
  std::string name = {};                    // default "Process-N"
  bool daemon = false;                      // killed, not joined, by the destructor
  std::optional<StartMethod> start_method = {};  // default: get_start_method()
};

// What current_process(), parent_process() and active_children() report.
struct ProcessInfo {
  pid_t pid = 0;
  std::string name;
  bool daemon = false;
};

namespace detail {
using RemoteEntry = void (*)(std::span<const std::byte>, std::vector<int>&);

// The typed entry point that a fresh image runs for target type F.
template <class F, class... A>
void remote_entry(std::span<const std::byte> payload, std::vector<int>& fds) {
  std::tuple<A...> args;
  InputArchive ar(payload, &fds);
  F fn = load_callable<F>(ar);
  // The shared memory of the arguments stays mapped until this process
  // exits, whatever the target does with them: a Lock it returns or throws
  // holding is then marked owner-dead by the kernel at exit (a robust mutex
  // that is no longer mapped would stay locked for ever). (Decoding errors
  // are DeserializeError already: serialize.hpp's extensions turn cereal's
  // into it.)
  {
    RetainDecodedSegments retain;
    ar(args);
  }
  std::apply(fn, std::move(args));
}

// What a child runs: local() in a forked copy of the caller; encode() writes
// (entry, payload, fds to pass) for a fresh image, and can_encode() is false
// when the target cannot cross an exec. Dropped (clear()) once the child has
// started, so what was moved into the target (a Connection) is the child's
// alone. Type-erased by hand (a heap state and three functions), not with
// std::function and std::shared_ptr: this header stays light (issue 15).
struct Target {
  void* state = nullptr;
  void (*run)(void* state) = nullptr;
  void (*encode_fn)(const void* state, FunctionRef& entry, Bytes& payload, std::vector<int>& fds) = nullptr;
  void (*destroy)(void* state) noexcept = nullptr;

  Target() noexcept = default;
  Target(Target&& other) noexcept { steal(other); }
  Target& operator=(Target&& other) noexcept {
    if (this != &other) {
      clear();
      steal(other);
    }
    return *this;
  }
  Target(const Target&) = delete;
  Target& operator=(const Target&) = delete;
  ~Target() { clear(); }

  void local() const { run(state); }
  bool can_encode() const noexcept { return encode_fn != nullptr; }
  void encode(FunctionRef& entry, Bytes& payload, std::vector<int>& fds) const {
    encode_fn(state, entry, payload, fds);
  }
  void clear() noexcept {
    if (destroy) destroy(state);
    state = nullptr;
    run = nullptr;
    encode_fn = nullptr;
    destroy = nullptr;
  }

 private:
  void steal(Target& other) noexcept {
    state = std::exchange(other.state, nullptr);
    run = std::exchange(other.run, nullptr);
    encode_fn = std::exchange(other.encode_fn, nullptr);
    destroy = std::exchange(other.destroy, nullptr);
  }
};

// S...: what the arguments are stored and sent as (make_target chooses).
template <class Fn, class... S, class F, class... A>
Target make_target_as(std::type_identity<std::tuple<S...>>, F&& f, A&&... args) {
  using State = std::tuple<Fn, S...>;
  Target t;
  t.state = new State(std::forward<F>(f), std::forward<A>(args)...);
  t.destroy = [](void* state) noexcept { delete static_cast<State*>(state); };
  t.run = [](void* state) {
    // std::apply invokes as std::invoke does (member pointers included).
    std::apply([](auto& fn, auto&... a) { std::apply(fn, std::forward_as_tuple(std::move(a)...)); },
               *static_cast<State*>(state));
  };
  if constexpr (Remotable<Fn, S...>) {
    t.encode_fn = [](const void* state, FunctionRef& entry, Bytes& payload, std::vector<int>& fds) {
      entry = entry_ref<&remote_entry<Fn, S...>>();
      OutputArchive ar(payload, &fds);
      std::apply(
          [&](const Fn& fn, const auto&... a) {
            save_callable(ar, fn);
            ar(std::tie(a...));  // read back as std::tuple<S...>
          },
          *static_cast<const State*>(state));
    };
  }
  return t;
}

// A string literal argument is kept as a std::string (it can then cross to
// any start method), unless the target takes it only as a pointer, which a
// fork child can still use.
template <class F, class... A>
Target make_target(F&& f, A&&... args) {
  using Fn = std::decay_t<F>;
  using Stored = std::conditional_t<std::is_invocable_v<Fn&, task_arg_t<A>...>, std::tuple<task_arg_t<A>...>,
                                    std::tuple<std::decay_t<A>...>>;
  return make_target_as<Fn>(std::type_identity<Stored>{}, std::forward<F>(f), std::forward<A>(args)...);
}

struct ProcessState;
}  // namespace detail

class Process {
 public:
  Process() noexcept;
  template <class F, class... A>
    requires(!std::is_same_v<std::decay_t<F>, ProcessOptions> &&
             std::is_invocable_v<std::decay_t<F>&, std::decay_t<A>...>)
  explicit Process(F&& target, A&&... args)
      : Process(ProcessOptions{}, std::forward<F>(target), std::forward<A>(args)...) {}

  template <class F, class... A>
    requires std::is_invocable_v<std::decay_t<F>&, std::decay_t<A>...>
  Process(ProcessOptions options, F&& target, A&&... args)
      : Process(std::move(options), detail::make_target(std::forward<F>(target), std::forward<A>(args)...)) {}

  Process(ProcessOptions options, detail::Target target);
  Process(Process&&) noexcept;
  Process& operator=(Process&&) noexcept;
  ~Process();

  // Starts the child. Throws ValueError if already started or closed, or if
  // the start method cannot carry the target.
  void start();
  void start(std::error_code& ec) noexcept;
  // Waits for the end; join(timeout) tells whether it ended in time.
  void join();
  bool join(Timeout timeout);
  bool is_alive();
  // nullopt while running; the exit status, or -signal when killed by one.
  std::optional<int> exitcode();
  pid_t pid() const noexcept;  // 0 before start
  const std::string& name() const;
  void set_name(std::string name);
  bool daemon() const;
  void set_daemon(bool daemon);  // before start()
  StartMethod start_method() const;
  void terminate();  // SIGTERM
  void kill();       // SIGKILL
  // A file descriptor that becomes readable when the process ends.
  int sentinel() const;
  // The exception the target threw, once the process has ended.
  std::optional<RemoteError> exception();
  // Releases the process's resources; it must have ended (Python's close()).
  // Afterwards start, join, is_alive, exitcode, terminate, kill, sentinel and
  // exception throw ValueError, as Python's; name, daemon and pid still answer.
  void close();

 private:
  detail::ProcessState& state() const;
  detail::ProcessState& open_state(const char* op) const;
  detail::Owned<detail::ProcessState> s_;
};

ProcessInfo current_process();
std::optional<ProcessInfo> parent_process();
// The live children started by this process (finished ones are reaped).
std::vector<ProcessInfo> active_children();
// CPUs this process may use: its affinity mask, capped by a cgroup v2
// cpu.max quota (rounded up); at least 1.
unsigned cpu_count();
inline unsigned process_cpu_count() { return cpu_count(); }

namespace detail {
// cgroup v2 "cpu.max" contents ("max 100000" or "150000 100000") as a CPU
// count, rounded up; nullopt when unlimited or unreadable.
std::optional<unsigned> parse_cpu_max(std::string_view text) noexcept;
// The tightest cpu.max quota from the process's cgroup up to the root.
std::optional<unsigned> cgroup_cpu_limit(const std::string& cgroup_root = "/sys/fs/cgroup");
}  // namespace detail

}  // namespace mproc
