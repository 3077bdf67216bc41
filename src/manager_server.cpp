// The manager server: object table, request dispatch, and the accept loop
// with one thread per client connection (blocking methods of one client never
// hold up another). See manager_server.hpp for the frames.
#include "manager_server.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <condition_variable>
#include <mutex>
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
    throw std::invalid_argument(fmt::format("mproc::Manager: no object with id {} (released, or never made)", id));
  return it->second;
}

Bytes Server::handle(std::span<const std::byte> request, CallContext& ctx) {
  Bytes out;
  out.reserve(64);
  wire::put_u8(out, 0);
  try {
    wire::Reader r(request);
    const std::uint64_t id = r.u64();
    const std::string_view method = r.str();
    if (id == 0) {
      server_call(method, r, out);
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

void Server::server_call(std::string_view method, wire::Reader& a, Bytes& out) {
  if (method == "create") {
    const std::string kind(a.str());
    const std::string name(a.str());
    const std::string sig(a.str());
    std::unique_lock lk(mu_);
    if (!name.empty()) {
      auto n = names_.find(name);
      if (n != names_.end()) {
        const Entry& e = objects_.at(n->second);
        if (e.servant->kind != kind || e.servant->sig != sig)
          throw std::invalid_argument(fmt::format("mproc::Manager: '{}' is a {} of other types than asked for",
                                                  name, e.servant->kind));
        return wire::put_u64(out, n->second);
      }
    }
    if (objects_.size() >= config_.max_objects)
      throw std::length_error(fmt::format("mproc::Manager: the server holds {} objects already", objects_.size()));
    Entry e;
    if (kind == "user") {
      auto t = config_.types->find(sig);
      if (t == config_.types->end())
        throw std::invalid_argument(fmt::format("mproc::Manager: type '{}' is not registered in the server", sig));
      e.servant = t->second();
      e.lock = std::make_shared<std::mutex>();
    } else {
      e.servant = make_builtin_servant(kind, a);
    }
    e.servant->kind = kind;
    e.servant->sig = sig;
    const std::uint64_t id = next_id_++;
    objects_.emplace(id, std::move(e));
    if (!name.empty()) names_.emplace(name, id);
    wire::put_u64(out, id);
  } else if (method == "release") {
    const std::uint64_t id = a.u64();
    std::unique_lock lk(mu_);
    const bool had = objects_.erase(id) != 0;
    std::erase_if(names_, [&](const auto& kv) { return kv.second == id; });
    wire::put_u8(out, had ? 1 : 0);
  } else if (method == "count") {
    std::shared_lock lk(mu_);
    wire::put_u64(out, objects_.size());
  } else if (method == "ping") {
  } else if (method == "shutdown") {
    stopping_ = true;  // the accept loop is woken once the reply is sent (wake())
  } else {
    throw std::invalid_argument(fmt::format("mproc::Manager: the server has no method '{}'", method));
  }
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

// The live client connections, so a stopping server can end them.
struct Clients {
  std::mutex mu;
  std::condition_variable cv;
  std::set<int> fds;
};

// A client in a loop of calls sends its next request a few microseconds
// after our reply: waiting for it awake (bounded) saves a sleep/wake-up.
void spin_for_request(Connection& c) {
  static const int spin_us = [] {
    const char* e = std::getenv("MPROC_MANAGER_SERVER_SPIN_US");
    return e ? std::atoi(e) : 20;
  }();
  if (spin_us > 0) c.poll_spinning(std::chrono::microseconds(spin_us));
}

void serve_client(const std::shared_ptr<Server>& server, Connection conn) {
  try {
    authenticate_server(conn, server->config().authkey);
  } catch (...) {
    return;  // wrong key, garbage or silence: nothing was read past the handshake
  }
  conn.set_max_message_size(server->config().max_message_size);
  CallContext ctx{conn.fileno(), true};
  for (;;) {
    Bytes request;
    try {
      spin_for_request(conn);
      request = conn.recv_bytes();
    } catch (...) {
      return;  // end of file, garbage, oversized or truncated frame: drop this client
    }
    Bytes reply;
    try {
      reply = server->handle(request, ctx);
    } catch (const PeerGone&) {
      return;
    }
    try {
      conn.send_bytes(reply);
    } catch (...) {
      if (server->stopping()) server->wake();
      return;
    }
    if (server->stopping()) server->wake();  // after the reply: the loop then ends every connection
  }
}

}  // namespace

void serve(Listener& listener, ServerConfig config) {
  auto server = std::make_shared<Server>(std::move(config));
  auto clients = std::make_shared<Clients>();
  sys::UniqueFd wake(sys::check(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), "eventfd"));
  server->set_wake_fd(wake.get());
  while (!server->stop_ready()) {
    pollfd p[2] = {{listener.fileno(), POLLIN, 0}, {wake.get(), POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
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
    } catch (const std::system_error&) {  // EMFILE and the like: back off, keep serving
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    const int fd = conn.fileno();
    {
      std::lock_guard lk(clients->mu);
      if (clients->fds.size() >= server->config().max_connections) continue;  // conn closes: refused
      clients->fds.insert(fd);
    }
    try {
      std::thread([server, clients, fd, c = std::move(conn)]() mutable {
        serve_client(server, std::move(c));
        std::lock_guard lk(clients->mu);
        clients->fds.erase(fd);
        clients->cv.notify_all();
      }).detach();
    } catch (const std::system_error&) {  // no thread: refuse this client
      std::lock_guard lk(clients->mu);
      clients->fds.erase(fd);
    }
  }
  // Stopping: end every client connection (their threads then return) and
  // wait for them a little, so their fds are closed when serve() returns.
  std::unique_lock lk(clients->mu);
  for (int fd : clients->fds) ::shutdown(fd, SHUT_RDWR);
  clients->cv.wait_for(lk, std::chrono::seconds(2), [&] { return clients->fds.empty(); });
  server->set_wake_fd(-1);
}

// ---- fuzzing -----------------------------------------------------------------------

void dispatch_for_fuzz(std::span<const std::byte> data) {
  ServerConfig config;
  config.max_objects = 4096;
  Server server(std::move(config));
  CallContext ctx{-1, false};
  // One object of every kind, ids 1..9.
  for (auto kind : {"dict", "list", "set", "value", "queue", "lock", "event", "barrier", "namespace"}) {
    Bytes req;
    wire::put_u64(req, 0);
    wire::put_str(req, "create");
    wire::put_str(req, kind);
    wire::put_str(req, "");
    wire::put_str(req, "");
    if (std::string_view(kind) == "value") wire::put_str(req, "");
    if (std::string_view(kind) == "queue") wire::put_u64(req, 4);
    if (std::string_view(kind) == "barrier") wire::put_u64(req, 2);
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
