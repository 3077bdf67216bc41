#include "mproc/process.hpp"

#include <pthread.h>
#include <sys/prctl.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <new>

#include "base/log_identity.hpp"
#include "process/launch.hpp"
#include "mproc/context.hpp"
#include "process/runtime.hpp"
#include "sys/pidfd.hpp"

namespace mproc {
namespace detail {

struct ProcessState {
  ProcessOptions options;
  Target target;
  StartMethod method = StartMethod::fork;
  bool started = false;
  pid_t pid = 0;
  pid_t owner = 0;         // the process that started it
  sys::UniqueFd pidfd;     // signals; the sentinel under fork/spawn
  sys::UniqueFd status;    // forkserver: exit status, and the sentinel
  sys::UniqueFd ctrl;      // our end of the child's control socket
  std::optional<int> exitcode;
  std::optional<ErrorInfo> error;
  bool closed = false;     // close() was called: only name/daemon/pid remain
  std::mutex mu;           // reaping may race between threads
};

namespace {
// Started, unreaped children, for active_children().
std::recursive_mutex g_registry_mu;
std::vector<ProcessState*> g_registry;
std::atomic<int> g_counter{0};

ProcessInfo g_self{0, "MainProcess", false};
std::optional<ProcessInfo> g_parent;

void registry_add(ProcessState* s) {
  std::lock_guard lock(g_registry_mu);
  g_registry.push_back(s);
}
void registry_remove(ProcessState* s) {
  std::lock_guard lock(g_registry_mu);
  std::erase(g_registry, s);
}

// A forked child must not inherit a locked registry mutex, nor the parent's
// children.
struct AtFork {
  AtFork() {
    ::pthread_atfork([] { g_registry_mu.lock(); }, [] { g_registry_mu.unlock(); },
                     [] {
                       // unlock first (a no-op here: the owner's tid changed
                       // with the fork) so that ThreadSanitizer sees it
                       // released; then a fresh one.
                       g_registry_mu.unlock();
                       new (&g_registry_mu) std::recursive_mutex;
                       g_registry.clear();
                     });
  }
} g_atfork;

// Nonblocking: records the exit code if the child has ended.
// Lock order: registry, then a process's own mutex.
bool try_reap(ProcessState& s) {
  {
    std::lock_guard lock(s.mu);
    if (s.exitcode) return true;
    std::optional<int> code = s.method == StartMethod::forkserver ? forkserver_exit_status(s.status.get())
                                                                 : sys::pidfd_try_reap(s.pidfd.get());
    if (!code) return false;
    s.exitcode = code;
    if (s.ctrl) s.error = read_child_error(s.ctrl.get());
  }
  registry_remove(&s);
  return true;
}

int sentinel_of(const ProcessState& s) {
  return s.method == StartMethod::forkserver ? s.status.get() : s.pidfd.get();
}

void start_fork(ProcessState& s, sys::UniqueFd child_ctrl) {
  const pid_t parent = ::getpid();
  ProcessInfo self{0, s.options.name, s.options.daemon};
  pid_t pid = ::fork();
  if (pid < 0) sys::throw_errno("fork");
  if (pid == 0) {
    ::close(s.ctrl.get());
    run_forked_child(child_ctrl.get(), parent, self, [&target = s.target] { target.local(); });
  }
  s.pid = pid;
  s.pidfd = sys::pidfd_open(pid);
}

void start_exec(ProcessState& s, sys::UniqueFd child_ctrl) {
  LaunchMessage msg;
  msg.name = s.options.name;
  msg.daemon = s.options.daemon;
  msg.parent_pid = ::getpid();
  msg.parent_name = g_self.name;
  std::vector<int> fds;
  s.target.encode(msg.entry, msg.payload, fds);
  if (fds.size() > 250)
    throw ValueError("mproc::Process::start: " + s.options.name + " carries " + std::to_string(fds.size()) +
                                " connections; at most 250 can be passed");
  if (s.method == StartMethod::spawn) {
    s.pid = spawn_child(child_ctrl.get());
    s.pidfd = sys::pidfd_open(s.pid);
    child_ctrl.reset();
  } else {
    ServerChild c = forkserver_child(std::move(child_ctrl));
    s.pid = c.pid;
    s.pidfd = std::move(c.pidfd);
    s.status = std::move(c.status);
  }
  try {
    write_launch(s.ctrl.get(), msg, fds);
  } catch (const OSError&) {
    // The child died before reading its target; its exit code tells.
  }
}

}  // namespace

void set_identity(const ProcessInfo& self, std::optional<ProcessInfo> parent) {
  // What ps and top show (15 characters at most).
  ::prctl(PR_SET_NAME, self.name.substr(0, 15).c_str());
  g_self = self;
  g_parent = std::move(parent);
  set_log_process_name(self.name);
}

}  // namespace detail

using detail::ProcessState;

std::string_view to_string(StartMethod m) noexcept {
  switch (m) {
    case StartMethod::fork: return "fork";
    case StartMethod::spawn: return "spawn";
    case StartMethod::forkserver: return "forkserver";
  }
  return "?";
}

std::optional<StartMethod> parse_start_method(std::string_view name) noexcept {
  for (auto m : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver})
    if (to_string(m) == name) return m;
  return std::nullopt;
}

