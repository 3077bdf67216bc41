// The MPI side of mproc::init, and the worker loop of ranks other than 0.
#include <elf.h>
#include <link.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "mpi/internal.hpp"
#include "mproc/context.hpp"
#include "mproc/serialize.hpp"  // cereal::make_size_tag

namespace mproc::mpi {
namespace detail {
namespace {

std::mutex g_mu;
MPI_Comm g_world = MPI_COMM_NULL;  // mproc's dup of MPI_COMM_WORLD (rank 0 keeps it)
bool g_hook_ran = false;
bool g_atexit = false;
std::vector<std::string> g_args;
std::atomic<bool> g_session{false};

// What reached this worker since its executor opened (worker_info()).
WorkerInfo g_info;

struct SharedEntry {
  Bytes bytes;                        // as received, until first read
  SharedValue value;  // decoded (or rank 0's original)
  const std::type_info* type = nullptr;
};
std::mutex g_shared_mu;
std::map<std::uint64_t, SharedEntry> g_shared;

bool env_set(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0';
}

void check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) throw Error(std::string("mproc::mpi: ") + what + ": " + mpi_error_string(rc));
}

// Rank 0 at exit: the worker ranks leave their loop, then everyone finalizes.
void finalize_at_exit() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) return;
  if (g_world != MPI_COMM_NULL) {
    int size = 1;
    MPI_Comm_size(g_world, &size);
    for (int r = 1; r < size; ++r) MPI_Send(nullptr, 0, MPI_BYTE, r, kStop, g_world);
    MPI_Comm_free(&g_world);
  }
  MPI_Finalize();
}

// An idle worker polls for a while (tiny tasks come microseconds apart):
// 50 µs flat out, then yielding the CPU between probes up to 2 ms (ranks
// may share CPUs), then sleeping in growing steps up to 1 ms: an idle rank
// costs no CPU.
class Backoff {
 public:
  void reset() { last_ = std::chrono::steady_clock::now(), sleep_us_ = 10; }
  void idle() {
    const auto idle_for = std::chrono::steady_clock::now() - last_;
    if (idle_for < std::chrono::microseconds(50)) return;  // the next task is often this close
    if (idle_for < std::chrono::milliseconds(2)) {
      ::sched_yield();  // ranks may share CPUs (--oversubscribe)
      return;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us_));
    sleep_us_ = std::min(sleep_us_ * 2, 1000);
  }

 private:
  std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
  int sleep_us_ = 10;
};

void send_bytes(const Bytes& b, int dest, int tag, MPI_Comm comm) {
  MPI_Send(b.data(), static_cast<int>(b.size()), MPI_BYTE, dest, tag, comm);
}

