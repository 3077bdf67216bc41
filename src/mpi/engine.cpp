// Rank 0's side of mproc::mpi::PoolExecutor.
//
//  submit()/map() (any thread)          Impl (one mutex over every MPI call)
//  ──────────────────────────           ───────────────────────────────────
//  Call → {id, Call} bytes ──▶ pending ──dispatch──▶ MPI_Isend(kTask) ──▶ worker rank
//                               (2 or 32 ahead per worker, least loaded)     │ runs in order
//  Future::get() spins 200 µs, calling poll():                               ▼
//     MPI_Improbe/Mrecv results ◀────────────────────────────── MPI_Send(kResult)
//  progress thread: the same poll() with a backoff while tasks are out and
//     nobody spins; sleeps on a condition variable when there is nothing to do.
//
// A worker answers its tasks in the order sent, so a result is always the
// first outstanding task of the rank it comes from. The tasks (queue, each
// rank's flight, assignment, depth, task-time average, settle()) are the
// scheduler core's (src/pool/scheduler.hpp), shared with the local pool;
// this file is its MPI transport.
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <limits>
#include <mutex>
#include <optional>
#include <thread>

#include <unistd.h>

#include "mpi/internal.hpp"
#include "sys/clock.hpp"
#include "mproc/context.hpp"
#include "mproc/process.hpp"
#include "pool/scheduler.hpp"

// Named by `-Wl,--undefined` in mproc::mpi's link options, so that a static
// libmproc_mpi.a always contributes this object (and its hook registration).
extern "C" void mproc_mpi_keep_runtime() {}

namespace mproc::mpi::detail {
namespace {

// The worker ranks become workers in mproc::init: register the hook before
// main. (This object is linked whenever a PoolExecutor is used.)
const bool g_registered = (register_hook(), true);

std::atomic<std::uint64_t> g_next_share{1};

using Clock = std::chrono::steady_clock;
namespace pool = mproc::detail::pool;
using pool::Completions;

// Tasks sent ahead to a worker: PoolOptions::max_inflight when set;
// otherwise 2 (the next task waits at the worker when it answers, long
// tasks still balance), and 32 once that worker's tasks take under 100 µs
// each (throughput of tiny tasks; ranks may differ in speed).
pool::DepthRule mpi_depth(unsigned max_inflight) {
  return pool::DepthRule{.fixed = max_inflight,
                         .long_tasks = 2,
                         .short_task_us = 100,
                         .tiny_min = 32,
                         .tiny_max = 32,
                         .per_worker = true};
}

int checked_size(std::size_t n, const char* what) {
  if (n > static_cast<std::size_t>(std::numeric_limits<int>::max()))
    throw Error(std::string("mproc::mpi: ") + what + " of " + std::to_string(n) +
                " bytes is over MPI's 2 GiB message limit");
  return static_cast<int>(n);
}

}  // namespace

struct Engine::Impl : mproc::detail::Progress, pool::Transport {
  struct Worker {
    int rank = 0;
  };

  MPI_Comm comm = MPI_COMM_NULL;
  bool spawned = false;
  std::vector<Worker> workers;  // the core's WorkerId is the index
  std::vector<int> rank_to_worker;  // comm rank → index in workers, -1 if none

  mutable std::mutex mu;
  std::condition_variable cv;  // wakes the progress thread
  std::optional<pool::Scheduler> sched;  // made once the workers are known
  std::vector<MPI_Request> out_reqs;  // Isends not yet complete, with their buffers
  std::vector<std::shared_ptr<const Bytes>> out_bufs;
  std::vector<int> test_idx;  // scratch of poll_locked
  Bytes recv_buf;
  std::vector<std::uint64_t> deferred_releases, shares;
  std::exception_ptr broken;  // an initializer failed
  std::atomic<std::uint64_t> next_id{1};
  bool closing = false, close_sent = false, finished = false;
  unsigned closed_acks = 0;
  std::atomic<int> spinners{0};
  std::atomic<Clock::rep> last_drive{0};  // when a waiter last called poll()
  bool deep_sleep = false;                // the progress thread waits for a notify
  Stats stats;
  std::thread progress;
  std::mutex join_mu;

