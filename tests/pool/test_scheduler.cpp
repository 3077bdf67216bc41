// The scheduler core (src/pool/scheduler.hpp) alone, over an in-memory
// transport that records what would be sent: assignment order and depth,
// requeue on a worker's death, blame, cancellation, deadlines, and that
// every task settles exactly once. Deterministic: no process, no clock
// dependence (the depth rule is chosen so that a task is always "long" or
// always "tiny", whatever the measured time).
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <vector>

#include "mproc/futures.hpp"
#include "pool/scheduler.hpp"

namespace {

namespace pool = mproc::detail::pool;
using mproc::detail::TaskPhase;
using mproc::detail::TaskState;

struct FakeTransport : pool::Transport {
  struct Send {
    pool::WorkerId worker;
    std::vector<std::uint64_t> ids;
  };
  std::vector<Send> sends;
  void send(pool::WorkerId worker, std::deque<pool::InFlight>& flight, std::size_t first) override {
    Send s{worker, {}};
    for (std::size_t k = first; k < flight.size(); ++k) s.ids.push_back(flight[k].task.state->id);
    sends.push_back(std::move(s));
  }
};

constexpr pool::DepthRule kAlwaysLong{.long_tasks = 1, .short_task_us = -1};  // any average is "long"
constexpr pool::DepthRule kAlwaysTiny{.long_tasks = 1, .short_task_us = 1e18, .tiny_min = 2, .tiny_max = 32};

struct Harness {
  FakeTransport transport;
  pool::Scheduler sched;
  std::map<std::uint64_t, mproc::detail::TaskHandle> tasks;
  std::map<std::uint64_t, int> callbacks;  // id → times its future was finished or cancelled
  std::uint64_t next_id = 1;

  Harness(pool::DepthRule rule, std::size_t workers) : sched(transport, rule, workers) {
    for (std::size_t i = 0; i < workers; ++i) sched.worker_up(i);
  }

  std::uint64_t submit(std::size_t payload = 0, std::optional<std::chrono::nanoseconds> limit = std::nullopt) {
    auto state = mproc::detail::TaskHandle::make();
    const std::uint64_t id = next_id++;
    state->id = id;
    state->add_callback([this, id] { ++callbacks[id]; });
    tasks[id] = state;
    sched.enqueue(pool::Pending{.state = state, .call = mproc::detail::Call{{}, mproc::Bytes(payload)}, .limit = limit});
    return id;
  }

  // Finishes the futures settled in `done`, after checking none is there twice.
  void finish(pool::Completions& done) {
    std::set<std::uint64_t> seen;
    for (auto& c : done) EXPECT_TRUE(seen.insert(c.state->id).second) << "task " << c.state->id << " settled twice";
    pool::complete(done);
  }

  std::vector<std::uint64_t> settled() const {
    std::vector<std::uint64_t> out;
    for (auto& [id, n] : callbacks) {
      EXPECT_EQ(n, 1) << "task " << id;
      out.push_back(id);
    }
    return out;
  }

  // The head of `worker` answers with a result.
  void answer(pool::WorkerId worker) {
    pool::Completions done;
    sched.complete_head(worker, mproc::to_bytes(int(7)), nullptr, done);
    finish(done);
  }

