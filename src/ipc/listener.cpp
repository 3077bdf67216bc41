// Listener / Client over Unix-domain and TCP sockets, with the HMAC-SHA256
// challenge-response of mproc/listener.hpp.
#include "mproc/listener.hpp"

#include "ipc/handshake.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <memory>
#include <vector>
#include <cerrno>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <utility>

#include "mproc/detail/deadline.hpp"
#include "sys/fd.hpp"

namespace mproc {

namespace {

// ---- addresses -------------------------------------------------------------

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  int family = AF_UNSPEC;
  sockaddr* get() { return reinterpret_cast<sockaddr*>(&storage); }
};

SockAddr to_sockaddr(const Address& a) {
  SockAddr out;
  if (a.kind == Address::Kind::unix_socket) {
    auto* un = reinterpret_cast<sockaddr_un*>(&out.storage);
    un->sun_family = AF_UNIX;
    const bool abstract = !a.path.empty() && a.path[0] == '@';
    if (a.path.empty() || (abstract && a.path.size() < 2))
      throw ValueError("mproc::Address: empty Unix socket path");
    if (a.path.size() >= sizeof(un->sun_path))
      throw ValueError(fmt::format("mproc::Address: Unix socket path longer than {} bytes: {}",
                                              sizeof(un->sun_path) - 1, a.path));
    std::memcpy(un->sun_path, a.path.data(), a.path.size());
    if (abstract) un->sun_path[0] = '\0';
    out.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + a.path.size() + (abstract ? 0 : 1));
    out.family = AF_UNIX;
    return out;
  }
  const std::string host = a.host.empty() ? std::string("127.0.0.1") : a.host;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&out.storage);
  if (::inet_pton(AF_INET, host.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(a.port);
    out.len = sizeof(sockaddr_in);
    out.family = AF_INET;
    return out;
  }
  out.storage = {};
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&out.storage);
  if (::inet_pton(AF_INET6, host.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(a.port);
    out.len = sizeof(sockaddr_in6);
    out.family = AF_INET6;
    return out;
  }
  throw ValueError("mproc::Address: not a numeric IPv4 or IPv6 address: " + host);
}

void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  // best effort: latency
}

// ---- handshake ---------------------------------------------------------------

constexpr std::size_t kMaxHandshakeFrame = 64;
constexpr std::size_t kChallengeSize = 32;
constexpr std::size_t kDigestSize = 32;  // SHA-256
constexpr std::string_view kChallengeTag = "#MPROC-CHALLNG1#";  // 16 bytes
constexpr std::string_view kWelcome = "#WELCOME#";
constexpr std::string_view kFailure = "#FAILURE#";
static_assert(kChallengeTag.size() == 16);

std::span<const std::byte> as_span(std::string_view s) { return std::as_bytes(std::span(s.data(), s.size())); }

Bytes recv_handshake(Connection& c, Timeout timeout, const char* what) {
  if (!c.poll(timeout)) throw AuthenticationError(fmt::format("authentication: no {} within the handshake timeout", what));
  try {
    return c.recv_bytes(kMaxHandshakeFrame);
  } catch (const ConnectionClosed&) {
    throw;
  } catch (const ProtocolError& e) {  // garbage, oversized: not a handshake
    throw AuthenticationError(fmt::format("authentication: expected a {}, got a bad frame ({})", what, e.what()));
  }
}

// OpenSSL 3 takes process-wide locks of its own (method and provider stores,
// the DRBG) and a fork child inherits them as they were: every call of ours
// into it holds this lock, which is held across fork (handlers registered at
// load), so no thread of ours is inside OpenSSL when another one forks.
std::mutex g_openssl_mu;
[[maybe_unused]] const int g_openssl_atfork =
    ::pthread_atfork([] { g_openssl_mu.lock(); }, [] { g_openssl_mu.unlock(); }, [] { g_openssl_mu.unlock(); });

bool random_bytes(void* out, std::size_t n) {
  std::lock_guard lk(g_openssl_mu);
  return ::RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) == 1;
}

std::array<unsigned char, kDigestSize> hmac(std::string_view key, std::span<const std::byte> msg) {
  std::array<unsigned char, kDigestSize> out{};
  unsigned int len = 0;
  std::lock_guard lk(g_openssl_mu);
  static const unsigned char kEmpty = 0;
  const void* k = key.empty() ? static_cast<const void*>(&kEmpty) : static_cast<const void*>(key.data());
  if (::HMAC(EVP_sha256(), k, static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
             msg.size(), out.data(), &len) == nullptr ||
      len != kDigestSize)
    throw Error("authentication: HMAC-SHA256 failed (OpenSSL)");
  return out;
}