  ~Impl() override = default;

  // ---- sending (mu held) --------------------------------------------------
  void isend(std::shared_ptr<const Bytes> buf, int rank, int tag) {
    MPI_Request req;
    MPI_Isend(buf->data(), checked_size(buf->size(), "a message"), MPI_BYTE, rank, tag, comm, &req);
    out_reqs.push_back(req);
    out_bufs.push_back(std::move(buf));
  }

  // The core's transport: the tasks it gave a worker, one Isend each.
  void send(pool::WorkerId worker, std::deque<pool::InFlight>& flight, std::size_t first) override {
    for (std::size_t k = first; k < flight.size(); ++k) {
      const auto& msg = flight[k].task.wire;
      stats.tasks_sent++;
      stats.task_bytes_sent += msg->size();
      isend(msg, workers[worker].rank, kTask);
    }
  }

  void dispatch_locked() {
    sched->assign();
    if (sched->queued() == 0 && !deferred_releases.empty()) {
      for (auto id : deferred_releases) {
        auto msg = std::make_shared<Bytes>(sizeof id);
        std::memcpy(msg->data(), &id, sizeof id);
        for (auto& w : workers) isend(msg, w.rank, kRelease);
      }
      deferred_releases.clear();
    }
  }

  // ---- receiving (mu held) ------------------------------------------------
  // A result is the answer to the head of its rank's flight (the core
  // times it from when it headed the flight: tiny tasks → more sent ahead).
  void on_result(int source, const Bytes& buf, Completions& done) {
    const int wi = source >= 0 && static_cast<std::size_t>(source) < rank_to_worker.size() ? rank_to_worker[source] : -1;
    const pool::InFlight* head = wi < 0 ? nullptr : sched->head(static_cast<pool::WorkerId>(wi));
    if (!head || buf.size() < kResultHeader)
      throw Error("mproc::mpi: unexpected result message from rank " + std::to_string(source));
    std::uint64_t id = 0;
    std::memcpy(&id, buf.data(), sizeof id);
    if (head->task.state->id != id)
      throw Error("mproc::mpi: rank " + std::to_string(source) + " answered task " + std::to_string(id) +
                  ", expected " + std::to_string(head->task.state->id));
    stats.results_received++;
    stats.result_bytes_received += buf.size();
    const bool ok = buf[8] != std::byte{0};
    if (ok) {
      sched->complete_head(static_cast<pool::WorkerId>(wi), Bytes(buf.begin() + kResultHeader, buf.end()), nullptr,
                           done);
    } else {
      std::exception_ptr e;
      try {
        e = std::make_exception_ptr(
            to_remote_error(from_bytes<ErrorInfo>(std::span<const std::byte>(buf).subspan(kResultHeader))));
      } catch (...) {
        e = std::current_exception();
      }
      sched->complete_head(static_cast<pool::WorkerId>(wi), {}, std::move(e), done);
    }
  }

  // One round: finished sends, every message waiting, new sends.
  bool poll_locked(Completions& done) {
    if (finished) return false;
    bool did = false;
    if (!out_reqs.empty()) {
      int ndone = 0;
      test_idx.resize(out_reqs.size());
      MPI_Testsome(static_cast<int>(out_reqs.size()), out_reqs.data(), &ndone, test_idx.data(), MPI_STATUSES_IGNORE);
      if (ndone > 0 && ndone != MPI_UNDEFINED) {
        std::size_t k = 0;
        for (std::size_t i = 0; i < out_reqs.size(); ++i)
          if (out_reqs[i] != MPI_REQUEST_NULL) {
            out_reqs[k] = out_reqs[i];
            out_bufs[k] = std::move(out_bufs[i]);
            ++k;
          }
        out_reqs.resize(k);
        out_bufs.resize(k);
        did = true;
      }
    }
    Bytes& buf = recv_buf;
    for (int n = 0; n < 256; ++n) {
      int flag = 0;
      MPI_Message msg;
      MPI_Status st;
      MPI_Improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm, &flag, &msg, &st);
      if (!flag) break;
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      buf.resize(static_cast<std::size_t>(count));
      MPI_Mrecv(buf.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
      did = true;
      if (st.MPI_TAG == kResult) on_result(st.MPI_SOURCE, buf, done);
      else if (st.MPI_TAG == kClosed) ++closed_acks;
    }
    if (buf.capacity() > (std::size_t{1} << 20)) Bytes().swap(buf);  // keep no large buffer around
    dispatch_locked();
    if (closing && !close_sent && sched->idle()) {
      auto none = std::make_shared<Bytes>();
      for (auto& w : workers) isend(none, w.rank, kClose);
      close_sent = true;
    }
    return did;
  }

