#include "support.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>


namespace mproc::test {

std::set<int> open_fds() {
  std::set<int> fds;
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return fds;
  int self = ::dirfd(d);
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    int fd = std::stoi(e->d_name);
    if (fd != self) fds.insert(fd);
  }
  ::closedir(d);
  return fds;
}

std::string describe_fd(int fd) {
  std::error_code ec;
  auto target = std::filesystem::read_symlink("/proc/self/fd/" + std::to_string(fd), ec);
  return std::to_string(fd) + " -> " + (ec ? std::string("?") : target.string());
}

std::vector<pid_t> child_pids() {
  std::vector<pid_t> out;
  const pid_t server = mproc::detail::forkserver_pid();
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream in(task.path() / "children");
    pid_t pid;
    while (in >> pid)
      if (pid != server) out.push_back(pid);
  }
  return out;
}

std::set<std::string> shm_entries() {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/dev/shm", ec)) out.insert(e.path().filename());
  return out;
}

bool reap_orphans(int timeout_ms) {
  const bool all_ended = eventually(
      [] {
        for (pid_t pid : child_pids())
          if (!pid_gone(pid)) return false;
        return true;
      },
      timeout_ms);
  for (pid_t pid : child_pids()) ::waitpid(pid, nullptr, WNOHANG);
  return all_ended;
}

bool pid_gone(pid_t pid) {
  if (::kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

}  // namespace mproc::test