bool equals(const Bytes& b, std::string_view s) {
  return b.size() == s.size() && std::memcmp(b.data(), s.data(), s.size()) == 0;
}

// The challenging side, in two halves (Listener::accept waits for many
// answers at once): sends a challenge; checks the answer and says WELCOME or
// FAILURE.
Bytes send_challenge(Connection& c) {
  Bytes msg(kChallengeTag.size() + kChallengeSize);
  std::memcpy(msg.data(), kChallengeTag.data(), kChallengeTag.size());
  if (!random_bytes(msg.data() + kChallengeTag.size(), kChallengeSize))
    throw Error("authentication: RAND_bytes failed (OpenSSL)");
  c.send_bytes(msg);
  return msg;
}

void check_answer(Connection& c, std::string_view key, const Bytes& msg, const Bytes& answer) {
  const auto expected = hmac(key, msg);
  if (answer.size() != kDigestSize || CRYPTO_memcmp(answer.data(), expected.data(), kDigestSize) != 0) {
    try {
      c.send_bytes(as_span(kFailure));
    } catch (const Error&) {  // the peer left: the verdict stands
    }
    throw AuthenticationError("authentication: the peer's digest is wrong (another authkey?)");
  }
  c.send_bytes(as_span(kWelcome));
}

void deliver_challenge(Connection& c, std::string_view key, Timeout timeout) {
  const Bytes msg = send_challenge(c);
  check_answer(c, key, msg, recv_handshake(c, timeout, "challenge answer"));
}

// Whether a whole handshake frame (or EOF, or something that is no such
// frame) waits on fd, so reading it cannot block on a peer that stalls
// mid-frame.
bool handshake_frame_ready(int fd) {
  std::byte head[Connection::kHeaderSize + kMaxHandshakeFrame];
  const ssize_t n = ::recv(fd, head, sizeof head, MSG_PEEK | MSG_DONTWAIT);
  if (n <= 0) return n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);  // EOF, error
  if (static_cast<std::size_t>(n) < Connection::kHeaderSize) return false;
  std::uint32_t magic = 0;
  std::uint64_t length = 0;
  std::memcpy(&magic, head, sizeof magic);
  std::memcpy(&length, head + 8, sizeof length);
  if (magic != Connection::kMagic || length > kMaxHandshakeFrame) return true;  // refused at the header
  return static_cast<std::uint64_t>(n) >= Connection::kHeaderSize + length;
}

// The answering side: answers a challenge, reads the verdict.
void answer_challenge(Connection& c, std::string_view key, Timeout timeout) {
  Bytes msg = recv_handshake(c, timeout, "challenge");
  if (msg.size() != kChallengeTag.size() + kChallengeSize ||
      std::memcmp(msg.data(), kChallengeTag.data(), kChallengeTag.size()) != 0)
    throw AuthenticationError(fmt::format("authentication: expected a challenge, got {} other bytes", msg.size()));
  const auto digest = hmac(key, msg);
  c.send_bytes(std::as_bytes(std::span(digest)));
  Bytes verdict = recv_handshake(c, timeout, "verdict");
  if (equals(verdict, kWelcome)) return;
  if (equals(verdict, kFailure))
    throw AuthenticationError("authentication: the peer refused our digest (another authkey?)");
  throw AuthenticationError("authentication: expected WELCOME or FAILURE");
}

template <class F>
void guarded_handshake(Connection& c, F&& steps) {
  try {
    steps();
  } catch (...) {
    c.close();
    throw;
  }
}

}  // namespace

// ---- Address -------------------------------------------------------------------

Address Address::unix_socket(std::string path) {
  Address a;
  a.kind = Kind::unix_socket;
  a.path = std::move(path);
  return a;
}

Address Address::tcp(std::string host, std::uint16_t port) {
  Address a;
  a.kind = Kind::tcp;
  a.host = host.empty() ? std::string("127.0.0.1") : std::move(host);
  a.port = port;
  return a;
}

Address Address::parse(std::string_view text) {
  auto bad = [&] { return ValueError("mproc::Address: cannot parse \"" + std::string(text) + "\""); };
  if (text.starts_with("unix:")) {
    std::string_view p = text.substr(5);
    if (p.empty()) throw bad();
    return unix_socket(std::string(p));
  }
  if (!text.starts_with("tcp://")) throw bad();
  std::string_view rest = text.substr(6);
  std::string_view host, port;
  if (rest.starts_with('[')) {
    auto close = rest.find(']');
    if (close == std::string_view::npos || close + 1 >= rest.size() || rest[close + 1] != ':') throw bad();
    host = rest.substr(1, close - 1);
    port = rest.substr(close + 2);
  } else {
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) throw bad();
    host = rest.substr(0, colon);
    port = rest.substr(colon + 1);
  }
  if (port.empty() || port.size() > 5) throw bad();
  unsigned value = 0;
  for (char ch : port) {
    if (ch < '0' || ch > '9') throw bad();
    value = value * 10 + static_cast<unsigned>(ch - '0');
  }
  if (value > 65535) throw bad();
  return tcp(std::string(host), static_cast<std::uint16_t>(value));
}

