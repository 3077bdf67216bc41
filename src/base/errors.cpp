// Constructors of the mproc exceptions that compose their own message.
#include "mproc/errors.hpp"

#include <utility>

namespace mproc {

OSError::OSError(int err, const std::string& call)
    : Error(call + ": " + std::generic_category().message(err)), code_(err, std::generic_category()) {}

RemoteError::RemoteError(std::string type_name, std::string message)
    : Error(type_name + ": " + message), type_name_(std::move(type_name)), message_(std::move(message)) {}

TruncatedMessage::TruncatedMessage(std::size_t received, std::size_t expected)
    : ConnectionClosed("peer closed after " + std::to_string(received) + " of " + std::to_string(expected) +
                       " bytes of a message"),
      received_(received),
      expected_(expected) {}

MessageTooLarge::MessageTooLarge(std::uint64_t size, std::uint64_t limit)
    : ProtocolError("message of " + std::to_string(size) + " bytes exceeds the limit of " + std::to_string(limit) +
                    " bytes"),
      size_(size),
      limit_(limit) {}

}  // namespace mproc
