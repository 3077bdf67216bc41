// A child process sends [42, "hello"]-like messages to its parent through an
// mproc::Queue (Python's `q.put([42, None, 'hello'])` tutorial).
//
//   ./queue_messages
#include <cstdio>
#include <string>
#include <tuple>

#include "mproc/mproc.hpp"

namespace {

using Message = std::tuple<int, std::string>;

void child(mproc::Queue<Message> q) {
  q.put({42, "hello"});
  q.put({7, "from pid " + std::to_string(mproc::current_process().pid)});
  q.put({-1, std::string(2 << 20, '.')});  // 2 MiB: larger than the ring, same call
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Queue<Message> q;
  mproc::Process p(child, q);
  p.start();
  for (int i = 0; i < 3; ++i) {
    auto [n, text] = q.get();
    if (text.size() > 40) text = std::to_string(text.size()) + " bytes";
    std::printf("got [%d, \"%s\"]\n", n, text.c_str());
  }
  p.join();
  return p.exitcode() == 0 ? 0 : 1;
}
