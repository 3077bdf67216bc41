// The fork server: a single-threaded copy of the program, made while it was
// still single-threaded (by fork at init, or by spawn later), that forks the
// children of the forkserver start method. Safe when the main program has
// threads, and much cheaper than spawn.
//
//   client (any thread)                    fork server
//   ── SEQPACKET "S" + [ctrl, status] ──▶  fork() → child reads its target
//                                          from ctrl (the client writes it)
//   ◀── on status: {pid} + [pidfd] ──────  pidfd opened before any reap
//   ◀── on status: {wait status} ────────  after SIGCHLD + waitpid
//   client hangs up on status ──────────▶  SIGKILL the child (dies with its parent)
//
// The server belongs to the program, not to the thread that happened to start
// it: it ends when every copy of the program's end of its socket is closed
// (the program exited or died), never by PR_SET_PDEATHSIG, which follows the
// creating THREAD (a pool's dispatcher that restarted the server would take
// every pool's workers with it when it ends). A server that died is started
// again by the next request; the requests in flight meanwhile are retried.
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "process/launch.hpp"
#include "mproc/errors.hpp"
#include "mproc/log.hpp"
#include "process/runtime.hpp"
#include "sys/pidfd.hpp"

namespace mproc::detail {

namespace {
std::mutex g_mu;  // guards starting the server and sending to it
std::atomic<int> g_cmd_fd{-1};
std::atomic<pid_t> g_server_pid{0};
std::uint64_t g_generation = 0;  // under g_mu: servers started so far

// A fork child (a fork-method Process, the fork server itself, the server's
// children) has one thread: g_mu must be free there even when some thread of
// the parent held it at the fork, or the child's first forkserver start would
// wait forever. glibc's unlock of a normal mutex does not check the owner.
// Registered at load, never on first use (a fork racing it would copy the
// registration half done).
[[maybe_unused]] const int g_forkserver_atfork = ::pthread_atfork(nullptr, nullptr, [] {
  (void)g_mu.try_lock();
  g_mu.unlock();
});

struct Reply {
  std::int32_t pid;
  std::int32_t err;
};

void serve_request(int cmd_fd, int sig_fd, std::unordered_map<pid_t, int>& status_fds,
                   sys::UniqueFd ctrl, sys::UniqueFd status) {
  const pid_t server = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(cmd_fd);
    ::close(sig_fd);
    for (auto& [p, fd] : status_fds) ::close(fd);
    ::close(status.get());
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGINT, SIG_DFL);
    run_launched_child(ctrl.get(), server);
  }
  Reply reply{static_cast<std::int32_t>(pid), pid < 0 ? errno : 0};
  try {
    if (pid < 0) {
      sys::send_with_fds(status.get(), &reply, sizeof reply, {});
      return;
    }
    // Opened before this loop can reap the child, so it names this child.
    sys::UniqueFd pidfd = sys::pidfd_open(pid);
    int fd = pidfd.get();
    sys::send_with_fds(status.get(), &reply, sizeof reply, std::span<const int>(&fd, 1));
  } catch (const OSError&) {
    // The client is gone; its child still gets reaped below.
  }
  status_fds[pid] = status.release();
}

void reap_children(std::unordered_map<pid_t, int>& status_fds) {
  int st = 0;
  pid_t pid;
  while ((pid = ::waitpid(-1, &st, WNOHANG)) > 0) {
    auto it = status_fds.find(pid);
    if (it == status_fds.end()) continue;
    std::int32_t s32 = st;
    ::send(it->second, &s32, sizeof s32, MSG_NOSIGNAL | MSG_DONTWAIT);
    ::close(it->second);
    status_fds.erase(it);
  }
}
}  // namespace

pid_t forkserver_pid() noexcept { return g_server_pid.load(); }

void forkserver_main(int cmd_fd, pid_t owner) {
  // No death signal (see the top): the owner's exit closes cmd_fd. If it is
  // gone already, the poll below reads end of file at once.
  (void)owner;
  ::prctl(PR_SET_NAME, "mproc-forksrv");
  ::signal(SIGINT, SIG_IGN);  // Ctrl-C is for the program, not its server
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  ::sigprocmask(SIG_BLOCK, &chld, nullptr);
  int sig_fd = ::signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sig_fd < 0) ::_exit(71);
  std::unordered_map<pid_t, int> status_fds;
  std::vector<pollfd> pfds;
  std::vector<pid_t> pids;
  for (;;) {
    // Watch every client's status socket too: a client that dies (its end
    // hangs up) takes its children along, as if they were its own.
    pfds.assign({{cmd_fd, POLLIN, 0}, {sig_fd, POLLIN, 0}});
    pids.clear();
    for (auto& [pid, fd] : status_fds) {
      pfds.push_back({fd, POLLRDHUP, 0});
      pids.push_back(pid);
    }
    if (::poll(pfds.data(), pfds.size(), -1) < 0) {
      if (errno == EINTR) continue;
      ::_exit(72);
    }
    for (std::size_t i = 2; i < pfds.size(); ++i) {
      if (!(pfds[i].revents & (POLLRDHUP | POLLHUP | POLLERR))) continue;
      ::kill(pids[i - 2], SIGKILL);  // unreaped, so the pid is still this child
      ::close(pfds[i].fd);
      status_fds.erase(pids[i - 2]);
    }
    if (pfds[1].revents) {
      signalfd_siginfo info;
      while (::read(sig_fd, &info, sizeof info) > 0) {
      }
      reap_children(status_fds);
    }
    if (pfds[0].revents) {
      char tag = 0;
      sys::UniqueFd fds[2];
      std::size_t nfds = 0;
      std::size_t n = 0;
      try {
        n = sys::recv_with_fds(cmd_fd, &tag, 1, fds, nfds);
      } catch (const OSError&) {
        ::_exit(73);
      }
      if (n == 0) break;  // the owner closed its end: it exited
      if (tag != 'S' || nfds != 2) continue;
      serve_request(cmd_fd, sig_fd, status_fds, std::move(fds[0]), std::move(fds[1]));
    }
  }
  // Children still running die with us (their death signal).
  ::_exit(0);
}

