#include "mproc/context.hpp"

#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "process/launch.hpp"
#include "mproc/shared_memory.hpp"
#include "process/runtime.hpp"
#include "sys/fd.hpp"

extern char** environ;

namespace mproc {
namespace {
std::mutex g_mu;  // a leaf: nothing is locked, nor forked, under it
bool g_initialized = false;
std::vector<std::string> g_argv;
std::optional<StartMethod> g_method;  // set_start_method / init / env
std::atomic<detail::InitHook> g_init_hook{nullptr};  // mproc_mpi's, when linked

// Environment of a re-executed child: who it is and where its socket is.
constexpr const char* kRole = "MPROC_ROLE";
constexpr const char* kFd = "MPROC_FD";
constexpr const char* kParent = "MPROC_PARENT";
// The start method that started a re-executed child: its own default (as
// Python's spawn.prepare() sets the child's start method).
constexpr const char* kMethod = "MPROC_CHILD_START_METHOD";
constexpr int kChildFd = 3;

// g_mu is held across fork (handlers registered at load): a child forked
// while another thread held it gets the settings whole and the lock free.
[[maybe_unused]] const int g_mu_atfork =
    ::pthread_atfork([] { g_mu.lock(); }, [] { g_mu.unlock(); }, [] { g_mu.unlock(); });

int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : -1;
}
}  // namespace

namespace detail {

bool have_argv() noexcept {
  std::lock_guard lock(g_mu);
  return !g_argv.empty();
}

pid_t spawn_self(int fd, const char* role) {
  std::vector<std::string> args, env;
  {
    std::lock_guard lock(g_mu);
    args = g_argv;
  }
  for (char** e = environ; *e; ++e)
    if (std::strncmp(*e, "MPROC_ROLE=", 11) && std::strncmp(*e, "MPROC_FD=", 9) && std::strncmp(*e, "MPROC_PARENT=", 13) &&
        std::strncmp(*e, "MPROC_CHILD_START_METHOD=", 25))
      env.emplace_back(*e);
  env.push_back(std::string(kRole) + "=" + role);
  env.push_back(std::string(kFd) + "=" + std::to_string(kChildFd));
  env.push_back(std::string(kParent) + "=" + std::to_string(::getpid()));
  env.push_back(std::string(kMethod) + "=" + role);
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawnattr_t attr;
  ::posix_spawn_file_actions_init(&fa);
  ::posix_spawnattr_init(&attr);
  // dup2 onto kChildFd clears close-on-exec (glibc does so even when equal);
  // every other descriptor above it is closed.
  ::posix_spawn_file_actions_adddup2(&fa, fd, kChildFd);
  ::posix_spawn_file_actions_addclosefrom_np(&fa, kChildFd + 1);
  sigset_t none;
  sigemptyset(&none);
  ::posix_spawnattr_setsigmask(&attr, &none);
  ::posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = 0;
  int err = ::posix_spawn(&pid, "/proc/self/exe", &fa, &attr, argv.data(), envp.data());
  ::posix_spawn_file_actions_destroy(&fa);
  ::posix_spawnattr_destroy(&attr);
  if (err != 0) sys::throw_errno("posix_spawn(/proc/self/exe)", err);
  return pid;
}

pid_t spawn_child(int child_ctrl) { return spawn_self(child_ctrl, "spawn"); }

}  // namespace detail

void init(int argc, char** argv, const InitOptions& options) {
  if (const char* role = std::getenv(kRole)) {
    // A re-executed child: become what the parent asked for; never return.
    const std::string r = role;
    const int fd = env_int(kFd);
    const pid_t parent = env_int(kParent);
    const char* started_by = std::getenv(kMethod);
    {
      // The child is initialised too: its argv lets it spawn grandchildren,
      // and its default start method is the one that started it.
      std::lock_guard lock(g_mu);
      g_initialized = true;
      g_argv.assign(argv, argv + argc);
      if (started_by)
        if (auto m = parse_start_method(started_by)) g_method = *m;
    }
    ::unsetenv(kRole);
    ::unsetenv(kFd);
    ::unsetenv(kParent);
    ::unsetenv(kMethod);
    if (r == "spawn") detail::run_launched_child(fd, parent);
    if (r == "forkserver") detail::forkserver_main(fd, parent);
    ::_exit(74);
  }
  // Named segments whose creator died (SIGKILL, a crash) go at program
  // start, not at some later create.
  cleanup_leaked_segments();
  StartMethod method = StartMethod::forkserver;
  {
    std::lock_guard lock(g_mu);
    g_initialized = true;
    g_argv.assign(argv, argv + argc);
    if (options.start_method) {
      method = *options.start_method;
    } else if (const char* env = std::getenv("MPROC_START_METHOD")) {
      if (auto m = parse_start_method(env)) method = *m;
    }
    if (!g_method) g_method = method;
    method = *g_method;
  }
  // Fill FunctionRef's module cache now, while single-threaded: a fork taken
  // while another thread first fills it could inherit glibc's loader lock.
  (void)FunctionRef::of(&get_all_start_methods);
  if (method == StartMethod::forkserver) detail::start_forkserver_by_fork();
  if (auto hook = g_init_hook.load()) hook(argc, argv);
}

void detail::register_init_hook(InitHook hook) noexcept { g_init_hook.store(hook); }

bool initialized() noexcept {
  std::lock_guard lock(g_mu);
  return g_initialized;
}

void set_start_method(StartMethod method) {
  std::lock_guard lock(g_mu);
  g_method = method;
}

StartMethod get_start_method() {
  std::lock_guard lock(g_mu);
  if (g_method) return *g_method;
  return g_initialized ? StartMethod::forkserver : StartMethod::fork;
}

std::vector<StartMethod> get_all_start_methods() {
  // The default first, as Python's (3.14) does.
  std::vector<StartMethod> all{get_start_method()};
  for (StartMethod m : {StartMethod::fork, StartMethod::spawn, StartMethod::forkserver})
    if (m != all.front()) all.push_back(m);
  return all;
}

Context get_context(std::optional<StartMethod> method) { return Context(method.value_or(get_start_method())); }

}  // namespace mproc
