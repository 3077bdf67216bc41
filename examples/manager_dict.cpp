// Manager().dict() updated by a child, as in Python's tutorial:
//
//   def worker(d): d["status"] = "completed"
//   with Manager() as m:
//       d = m.dict(); p = Process(target=worker, args=(d,)); p.start(); p.join()
//       print(d["status"])
//
// The proxy is serializable: the child (forkserver by default) gets the
// server's address, key and the object's id, and connects on its own.
#include <cstdio>
#include <string>

#include "mproc/mproc.hpp"

namespace {
void worker(mproc::DictProxy<std::string, std::string> d, mproc::ListProxy<int> log) {
  d.set("status", "completed");
  d.set("worker", "pid " + std::to_string(mproc::current_process().pid));
  log.extend(std::vector<int>{1, 2, 3});
}
}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  mproc::Manager manager;
  manager.start();
  auto d = manager.dict<std::string, std::string>();
  auto log = manager.list<int>();
  d.set("status", "pending");
  std::printf("before: status = %s\n", d.at("status").c_str());

  mproc::Process p(worker, d, log);
  p.start();
  p.join();

  std::printf("after:  status = %s (set by the child, %s)\n", d.at("status").c_str(), d.at("worker").c_str());
  std::printf("        list from the child has %zu items\n", log.size());
  std::printf("server process pid %d, address %s\n", static_cast<int>(manager.server_process()->pid()),
              manager.address().to_string().c_str());
  const bool ok = d.at("status") == "completed";
  manager.shutdown();  // (the proxies now throw ConnectionClosed)
  return ok ? 0 : 1;
}
