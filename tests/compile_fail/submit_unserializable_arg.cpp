// Must NOT compile: a pool task's argument must be serializable, and a type
// with no serialize() that is not trivially copyable is not.
#include <string>

#include "mproc/executor.hpp"

struct Opaque {
  std::string name;  // not trivially copyable, and no serialize()
};
int use(Opaque o) { return static_cast<int>(o.name.size()); }

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::ProcessPoolExecutor ex(1);
  return ex.submit(use, Opaque{"x"}).get();
}
