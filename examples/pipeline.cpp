// A producer/consumer pipeline: the parent feeds jobs into a JoinableQueue,
// three consumer processes square them into a result Queue and mark each job
// done; join() returns when every job is done.
//
//   ./pipeline [jobs]
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "mproc/mproc.hpp"

namespace {

void consumer(mproc::JoinableQueue<long> jobs, mproc::Queue<long> results) {
  for (;;) {
    long job = jobs.get();
    if (job < 0) {  // poison pill
      jobs.task_done();
      return;
    }
    results.put(job * job);
    jobs.task_done();
  }
}

}  // namespace

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  const long n = argc > 1 ? std::atol(argv[1]) : 10000;
  mproc::JoinableQueue<long> jobs(1000);  // bounded: the producer waits for the consumers
  mproc::Queue<long> results;
  std::vector<mproc::Process> consumers;
  for (int i = 0; i < 3; ++i) consumers.emplace_back(consumer, jobs, results);
  for (auto& c : consumers) c.start();

  long sum = 0, expected = 0;
  for (long i = 1; i <= n; ++i) {
    jobs.put(i);
    expected += i * i;
    while (!results.empty()) sum += results.get();  // drain as we go: results never fill up
  }
  jobs.join();  // every job marked done
  while (!results.empty()) sum += results.get();
  for (std::size_t i = 0; i < consumers.size(); ++i) jobs.put(-1);
  for (auto& c : consumers) c.join();
  std::printf("%ld jobs through 3 consumers: sum of squares = %ld (%s)\n", n, sum,
              sum == expected ? "correct" : "WRONG");
  return sum == expected ? 0 : 1;
}
