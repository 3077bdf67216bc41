// The work board's server: serves a Manager on TCP until a client asks it to
// stop. Clients (work_board_client, another binary) create and find the
// shared objects by name: the "tasks" queue and the "board" dict.
//
//   MPROC_AUTHKEY=secret ./work_board_server tcp://127.0.0.1:0 [address-file]
//
// Port 0 picks a free port; the address actually bound is printed and, if
// asked, written to address-file (for scripts).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "mproc/mproc.hpp"

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: MPROC_AUTHKEY=key %s tcp://host:port [address-file]\n", argv[0]);
    return 2;
  }
  const char* key = std::getenv("MPROC_AUTHKEY");
  if (key == nullptr || *key == '\0') {
    std::fprintf(stderr, "work_board_server: set MPROC_AUTHKEY\n");
    return 2;
  }
  mproc::ManagerOptions options;
  options.address = mproc::Address::parse(argv[1]);
  options.authkey = key;
  mproc::Manager server(options);
  server.serve_forever([&](const mproc::Address& bound) {
    std::printf("[server] serving on %s (pid %d)\n", bound.to_string().c_str(), static_cast<int>(::getpid()));
    std::fflush(stdout);
    if (argc > 2) {
      const std::string tmp = std::string(argv[2]) + ".tmp";
      std::ofstream(tmp) << bound.to_string() << "\n";
      std::rename(tmp.c_str(), argv[2]);  // appears whole
    }
  });
  std::printf("[server] a client asked to stop: done\n");
  return 0;
}
