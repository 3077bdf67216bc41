// The manager server: object table, request dispatch, and the accept loop
// with one thread per client connection (blocking methods of one client never
// hold up another). See manager_server.hpp for the frames.
#include "manager/manager_server.hpp"

#include "ipc/handshake.hpp"
#include "manager/manager_servants.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "sys/fd.hpp"

namespace mproc::detail {

std::span<const std::byte> wire::Reader::take(std::uint64_t n) {
  if (n > in_.size() - pos_)
    throw DeserializeError(fmt::format("manager message: wanted {} bytes, {} left", n, in_.size() - pos_));
  auto s = in_.subspan(pos_, static_cast<std::size_t>(n));
  pos_ += static_cast<std::size_t>(n);
  return s;
}

namespace {
void put_error(Bytes& out, const ErrorInfo& info) {
  out.clear();
  wire::put_u8(out, 1);
  wire::put_str(out, info.type_name);
  wire::put_str(out, info.message);
}
}  // namespace

// ---- Server ------------------------------------------------------------------

Server::Server(ServerConfig config) : config_(std::move(config)) {
  if (!config_.types) config_.types = std::make_shared<TypeRegistry>();
}

Server::Entry Server::find(std::uint64_t id) {
  std::shared_lock lk(mu_);
  auto it = objects_.find(id);
  if (it == objects_.end())
    throw ValueError(fmt::format("mproc::Manager: no object with id {} (released, or never made)", id));
  return it->second;
}

Bytes Server::handle(std::span<const std::byte> request, CallContext& ctx) {
  Bytes out;
  out.reserve(64);
  wire::put_u8(out, 0);
  try {
    wire::Reader r(request);
    const std::uint64_t id = r.u64();
    const std::uint16_t method = r.u16();
    if (id == 0) {
      dispatch<proto::ServerProtocol>(*this, method, r, out, ctx);
    } else {
      Entry e = find(id);
      if (e.lock) {
        std::lock_guard lk(*e.lock);
        e.servant->call(method, r, out, ctx);
      } else {
        e.servant->call(method, r, out, ctx);
      }
    }
  } catch (const PeerGone&) {
    throw;
  } catch (...) {
    try {
      put_error(out, capture_error(std::current_exception()));
    } catch (...) {  // out of memory while describing the error
      out.assign(1, std::byte{1});
      wire::put_str(out, "std::bad_alloc");
      wire::put_str(out, "out of memory");
    }
  }
  return out;
}

std::uint64_t Server::on(proto::Tag<"create">, CallContext&, std::string_view kind, std::uint64_t fingerprint,
                         std::string_view name, std::string_view sig, std::span<const std::byte> init) {
  std::unique_lock lk(mu_);
  if (!name.empty()) {
    auto n = names_.find(std::string(name));
    if (n != names_.end()) {
      const Entry& e = objects_.at(n->second);
      if (e.servant->kind != kind || e.servant->sig != sig)
        throw ValueError(fmt::format("mproc::Manager: '{}' is a {} of other types than asked for", name,
                                     e.servant->kind));
      return n->second;
    }
  }
  if (objects_.size() >= config_.max_objects)
    throw Error(fmt::format("mproc::Manager: the server holds {} objects already", objects_.size()));
  Entry e;
  e.servant = make_servant(kind, fingerprint, sig, init, *config_.types);
  if (kind == proto::UserProtocol::kind) e.lock = std::make_shared<std::mutex>();
  e.servant->kind = kind;
  e.servant->sig = sig;
  const std::uint64_t id = next_id_++;
  objects_.emplace(id, std::move(e));
  if (!name.empty()) names_.emplace(std::string(name), id);
  return id;
}

bool Server::on(proto::Tag<"release">, CallContext&, std::uint64_t id) {
  std::unique_lock lk(mu_);
  const bool had = objects_.erase(id) != 0;
  std::erase_if(names_, [&](const auto& kv) { return kv.second == id; });
  return had;
}

std::uint64_t Server::on(proto::Tag<"count">, CallContext&) {
  std::shared_lock lk(mu_);
  return objects_.size();
}

void Server::on(proto::Tag<"shutdown">, CallContext&) {
  stopping_ = true;  // the accept loop is woken once the reply is sent (wake())
}

std::unique_ptr<Servant> make_servant(std::string_view kind, std::uint64_t fingerprint, std::string_view sig,
                                      std::span<const std::byte> init, const TypeRegistry& types) {
  auto check = [&](std::uint64_t mine) {
    if (fingerprint != mine)
      throw ValueError(fmt::format("mproc::Manager: the client's {} protocol table differs from this server's "
                                   "(fingerprint {:#x}, not {:#x}): client and server run different mproc versions",
                                   kind, fingerprint, mine));
  };
  if (kind == proto::UserProtocol::kind) {
    check(proto::UserProtocol::fingerprint);
    if (!init.empty()) throw DeserializeError("mproc::Manager: creation data for a user object");
    auto t = types.types.find(sig);
    if (t == types.types.end())
      throw ValueError(fmt::format("mproc::Manager: type '{}' is not registered in the server", sig));
    return make_user_servant(t->second);
  }
  for (auto kinds : {container_kinds(), sync_kinds()})
    for (const BuiltinKind& k : kinds)
      if (k.kind == kind) {
        check(k.fingerprint);
        return k.make(init);
      }
  throw ValueError(fmt::format("mproc::Manager: unknown object kind '{}'", kind));
}

void Server::wake() noexcept {
  stop_ready_ = true;
  const int fd = wake_fd_.load();
  if (fd < 0) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] auto rc = ::write(fd, &one, sizeof one);
}

