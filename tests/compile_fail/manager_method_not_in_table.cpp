// Must NOT compile: a proxy calling a method its kind's protocol table does
// not have (a typo here used to show only at run time, as a RemoteError).
#include "mproc/managers.hpp"

class TypoLockProxy : public mproc::LockProxy {
 public:
  using LockProxy::LockProxy;
  bool aquire() const { return invoke<"aquire">(mproc::detail::WaitArg{}); }
};

int main() { return TypoLockProxy().aquire() ? 0 : 1; }