std::string Address::to_string() const {
  if (kind == Kind::unix_socket) return "unix:" + path;
  if (host.find(':') != std::string::npos) return fmt::format("tcp://[{}]:{}", host, port);
  return fmt::format("tcp://{}:{}", host, port);
}

void Address::load(InputArchive& ar) {
  std::uint8_t k = 0;
  ar(k, host, port, path);
  if (k > 1) throw DeserializeError("mproc::Address: unknown address kind " + std::to_string(k));
  kind = static_cast<Kind>(k);
}

// ---- Listener ------------------------------------------------------------------

Listener::Listener(Address address, std::string authkey, int backlog) : authkey_(std::move(authkey)) {
  if (address.kind == Address::Kind::unix_socket && address.path.empty()) {
    // A fresh 0700 directory: nobody else can even connect (CPython does the same).
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/mproc-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) sys::throw_errno(fmt::format("mkdtemp({})", tmpl).c_str());
    private_dir_ = tmpl;
    address.path = private_dir_ + "/listener";
  }
  struct RemoveDirOnError {
    std::string& dir;
    bool armed = true;
    ~RemoveDirOnError() {
      if (armed && !dir.empty()) ::rmdir(dir.c_str());
    }
  } remove_dir{private_dir_};
  SockAddr sa = to_sockaddr(address);
  sys::UniqueFd fd(sys::check(::socket(sa.family, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  if (sa.family != AF_UNIX) {
    int one = 1;
    sys::check(::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), "setsockopt(SO_REUSEADDR)");
  }
  if (::bind(fd.get(), sa.get(), sa.len) < 0)
    sys::throw_errno(fmt::format("bind({})", address.to_string()).c_str());
  sys::check(::listen(fd.get(), backlog), "listen");
  if (address.kind == Address::Kind::tcp) {
    sockaddr_storage bound{};
    socklen_t len = sizeof bound;
    sys::check(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&bound), &len), "getsockname");
    address.port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                               : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    if (address.host.empty()) address.host = "127.0.0.1";
  }
  address_ = std::move(address);
  owner_ = ::getpid();
  fd_ = fd.release();
  remove_dir.armed = false;
}

Listener::Listener(Listener&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)), address_(std::move(o.address_)), authkey_(std::move(o.authkey_)),
      owner_(std::exchange(o.owner_, 0)), private_dir_(std::exchange(o.private_dir_, {})),
      pending_(std::move(o.pending_)) {}

Listener& Listener::operator=(Listener&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    address_ = std::move(o.address_);
    authkey_ = std::move(o.authkey_);
    owner_ = std::exchange(o.owner_, 0);
    private_dir_ = std::exchange(o.private_dir_, {});
    pending_ = std::move(o.pending_);
  }
  return *this;
}

Listener::Listener() = default;
Listener::~Listener() { close(); }

void Listener::close() noexcept {
  pending_.clear();
  if (fd_ < 0) return;
  ::close(fd_);
  fd_ = -1;
  if (address_.kind == Address::Kind::unix_socket && !address_.path.empty() && address_.path[0] != '@' &&
      owner_ == ::getpid()) {
    ::unlink(address_.path.c_str());
    if (!private_dir_.empty()) ::rmdir(private_dir_.c_str());
  }
}

int Listener::fileno() const {
  if (fd_ < 0) throw Error("Listener::fileno: listener is closed");
  return fd_;
}

Connection Listener::accept_unauthenticated() {
  if (fd_ < 0) throw Error("Listener::accept: listener is closed");
  for (;;) {
    int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c >= 0) {
      if (address_.kind == Address::Kind::tcp) set_nodelay(c);
      Connection conn(c, true, true);
      if (address_.kind == Address::Kind::unix_socket) {
        ucred cred{};
        socklen_t len = sizeof cred;
        if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.uid != ::geteuid())
          return Connection();  // another user's process: closed before it can say anything
      }
      return conn;
    }
    if (errno == EINTR || errno == ECONNABORTED) continue;
    sys::throw_errno("accept4");
  }
}

// A client that was sent a challenge and has not answered yet.
struct Listener::PendingHandshake {
  Connection conn;
  Bytes challenge;
  detail::Deadline deadline;
};

