// NoDestroy<T>: a namespace-scope object constructed at compile time
// (constinit) and never destroyed. For process-wide state that a fork child,
// a static destructor or an atexit handler may still reach: no lazy
// initialisation (no static-init guard a fork could inherit held) and no
// destruction order to get wrong.
#pragma once
#include <utility>

namespace mproc::sys {

template <class T>
union NoDestroy {
  constexpr NoDestroy() : value() {}
  ~NoDestroy() {}
  NoDestroy(const NoDestroy&) = delete;
  NoDestroy& operator=(const NoDestroy&) = delete;
  T value;
};

}  // namespace mproc::sys