// ---- accept loop -----------------------------------------------------------------

namespace {

// Every connection's fd, by state, so the accept loop can end handshakes
// past their deadline and a stopping server can end everything. A thread
// closes its connection only under mu and after removing its fd here, so
// nobody ever shuts down an fd number that was reused.
//
//   accepted ──► pending (handshake; at most max_unauthenticated, oldest
//       │          dropped first; dropped at handshake_deadline)
//       │             │ key proven
//       │             ▼
//       │        authenticated (at most max_connections) ──► closed
//       └──────────────────────────────────────────────────► closed
struct Clients {
  using Clock = std::chrono::steady_clock;
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, Clock::time_point> pending;  // fd -> handshake deadline
  std::set<int> authenticated;
  std::uint64_t in_flight = 0;  // bytes reserved by requests being received
  std::size_t threads = 0;      // connection threads alive (their fds still open)
};

// Requests up to this size are read without asking the budget: what every
// client may cost at any time (max_connections of them bound the total).
constexpr std::uint64_t kFreeFrameSize = std::uint64_t{64} << 10;

// A client in a loop of calls sends its next request a few microseconds
// after our reply: waiting for it awake (bounded) saves a sleep/wake-up.
void spin_for_request(Connection& c) {
  static const int spin_us = [] {
    const char* e = std::getenv("MPROC_MANAGER_SERVER_SPIN_US");
    return e ? std::atoi(e) : 20;
  }();
  if (spin_us > 0) c.poll_spinning(std::chrono::microseconds(spin_us));
}

// An error reply, then the connection ends: for a client whose request the
// server will not read (the stream cannot resume past an unread payload).
void refuse_request(Connection& conn, const char* type, const std::string& what) {
  Bytes out;
  put_error(out, ErrorInfo{type, what});
  try {
    conn.send_bytes(out);
  } catch (...) {  // gone already
  }
}

// After refusing a request: reads and discards (up to) its payload, so a
// client still sending it is not cut off mid-send (EPIPE) and reads the
// error reply instead. Costs no memory; bounded in time (a stalling client
// is simply dropped).
void discard_payload(int fd, std::uint64_t n) {
  std::byte sink[16 << 10];
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (n > 0 && std::chrono::steady_clock::now() < until) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 2000) <= 0) return;
    const ssize_t r = ::recv(fd, sink, static_cast<std::size_t>(std::min<std::uint64_t>(n, sizeof sink)), 0);
    if (r <= 0) return;
    n -= static_cast<std::uint64_t>(r);
  }
}

// Reads the next request within the server's memory bounds. nullopt: the
// client is dropped (end of file, garbage, a truncated frame, or a request
// refused with an error reply). reserved: bytes taken from the budget, to
// give back once the request is handled.
std::optional<Bytes> read_request(Server& server, Clients& clients, Connection& conn, std::uint64_t& reserved) {
  reserved = 0;
  try {
    return conn.recv_bytes(static_cast<std::size_t>(kFreeFrameSize));
  } catch (const MessageTooLarge& e) {
    const ServerConfig& cfg = server.config();
    const std::uint64_t n = e.size();  // the header is read; the payload waits
    std::string refusal;
    if (n > cfg.max_message_size) {
      refusal = fmt::format("manager server: a request of {} bytes is over this server's limit of {} bytes "
                            "(ManagerOptions::max_message_size)",
                            n, cfg.max_message_size);
    } else {
      std::lock_guard lk(clients.mu);
      if (clients.in_flight + n > cfg.max_buffered_bytes) {
        refusal = fmt::format("manager server: a request of {} bytes does not fit: {} of the {} bytes this server "
                              "buffers for requests in flight are taken by other clients "
                              "(ManagerOptions::max_buffered_bytes)",
                              n, clients.in_flight, cfg.max_buffered_bytes);
      } else {
        clients.in_flight += n;
        reserved = n;
      }
    }
    if (!refusal.empty()) {
      refuse_request(conn, "mproc::MessageTooLarge", refusal);
      discard_payload(conn.fileno(), n);
      return std::nullopt;
    }
    try {
      return conn.recv_bytes(static_cast<std::size_t>(n));
    } catch (...) {
      return std::nullopt;  // the caller gives the reservation back
    }
  } catch (...) {
    return std::nullopt;
  }
}