  bool has_work_locked() const { return closing || !sched->idle() || !out_reqs.empty(); }

  // ---- Progress (waiting threads drive it) --------------------------------
  void poll() override {
    last_drive.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed);
    std::unique_lock lock(mu, std::try_to_lock);
    if (!lock.owns_lock()) return;
    Completions done;
    poll_locked(done);
    lock.unlock();
    pool::complete(done);
  }
  void spin_begin() override { spinners.fetch_add(1); }
  void spin_end() override { spinners.fetch_sub(1); }

  // ---- the progress thread ------------------------------------------------
  // A waiting thread drives progress itself (poll()); the progress thread
  // stays out of its way — no mutex contention, no wake-up per task — and
  // takes over when nobody has polled for 100 µs (callbacks, as_completed,
  // long tasks). With nothing out it naps in 200 µs steps for 10 ms (a
  // submit then needs no wake-up), then sleeps until notified (no CPU).
  void run() {
    try {
      run_loop();
    } catch (...) {
      // A broken protocol (a bug, or a rank of another program on this
      // communicator): MPI's answer to an unrecoverable error.
      std::fprintf(stderr, "mproc::mpi progress thread: %s; aborting the MPI job\n",
                   capture_error(std::current_exception()).message.c_str());
      MPI_Abort(comm, 70);
    }
  }
  void run_loop() {
    Completions done;
    int sleep_us = 0;
    auto idle_since = Clock::now();
    bool was_busy = true;
    for (;;) {
      bool did = false, driven = false;
      {
        std::unique_lock lock(mu);
        if (!has_work_locked()) {
          const auto now = Clock::now();
          if (was_busy) idle_since = now;
          was_busy = false;
          if (now - idle_since > std::chrono::milliseconds(10)) {
            deep_sleep = true;
            cv.wait(lock, [&] { return has_work_locked(); });
            deep_sleep = false;
          } else {
            cv.wait_for(lock, std::chrono::microseconds(200), [&] { return has_work_locked(); });
          }
          sleep_us = 0;
          continue;
        }
        was_busy = true;
        const Clock::duration since_drive(Clock::now().time_since_epoch().count() - last_drive.load());
        driven = !closing && (spinners.load() > 0 || since_drive < std::chrono::microseconds(100));
        if (!driven) {
          did = poll_locked(done);
          if (close_sent && closed_acks == workers.size() && out_reqs.empty()) {
            end_locked();
            lock.unlock();
            pool::complete(done);
            return;
          }
        }
      }
      pool::complete(done);
      if (driven) {
        sleep_us = 0;
        std::this_thread::sleep_for(std::chrono::microseconds(100));
      } else if (did) {
        sleep_us = 0;
      } else if (sleep_us == 0) {
        sleep_us = 1;
        std::this_thread::yield();
      } else {
        std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
        sleep_us = std::min(sleep_us * 2, 500);
      }
    }
  }

  // Every worker has left this executor (mu held).
  void end_locked() {
    if (spawned) {
      for (auto& w : workers) MPI_Send(nullptr, 0, MPI_BYTE, w.rank, kStop, comm);
      MPI_Comm_disconnect(&comm);
    }
    for (auto id : shares) shared_erase(id);
    finished = true;
    release_session();
  }

