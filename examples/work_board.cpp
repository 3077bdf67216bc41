// The remote work board, end to end on loopback TCP: starts the server
// program (work_board_server) and two client programs (work_board_client, a
// different binary): a poster that posts tasks on the shared "tasks" queue and
// prints the shared "board" dict, and a worker that fills the board.
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

void run_program(std::string path, std::vector<std::string> args) {
  std::vector<char*> argv{path.data()};
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  ::execv(path.c_str(), argv.data());
  ::_exit(127);
}

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  // fork: the programs inherit the environment set below (a fork server
  // started by init() would not have it).
  mproc::init(argc, argv, {.start_method = mproc::StartMethod::fork});
  namespace fs = std::filesystem;
  const fs::path dir = fs::canonical("/proc/self/exe").parent_path();
  const fs::path address_file = fs::temp_directory_path() / ("mproc-work-board-" + std::to_string(::getpid()));
  ::setenv("MPROC_AUTHKEY", hex(mproc::random_authkey()).c_str(), 1);  // inherited by the programs

  mproc::Process server(run_program, (dir / "work_board_server").string(),
                        std::vector<std::string>{"tcp://127.0.0.1:0", address_file.string()});
  server.start();
  std::string address;
  for (int i = 0; i < 1000 && address.empty(); ++i) {  // up to 10 s
    std::ifstream in(address_file);
    std::getline(in, address);
    if (address.empty()) {
      if (!server.is_alive()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  fs::remove(address_file);
  if (address.empty()) {
    std::fprintf(stderr, "work_board: the server did not start\n");
    server.kill();
    return 1;
  }

  const std::string client = (dir / "work_board_client").string();
  mproc::Process worker(run_program, client, std::vector<std::string>{address, "work", "bob"});
  mproc::Process poster(run_program, client, std::vector<std::string>{address, "post", "8"});
  worker.start();
  poster.start();
  poster.join();
  worker.join();
  if (!server.join(std::chrono::seconds(10))) server.kill();
  server.join();
  const bool ok = poster.exitcode() == 0 && worker.exitcode() == 0 && server.exitcode() == 0;
  std::printf("work_board: server exited %d, poster %d, worker %d\n", server.exitcode().value_or(-1),
              poster.exitcode().value_or(-1), worker.exitcode().value_or(-1));
  return ok ? 0 : 1;
}
