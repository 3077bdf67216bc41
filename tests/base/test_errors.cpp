// The library's promise about errors (docs/errors.md): every exception it
// raises derives from mproc::Error, with Python's class names where Python
// has one. A lint over the sources keeps a `throw std::...` from creeping in;
// the behavioural tests live beside each module (ValueError in test_process,
// test_pool, test_synchronize; OSError in test_listener; ...).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "mproc/connection.hpp"
#include "mproc/errors.hpp"
#include "mproc/listener.hpp"

namespace fs = std::filesystem;

namespace {

TEST(Errors, NoStdExceptionIsThrownByTheLibrary) {
  const fs::path root = fs::path(MPROC_SOURCE_DIR);
  // "throw std::" with any blanks between (std::regex is avoided: GCC's
  // -Wmaybe-uninitialized misfires on it in the sanitizer builds).
  auto throws_std = [](const std::string& line) {
    for (std::size_t at = line.find("throw"); at != std::string::npos; at = line.find("throw", at + 1)) {
      std::size_t i = at + 5;
      if (i >= line.size() || (line[i] != ' ' && line[i] != '\t')) continue;
      while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
      if (line.compare(i, 5, "std::") == 0) return true;
    }
    return false;
  };
  std::size_t files = 0;
  for (const char* dir : {"src", "include"}) {
    for (auto& e : fs::recursive_directory_iterator(root / dir)) {
      if (!e.is_regular_file()) continue;
      const auto ext = e.path().extension();
      if (ext != ".cpp" && ext != ".hpp") continue;
      ++files;
      std::ifstream in(e.path());
      std::string line;
      for (int n = 1; std::getline(in, line); ++n)
        EXPECT_FALSE(throws_std(line)) << e.path().string() << ":" << n << ": " << line;
    }
  }
  EXPECT_GT(files, 40u) << "the sources were not found under " << root;
}

TEST(Errors, PythonNamesAndTheirBases) {
  static_assert(std::is_base_of_v<mproc::Error, mproc::ValueError>);
  static_assert(std::is_base_of_v<mproc::LookupError, mproc::IndexError>);
  static_assert(std::is_base_of_v<mproc::LookupError, mproc::KeyError>);
  static_assert(std::is_base_of_v<mproc::Error, mproc::OSError>);
  static_assert(std::is_base_of_v<mproc::Error, mproc::AttributeError>);
  // A failing system call is an OSError naming the call, with its errno.
  try {
    mproc::Client(mproc::Address::unix_socket("/nonexistent-dir/mproc.sock"), "key");
    ADD_FAILURE() << "connected to nothing";
  } catch (const mproc::OSError& e) {
    EXPECT_EQ(e.errno_value(), ENOENT) << e.what();
    EXPECT_NE(std::string(e.what()).find("connect"), std::string::npos) << e.what();
  }
  // A bad offset is a ValueError naming both numbers.
  auto [a, b] = mproc::Pipe();
  std::vector<std::byte> buf(4);
  try {
    a.send_bytes(buf, 9);
    ADD_FAILURE() << "sent past the buffer";
  } catch (const mproc::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("offset 9"), std::string::npos) << e.what();
  }
}

}  // namespace