  // The handshake: open every worker, compare build-ids (before any thread).
  void open(const PoolOptions& options) {
    const std::string mine = main_build_id();
    Bytes open_msg;
    {
      OutputArchive ar(open_msg);
      ar(std::uint64_t{1}, options.initializer);
    }
    for (auto& w : workers)
      MPI_Send(open_msg.data(), checked_size(open_msg.size(), "the initializer"), MPI_BYTE, w.rank, kOpen, comm);
    std::vector<std::optional<Hello>> hellos(workers.size());
    std::size_t got = 0;
    const auto deadline = sys::to_time_point(mproc::detail::deadline_after(options.handshake_timeout));
    Bytes buf;
    while (got < workers.size()) {
      int flag = 0;
      MPI_Message msg;
      MPI_Status st;
      MPI_Improbe(MPI_ANY_SOURCE, kHello, comm, &flag, &msg, &st);
      if (!flag) {
        if (Clock::now() > deadline) {
          std::string missing;
          for (std::size_t i = 0; i < workers.size(); ++i)
            if (!hellos[i]) missing += " " + std::to_string(workers[i].rank);
          throw Error("mproc::mpi::PoolExecutor: no answer from worker rank(s)" + missing + " within " +
                      std::to_string(options.handshake_timeout.nanoseconds() / 1000000) +
                      " ms (did every rank call mproc::init(argc, argv) first in main?)");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(20));
        continue;
      }
      int count = 0;
      MPI_Get_count(&st, MPI_BYTE, &count);
      buf.resize(static_cast<std::size_t>(count));
      MPI_Mrecv(buf.data(), count, MPI_BYTE, &msg, MPI_STATUS_IGNORE);
      const int wi = rank_to_worker.at(static_cast<std::size_t>(st.MPI_SOURCE));
      if (!hellos[static_cast<std::size_t>(wi)]) ++got;
      hellos[static_cast<std::size_t>(wi)] = from_bytes<Hello>(buf);
    }
    std::string mismatch;
    for (std::size_t i = 0; i < workers.size(); ++i) {
      const Hello& h = *hellos[i];
      if (h.build_id != mine && mismatch.empty())
        mismatch = "mproc::mpi::PoolExecutor: worker rank " + std::to_string(workers[i].rank) + " (host " + h.host +
                   ", pid " + std::to_string(h.pid) + ") runs another build: build-id " +
                   (h.build_id.empty() ? "<none>" : h.build_id) + ", rank 0 has " + (mine.empty() ? "<none>" : mine) +
                   ". Start the same binary on every rank (same path, same build, on every host).";
      if (!h.init_ok && !broken)
        broken = std::make_exception_ptr(BrokenPool("mproc::mpi::PoolExecutor: the initializer failed on rank " +
                                                    std::to_string(workers[i].rank) + ": " + h.init_error.type_name +
                                                    ": " + h.init_error.message));
    }
    if (!mismatch.empty()) {
      close_now();
      throw BuildMismatch(mismatch);
    }
  }

  // Closes every worker at once (construction failed; no tasks were sent).
  void close_now() {
    for (auto& w : workers) MPI_Send(nullptr, 0, MPI_BYTE, w.rank, kClose, comm);
    for (std::size_t n = 0; n < workers.size(); ++n)
      MPI_Recv(nullptr, 0, MPI_BYTE, MPI_ANY_SOURCE, kClosed, comm, MPI_STATUS_IGNORE);
    if (spawned) {
      for (auto& w : workers) MPI_Send(nullptr, 0, MPI_BYTE, w.rank, kStop, comm);
      MPI_Comm_disconnect(&comm);
    }
  }

