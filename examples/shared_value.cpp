// A Value counter and an Array name shared with child processes, changed
// under get_lock() (Python's multiprocessing Value/Array tutorial).
//
//   ./shared_value
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

void work(mproc::Value<int> counter, mproc::Array<char> name, int id) {
  for (int i = 0; i < 1000; ++i) {
    std::scoped_lock g(counter.get_lock());
    counter.ref() += 1;  // a plain read-modify-write: the lock makes it exact
  }
  std::scoped_lock g(name.get_lock());
  std::snprintf(name.data(), name.size(), "renamed by child %d", id);
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Value<int> counter(0);
  mproc::Array<char> name(32, '\0');
  std::strcpy(name.data(), "parent");
  std::printf("before: counter = %d, name = \"%s\"\n", counter.load(), name.data());

  std::vector<mproc::Process> kids;
  for (int id = 0; id < 4; ++id) kids.emplace_back(work, counter, name, id);  // handles, not copies
  for (auto& k : kids) k.start();
  for (auto& k : kids) k.join();

  std::printf("after:  counter = %d (4 x 1000), name = \"%s\"\n", counter.load(), name.data());
  return counter.load() == 4000 ? 0 : 1;
}
