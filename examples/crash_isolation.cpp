// A crashing child costs only itself: one segfaults, one throws, one runs
// past its deadline and is terminated; the parent reads how each ended.
#include <chrono>
#include <cstdio>
#include <stdexcept>
#include <thread>

#include "mproc/mproc.hpp"

namespace {
void segfault() {
  volatile int* p = nullptr;
  *p = 42;
}
void throws(int id) { throw std::runtime_error("record " + std::to_string(id) + " is malformed"); }
void loops_forever() {
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}
void works() {}
}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);  // forkserver is the default start method
  using namespace std::chrono_literals;
  mproc::Process crash(segfault), error(throws, 7), runaway(loops_forever), fine(works);
  for (auto* p : {&crash, &error, &runaway, &fine}) p->start();
  if (!runaway.join(300ms)) runaway.terminate();  // a deadline
  for (auto* p : {&crash, &error, &runaway, &fine}) {
    p->join();
    std::printf("  %-10s pid %-7d exitcode %3d", p->name().c_str(), static_cast<int>(p->pid()), *p->exitcode());
    if (auto e = p->exception()) std::printf("   raised %s", e->what());
    std::printf("\n");
  }
  std::printf("  the parent goes on: %zu children left running\n", mproc::active_children().size());
  return fine.exitcode() == 0 && crash.exitcode() == -11 ? 0 : 1;
}
