#include "sys/pidfd.hpp"

#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <string>

namespace mproc::sys {

UniqueFd pidfd_open(pid_t pid) {
  int fd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (fd < 0) throw_errno("pidfd_open");
  set_cloexec(fd, true);
  return UniqueFd(fd);
}

bool pidfd_signal(int pidfd, int sig) {
  if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) == 0) return true;
  if (errno == ESRCH) return false;
  throw_errno("pidfd_send_signal");
}

std::optional<int> pidfd_try_reap(int pidfd) {
  siginfo_t info{};
  for (;;) {
    int r = ::waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &info, WEXITED | WNOHANG);
    if (r == 0) break;
    if (errno != EINTR) throw_errno("waitid(P_PIDFD)");
  }
  if (info.si_pid == 0) return std::nullopt;
  if (info.si_code == CLD_EXITED) return info.si_status;
  return -info.si_status;  // CLD_KILLED / CLD_DUMPED
}

int exitcode_from_status(int status) noexcept {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return -WTERMSIG(status);
  return -1;
}

pid_t parent_of(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(in, line)) return 0;
  // The name (field 2) may hold spaces and ')': the state follows the last ')'.
  auto close = line.rfind(')');
  if (close == std::string::npos || close + 4 >= line.size()) return 0;
  return static_cast<pid_t>(std::strtol(line.c_str() + close + 4, nullptr, 10));
}

bool is_self_or_ancestor(pid_t up, pid_t down) {
  if (up <= 0) return false;
  for (int depth = 0; depth < 64 && down > 1; ++depth, down = parent_of(down))
    if (down == up) return true;
  return false;
}

}  // namespace mproc::sys
