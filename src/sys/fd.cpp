#include "sys/fd.hpp"

#include "mproc/errors.hpp"
#include "sys/clock.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>
#include <vector>

namespace mproc::sys {

void throw_errno(const char* call) { throw_errno(call, errno); }
void throw_errno(const char* call, int err) {
  throw OSError(err, call);
}

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

void set_cloexec(int fd, bool on) {
  int flags = check(::fcntl(fd, F_GETFD), "fcntl(F_GETFD)");
  flags = on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC);
  check(::fcntl(fd, F_SETFD, flags), "fcntl(F_SETFD)");
}

bool is_socket(int fd) {
  struct stat st {};
  check(::fstat(fd, &st), "fstat");
  return S_ISSOCK(st.st_mode);
}

std::pair<UniqueFd, UniqueFd> socket_pair(int type) {
  int sv[2];
  check(::socketpair(AF_UNIX, type | SOCK_CLOEXEC, 0, sv), "socketpair");
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

std::size_t read_full(int fd, void* buf, std::size_t n) {
  auto* p = static_cast<char*>(buf);
  std::size_t got = 0;
  while (got < n) {
    ssize_t r = ::read(fd, p + got, n - got);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
    } else if (r == 0) {
      break;
    } else if (errno == ECONNRESET) {
      break;  // a peer that died with unread data: same as end of file
    } else if (errno != EINTR) {
      throw_errno("read");
    }
  }
  return got;
}

namespace {
// Writing to a pipe whose reader is gone raises SIGPIPE, which would kill the
// process: block it for this thread and swallow a pending one, so the caller
// sees EPIPE instead.
void write_pipe(int fd, const char* p, std::size_t n) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  int err = 0;
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r >= 0) {
      p += r;
      n -= static_cast<std::size_t>(r);
    } else if (errno != EINTR) {
      err = errno;
      break;
    }
  }
  if (err == EPIPE && !sigismember(&old, SIGPIPE)) {
    timespec zero{0, 0};
    sigtimedwait(&pipe_set, nullptr, &zero);
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (err) throw_errno("write", err);
}
}  // namespace

void write_all(int fd, const void* buf, std::size_t n, bool socket) {
  const auto* p = static_cast<const char*>(buf);
  if (!socket) return write_pipe(fd, p, n);
  while (n > 0) {
    ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL);
    if (r >= 0) {
      p += r;
      n -= static_cast<std::size_t>(r);
    } else if (errno != EINTR) {
      throw_errno("send");
    }
  }
}

int poll_ms(Timeout timeout) {
  if (!timeout) return -1;
  if (timeout->count() <= 0) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(as_duration(timeout)).count();
  return ms > 0x7fffffff ? 0x7fffffff : static_cast<int>(ms);
}

std::size_t poll_readable(std::span<const int> fds, std::span<bool> ready, Timeout timeout) {
  std::vector<pollfd> pfds(fds.size());
  for (std::size_t i = 0; i < fds.size(); ++i) pfds[i] = {fds[i], POLLIN, 0};
  using clock = std::chrono::steady_clock;
  const auto deadline = timeout ? clock::now() + as_duration(timeout) : clock::time_point::max();
  for (;;) {
    Timeout left = timeout ? Timeout(deadline - clock::now()) : std::nullopt;
    int r = ::poll(pfds.data(), pfds.size(), poll_ms(left));
    if (r < 0 && errno == EINTR) continue;
    check(r, "poll");
    std::size_t count = 0;
    for (std::size_t i = 0; i < fds.size(); ++i) {
      ready[i] = (pfds[i].revents & (POLLIN | POLLHUP | POLLERR | POLLNVAL)) != 0;
      count += ready[i];
    }
    return count;
  }
}

bool wait_readable(int fd, Timeout timeout) {
  bool ready = false;
  return poll_readable(std::span<const int>(&fd, 1), std::span<bool>(&ready, 1), timeout) == 1;
}

void send_with_fds(int sock, const void* data, std::size_t n, std::span<const int> fds) {
  iovec iov{const_cast<void*>(data), n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
  if (!fds.empty()) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    ssize_t r = ::sendmsg(sock, &msg, MSG_NOSIGNAL);
    if (r >= 0) {
      if (static_cast<std::size_t>(r) != n) throw OSError(EMSGSIZE, "sendmsg (short)");
      return;
    }
    if (errno != EINTR) throw_errno("sendmsg");
  }
}

std::size_t recv_with_fds(int sock, void* data, std::size_t n, std::span<UniqueFd> fds_out,
                          std::size_t& nfds) {
  iovec iov{data, n};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control(CMSG_SPACE(sizeof(int) * (fds_out.size() + 1)));
  msg.msg_control = control.data();
  msg.msg_controllen = control.size();
  ssize_t r;
  do {
    r = ::recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (r < 0 && errno == EINTR);
  if (r < 0) {
    if (errno == ECONNRESET) r = 0;
    else throw_errno("recvmsg");
  }
  nfds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      if (nfds < fds_out.size()) fds_out[nfds++].reset(fd);
      else ::close(fd);  // more than asked for: never leak
    }
  }
  return static_cast<std::size_t>(r);
}

}  // namespace mproc::sys
