// A work board client (a different binary from the server): connects to the
// server with its address and key and uses the shared "tasks" queue and
// "board" dict.
//
//   MPROC_AUTHKEY=secret ./work_board_client tcp://127.0.0.1:PORT post N
//       posts N tasks (and one STOP per worker), waits until the board holds
//       N results, prints the board and stops the server;
//   MPROC_AUTHKEY=secret ./work_board_client tcp://127.0.0.1:PORT work NAME
//       takes tasks until STOP, writing each result on the board.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

constexpr int kWorkers = 1;

int post(mproc::Manager& m, int n) {
  auto tasks = m.queue<std::string>(0, "tasks");
  auto board = m.dict<std::string, std::string>("board");
  std::vector<std::string> batch;
  for (int i = 1; i <= n; ++i) batch.push_back("task-" + std::to_string(i));
  for (int w = 0; w < kWorkers; ++w) batch.push_back("STOP");
  tasks.put_many(batch);  // one round trip
  std::printf("[poster] posted %d tasks\n", n);
  std::fflush(stdout);
  while (board.size() < static_cast<std::size_t>(n)) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // The workers take their STOP after their last result: stopping the server
  // before, a worker would find it gone (seen under load: exit 1).
  while (!tasks.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::printf("[poster] the board:\n");
  for (const auto& [task, result] : board.items()) std::printf("           %-8s -> %s\n", task.c_str(), result.c_str());
  std::fflush(stdout);
  m.stop_server();
  std::printf("[poster] asked the server to stop\n");
  return 0;
}

int work(mproc::Manager& m, const std::string& name) {
  auto tasks = m.queue<std::string>(0, "tasks");
  auto board = m.dict<std::string, std::string>("board");
  int done = 0;
  for (;;) {
    std::string task = tasks.get();
    if (task == "STOP") break;
    const long k = std::atol(task.c_str() + 5);
    board.set(task, name + " (pid " + std::to_string(::getpid()) + "): " + std::to_string(k) + "^2 = " +
                        std::to_string(k * k));
    ++done;
  }
  std::printf("[%s] did %d tasks\n", name.c_str(), done);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  const char* key = std::getenv("MPROC_AUTHKEY");
  if (argc < 4 || key == nullptr) {
    std::fprintf(stderr, "usage: MPROC_AUTHKEY=key %s tcp://host:port post N | work NAME\n", argv[0]);
    return 2;
  }
  mproc::ManagerOptions options;
  options.address = mproc::Address::parse(argv[1]);
  options.authkey = key;
  mproc::Manager m(options);
  try {
    m.connect();
    const std::string role = argv[2];
    if (role == "post") return post(m, std::atoi(argv[3]));
    if (role == "work") return work(m, argv[3]);
  } catch (const mproc::ConnectionClosed& e) {
    std::fprintf(stderr, "[client] the server is gone: %s\n", e.what());
    return 1;
  }
  std::fprintf(stderr, "unknown role %s\n", argv[2]);
  return 2;
}
