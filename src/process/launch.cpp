#include "process/launch.hpp"

#include <sys/prctl.h>
#include <sys/socket.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <cstdio>
#include <iostream>

#include "sys/fd.hpp"

namespace mproc::detail {

namespace {
constexpr std::uint64_t kMaxLaunch = std::uint64_t{1} << 32;
constexpr std::size_t kMaxFds = 250;  // under the kernel's SCM_MAX_FD (253)
// Small enough to sit in the socket buffer: the child writes it and exits
// without waiting for the parent to read.
constexpr std::uint32_t kMaxErrorFrame = 64u << 10;
constexpr std::size_t kMaxErrorText = 16u << 10;

[[noreturn]] void finish(int code) {
  flush_stdio();
  ::_exit(code);
}

void report_error(int ctrl_fd, const ProcessInfo& self, std::exception_ptr e) noexcept {
  try {
    ErrorInfo info = capture_error(std::move(e));
    if (info.message.size() > kMaxErrorText) info.message.resize(kMaxErrorText);
    if (info.type_name.size() > kMaxErrorText) info.type_name.resize(kMaxErrorText);
    std::fprintf(stderr, "mproc: process %s (pid %d) raised %s: %s\n", self.name.c_str(),
                 static_cast<int>(self.pid), info.type_name.c_str(), info.message.c_str());
    Bytes frame(sizeof(std::uint32_t));
    serialize_into(frame, info);
    auto len = static_cast<std::uint32_t>(frame.size() - 4);
    std::memcpy(frame.data(), &len, sizeof len);
    sys::write_all(ctrl_fd, frame.data(), 4 + len, true);
  } catch (...) {
    // The parent is gone or the socket broke: the exit code still tells.
  }
}

[[noreturn]] void run_guarded(int ctrl_fd, const ProcessInfo& self, const std::function<void()>& body) {
  int code = 0;
  try {
    body();
  } catch (...) {
    report_error(ctrl_fd, self, std::current_exception());
    code = 1;
  }
  finish(code);
}
}  // namespace

void die_with_parent(pid_t parent) noexcept {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent may have died between fork and prctl: then we were already
  // reparented and no signal will come.
  if (::getppid() != parent) ::_exit(70);
}

void write_launch(int ctrl_fd, const LaunchMessage& msg, std::span<const int> fds) {
  if (fds.size() > kMaxFds)
    throw ValueError("mproc: a target may carry at most " + std::to_string(kMaxFds) +
                                " connections, not " + std::to_string(fds.size()));
  Bytes frame(sizeof(std::uint64_t));
  serialize_into(frame, msg);
  std::uint64_t len = frame.size() - sizeof(std::uint64_t);
  std::memcpy(frame.data(), &len, sizeof len);
  sys::send_with_fds(ctrl_fd, frame.data(), sizeof len, fds);
  sys::write_all(ctrl_fd, frame.data() + sizeof len, len, true);
}

void flush_stdio() noexcept {
  try {
    std::cout.flush();  // has its own buffer after sync_with_stdio(false)
    std::clog.flush();
  } catch (...) {  // a stream set to throw: what it held stays there
  }
  std::fflush(stdout);
  std::fflush(stderr);
}

void run_forked_child(int ctrl_fd, pid_t parent, const ProcessInfo& self, const std::function<void()>& target) {
  die_with_parent(parent);
  ProcessInfo me = self;
  me.pid = ::getpid();
  set_identity(me, ProcessInfo{parent, current_process().name, false});
  run_guarded(ctrl_fd, me, target);
}

void run_launched_child(int ctrl_fd, pid_t parent) {
  die_with_parent(parent);
  ProcessInfo me{::getpid(), "?", false};
  LaunchMessage msg;
  run_guarded(ctrl_fd, me, [&] {
    std::uint64_t len = 0;
    sys::UniqueFd received[kMaxFds];
    std::size_t nfds = 0;
    std::size_t got = sys::recv_with_fds(ctrl_fd, &len, sizeof len, received, nfds);
    if (got < sizeof len) got += sys::read_full(ctrl_fd, reinterpret_cast<char*>(&len) + got, sizeof len - got);
    if (got != sizeof len) throw ConnectionClosed("mproc child: parent closed before sending the target");
    std::vector<int> fds;
    for (std::size_t i = 0; i < nfds; ++i) fds.push_back(received[i].release());
    if (len > kMaxLaunch) throw ProtocolError("mproc child: launch message of " + std::to_string(len) + " bytes");
    Bytes buf(len);
    if (sys::read_full(ctrl_fd, buf.data(), len) != len) throw TruncatedMessage(0, len);
    msg = from_bytes<LaunchMessage>(buf);
    me.name = msg.name;
    me.daemon = msg.daemon;
    set_identity(me, ProcessInfo{msg.parent_pid, msg.parent_name, false});
    auto* entry = msg.entry.get<void(std::span<const std::byte>, std::vector<int>&)>();
    entry(msg.payload, fds);
  });
}

std::optional<ErrorInfo> read_child_error(int ctrl_fd) {
  std::uint32_t len = 0;
  ssize_t r = ::recv(ctrl_fd, &len, sizeof len, MSG_DONTWAIT);
  if (r != static_cast<ssize_t>(sizeof len) || len > kMaxErrorFrame) return std::nullopt;
  Bytes buf(len);
  r = ::recv(ctrl_fd, buf.data(), len, MSG_DONTWAIT | MSG_WAITALL);
  if (r != static_cast<ssize_t>(len)) return std::nullopt;
  try {
    return from_bytes<ErrorInfo>(buf);
  } catch (const Error&) {
    return ErrorInfo{"mproc::DeserializeError", "unreadable error report from child"};
  }
}

}  // namespace mproc::detail