Process::Process(ProcessOptions options, detail::Target target) : s_(new ProcessState()) {
  if (options.name.empty()) options.name = "Process-" + std::to_string(++detail::g_counter);
  s_->options = std::move(options);
  s_->target = std::move(target);
}

Process::Process() noexcept = default;
Process::Process(Process&&) noexcept = default;

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    Process old(std::move(*this));  // joins/kills whatever this held
    s_ = std::move(other.s_);
  }
  return *this;
}

Process::~Process() {
  if (!s_ || !s_->started) return;
  try {
    if (!s_->closed) {  // closed: reaped already
      if (!s_->exitcode && s_->options.daemon) kill();
      join();
    }
  } catch (...) {
    // Destructors don't throw; the pidfd close below still releases the child.
  }
  detail::registry_remove(s_.get());
}

ProcessState& Process::state() const {
  if (!s_) throw ValueError("mproc::Process: empty (moved-from or default-constructed)");
  return *s_;
}

// Python's _check_closed: what needs the child's handles refuses once closed.
ProcessState& Process::open_state(const char* op) const {
  ProcessState& s = state();
  if (s.closed)
    throw ValueError(std::string("mproc::Process::") + op + ": " + s.options.name + " is closed (close() was called)");
  return s;
}

void Process::start() {
  ProcessState& s = open_state("start");
  if (s.started) throw ValueError("mproc::Process::start: " + s.options.name + " was already started");
  s.method = s.options.start_method.value_or(get_start_method());
  if (s.method != StartMethod::fork) {
    if (!s.target.can_encode())
      throw ValueError(
          "mproc::Process::start: " + s.options.name + ": under " + std::string(to_string(s.method)) +
          " the target must be a function, a captureless lambda or a serializable function object, "
          "with serializable arguments (or use StartMethod::fork)");
    if (!detail::have_argv())
      throw ValueError("mproc::Process::start: " + std::string(to_string(s.method)) +
                             " needs mproc::init(argc, argv) at the top of main");
  }
  // With SIGCHLD ignored the kernel reaps children at once: their exit codes
  // would be lost and their pids could be reused under us.
  struct sigaction chld {};
  ::sigaction(SIGCHLD, nullptr, &chld);
  if (chld.sa_handler == SIG_IGN || (chld.sa_flags & SA_NOCLDWAIT))
    throw ValueError("mproc::Process::start: SIGCHLD is ignored (SIG_IGN or SA_NOCLDWAIT) in this process; "
                           "children could not be joined");
  detail::flush_stdio();
  auto [mine, theirs] = sys::socket_pair(SOCK_STREAM);
  s.ctrl = std::move(mine);
  s.owner = ::getpid();
  if (s.method == StartMethod::fork) detail::start_fork(s, std::move(theirs));
  else detail::start_exec(s, std::move(theirs));
  s.started = true;
  s.target = {};  // the child owns what was moved into its target now
  detail::registry_add(&s);
}

