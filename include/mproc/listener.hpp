// Listener and Client: authenticated connections over Unix-domain sockets and
// TCP (IPv4, IPv6), as Python's multiprocessing.connection.Listener/Client.
//
//   mproc::Listener l(mproc::Address::tcp("127.0.0.1", 0), key);   // port 0: any free port
//   mproc::Connection c = l.accept();          // after the HMAC handshake
//   ...                                        // elsewhere:
//   mproc::Connection c = mproc::Client(l.address(), key);
//
// The handshake (both directions, as CPython's deliver_challenge /
// answer_challenge): one side sends a 16-byte tag and 32 random bytes (OpenSSL
// RAND_bytes), the other answers HMAC-SHA256(authkey, message), compared with
// CRYPTO_memcmp, and the first replies WELCOME or FAILURE; then the roles
// swap. Only frames of at most 64 raw bytes are read before it completes:
// nothing reaches a deserializer unauthenticated. A wrong key throws
// AuthenticationError on both sides and the connection is closed.
//
// Addresses: "unix:/path" (a filesystem socket, unlinked by the Listener that
// made it), "unix:@name" (the abstract namespace: nothing on disk),
// "tcp://127.0.0.1:5000", "tcp://[::1]:5000". A TCP address without a host
// binds loopback: serving other machines takes an explicit "0.0.0.0" / "::".
// No address (Listener(authkey), or a Unix address with an empty path): a
// socket in a fresh 0700 directory under $TMPDIR (as CPython), both removed
// by close(): only this user can reach it.
//
// Unix sockets serve only this user: a peer whose uid (SO_PEERCRED) is not
// ours is closed before the handshake; the authkey is still required.
#pragma once
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mproc/connection.hpp"
#include "mproc/errors.hpp"
#include "mproc/detail/codec.hpp"
#include "mproc/detail/owned.hpp"
#include "mproc/timeout.hpp"

namespace mproc {

struct Address {
  enum class Kind : std::uint8_t { unix_socket = 0, tcp = 1 };
  Kind kind = Kind::unix_socket;
  std::string host;        // tcp: a numeric IPv4 or IPv6 address
  std::uint16_t port = 0;  // tcp: 0 = any free port (Listener::address() tells which)
  std::string path;        // unix: a path, or "@name" for the abstract namespace

  static Address unix_socket(std::string path);
  static Address tcp(std::string host = "127.0.0.1", std::uint16_t port = 0);
  // "unix:/path", "unix:@name", "tcp://host:port", "tcp://[v6]:port"; throws
  // ValueError on anything else.
  static Address parse(std::string_view text);
  std::string to_string() const;
  bool operator==(const Address&) const = default;

  void save(OutputArchive& ar) const { ar(static_cast<std::uint8_t>(kind), host, port, path); }
  void load(InputArchive& ar);
};

// How long a handshake step may take before the peer is refused (10 s).
inline constexpr Timeout kHandshakeTimeout = Timeout::from_nanoseconds(10'000'000'000);
// Listener::accept(): clients that have not answered their challenge yet, at
// most this many (the oldest is dropped for a newcomer) and for this long.
inline constexpr std::size_t kMaxPendingHandshakes = 32;
inline constexpr Timeout kHandshakeDeadline = Timeout::from_nanoseconds(3'000'000'000);  // 3 s

class Listener {
 public:
  Listener();
  // Binds and listens. Throws OSError (EADDRINUSE, ...) or
  // ValueError for a malformed address.
  Listener(Address address, std::string authkey, int backlog = 128);
  // A private Unix socket (see above).
  explicit Listener(std::string authkey) : Listener(Address{}, std::move(authkey)) {}
  Listener(Listener&&) noexcept;
  Listener& operator=(Listener&&) noexcept;
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  ~Listener();

  // The next client, authenticated (AuthenticationError when its key is
  // wrong or its handshake malformed). Clients still to answer their
  // challenge wait side by side (kMaxPendingHandshakes, kHandshakeDeadline):
  // silent ones are dropped, never block the next client.
  Connection accept();
  // The next client with no handshake yet: for servers that authenticate on
  // a thread of their own (then call detail::authenticate_server on it). A
  // closed Connection when the peer was another user's process (refused).
  Connection accept_unauthenticated();
  void close() noexcept;
  bool closed() const noexcept { return fd_ < 0; }
  // The bound address (a TCP port 0 is replaced by the port chosen).
  const Address& address() const noexcept { return address_; }
  const std::string& authkey() const noexcept { return authkey_; }
  int fileno() const;
  // The process whose close() unlinks a Unix socket path: the one that bound
  // it, unless handed to another (a forked server); 0: none.
  void set_path_owner(pid_t pid) noexcept { owner_ = pid; }

 private:
  int fd_ = -1;
  Address address_;
  std::string authkey_;
  pid_t owner_ = 0;  // only the process that bound a path unlinks it
  std::string private_dir_;  // the 0700 directory made for the socket, or empty
  struct PendingHandshake;
  std::vector<detail::Owned<PendingHandshake>> pending_;  // see accept()
};

// Connects and authenticates. Throws OSError when nothing listens
// there (ECONNREFUSED, ENOENT), AuthenticationError on a wrong key.
Connection Client(const Address& address, const std::string& authkey);

// 32 random bytes (OpenSSL RAND_bytes), e.g. for an authkey.
std::string random_authkey();

namespace detail {
// The two halves of the mutual handshake. Throw AuthenticationError, or
// ConnectionClosed when the peer hangs up.
void authenticate_server(Connection& c, std::string_view authkey, Timeout timeout = kHandshakeTimeout);
void authenticate_client(Connection& c, std::string_view authkey, Timeout timeout = kHandshakeTimeout);
// A connected socket to address, with no handshake (tests of raw garbage).
Connection connect_unauthenticated(const Address& address);
}  // namespace detail

}  // namespace mproc