void serve_authenticated(const std::shared_ptr<Server>& server, Clients& clients, Connection& conn) {
  CallContext ctx{conn.fileno(), true};
  for (;;) {
    spin_for_request(conn);
    std::uint64_t reserved = 0;
    std::optional<Bytes> request = read_request(*server, clients, conn, reserved);
    struct GiveBack {  // settles the reservation on every path
      Clients& c;
      std::uint64_t& n;
      ~GiveBack() {
        if (n == 0) return;
        std::lock_guard lk(c.mu);
        c.in_flight -= n;
      }
    } give_back{clients, reserved};
    if (!request) return;
    Bytes reply;
    try {
      reply = server->handle(*request, ctx);
    } catch (const PeerGone&) {
      return;
    }
    Bytes().swap(*request);
    try {
      conn.send_bytes(reply);
    } catch (...) {
      if (server->stopping()) server->wake();
      return;
    }
    if (server->stopping()) server->wake();  // after the reply: the loop then ends every connection
  }
}

// One connection's thread: handshake, then requests until it ends.
//
// The client leaves `pending` for `authenticated` as soon as it has proven
// the key, before the server proves its own: from then on the client counts
// itself connected. (Moved after the whole handshake, a flood of silent
// peers could make the accept loop drop it in between: the owner's client
// then lost its connection on its first request.) A failed handshake closes
// the fd only under mu, after its entry left `pending`: closed earlier, its
// number could be reused by the next accepted connection, whose entry this
// thread would then erase (and that client, its handshake done, be cut off).
void serve_client(const std::shared_ptr<Server>& server, const std::shared_ptr<Clients>& clients, Connection conn) {
  const int fd = conn.fileno();
  bool admitted = false;  // in `authenticated`
  try {
    authenticate_server_then(conn, server->config().authkey, server->config().handshake_deadline, [&] {
      std::lock_guard lk(clients->mu);
      const bool still_pending = clients->pending.erase(fd) != 0;  // else dropped by the accept loop
      if (!still_pending || clients->authenticated.size() >= server->config().max_connections) return false;
      clients->authenticated.insert(fd);
      return admitted = true;
    });
  } catch (...) {
    // Wrong key, garbage or silence: nothing was read past the handshake.
    std::lock_guard lk(clients->mu);
    clients->pending.erase(fd);
    if (admitted) clients->authenticated.erase(fd);
    conn.close();
    --clients->threads;
    clients->cv.notify_all();
    return;
  }
  serve_authenticated(server, *clients, conn);
  std::lock_guard lk(clients->mu);
  clients->authenticated.erase(fd);
  conn.close();
  --clients->threads;
  clients->cv.notify_all();
}

// Drops handshakes past their deadline; returns how long until the next one.
int expire_handshakes(Clients& clients) {
  std::lock_guard lk(clients.mu);
  const auto now = Clients::Clock::now();
  int wait_ms = -1;
  for (auto it = clients.pending.begin(); it != clients.pending.end();) {
    if (it->second <= now) {
      ::shutdown(it->first, SHUT_RDWR);  // its thread's handshake fails at once
      it = clients.pending.erase(it);
      continue;
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(it->second - now).count();
    if (wait_ms < 0 || left < wait_ms) wait_ms = static_cast<int>(left);
    ++it;
  }
  return wait_ms;
}

}  // namespace

