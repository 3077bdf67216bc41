// Internal: the server's half of the handshake in two steps, for a server
// that tracks its handshakes by fd (manager_server.cpp). Defined in
// listener.cpp, beside the other halves.
#pragma once
#include <functional>
#include <string_view>

#include "mproc/connection.hpp"
#include "mproc/timeout.hpp"

namespace mproc::detail {

// As authenticate_server, but `proven` runs once the client has proven the
// key, before the server proves its own (after which the client counts
// itself connected and may send requests): false refuses the client
// (AuthenticationError). On any failure `c` is left open: the caller closes
// it once its fd number may be reused.
void authenticate_server_then(Connection& c, std::string_view authkey, Timeout timeout,
                              const std::function<bool()>& proven);

}  // namespace mproc::detail
