// Exception types of mproc. Every error names what went wrong: the pid, the
// signal, the byte count, the type.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <system_error>

namespace mproc {

// Base of every mproc error.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// ---- Python's built-in exceptions that mproc raises (docs/errors.md maps
// every one to the Python exception it stands for) -------------------------

// Python's ValueError: an argument with a wrong value (Barrier(0), an empty
// socket path), or a call on an object in a state that forbids it (a closed
// Process, a Pool that is not running, a Manager started twice).
class ValueError : public Error {
 public:
  using Error::Error;
};

// Python's LookupError and its two children.
class LookupError : public Error {
 public:
  using Error::Error;
};
// An index outside a sequence (Array, a list proxy).
class IndexError : public LookupError {
 public:
  using LookupError::LookupError;
};
// A key a mapping or set does not hold (a dict or set proxy).
class KeyError : public LookupError {
 public:
  using LookupError::LookupError;
};

// Python's AttributeError: a Namespace proxy without that attribute.
class AttributeError : public Error {
 public:
  using Error::Error;
};

// Python's OSError: a system call failed. what() names the call and the
// error; code() is the errno as a std::error_code.
class OSError : public Error {
 public:
  OSError(int err, const std::string& call);
  const std::error_code& code() const noexcept { return code_; }
  int errno_value() const noexcept { return code_.value(); }

 private:
  std::error_code code_;
};

// An exception thrown in another process, carried back as (type name, message).
class RemoteError : public Error {
 public:
  RemoteError(std::string type_name, std::string message);
  const std::string& type_name() const noexcept { return type_name_; }
  const std::string& message() const noexcept { return message_; }

 private:
  std::string type_name_;
  std::string message_;
};

// Python's EOFError: the peer closed its end (or died) and nothing more will come.
class ConnectionClosed : public Error {
 public:
  using Error::Error;
};

// The peer closed (or died) in the middle of a message.
class TruncatedMessage : public ConnectionClosed {
 public:
  TruncatedMessage(std::size_t received, std::size_t expected);
  std::size_t received() const noexcept { return received_; }
  std::size_t expected() const noexcept { return expected_; }

 private:
  std::size_t received_, expected_;
};

// Bytes on a connection that are not a valid frame (garbage, bad magic).
class ProtocolError : public Error {
 public:
  using Error::Error;
};

// A frame whose announced length is over the allowed limit. Nothing of the
// claimed size was allocated; the frame is still pending on the connection.
class MessageTooLarge : public ProtocolError {
 public:
  MessageTooLarge(std::uint64_t size, std::uint64_t limit);
  std::uint64_t size() const noexcept { return size_; }
  std::uint64_t limit() const noexcept { return limit_; }

 private:
  std::uint64_t size_, limit_;
};

// recv<T>() found a message of another type. The message stays pending.
class TypeMismatch : public ProtocolError {
 public:
  using ProtocolError::ProtocolError;
};

// A payload that does not deserialize as the expected type.
class DeserializeError : public Error {
 public:
  using Error::Error;
};

// A function reference that does not resolve in this process (other binary,
// unknown module, offset outside code, signature mismatch).
class FunctionRefError : public Error {
 public:
  using Error::Error;
};

// A blocking call ran past its timeout.
class TimeoutError : public Error {
 public:
  using Error::Error;
};

}  // namespace mproc

// ---- shared state (shared_memory.hpp, synchronize.hpp, queues.hpp) --------
namespace mproc {

// A shared memory segment that cannot be created, attached or used; the
// message names the segment and what was wrong.
class SharedMemoryError : public Error {
 public:
  using Error::Error;
};
// Attaching by a name that no segment has (Python's FileNotFoundError).
class SharedMemoryNotFound : public SharedMemoryError {
 public:
  using SharedMemoryError::SharedMemoryError;
};
// Creating a segment whose name is taken (Python's FileExistsError).
class SharedMemoryExists : public SharedMemoryError {
 public:
  using SharedMemoryError::SharedMemoryError;
};
// A name that is empty, too long, or contains '/'.
class InvalidSharedMemoryName : public SharedMemoryError {
 public:
  using SharedMemoryError::SharedMemoryError;
};

// Queue.put_nowait on a full queue / get_nowait on an empty one (queue.Full, queue.Empty).
class Full : public Error {
 public:
  using Error::Error;
};
class Empty : public Error {
 public:
  using Error::Error;
};

// A Barrier that was aborted, reset, or timed out while parties waited.
class BrokenBarrierError : public Error {
 public:
  using Error::Error;
};

}  // namespace mproc

// ---- managers and authenticated connections (listener.hpp, managers.hpp) ----
namespace mproc {

// The HMAC challenge on a Listener/Client connection failed: the other side
// holds another authkey, or sent something that is not a handshake message.
class AuthenticationError : public Error {
 public:
  using Error::Error;
};

}  // namespace mproc