void Process::start(std::error_code& ec) noexcept {
  ec.clear();
  try {
    start();
  } catch (const OSError& e) {
    ec = e.code();
  } catch (const std::system_error& e) {
    ec = e.code();
  } catch (const ValueError&) {
    ec = std::make_error_code(std::errc::invalid_argument);
  } catch (...) {
    ec = std::make_error_code(std::errc::operation_not_permitted);
  }
}

void Process::join() { join(std::nullopt); }

bool Process::join(Timeout timeout) {
  ProcessState& s = open_state("join");
  if (!s.started) throw ValueError("mproc::Process::join: " + s.options.name + " was not started");
  if (s.owner != ::getpid()) throw ValueError("mproc::Process::join: can only join a child process");
  if (detail::try_reap(s)) return true;
  if (!sys::wait_readable(detail::sentinel_of(s), timeout)) return false;
  // Readable means ended; the fork server may need a moment to report.
  while (!detail::try_reap(s)) sys::wait_readable(detail::sentinel_of(s), std::chrono::milliseconds(1));
  return true;
}

bool Process::is_alive() {
  ProcessState& s = open_state("is_alive");
  return s.started && !detail::try_reap(s);
}

std::optional<int> Process::exitcode() {
  ProcessState& s = open_state("exitcode");
  if (!s.started) return std::nullopt;
  detail::try_reap(s);
  return s.exitcode;
}

pid_t Process::pid() const noexcept { return s_ ? s_->pid : 0; }
const std::string& Process::name() const { return state().options.name; }
void Process::set_name(std::string name) { state().options.name = std::move(name); }
bool Process::daemon() const { return state().options.daemon; }
void Process::set_daemon(bool daemon) {
  ProcessState& s = state();
  if (s.started) throw ValueError("mproc::Process::set_daemon: " + s.options.name + " already started");
  s.options.daemon = daemon;
}
StartMethod Process::start_method() const {
  const ProcessState& s = state();
  return s.started ? s.method : s.options.start_method.value_or(get_start_method());
}

void Process::terminate() {
  ProcessState& s = open_state("terminate");
  if (s.started && !s.exitcode) sys::pidfd_signal(s.pidfd.get(), SIGTERM);
}

void Process::kill() {
  ProcessState& s = open_state("kill");
  if (s.started && !s.exitcode) sys::pidfd_signal(s.pidfd.get(), SIGKILL);
}

int Process::sentinel() const {
  const ProcessState& s = open_state("sentinel");
  if (!s.started) throw ValueError("mproc::Process::sentinel: " + s.options.name + " was not started");
  return detail::sentinel_of(s);
}

std::optional<RemoteError> Process::exception() {
  ProcessState& s = open_state("exception");
  if (!s.started || !detail::try_reap(s) || !s.error) return std::nullopt;
  return to_remote_error(*s.error);
}

void Process::close() {
  ProcessState& s = state();
  if (s.started && !detail::try_reap(s))
    throw ValueError("mproc::Process::close: " + s.options.name + " (pid " + std::to_string(s.pid) +
                           ") is still running");
  s.pidfd.reset();
  s.status.reset();
  s.ctrl.reset();
  s.closed = true;
}

ProcessInfo current_process() {
  ProcessInfo self = detail::g_self;
  self.pid = ::getpid();
  return self;
}

std::optional<ProcessInfo> parent_process() { return detail::g_parent; }

std::vector<ProcessInfo> active_children() {
  // Held throughout, so no Process can be destroyed under us.
  std::lock_guard lock(detail::g_registry_mu);
  const std::vector<ProcessState*> live = detail::g_registry;
  std::vector<ProcessInfo> out;
  for (ProcessState* s : live)
    if (s->owner == ::getpid() && !detail::try_reap(*s)) out.push_back({s->pid, s->options.name, s->options.daemon});
  return out;
}

}  // namespace mproc