  template <class E>
  bool failed_with(std::uint64_t id) {
    auto& s = *tasks.at(id);
    if (!s.finished() || !s.error) return false;
    try {
      std::rethrow_exception(s.error);
    } catch (const E&) {
      return true;
    } catch (...) {
      return false;
    }
  }
};

pool::ErrorFor crashed_by(pid_t pid) {
  return [pid](std::uint64_t id) { return std::make_exception_ptr(mproc::WorkerCrashed(id, pid, -9)); };
}

using Ids = std::vector<std::uint64_t>;

TEST(Scheduler, LongTasksGoOnePerWorkerToTheLeastLoaded) {
  Harness h(kAlwaysLong, 3);
  for (int i = 0; i < 5; ++i) h.submit();
  h.sched.assign();
  ASSERT_EQ(h.transport.sends.size(), 3u);
  EXPECT_EQ(h.transport.sends[0].worker, 0u);
  EXPECT_EQ(h.transport.sends[0].ids, Ids{1});
  EXPECT_EQ(h.transport.sends[1].worker, 1u);
  EXPECT_EQ(h.transport.sends[1].ids, Ids{2});
  EXPECT_EQ(h.transport.sends[2].worker, 2u);
  EXPECT_EQ(h.transport.sends[2].ids, Ids{3});
  EXPECT_EQ(h.sched.queued(), 2u);
  EXPECT_EQ(h.sched.in_flight(), 3u);
  // Sent tasks cannot be cancelled any more; queued ones still can.
  EXPECT_EQ(h.tasks[1]->phase.load(), TaskPhase::running);
  EXPECT_EQ(h.tasks[4]->phase.load(), TaskPhase::pending);

  // Worker 1 frees first: it gets the next task, the others are untouched.
  h.answer(1);
  EXPECT_TRUE(h.tasks[2]->finished());
  EXPECT_EQ(mproc::from_bytes<int>(h.tasks[2]->result), 7);
  h.sched.assign();
  ASSERT_EQ(h.transport.sends.size(), 4u);
  EXPECT_EQ(h.transport.sends[3].worker, 1u);
  EXPECT_EQ(h.transport.sends[3].ids, Ids{4});
  EXPECT_EQ(h.settled(), Ids{2});
}

TEST(Scheduler, UntimedTasksGoOneAtATimeThenTinyOnesTravelInBatchesUpToTheDepth) {
  Harness h(kAlwaysTiny, 2);
  h.submit();
  h.submit();
  h.submit();
  h.sched.assign();  // nothing timed yet: one per worker
  ASSERT_EQ(h.transport.sends.size(), 2u);
  EXPECT_EQ(h.sched.queued(), 1u);
  h.answer(0);  // now tasks are tiny
  EXPECT_GE(h.sched.average_task_us(), 0.0);
  h.transport.sends.clear();
  for (int i = 0; i < 100; ++i) h.submit();
  h.sched.assign();
  // 101 queued over 2 workers: depth min(101 / 2, 32) = 32 each, in rounds
  // that alternate between them (least loaded first), one write per worker.
  ASSERT_EQ(h.transport.sends.size(), 2u);
  EXPECT_EQ(h.sched.flight(0).size(), 32u);
  EXPECT_EQ(h.sched.flight(1).size(), 32u);
  EXPECT_EQ(h.transport.sends[0].worker, 0u);
  EXPECT_EQ(h.transport.sends[0].ids.size(), 32u);
  EXPECT_EQ(h.transport.sends[1].ids.size(), 31u);  // worker 1 still runs task 2
  // The one left queued goes first; ties go to the first worker.
  EXPECT_EQ(h.transport.sends[0].ids[0], 3u);
  EXPECT_EQ(h.transport.sends[0].ids[1], 4u);
  EXPECT_EQ(h.transport.sends[1].ids[0], 5u);
  EXPECT_EQ(h.sched.queued(), 101u - 63u);
}

TEST(Scheduler, PerWorkerAverageDecidesEachWorkersDepth) {
  // The MPI executor's rule: 2 ahead until a worker's own tasks prove tiny, then 32.
  Harness h(pool::DepthRule{.long_tasks = 2, .short_task_us = 1e18, .tiny_min = 32, .tiny_max = 32, .per_worker = true},
            2);
  for (int i = 0; i < 4; ++i) h.submit();
  h.sched.assign();
  EXPECT_EQ(h.sched.flight(0).size(), 2u);
  EXPECT_EQ(h.sched.flight(1).size(), 2u);
  h.answer(0);  // only worker 0 has timed a task
  EXPECT_GE(h.sched.average_task_us(0), 0.0);
  EXPECT_LT(h.sched.average_task_us(1), 0.0);
  for (int i = 0; i < 40; ++i) h.submit();
  h.sched.assign();
  EXPECT_EQ(h.sched.flight(0).size(), 32u);
  EXPECT_EQ(h.sched.flight(1).size(), 2u);
}

TEST(Scheduler, FixedDepthHoldsThatManyPerWorker) {
  Harness h(pool::DepthRule{.fixed = 3}, 2);
  for (int i = 0; i < 10; ++i) h.submit();
  h.sched.assign();
  EXPECT_EQ(h.sched.flight(0).size(), 3u);
  EXPECT_EQ(h.sched.flight(1).size(), 3u);
  EXPECT_EQ(h.transport.sends[0].ids, (Ids{1, 3, 5}));
  EXPECT_EQ(h.transport.sends[1].ids, (Ids{2, 4, 6}));
  EXPECT_EQ(h.sched.queued(), 4u);
}

TEST(Scheduler, QueuedBytesLimitStopsWhatWaitsBehindTheRunningTask) {
  pool::DepthRule rule = kAlwaysTiny;
  rule.max_queued_bytes = 100;
  Harness h(rule, 1);
  h.submit();
  h.sched.assign();
  h.answer(0);  // tasks are tiny from now on
  for (int i = 0; i < 4; ++i) h.submit(60);
  h.sched.assign();
  // The head (not waiting) + one 60-byte task behind it; a second would make 120.
  EXPECT_EQ(h.sched.flight(0).size(), 2u);
  EXPECT_EQ(h.sched.queued(), 2u);
  h.answer(0);  // task 2 done, task 3 now runs: nothing waits behind it
  h.sched.assign();
  EXPECT_EQ(h.sched.flight(0).size(), 2u);
  EXPECT_EQ(h.sched.flight(0).back().task.state->id, 4u);
}

TEST(Scheduler, WorkersThatAreNotLiveGetNoTasks) {
  Harness h(pool::DepthRule{.fixed = 4}, 3);
  h.sched.worker_retiring(1);
  pool::Completions done;
  h.sched.worker_died(2, 0, crashed_by(1), done);  // absent
  for (int i = 0; i < 6; ++i) h.submit();
  h.sched.assign();
  ASSERT_EQ(h.transport.sends.size(), 1u);
  EXPECT_EQ(h.transport.sends[0].worker, 0u);
  EXPECT_EQ(h.transport.sends[0].ids, (Ids{1, 2, 3, 4}));
  EXPECT_EQ(h.sched.phase(1), pool::WorkerPhase::retiring);
  EXPECT_EQ(h.sched.phase(2), pool::WorkerPhase::absent);
}

TEST(Scheduler, DeathBlamesTheRunningTaskAndThoseBeforeItAndRequeuesTheRestFirst) {
  Harness h(pool::DepthRule{.fixed = 3}, 2);
  for (int i = 0; i < 8; ++i) h.submit();
  h.sched.assign();  // worker 0: 1 3 5; worker 1: 2 4 6; queued 7 8
  pool::Completions done;
  h.sched.worker_died(0, /*running=*/3, crashed_by(4242), done);
  h.finish(done);
  // 3 killed it; 1 ran before it (its result is lost with the worker).
  EXPECT_TRUE(h.failed_with<mproc::WorkerCrashed>(1));
  ASSERT_TRUE(h.failed_with<mproc::WorkerCrashed>(3));
  try {
    std::rethrow_exception(h.tasks[3]->error);
  } catch (const mproc::WorkerCrashed& e) {
    EXPECT_EQ(e.task(), 3u);
    EXPECT_EQ(e.pid(), 4242);
  }
  EXPECT_EQ(h.settled(), (Ids{1, 3}));
  // 5 never started: queued again, ahead of 7 and 8, and cancellable again.
  EXPECT_EQ(h.sched.queued(), 3u);
  EXPECT_EQ(h.tasks[5]->phase.load(), TaskPhase::pending);
  EXPECT_EQ(h.sched.in_flight(), 3u);
  h.sched.worker_up(0);  // its replacement
  h.transport.sends.clear();
  h.sched.assign();
  ASSERT_EQ(h.transport.sends.size(), 1u);
  EXPECT_EQ(h.transport.sends[0].ids, (Ids{5, 7, 8}));
  // The death is explained (3 killed it): it counts against no other task.
  EXPECT_EQ(h.sched.flight(0).front().task.requeues, 0u);
}

// A worker that said it stops (recycled, or a task broke its fds and was
// failed for it) dies between tasks: nobody is blamed, however often.
TEST(Scheduler, RetiringWorkersDeathBlamesNobodyAndCountsAgainstNoTask) {
  Harness h(kAlwaysLong, 1);
  h.submit();
  for (unsigned death = 0; death < 2 * pool::kMaxRequeues; ++death) {
    h.sched.assign();
    ASSERT_EQ(h.sched.in_flight(), 1u);
    h.sched.worker_retiring(0);
    pool::Completions done;
    h.sched.worker_died(0, /*running=*/0, crashed_by(1), done);
    EXPECT_TRUE(done.empty()) << "death " << death;
    ASSERT_EQ(h.sched.queued(), 1u);
    h.sched.worker_up(0);
  }
  h.sched.assign();
  EXPECT_EQ(h.sched.flight(0).front().task.requeues, 0u);
  h.answer(0);
  EXPECT_EQ(h.settled(), Ids{1});
}

TEST(Scheduler, DeathBetweenTasksBlamesNobodyUntilTheSameTaskHeadsTooOften) {
  Harness h(kAlwaysLong, 1);
  h.submit();
  for (unsigned death = 0; death < pool::kMaxRequeues; ++death) {
    h.sched.assign();
    ASSERT_EQ(h.sched.in_flight(), 1u);
    pool::Completions done;
    h.sched.worker_died(0, /*running=*/0, crashed_by(1), done);  // died while idle
    EXPECT_TRUE(done.empty()) << "death " << death;
    EXPECT_EQ(h.sched.queued(), 1u);
    h.sched.worker_up(0);
  }
  h.sched.assign();
  pool::Completions done;
  h.sched.worker_died(0, 0, crashed_by(1), done);
  h.finish(done);
  EXPECT_TRUE(h.failed_with<mproc::WorkerCrashed>(1));
  EXPECT_TRUE(h.sched.idle());
  EXPECT_EQ(h.settled(), Ids{1});
}

TEST(Scheduler, CancelledBeforeSendIsNeverSentAndSettlesOnce) {
  Harness h(kAlwaysLong, 1);
  h.submit();
  h.submit();
  h.submit();
  h.sched.assign();
  EXPECT_TRUE(h.tasks[2]->cancel());
  EXPECT_FALSE(h.tasks[1]->cancel());  // already sent
  h.answer(0);
  h.sched.assign();
  ASSERT_EQ(h.transport.sends.size(), 2u);
  EXPECT_EQ(h.transport.sends[1].ids, Ids{3});  // 2 skipped
  EXPECT_EQ(h.tasks[2]->phase.load(), TaskPhase::cancelled);
  h.answer(0);
  EXPECT_TRUE(h.sched.idle());
  EXPECT_EQ(h.settled(), (Ids{1, 2, 3}));
}

TEST(Scheduler, CancelQueuedOnShutdownLeavesSentTasksAlone) {
  Harness h(kAlwaysLong, 1);
  for (int i = 0; i < 3; ++i) h.submit();
  h.sched.assign();
  pool::Completions done;
  h.sched.cancel_queued(done);
  h.finish(done);
  EXPECT_EQ(h.tasks[2]->phase.load(), TaskPhase::cancelled);
  EXPECT_EQ(h.tasks[3]->phase.load(), TaskPhase::cancelled);
  EXPECT_FALSE(h.tasks[1]->finished());
  EXPECT_FALSE(h.sched.idle());
  h.answer(0);
  EXPECT_TRUE(h.sched.idle());
  EXPECT_EQ(h.settled(), (Ids{1, 2, 3}));
}

TEST(Scheduler, DoomedWorkerSettlesItsHeadOnceAndItsDeathBlamesNothingMore) {
  Harness h(pool::DepthRule{.fixed = 2}, 1);
  h.submit();
  h.submit();
  h.sched.assign();
  pool::Completions done;
  const pool::ErrorFor timed_out = [](std::uint64_t id) {
    return std::make_exception_ptr(mproc::TaskTimeout(id, 77, std::chrono::seconds(1)));
  };
  h.sched.doom_head(0, timed_out, done);
  h.sched.doom_head(0, timed_out, done);  // doomed already: nothing more
  h.finish(done);
  EXPECT_TRUE(h.failed_with<mproc::TaskTimeout>(1));
  EXPECT_TRUE(h.sched.abandoned(0, 1));  // its late result is to be ignored
  EXPECT_FALSE(h.sched.abandoned(0, 2));
  h.submit();
  h.transport.sends.clear();
  h.sched.assign();
  EXPECT_TRUE(h.transport.sends.empty());  // a doomed worker gets nothing
  // It dies claiming task 1 ran: settled already, and 2 never started.
  h.sched.worker_died(0, 1, crashed_by(77), done);
  h.finish(done);
  EXPECT_FALSE(h.tasks[2]->finished());
  EXPECT_EQ(h.sched.queued(), 2u);
  EXPECT_EQ(h.settled(), Ids{1});
}

TEST(Scheduler, ATaskThatNeverHeadedItsFlightDoesNotSkewTheAverage) {
  Harness h(pool::DepthRule{.fixed = 2}, 1);
  h.submit();
  h.submit();
  h.sched.assign();
  pool::Completions done;
  h.sched.doom_head(0, crashed_by(3), done);  // deadline: task 2 is next, never headed
  h.finish(done);
  EXPECT_LT(h.sched.average_task_us(), 0.0);
  h.answer(0);  // the doomed worker finished task 2 before its SIGKILL landed
  EXPECT_TRUE(h.tasks[2]->finished());
  EXPECT_LT(h.sched.average_task_us(), 0.0) << "timed from the clock's epoch";
}

TEST(Scheduler, FaultFailsTheTasksThroughTheOneItRuns) {
  Harness h(pool::DepthRule{.fixed = 4}, 1);
  for (int i = 0; i < 4; ++i) h.submit();
  h.sched.assign();
  pool::Completions done;
  h.sched.doom_through(
      0, /*running=*/2, [](std::uint64_t id) { return std::make_exception_ptr(mproc::WorkerFault(id, 5, "garbage")); },
      done);
  h.finish(done);
  EXPECT_TRUE(h.failed_with<mproc::WorkerFault>(1));
  EXPECT_TRUE(h.failed_with<mproc::WorkerFault>(2));
  h.sched.worker_died(0, 0, crashed_by(5), done);
  EXPECT_TRUE(done.empty());
  EXPECT_EQ(h.sched.queued(), 2u);  // 3 and 4 run elsewhere
  // A running id that is none of its tasks: the head is the faulty one.
  h.sched.worker_up(0);
  h.sched.assign();
  h.sched.doom_through(
      0, 999, [](std::uint64_t id) { return std::make_exception_ptr(mproc::WorkerFault(id, 5, "garbage")); }, done);
  h.finish(done);
  EXPECT_TRUE(h.failed_with<mproc::WorkerFault>(3));
  EXPECT_FALSE(h.tasks[4]->finished());
}

TEST(Scheduler, FailAllSettlesEveryTaskExactlyOnce) {
  Harness h(pool::DepthRule{.fixed = 2}, 3);
  for (int i = 0; i < 10; ++i) h.submit();
  h.sched.assign();
  h.answer(1);  // task 2 done before the pool broke
  EXPECT_FALSE(h.tasks[3]->cancel());  // sent: too late
  EXPECT_TRUE(h.tasks[9]->cancel());   // queued: cancelled by the user
  pool::Completions done;
  h.sched.fail_all(std::make_exception_ptr(mproc::BrokenPool("broken")), done);
  h.finish(done);
  h.sched.fail_all(std::make_exception_ptr(mproc::BrokenPool("again")), done);
  EXPECT_TRUE(done.empty());
  EXPECT_TRUE(h.sched.idle());
  for (std::uint64_t id = 1; id <= 10; ++id) {
    EXPECT_TRUE(h.tasks[id]->finished()) << id;
    if (id == 2) EXPECT_FALSE(h.tasks[id]->error);
    else if (id == 9) EXPECT_EQ(h.tasks[id]->phase.load(), TaskPhase::cancelled);
    else EXPECT_TRUE(h.failed_with<mproc::BrokenPool>(id)) << id;
  }
  EXPECT_EQ(h.settled().size(), 10u);  // each callback ran once
}

TEST(Scheduler, DeadlineCountsFromWhenTheTaskHeadsItsWorkersFlight) {
  Harness h(pool::DepthRule{.fixed = 2}, 1);
  h.submit();
  h.submit(0, std::chrono::hours(1));
  h.sched.assign();
  // Task 2 waits behind task 1: no deadline runs yet.
  EXPECT_FALSE(h.sched.take_deadlines_changed());
  EXPECT_EQ(h.sched.earliest_deadline(), pool::Clock::time_point::max());
  const auto before = pool::Clock::now();
  h.answer(0);
  EXPECT_TRUE(h.sched.take_deadlines_changed());
  EXPECT_FALSE(h.sched.take_deadlines_changed());
  const auto deadline = h.sched.earliest_deadline();
  EXPECT_GE(deadline, before + std::chrono::hours(1));
  EXPECT_EQ(h.sched.head(0)->deadline, deadline);
}

}  // namespace