// Waits for the listening socket and every pending handshake at once: a
// silent peer neither delays the next client nor keeps its place for long
// (at most kMaxPendingHandshakes wait, the oldest is dropped for a newcomer,
// each is dropped at kHandshakeDeadline; one that hangs up is dropped too).
// The first client to answer its challenge correctly finishes the handshake
// and is returned; one that answers wrongly or with garbage makes accept()
// throw AuthenticationError, as before.
Connection Listener::accept() {
  if (fd_ < 0) throw Error("Listener::accept: listener is closed");
  for (;;) {
    const std::int64_t now = detail::monotonic_ns();
    std::erase_if(pending_, [&](const auto& p) { return p->deadline.ns() <= now; });  // silent: dropped
    std::vector<pollfd> fds{{fd_, POLLIN, 0}};
    int wait_ms = -1;
    for (const auto& p : pending_) {
      fds.push_back({p->conn.fileno(), POLLIN, 0});
      const std::int64_t left_ns = p->deadline.ns() - now;  // > 0: expired ones were dropped
      const std::int64_t left = (left_ns + 999'999) / 1'000'000;  // ms, rounded up
      if (wait_ms < 0 || left < wait_ms) wait_ms = static_cast<int>(left);
    }
    if (::poll(fds.data(), fds.size(), wait_ms) < 0) {
      if (errno == EINTR) continue;
      sys::throw_errno("poll");
    }
    for (std::size_t i = 1; i < fds.size(); ++i) {
      if (!fds[i].revents || !handshake_frame_ready(fds[i].fd)) continue;
      auto it = std::find_if(pending_.begin(), pending_.end(),
                             [&](const auto& p) { return p->conn.fileno() == fds[i].fd; });
      detail::Owned<PendingHandshake> p = std::move(*it);
      pending_.erase(it);
      Bytes peek(1);
      if (::recv(fds[i].fd, peek.data(), 1, MSG_PEEK | MSG_DONTWAIT) <= 0) continue;  // hung up: dropped
      guarded_handshake(p->conn, [&] {
        check_answer(p->conn, authkey_, p->challenge, recv_handshake(p->conn, kHandshakeTimeout, "challenge answer"));
        // The peer has proven the key: the rest may take the usual timeout.
        answer_challenge(p->conn, authkey_, kHandshakeTimeout);
      });
      return std::move(p->conn);
    }
    if (!fds[0].revents) continue;
    Connection c = accept_unauthenticated();
    if (c.closed()) continue;  // refused: another user's process
    Bytes challenge = send_challenge(c);  // ConnectionClosed when it left already, as before
    if (pending_.size() >= kMaxPendingHandshakes) pending_.erase(pending_.begin());  // the oldest
    detail::Owned<PendingHandshake> p(
        new PendingHandshake{std::move(c), std::move(challenge), detail::deadline_after(kHandshakeDeadline)});
    pending_.push_back(std::move(p));
  }
}

// ---- Client --------------------------------------------------------------------

Connection detail::connect_unauthenticated(const Address& address) {
  SockAddr sa = to_sockaddr(address);
  sys::UniqueFd fd(sys::check(::socket(sa.family, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket"));
  if (::connect(fd.get(), sa.get(), sa.len) < 0) {
    int err = errno;
    if (err == EINTR) {  // the connect goes on in the background: wait for its outcome
      pollfd p{fd.get(), POLLOUT, 0};
      while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
      }
      socklen_t len = sizeof err;
      if (::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
    }
    if (err != 0) sys::throw_errno(fmt::format("connect({})", address.to_string()).c_str(), err);
  }
  if (sa.family != AF_UNIX) set_nodelay(fd.get());
  return Connection(fd.release(), true, true);
}

Connection Client(const Address& address, const std::string& authkey) {
  Connection c = detail::connect_unauthenticated(address);
  detail::authenticate_client(c, authkey);
  return c;
}

void detail::authenticate_server(Connection& c, std::string_view authkey, Timeout timeout) {
  guarded_handshake(c, [&] {
    deliver_challenge(c, authkey, timeout);
    answer_challenge(c, authkey, timeout);
  });
}

void detail::authenticate_server_then(Connection& c, std::string_view authkey, Timeout timeout,
                                      const std::function<bool()>& proven) {
  deliver_challenge(c, authkey, timeout);
  if (!proven()) throw AuthenticationError("the server refused this client after its handshake");
  answer_challenge(c, authkey, timeout);
}

void detail::authenticate_client(Connection& c, std::string_view authkey, Timeout timeout) {
  guarded_handshake(c, [&] {
    answer_challenge(c, authkey, timeout);
    deliver_challenge(c, authkey, timeout);
  });
}

std::string random_authkey() {
  std::string key(32, '\0');
  if (!random_bytes(key.data(), key.size()))
    throw Error("random_authkey: RAND_bytes failed (OpenSSL)");
  return key;
}

}  // namespace mproc
