// Helpers shared by the Connection tests: raw frames as a hostile or broken
// peer would write them.
#pragma once
#include <cstdint>
#include <cstring>
#include <vector>

#include "mproc/connection.hpp"

namespace connectiontest {

// A raw frame header: magic, tag, payload length (the wire's layout).
inline std::vector<unsigned char> header(std::uint32_t magic, std::uint32_t tag, std::uint64_t length) {
  std::vector<unsigned char> h(mproc::Connection::kHeaderSize);
  std::memcpy(h.data(), &magic, 4);
  std::memcpy(h.data() + 4, &tag, 4);
  std::memcpy(h.data() + 8, &length, 8);
  return h;
}

}  // namespace connectiontest
