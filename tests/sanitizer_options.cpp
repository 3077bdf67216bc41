// Default sanitizer options of the test binary (MPROC_SANITIZE builds; the
// environment's ASAN_OPTIONS etc. still override them). Compiled in rather
// than set by ctest so that every process of a test runs under them: forked
// workers, the fork server's children, and spawned children, which re-execute
// this binary.
//
// Signals: the runtimes must leave SIGSEGV, SIGBUS, SIGFPE and SIGABRT alone.
// Fault tests kill workers with them on purpose and check which signal the
// parent saw; a runtime that catches them reports and exits 1 instead.
#define MPROC_SAN_SIGNALS "handle_segv=0:handle_sigbus=0:handle_sigfpe=0:handle_abort=0:allow_user_segv_handler=1"

#if defined(__SANITIZE_ADDRESS__)
extern "C" const char* __asan_default_options() {
  // use-after-return detection off: fork/exec-heavy code, and its fake stacks
  // make the suite much slower for a check UBSan/ASan cover otherwise.
  return MPROC_SAN_SIGNALS ":detect_leaks=1:detect_stack_use_after_return=0";
}
// ASan builds are ASan + UBSan here (CMakeLists.txt).
extern "C" const char* __ubsan_default_options() { return "print_stacktrace=1:halt_on_error=1"; }
#endif

#if defined(__SANITIZE_THREAD__)
extern "C" const char* __tsan_default_options() {
  // die_after_fork=0: the library forks from threaded processes by design
  // (the fork start method, pool workers, the manager server).
  return MPROC_SAN_SIGNALS ":die_after_fork=0:second_deadlock_stack=1:history_size=4";
}
// One suppression, of a thread "leak" made on purpose:
// ExecutorFaults.PoolInsideAForkserverChild's child (pool_in_child) _exit()s
// under its live pool, to check that its worker and fork server follow it.
// TSan's _exit interceptor then reports the pool's dispatcher thread, still
// running, as leaked (and changes the exit status the test checks to 66).
extern "C" const char* __tsan_default_suppressions() { return "thread:pool_in_child\n"; }
#endif
