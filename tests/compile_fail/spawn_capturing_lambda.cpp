// Must NOT compile: a capturing lambda cannot cross an exec, and a context
// whose start method is known at compile time says so.
#include "mproc/context.hpp"

int main(int argc, char** argv) {
  mproc::init(argc, argv);
  int secret = 42;
  auto p = mproc::get_context<mproc::StartMethod::spawn>().process([secret] { (void)secret; });
  p.start();
  p.join();
}