void serve(Listener& listener, ServerConfig config) {
  auto server = std::make_shared<Server>(std::move(config));
  auto clients = std::make_shared<Clients>();
  sys::UniqueFd wake(sys::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
  server->set_wake_fd(wake.get());
  const ServerConfig& cfg = server->config();
  while (!server->stop_ready()) {
    const int wait_ms = expire_handshakes(*clients);
    pollfd p[2] = {{listener.fileno(), POLLIN, 0}, {wake.get(), POLLIN, 0}};
    if (::poll(p, 2, wait_ms) < 0) {
      if (errno == EINTR) continue;
      sys::throw_errno("poll");
    }
    if (p[1].revents) {
      std::uint64_t n;
      [[maybe_unused]] auto rc = ::read(wake.get(), &n, sizeof n);
    }
    if (server->stop_ready()) break;
    if (!p[0].revents) continue;
    Connection conn;
    try {
      conn = listener.accept_unauthenticated();
    } catch (const OSError&) {  // EMFILE and the like: back off, keep serving
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    if (conn.closed()) continue;  // another user's process (Unix socket): refused
    const int fd = conn.fileno();
    {
      std::lock_guard lk(clients->mu);
      if (clients->pending.size() >= cfg.max_unauthenticated) {
        // Full of handshakes: the oldest goes, so a flood of silent peers
        // cannot keep the owner's next client out.
        auto oldest = std::min_element(clients->pending.begin(), clients->pending.end(),
                                       [](const auto& a, const auto& b) { return a.second < b.second; });
        ::shutdown(oldest->first, SHUT_RDWR);
        clients->pending.erase(oldest);
      }
      clients->pending.emplace(fd, Clients::Clock::now() + cfg.handshake_deadline);
      ++clients->threads;
    }
    try {
      std::thread([server, clients, c = std::move(conn)]() mutable { serve_client(server, clients, std::move(c)); })
          .detach();
    } catch (const std::system_error&) {  // no thread: refuse this client (conn closes with the lambda)
      std::lock_guard lk(clients->mu);
      clients->pending.erase(fd);
      --clients->threads;
    }
  }
  // Stopping: end every connection (their threads then return) and wait for
  // them a little, so their fds are closed when serve() returns.
  std::unique_lock lk(clients->mu);
  for (const auto& [fd, deadline] : clients->pending) ::shutdown(fd, SHUT_RDWR);
  for (int fd : clients->authenticated) ::shutdown(fd, SHUT_RDWR);
  clients->pending.clear();
  clients->cv.wait_for(lk, std::chrono::seconds(2), [&] { return clients->threads == 0; });
  server->set_wake_fd(-1);
}

// ---- fuzzing -----------------------------------------------------------------------

std::vector<FuzzKind> fuzz_kinds() {
  std::vector<FuzzKind> out;
  for (auto kinds : {container_kinds(), sync_kinds()})
    for (const BuiltinKind& k : kinds) {
      Bytes init;  // the smallest valid creation data of each
      if (k.kind == "dict" || k.kind == "list" || k.kind == "set") wire::put_u64(init, 0);
      if (k.kind == "array") {
        wire::put_u64(init, 2);
        wire::put_str(init, "a");
        wire::put_str(init, "b");
      }
      if (k.kind == "value") wire::put_str(init, "");
      if (k.kind == "queue" || k.kind == "joinable_queue") wire::put_u64(init, 4);
      if (k.kind == "barrier") wire::put_u64(init, 2);
      if (k.kind == "semaphore") {
        wire::put_u64(init, 1);
        wire::put_u8(init, 1);
      }
      out.push_back({std::string(k.kind), k.fingerprint, std::move(init)});
    }
  return out;
}

void dispatch_for_fuzz(std::span<const std::byte> data) {
  ServerConfig config;
  config.max_objects = 4096;
  Server server(std::move(config));
  CallContext ctx{-1, false};
  // One object of every built-in kind, ids 1.., in the order of fuzz_kinds().
  for (const FuzzKind& k : fuzz_kinds()) {
    Bytes req;
    wire::put_u64(req, 0);
    wire::put_u16(req, static_cast<std::uint16_t>(proto::ServerProtocol::find("create")));
    wire::put_str(req, k.kind);
    wire::put_u64(req, k.fingerprint);
    wire::put_str(req, "");
    wire::put_str(req, "");
    req.insert(req.end(), k.init.begin(), k.init.end());
    server.handle(req, ctx);
  }
  // The bytes go through a real socket and the real frame reader.
  auto [tx, rx] = sys::socket_pair(SOCK_STREAM);
  ::fcntl(tx.get(), F_SETFL, O_NONBLOCK);
  std::size_t sent = 0;
  while (sent < data.size()) {
    ssize_t w = ::send(tx.get(), data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (w <= 0) break;  // the socket buffer is full: the rest is cut off
    sent += static_cast<std::size_t>(w);
  }
  tx.reset();
  Connection conn(rx.release(), true, true);
  conn.set_max_message_size(std::uint64_t{1} << 20);
  for (;;) {
    Bytes request;
    try {
      spin_for_request(conn);
      request = conn.recv_bytes();
    } catch (const Error&) {
      return;
    }
    try {
      server.handle(request, ctx);
    } catch (const PeerGone&) {
      return;
    }
  }
}

}  // namespace mproc::detail