// Runs messages from rank 0 until kStop.
void worker_loop(MPI_Comm comm, int master, int rank) {
  g_info.rank = rank;
  g_info.host = host_name();
  Bytes buf, out;
  Backoff backoff;
  for (;;) {
    int flag = 0;
    MPI_Message msg;
    MPI_Status st;
    MPI_Improbe(master, MPI_ANY_TAG, comm, &flag, &msg, &st);
    if (!flag) {
      backoff.idle();
      continue;
    }
    int count = 0;
    MPI_Get_count(&st, MPI_BYTE, &count);
    buf.resize(static_cast<std::size_t>(count));
    MPI_Mrecv(buf.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
    const std::span<const std::byte> in(buf);
    switch (st.MPI_TAG) {
      case kTask: {
        std::uint64_t id = 0;
        out.assign(kResultHeader, std::byte{0});
        bool ok = true;
        try {
          InputArchive ar(in);
          FunctionRef entry;
          cereal::size_type n = 0;
          ar(id, entry, cereal::make_size_tag(n));
          const auto payload = in.subspan(in.size() - ar.remaining(), static_cast<std::size_t>(n));
          entry.get<void(std::span<const std::byte>, Bytes&)>()(payload, out);
        } catch (...) {
          ok = false;
          out.resize(kResultHeader);
          serialize_into(out, capture_error(std::current_exception()));
        }
        std::memcpy(out.data(), &id, sizeof id);
        out[8] = std::byte{ok};
        ++g_info.tasks_run;
        send_bytes(out, master, kResult, comm);
        backoff.reset();
        break;
      }
      case kShare: {
        std::uint64_t id = 0;
        if (in.size() < sizeof id) break;
        std::memcpy(&id, in.data(), sizeof id);
        std::lock_guard lock(g_shared_mu);
        g_shared[id] = SharedEntry{Bytes(in.begin() + sizeof id, in.end()), {}, nullptr};
        ++g_info.shares_received;
        g_info.share_bytes_received += in.size() - sizeof id;
        break;
      }
      case kRelease: {
        std::uint64_t id = 0;
        if (in.size() >= sizeof id) {
          std::memcpy(&id, in.data(), sizeof id);
          shared_erase(id);
        }
        break;
      }
      case kOpen: {
        std::uint64_t session = 0;
        std::optional<Call> initializer;
        Hello hello{main_build_id(), g_info.host, static_cast<std::int32_t>(::getpid()), rank, true, {}};
        g_info.tasks_run = g_info.shares_received = g_info.share_bytes_received = 0;
        {
          std::lock_guard lock(g_shared_mu);
          g_shared.clear();
        }
        try {
          InputArchive ar(in);
          ar(session, initializer);
          if (initializer) {
            Bytes ignored;
            initializer->entry.get<void(std::span<const std::byte>, Bytes&)>()(initializer->payload, ignored);
          }
        } catch (...) {
          hello.init_ok = false;
          hello.init_error = capture_error(std::current_exception());
        }
        // Test hook: this rank pretends to run another build.
        if (const char* bad = std::getenv("MPROC_MPI_TEST_CORRUPT_BUILD_ID");
            bad != nullptr && *bad != '\0' && std::atoi(bad) == rank && !hello.build_id.empty())
          hello.build_id[0] = hello.build_id[0] == 'f' ? '0' : 'f';
        send_bytes(to_bytes(hello), master, kHello, comm);
        backoff.reset();
        break;
      }
      case kClose: {
        {
          std::lock_guard lock(g_shared_mu);
          g_shared.clear();
        }
        MPI_Send(nullptr, 0, MPI_BYTE, master, kClosed, comm);
        break;
      }
      case kStop:
        return;
      default:
        std::fprintf(stderr, "mproc::mpi worker rank %d: unknown message tag %d ignored\n", rank, st.MPI_TAG);
    }
    // Keep no large buffer around between tasks.
    if (buf.capacity() > (std::size_t{1} << 20)) Bytes().swap(buf);
    if (out.capacity() > (std::size_t{1} << 20)) Bytes().swap(out);
  }
}

// Registered with the core: runs at the end of mproc::init.
void init_hook(int argc, char** argv) {
  {
    std::lock_guard lock(g_mu);
    g_args.assign(argv + std::min(argc, 1), argv + argc);
  }
  if (!launched_under_mpi()) return;  // a plain run: MPI only if a PoolExecutor asks
  ensure_mpi_initialized();
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm parent = MPI_COMM_NULL;
  MPI_Comm_get_parent(&parent);
  if (parent != MPI_COMM_NULL) {  // started by MPI_Comm_spawn: a worker of the parent
    worker_loop(parent, 0, rank);
    MPI_Comm_disconnect(&parent);
    MPI_Finalize();
    std::exit(0);
  }
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);  // collective: every rank is here
  {
    std::lock_guard lock(g_mu);
    g_world = comm;
    g_hook_ran = true;
  }
  if (rank != 0) {
    worker_loop(comm, 0, rank);
    {
      std::lock_guard lock(g_mu);
      g_world = MPI_COMM_NULL;
    }
    MPI_Comm_free(&comm);
    MPI_Finalize();
    std::exit(0);  // never back into main
  }
}

}  // namespace

void register_hook() noexcept { mproc::detail::register_init_hook(&init_hook); }

int ensure_mpi_initialized() {
  int initialized = 0, provided = MPI_THREAD_SINGLE;
  MPI_Initialized(&initialized);
  if (initialized) {
    MPI_Query_thread(&provided);
  } else {
    check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  }
  std::lock_guard lock(g_mu);
  if (!g_atexit) {
    g_atexit = true;
    // Only rank 0 (or a singleton) gets here and returns to main; workers exit in the hook.
    std::atexit(finalize_at_exit);
  }
  return provided;
}

MPI_Comm world_comm() noexcept {
  std::lock_guard lock(g_mu);
  return g_world;
}

bool init_hook_ran() noexcept {
  std::lock_guard lock(g_mu);
  return g_hook_ran;
}

const std::vector<std::string>& program_args() {
  std::lock_guard lock(g_mu);
  return g_args;
}

