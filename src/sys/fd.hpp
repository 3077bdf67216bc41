// sys layer (internal): owned file descriptors and the few syscalls wrapped
// around them. Every failing syscall becomes mproc::OSError naming the call.
#pragma once
#include <chrono>
#include <cstddef>
#include <optional>
#include <span>
#include <utility>

#include "mproc/detail/deadline.hpp"

namespace mproc::sys {

[[noreturn]] void throw_errno(const char* call);
[[noreturn]] void throw_errno(const char* call, int err);
inline int check(int rc, const char* call) {
  if (rc < 0) throw_errno(call);
  return rc;
}

// Owns one fd; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(o.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const noexcept { return fd_; }
  explicit operator bool() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset(int fd = -1) noexcept;

 private:
  int fd_ = -1;
};

using mproc::Timeout;  // nullopt: forever (include/mproc/timeout.hpp)

void set_cloexec(int fd, bool on);
bool is_socket(int fd);
// Two connected AF_UNIX sockets, close-on-exec.
std::pair<UniqueFd, UniqueFd> socket_pair(int type);
// Reads up to n bytes, retrying on EINTR/short reads; returns the count read,
// which is less than n only at end of file.
std::size_t read_full(int fd, void* buf, std::size_t n);
// Writes all n bytes (MSG_NOSIGNAL on sockets; SIGPIPE suppressed on pipes).
void write_all(int fd, const void* buf, std::size_t n, bool socket);
// Waits until fd is readable or hung up; false on timeout.
bool wait_readable(int fd, Timeout timeout);
// poll(2) over many fds; returns the indices that are readable / hung up.
std::size_t poll_readable(std::span<const int> fds, std::span<bool> ready, Timeout timeout);

// fd passing over a Unix socket (SCM_RIGHTS). recv returns bytes read (0 at EOF).
void send_with_fds(int sock, const void* data, std::size_t n, std::span<const int> fds);
std::size_t recv_with_fds(int sock, void* data, std::size_t n, std::span<UniqueFd> fds_out,
                          std::size_t& nfds);

// Milliseconds for poll(2) from a timeout (-1 forever), rounding up.
int poll_ms(Timeout timeout);

}  // namespace mproc::sys