  void spawn_workers(unsigned n) {
    const std::vector<std::string>& args = program_args();
    std::vector<char*> argv;
    std::vector<std::string> copy(args);
    for (auto& a : copy) argv.push_back(a.data());
    argv.push_back(nullptr);
    char exe[4096] = {};
    const ssize_t len = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0) throw Error("mproc::mpi::PoolExecutor: cannot read /proc/self/exe to spawn workers");
    MPI_Info info;
    MPI_Info_create(&info);
    // The workers go on this node, beside rank 0, however many slots it has.
    MPI_Info_set(info, "map_by", "slot:OVERSUBSCRIBE");
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_RETURN);
    std::vector<int> errcodes(n, MPI_SUCCESS);
    int rc = MPI_SUCCESS;
    if (const char* no = std::getenv("MPROC_MPI_TEST_NO_SPAWN"); no != nullptr && std::strcmp(no, "1") == 0)
      rc = MPI_ERR_SPAWN;  // test hook: an MPI without dynamic processes
    else
      rc = MPI_Comm_spawn(exe, argv.data(), static_cast<int>(n), info, 0, MPI_COMM_SELF, &comm, errcodes.data());
    MPI_Info_free(&info);
    MPI_Comm_set_errhandler(MPI_COMM_SELF, MPI_ERRORS_ARE_FATAL);
    if (rc != MPI_SUCCESS)
      throw Error("mproc::mpi::PoolExecutor: this program runs as a single MPI rank and MPI_Comm_spawn of " +
                  std::to_string(n) + " worker(s) failed (" + mpi_error_string(rc) +
                  "). Start it with workers instead: mpirun -n " + std::to_string(n + 1) + " " + exe);
    spawned = true;
    for (unsigned i = 0; i < n; ++i) workers.push_back({static_cast<int>(i)});
  }
};

Engine::Engine(const PoolOptions& options) : impl_(std::make_shared<Impl>()) {
  (void)g_registered;
  if (!mproc::initialized())
    throw Error("mproc::mpi::PoolExecutor: call mproc::init(argc, argv) first in main (it makes the ranks other "
                "than 0 workers)");
  const bool under_launcher = launched_under_mpi();
  if (under_launcher && !init_hook_ran())
    throw Error("mproc::mpi::PoolExecutor: MPI was not set up by mproc::init (MPROC_MPI=0, or MPI_Init called "
                "before it)");
  claim_session();
  try {
    const int level = ensure_mpi_initialized();
    if (level < MPI_THREAD_SERIALIZED)
      throw Error("mproc::mpi::PoolExecutor: the MPI library provides thread level " + std::to_string(level) +
                  ", at least MPI_THREAD_SERIALIZED is needed");
    auto& m = *impl_;
    int size = 1;
    MPI_Comm world = world_comm();
    if (world != MPI_COMM_NULL) MPI_Comm_size(world, &size);
    if (size > 1) {
      m.comm = world;
      const unsigned avail = static_cast<unsigned>(size - 1);
      const unsigned n = options.max_workers == 0 ? avail : std::min(options.max_workers, avail);
      for (unsigned i = 1; i <= n; ++i) m.workers.push_back({static_cast<int>(i)});
    } else {
      m.spawn_workers(options.max_workers == 0 ? mproc::cpu_count() : options.max_workers);
    }
    int max_rank = 0;
    for (auto& w : m.workers) max_rank = std::max(max_rank, w.rank);
    m.rank_to_worker.assign(static_cast<std::size_t>(max_rank) + 1, -1);
    for (std::size_t i = 0; i < m.workers.size(); ++i)
      m.rank_to_worker[static_cast<std::size_t>(m.workers[i].rank)] = static_cast<int>(i);
    m.sched.emplace(m, mpi_depth(options.max_inflight), m.workers.size());
    for (std::size_t i = 0; i < m.workers.size(); ++i) m.sched->worker_up(i);
    m.open(options);
    m.progress = std::thread([p = impl_.get()] { p->run(); });
  } catch (...) {
    release_session();
    throw;
  }
}

Engine::~Engine() { shutdown(true, false); }

mproc::detail::TaskHandle Engine::submit(Call call) {
  std::vector<Call> one;
  one.push_back(std::move(call));
  return std::move(submit_many(std::move(one)).front());
}