// The build-id note of the main program (the first module dl_iterate_phdr
// reports): equal on every rank exactly when they run the same binary.
std::string main_build_id() {
  std::string hex;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) -> int {
        auto& out = *static_cast<std::string*>(data);
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const auto& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_NOTE) continue;
          const auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
          const auto* end = p + ph.p_memsz;
          while (p + sizeof(ElfW(Nhdr)) <= end) {
            ElfW(Nhdr) nh;
            std::memcpy(&nh, p, sizeof nh);
            const auto* name = p + sizeof nh;
            const auto* desc = name + ((nh.n_namesz + 3u) & ~3u);
            if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(name, "GNU", 4) == 0 &&
                desc + nh.n_descsz <= end) {
              static const char digits[] = "0123456789abcdef";
              for (unsigned k = 0; k < nh.n_descsz; ++k) {
                out += digits[desc[k] >> 4];
                out += digits[desc[k] & 15];
              }
              return 1;
            }
            p = desc + ((nh.n_descsz + 3u) & ~3u);
          }
        }
        return 1;  // only the main program
      },
      &hex);
  return hex;
}

std::string host_name() {
  char buf[256] = {};
  ::gethostname(buf, sizeof buf - 1);
  return buf;
}

std::string mpi_error_string(int code) {
  char buf[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, buf, &len) != MPI_SUCCESS) return "MPI error " + std::to_string(code);
  return std::string(buf, static_cast<std::size_t>(len));
}

void claim_session() {
  bool expect = false;
  if (!g_session.compare_exchange_strong(expect, true))
    throw Error("mproc::mpi::PoolExecutor: another one is open; the worker ranks serve one executor at a time");
}
void release_session() noexcept { g_session.store(false); }

void shared_put_local(std::uint64_t id, SharedValue value, const std::type_info& type) {
  std::lock_guard lock(g_shared_mu);
  g_shared[id] = SharedEntry{{}, std::move(value), &type};
}

void shared_erase(std::uint64_t id) {
  std::lock_guard lock(g_shared_mu);
  g_shared.erase(id);
}

SharedValue shared_lookup(std::uint64_t id, const std::type_info& type, SharedValue (*decode)(const Bytes&)) {
  std::lock_guard lock(g_shared_mu);
  auto it = g_shared.find(id);
  if (it == g_shared.end())
    throw DeserializeError("mproc::mpi::Shared: value " + std::to_string(id) +
                           " is not on this rank (released, or shared by another executor)");
  auto& e = it->second;
  if (e.value) {
    if (*e.type != type)
      throw DeserializeError("mproc::mpi::Shared: value " + std::to_string(id) + " holds " + demangle(e.type->name()) +
                             ", read as " + demangle(type.name()));
    return e.value;
  }
  e.value = decode(e.bytes);  // once per worker; the bytes go
  e.type = &type;
  Bytes().swap(e.bytes);
  return e.value;
}

}  // namespace detail

// Decided once, from the environment the program started with (a singleton
// MPI_Init sets OMPI_* variables in this process later).
bool launched_under_mpi() noexcept {
  static const bool launched = [] {
    if (const char* v = std::getenv("MPROC_MPI")) {
      if (std::strcmp(v, "0") == 0) return false;
      if (std::strcmp(v, "1") == 0) return true;
    }
    return detail::env_set("OMPI_COMM_WORLD_SIZE") || detail::env_set("PMIX_RANK") || detail::env_set("PMI_RANK") ||
           detail::env_set("PMI_SIZE");
  }();
  return launched;
}
namespace {
const bool g_launched_at_start = launched_under_mpi();
}

WorkerInfo worker_info() { return detail::g_info; }

PoolOptions PoolExecutor::from_local(const mproc::PoolOptions& o) {
  if (o.max_tasks_per_child != 0 || o.max_memory_per_child != 0 || o.task_timeout)
    throw Error(
        "mproc::mpi::PoolExecutor: max_tasks_per_child, max_memory_per_child and task_timeout need a local "
        "pool (a rank cannot be replaced under MPI); run a ProcessPoolExecutor inside the tasks for them");
  if (o.max_workers && *o.max_workers == 0) throw ValueError("mproc::mpi::PoolExecutor: max_workers must be at least 1");
  return PoolOptions{.max_workers = o.max_workers.value_or(0), .initializer = o.initializer};
}

}  // namespace mproc::mpi
