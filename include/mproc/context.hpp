// Start methods, init() and contexts: the C++ counterpart of Python's
// `if __name__ == "__main__":` guard and multiprocessing.get_context().
//
//   int main(int argc, char** argv) {
//     mproc::init(argc, argv);   // first line of main
//     ...
//   }
//
// In a process started by spawn, init() runs the target and never returns.
// In the main process it starts the fork server (while the program is still
// single-threaded) when forkserver is the start method in use.
//
// Default start method: forkserver once init() ran (safe in a threaded
// program, as CPython 3.14 chose), fork otherwise. MPROC_START_METHOD in the
// environment, InitOptions, or set_start_method() choose another.
#pragma once
#include <optional>
#include <utility>
#include <vector>

#include "mproc/process.hpp"

namespace mproc {

struct InitOptions {
  std::optional<StartMethod> start_method = {};  // the default for this program
};

void init(int argc, char** argv, const InitOptions& options = {});
bool initialized() noexcept;

void set_start_method(StartMethod method);
StartMethod get_start_method();
// Every start method, the default (get_start_method()) first, as Python 3.14.
std::vector<StartMethod> get_all_start_methods();

namespace detail {
// Internal: called at the end of init() (after the fork server started, while
// main is still single-threaded), outside re-executed children. The MPI
// backend (mproc_mpi) registers one: ranks other than 0 become workers there
// and never return. The core itself knows nothing of MPI.
using InitHook = void (*)(int argc, char** argv);
void register_init_hook(InitHook hook) noexcept;
}  // namespace detail

// A start method bound to the objects it makes (Python's get_context()).
class Context {
 public:
  explicit Context(StartMethod m) : method_(m) {}
  StartMethod start_method() const noexcept { return method_; }

  template <class F, class... A>
  Process process(F&& target, A&&... args) const {
    return process(ProcessOptions{}, std::forward<F>(target), std::forward<A>(args)...);
  }
  template <class F, class... A>
  Process process(ProcessOptions options, F&& target, A&&... args) const {
    options.start_method = method_;
    return Process(std::move(options), std::forward<F>(target), std::forward<A>(args)...);
  }

 private:
  StartMethod method_;
};

// A start method known at compile time: a target that cannot cross an exec
// is a compile-time error here rather than an exception at start().
template <StartMethod M>
class StaticContext {
 public:
  static constexpr StartMethod start_method() noexcept { return M; }
  template <class F, class... A>
  Process process(F&& target, A&&... args) const {
    static_assert(M == StartMethod::fork || Remotable<std::decay_t<F>, detail::task_arg_t<A>...>,
                  "mproc: under spawn/forkserver the target must be a function, a captureless "
                  "lambda or a serializable function object, with serializable arguments");
    return Context(M).process(std::forward<F>(target), std::forward<A>(args)...);
  }
};

Context get_context(std::optional<StartMethod> method = std::nullopt);
template <StartMethod M>
StaticContext<M> get_context() {
  return {};
}

}  // namespace mproc
