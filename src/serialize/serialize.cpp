// Out-of-line parts of the serialization layer: error paths, type names,
// fingerprints and the capture of exceptions as they cross processes.
#include "mproc/serialize.hpp"

#include <cxxabi.h>

#include <cstdlib>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "sys/pages.hpp"

namespace mproc {

void InputArchive::throw_short(std::size_t wanted) const {
  throw DeserializeError("truncated payload: needed " + std::to_string(wanted) + " more bytes at offset " +
                         std::to_string(pos_) + " but only " + std::to_string(remaining()) + " of " +
                         std::to_string(in_.size()) + " remain");
}

void InputArchive::throw_size(std::uint64_t size, std::size_t each) const {
  std::string what = "size tag of " + std::to_string(size) + " elements";
  if (each > 1) what += " of at least " + std::to_string(each) + " bytes each";
  throw DeserializeError(what + " at offset " + std::to_string(pos_) + " exceeds the " +
                         std::to_string(remaining()) + " bytes that remain");
}

namespace detail {
void prefault_for_writing(void* p, std::size_t n) noexcept {
  if (n >= kPrefaultBytes) sys::prefault_for_writing(p, n);
}
}  // namespace detail

void throw_deserialize(const char* type, const char* what) {
  throw DeserializeError("cannot deserialize " + demangle(type) + ": " + what);
}

void throw_decode_failure(const char* type, const InputArchive& ar) {
  std::string what;
  try {
    throw;
  } catch (const std::bad_alloc&) {
    what = "out of memory (std::bad_alloc)";
  } catch (const std::length_error& e) {
    what = std::string("std::length_error: ") + e.what();
  } catch (const std::exception& e) {
    what = e.what();
  }
  throw DeserializeError("cannot deserialize " + demangle(type) + " from " + std::to_string(ar.size()) +
                         " bytes: " + what + " (stopped at offset " + std::to_string(ar.position()) + ")");
}

std::uint32_t type_fingerprint(const char* mangled_name) noexcept {
  // FNV-1a, 32 bits. Some ABIs mark a type name with a leading '*' (local
  // symbols); it is not part of the type.
  if (mangled_name == nullptr) return 0;
  if (*mangled_name == '*') ++mangled_name;
  std::uint32_t h = 2166136261u;
  for (const char* p = mangled_name; *p != '\0'; ++p) {
    h ^= static_cast<unsigned char>(*p);
    h *= 16777619u;
  }
  return h;
}

std::string demangle(const char* mangled_name) {
  if (mangled_name == nullptr) return "<unknown type>";
  if (*mangled_name == '*') ++mangled_name;
  int status = 0;
  std::unique_ptr<char, void (*)(void*)> out(abi::__cxa_demangle(mangled_name, nullptr, nullptr, &status),
                                             std::free);
  if (status == 0 && out) return out.get();
  return mangled_name;
}

ErrorInfo capture_error(std::exception_ptr e) {
  if (!e) e = std::current_exception();
  if (!e) return {"<no exception>", "no exception was being handled"};
  try {
    std::rethrow_exception(e);
  } catch (const RemoteError& r) {
    // Crossing again: keep the original type and message.
    return {r.type_name(), r.message()};
  } catch (...) {
    ErrorInfo info;
    const std::type_info* t = abi::__cxa_current_exception_type();
    info.type_name = t != nullptr ? demangle(t->name()) : "<unknown type>";
    try {
      throw;
    } catch (const std::exception& x) {
      info.message = x.what();
    } catch (...) {
      info.message = "unknown exception";
    }
    return info;
  }
}

RemoteError to_remote_error(const ErrorInfo& info) { return RemoteError(info.type_name, info.message); }

}  // namespace mproc

namespace mproc {

std::uint32_t OutputArchive::attach_fd(int fd, const char* what) {
  if (!fds_)
    throw ValueError(std::string("mproc: a ") + what +
                                " can only be given to a child process as an argument of its target");
  if (fd < 0) throw ValueError(std::string("mproc: cannot send a closed ") + what);
  fds_->push_back(fd);
  return static_cast<std::uint32_t>(fds_->size() - 1);
}

int InputArchive::take_fd(std::uint32_t index, const char* what) {
  if (!fds_ || index >= fds_->size() || (*fds_)[index] < 0)
    throw DeserializeError(std::string("mproc: no file descriptor #") + std::to_string(index) + " came with this " +
                           what);
  return std::exchange((*fds_)[index], -1);
}

}  // namespace mproc
