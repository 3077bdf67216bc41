// Must not compile: a std::variant is an extension of the light codec, encoded
// by <mproc/serialize.hpp>, which this file does not include. The error must
// name that header (not be a link error, nor a second encoding of the type).
#include <string>
#include <variant>

#include "mproc/process.hpp"

int main() {
  const auto bytes = mproc::to_bytes(std::variant<int, std::string>{1});
  return static_cast<int>(bytes.size());
}