std::vector<mproc::detail::TaskHandle> Engine::submit_many(std::vector<Call> calls) {
  auto& m = *impl_;
  std::vector<mproc::detail::TaskHandle> states;
  std::vector<std::shared_ptr<const Bytes>> msgs;
  states.reserve(calls.size());
  msgs.reserve(calls.size());
  for (auto& c : calls) {
    auto s = mproc::detail::TaskHandle::make();
    s->id = m.next_id.fetch_add(1);
    s->driver = impl_;
    auto msg = std::make_shared<Bytes>();
    msg->reserve(c.payload.size() + 64);
    {
      OutputArchive ar(*msg);
      ar(s->id, c);
    }
    checked_size(msg->size(), "a task");
    states.push_back(std::move(s));
    msgs.push_back(std::move(msg));
  }
  Completions done;
  {
    std::lock_guard lock(m.mu);
    if (m.closing) throw Error("mproc::mpi: cannot submit a task after the executor was shut down");
    const bool was_idle = !m.has_work_locked();
    for (std::size_t i = 0; i < states.size(); ++i)
      m.sched->enqueue(pool::Pending{.state = states[i], .wire = std::move(msgs[i])});
    if (m.broken) m.sched->fail_all(m.broken, done);  // an initializer failed: every task fails with it
    else m.dispatch_locked();
    if (was_idle && m.deep_sleep) m.cv.notify_one();
  }
  pool::complete(done);
  return states;
}

std::uint64_t Engine::share(Bytes bytes, SharedValue local, const std::type_info& type) {
  auto& m = *impl_;
  const std::uint64_t id = g_next_share.fetch_add(1);
  auto msg = std::make_shared<Bytes>(sizeof id + bytes.size());
  std::memcpy(msg->data(), &id, sizeof id);
  if (!bytes.empty()) std::memcpy(msg->data() + sizeof id, bytes.data(), bytes.size());
  Bytes().swap(bytes);
  checked_size(msg->size(), "a shared value");
  std::lock_guard lock(m.mu);
  if (m.closing) throw Error("mproc::mpi: cannot share a value after the executor was shut down");
  shared_put_local(id, std::move(local), type);
  m.shares.push_back(id);
  const bool was_idle = !m.has_work_locked();
  for (auto& w : m.workers) {
    m.isend(msg, w.rank, kShare);
    m.stats.shares_sent++;
    m.stats.share_bytes_sent += msg->size();
  }
  if (was_idle && m.deep_sleep) m.cv.notify_one();
  return id;
}

void Engine::release(std::uint64_t id) {
  auto& m = *impl_;
  std::lock_guard lock(m.mu);
  if (m.closing) return;  // shutdown drops everything
  shared_erase(id);
  m.deferred_releases.push_back(id);
  const bool was_idle = !m.has_work_locked();
  m.dispatch_locked();  // sent now when nothing is pending
  if (was_idle && m.deep_sleep) m.cv.notify_one();
}

void Engine::shutdown(bool wait, bool cancel_pending) {
  auto& m = *impl_;
  Completions cancelled;
  {
    std::lock_guard lock(m.mu);
    if (!m.closing) {
      m.closing = true;
      if (cancel_pending) m.sched->cancel_queued(cancelled);
    }
    m.cv.notify_one();
  }
  pool::complete(cancelled);
  if (!wait) return;
  std::lock_guard join(m.join_mu);
  if (m.progress.joinable() && m.progress.get_id() != std::this_thread::get_id()) m.progress.join();
}

unsigned Engine::size() const noexcept { return static_cast<unsigned>(impl_->workers.size()); }

std::vector<int> Engine::worker_ranks() const {
  std::vector<int> out;
  for (auto& w : impl_->workers) out.push_back(w.rank);
  return out;
}

bool Engine::spawned() const noexcept { return impl_->spawned; }

Stats Engine::stats() const {
  std::lock_guard lock(impl_->mu);
  return impl_->stats;
}

}  // namespace mproc::mpi::detail