namespace {
// Under g_mu. The server is our child: reap it if it is being replaced.
void drop_server() {
  int fd = g_cmd_fd.exchange(-1);
  if (fd >= 0) ::close(fd);
  if (pid_t old = g_server_pid.exchange(0); old > 0) {
    ::kill(old, SIGKILL);
    ::waitpid(old, nullptr, 0);
  }
}

// Under g_mu. By fork while the program is single-threaded (init), else by
// re-executing the binary, which is safe whatever threads exist.
void start_server(bool by_fork) {
  auto [client, server] = sys::socket_pair(SOCK_SEQPACKET);
  const pid_t owner = ::getpid();
  pid_t pid;
  if (by_fork) {
    flush_stdio();  // its children exit through finish(), which flushes
    pid = ::fork();
    if (pid < 0) sys::throw_errno("fork (fork server)");
    if (pid == 0) {
      // Our caller holds g_mu; the fork handler above freed it here: the
      // server's children, copies of the server, may start pools of their own.
      ::close(client.get());
      forkserver_main(server.get(), owner);
    }
  } else {
    pid = spawn_self(server.get(), "forkserver");
  }
  g_server_pid = pid;
  g_cmd_fd = client.release();
  ++g_generation;
  static bool registered = false;
  if (!registered) registered = std::atexit([] { stop_forkserver(); }) == 0;
}

// Sends a request to the running server (starting one if none runs), under
// g_mu so that no other thread replaces it meanwhile. Returns whether it was
// sent, and to which server (its generation).
std::pair<bool, std::uint64_t> send_request(std::span<const int> fds) {
  std::lock_guard lock(g_mu);
  if (g_cmd_fd.load() < 0) start_server(!have_argv());
  try {
    sys::send_with_fds(g_cmd_fd.load(), "S", 1, fds);
  } catch (const OSError&) {
    return {false, g_generation};
  }
  return {true, g_generation};
}

// The server of `generation` died: replace it, unless another thread did.
void restart_server(std::uint64_t generation) {
  std::lock_guard lock(g_mu);
  if (generation != g_generation) return;
  const pid_t dead = g_server_pid.load();
  drop_server();
  start_server(!have_argv());
  get_logger().warning("fork server pid " + std::to_string(dead) + " died; restarted as pid " +
                       std::to_string(g_server_pid.load()));
}
}  // namespace

void start_forkserver_by_fork() {
  std::lock_guard lock(g_mu);
  if (g_cmd_fd.load() < 0) start_server(true);
}

void stop_forkserver() noexcept {
  std::lock_guard lock(g_mu);
  int fd = g_cmd_fd.exchange(-1);
  pid_t pid = g_server_pid.exchange(0);
  if (fd < 0) return;
  ::close(fd);  // end of file: the server exits, and its children with it
  // Only the process that started the server can reap it; a forked child
  // that calls exit() gets ECHILD here and moves on.
  if (pid > 0) ::waitpid(pid, nullptr, 0);
}

ServerChild forkserver_child(sys::UniqueFd child_ctrl) {
  // A server killed before it answered is restarted and asked again: the
  // child it may have forked died with it, before reading its target.
  constexpr int kAttempts = 3;
  for (int attempt = 1;; ++attempt) {
    auto [mine, theirs] = sys::socket_pair(SOCK_SEQPACKET);
    const int fds[2] = {child_ctrl.get(), theirs.get()};
    const auto [sent, generation] = send_request(fds);
    if (!sent) {
      if (attempt == kAttempts)
        throw Error("mproc: the fork server died " + std::to_string(kAttempts) + " times in a row");
      restart_server(generation);
      continue;
    }
    theirs.reset();
    Reply reply{};
    sys::UniqueFd pidfd[1];
    std::size_t nfds = 0;
    std::size_t n = sys::recv_with_fds(mine.get(), &reply, sizeof reply, pidfd, nfds);
    if (n != sizeof reply) {
      if (attempt == kAttempts)
        throw Error("mproc: the fork server (pid " + std::to_string(g_server_pid.load()) + ") did not answer");
      restart_server(generation);
      continue;
    }
    if (reply.err != 0) sys::throw_errno("fork (in the fork server)", reply.err);
    if (nfds != 1) throw Error("mproc: the fork server sent no pidfd");
    child_ctrl.reset();
    return ServerChild{reply.pid, std::move(pidfd[0]), std::move(mine)};
  }
}

std::optional<int> forkserver_exit_status(int status_fd) {
  std::int32_t st = 0;
  ssize_t n = ::recv(status_fd, &st, sizeof st, MSG_DONTWAIT);
  if (n == sizeof st) return sys::exitcode_from_status(st);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return std::nullopt;
  // The server closed without a status: it died, and so did the child.
  return -SIGKILL;
}

}  // namespace mproc::detail
