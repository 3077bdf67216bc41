#include <mproc/mproc.hpp>

#include <cstdio>

int square(int x) { return x * x; }
void report(mproc::Connection out, int x) { out.send(square(x)); }

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  auto [in, out] = mproc::Pipe(false);
  mproc::Process p(report, std::move(out), 7);
  p.start();
  int got = in.recv<int>();
  p.join();
  std::printf("consumer: child %d sent %d, exit code %d\n", static_cast<int>(p.pid()), got, p.exitcode().value_or(-1));
  mproc::ProcessPoolExecutor ex(2);
  const int pooled = ex.submit(square, 9).get();
  std::printf("consumer: ProcessPoolExecutor(2) squared 9 into %d\n", pooled);
  return got == 49 && p.exitcode() == 0 && pooled == 81 ? 0 : 1;
}
