// Connection and Pipe over AF_UNIX stream sockets: see mproc/connection.hpp
// for the wire format and the errors.
#include "mproc/connection.hpp"

#include <fmt/format.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "sys/fd.hpp"

namespace mproc {

namespace {

// Sends up to this size are copied next to their header and written once;
// larger payloads go in a second write rather than a copy.
constexpr std::size_t kCopyLimit = std::size_t{64} << 10;
// The send buffer keeps its capacity between messages, up to this size.
constexpr std::size_t kScratchKeep = std::size_t{1} << 20;

std::string hex_bytes(const unsigned char* p, std::size_t n) {
  std::string out;
  for (std::size_t i = 0; i < n; ++i) out += fmt::format("{}{:02x}", i ? " " : "", p[i]);
  return out;
}

std::string tag_name(std::uint32_t tag) {
  return tag == 0 ? std::string("raw bytes (send_bytes)") : fmt::format("type tag {:#010x}", tag);
}

[[noreturn]] void throw_peer_closed(const std::system_error& e) {
  throw ConnectionClosed(fmt::format("peer closed: {}", e.what()));
}

bool is_peer_gone(const std::system_error& e) {
  return e.code() == std::errc::broken_pipe || e.code() == std::errc::connection_reset;
}

void check_range(std::size_t total, std::size_t offset, std::optional<std::size_t> size,
                 const char* op) {
  if (offset > total)
    throw std::out_of_range(fmt::format("{}: offset {} is past the buffer's end ({} bytes)", op, offset, total));
  if (size && *size > total - offset)
    throw std::out_of_range(
        fmt::format("{}: offset {} + size {} is past the buffer's end ({} bytes)", op, offset, *size, total));
}

}  // namespace

static_assert(sizeof(std::uint32_t) * 2 + sizeof(std::uint64_t) == Connection::kHeaderSize);

Connection::Connection(int fd, bool readable, bool writable) {
  sys::UniqueFd owned(fd);  // closed if anything below throws
  if (fd < 0) throw Error(fmt::format("Connection: invalid file descriptor {}", fd));
  if (!readable && !writable) throw Error("Connection: neither readable nor writable");
  socket_ = sys::is_socket(fd);
  readable_ = readable;
  writable_ = writable;
  fd_ = owned.release();
}

void Connection::load(InputArchive& ar) {
  std::uint32_t index = 0;
  bool readable = false, writable = false;
  ar(index, readable, writable);
  *this = Connection(ar.take_fd(index, "mproc::Connection"), readable, writable);
}

Connection::Connection(Connection&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      readable_(o.readable_),
      writable_(o.writable_),
      socket_(o.socket_),
      max_message_size_(o.max_message_size_),
      desync_(std::exchange(o.desync_, false)),
      pending_(std::exchange(o.pending_, std::nullopt)),
      scratch_(std::move(o.scratch_)),
      rbuf_(std::move(o.rbuf_)),
      rpos_(std::exchange(o.rpos_, 0)),
      rlen_(std::exchange(o.rlen_, 0)) {}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    readable_ = o.readable_;
    writable_ = o.writable_;
    socket_ = o.socket_;
    max_message_size_ = o.max_message_size_;
    desync_ = std::exchange(o.desync_, false);
    pending_ = std::exchange(o.pending_, std::nullopt);
    scratch_ = std::move(o.scratch_);
    rbuf_ = std::move(o.rbuf_);
    rpos_ = std::exchange(o.rpos_, 0);
    rlen_ = std::exchange(o.rlen_, 0);
  }
  return *this;
}

Connection::~Connection() { close(); }

void Connection::close() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  pending_.reset();
  desync_ = false;
  Bytes().swap(scratch_);
  Bytes().swap(rbuf_);
  rpos_ = rlen_ = 0;
}

int Connection::fileno() const {
  if (fd_ < 0) throw Error("fileno on a closed connection: connection is closed");
  return fd_;
}

void Connection::require_open(const char* op, bool want_read) const {
  if (fd_ < 0) throw Error(fmt::format("{} on a closed connection", op));
  if (want_read && !readable_) throw Error(fmt::format("{} on a write-only connection", op));
  if (!want_read && !writable_) throw Error(fmt::format("{} on a read-only connection", op));
}

// ---- sending ---------------------------------------------------------------

void Connection::write_frame(const std::byte* data, std::size_t n) {
  try {
    sys::write_all(fd_, data, n, socket_);
  } catch (const std::system_error& e) {
    if (is_peer_gone(e)) throw_peer_closed(e);
    throw;
  }
}

void Connection::send_frame(std::uint32_t tag, Bytes& buf) {
  require_open("send", false);
  const Header h{kMagic, tag, static_cast<std::uint64_t>(buf.size() - kHeaderSize)};
  std::memcpy(buf.data(), &h.magic, 4);
  std::memcpy(buf.data() + 4, &h.tag, 4);
  std::memcpy(buf.data() + 8, &h.length, 8);
  write_frame(buf.data(), buf.size());
  if (buf.capacity() > kScratchKeep) Bytes().swap(buf);
}

void Connection::send_bytes(std::span<const std::byte> buf, std::size_t offset,
                            std::optional<std::size_t> size) {
  check_range(buf.size(), offset, size, "send_bytes");
  require_open("send_bytes", false);
  const std::size_t n = size ? *size : buf.size() - offset;
  const std::byte* src = buf.data() + offset;
  if (n <= kCopyLimit) {
    scratch_.resize(kHeaderSize + n);
    if (n) std::memcpy(scratch_.data() + kHeaderSize, src, n);
    send_frame(0, scratch_);
    return;
  }
  std::byte header[kHeaderSize];
  const Header h{kMagic, 0, static_cast<std::uint64_t>(n)};
  std::memcpy(header, &h.magic, 4);
  std::memcpy(header + 4, &h.tag, 4);
  std::memcpy(header + 8, &h.length, 8);
  write_frame(header, kHeaderSize);
  write_frame(src, n);
}

// ---- receiving -------------------------------------------------------------

std::size_t Connection::read_exact(void* dst, std::size_t n) {
  constexpr std::size_t kReadAhead = 64 << 10;
  auto* out = static_cast<std::byte*>(dst);
  std::size_t got = std::min(n, rlen_ - rpos_);
  if (got) std::memcpy(out, rbuf_.data() + rpos_, got);
  rpos_ += got;
  if (got == n) return n;
  // Large remainders go straight to their destination.
  if (n - got >= kReadAhead) return got + sys::read_full(fd_, out + got, n - got);
  if (rbuf_.size() < kReadAhead) rbuf_.resize(kReadAhead);
  rpos_ = rlen_ = 0;
  while (got < n) {
    ssize_t r = ::read(fd_, rbuf_.data(), rbuf_.size());
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) break;
      sys::throw_errno("read");
    }
    if (r == 0) break;
    const std::size_t take = std::min(n - got, static_cast<std::size_t>(r));
    std::memcpy(out + got, rbuf_.data(), take);
    got += take;
    rpos_ = take;
    rlen_ = static_cast<std::size_t>(r);
  }
  return got;
}

const Connection::Header& Connection::next_header() {
  if (pending_) return *pending_;
  unsigned char raw[kHeaderSize];
  std::size_t got = 0;
  try {
    got = read_exact(raw, kHeaderSize);
  } catch (...) {
    desync_ = true;  // an unknown part of a header was consumed
    throw;
  }
  if (got == 0) throw ConnectionClosed("recv: connection closed (end of file)");
  if (got < kHeaderSize) throw TruncatedMessage(got, kHeaderSize);
  Header h{};
  std::memcpy(&h.magic, raw, 4);
  std::memcpy(&h.tag, raw + 4, 4);
  std::memcpy(&h.length, raw + 8, 8);
  if (h.magic != kMagic) {
    desync_ = true;
    throw ProtocolError(fmt::format("recv: bad frame header: expected magic {:#010x}, got bytes [{}]",
                                    kMagic, hex_bytes(raw, kHeaderSize)));
  }
  pending_ = h;
  return *pending_;
}

std::uint64_t Connection::begin_frame(const char* op, std::uint32_t expect_tag, std::uint64_t limit,
                                      const char* type_name) {
  require_open(op, true);
  if (desync_)
    throw ProtocolError(fmt::format("{}: the connection lost its framing after a bad frame; close it", op));
  const Header& h = next_header();
  if (h.length > limit) throw MessageTooLarge(h.length, limit);
  if (expect_tag != 0 && h.tag != expect_tag)
    throw TypeMismatch(fmt::format("recv<{0}>: expected a message of type {0}, found {1}",
                                   demangle(type_name), tag_name(h.tag)));
  return h.length;
}

void Connection::read_payload(std::byte* dst, std::uint64_t length) {
  std::size_t got = 0;
  try {
    got = read_exact(dst, static_cast<std::size_t>(length));
  } catch (...) {
    pending_.reset();
    desync_ = true;  // part of the payload may be consumed
    throw;
  }
  pending_.reset();
  if (got < length) throw TruncatedMessage(got, static_cast<std::size_t>(length));
}

Bytes Connection::recv_frame(std::uint32_t expect_tag, std::uint64_t limit, const char* type_name) {
  const std::uint64_t length = begin_frame("recv", expect_tag, limit, type_name);
  Bytes payload(static_cast<std::size_t>(length));
  read_payload(payload.data(), length);
  return payload;
}

Bytes Connection::recv_bytes(std::optional<std::size_t> maxlength) {
  std::uint64_t limit = max_message_size_;
  if (maxlength) limit = std::min<std::uint64_t>(limit, *maxlength);
  const std::uint64_t length = begin_frame("recv_bytes", 0, limit, nullptr);
  Bytes payload(static_cast<std::size_t>(length));
  read_payload(payload.data(), length);
  return payload;
}

std::size_t Connection::recv_bytes_into(std::span<std::byte> buf, std::size_t offset) {
  check_range(buf.size(), offset, std::nullopt, "recv_bytes_into");
  const std::uint64_t limit = std::min<std::uint64_t>(max_message_size_, buf.size() - offset);
  const std::uint64_t length = begin_frame("recv_bytes_into", 0, limit, nullptr);
  read_payload(buf.data() + offset, length);
  return static_cast<std::size_t>(length);
}

Bytes Connection::recv_bytes(std::error_code& ec) noexcept {
  ec.clear();
  if (fd_ < 0) {
    ec = std::make_error_code(std::errc::bad_file_descriptor);
    return {};
  }
  if (!readable_) {
    ec = std::make_error_code(std::errc::operation_not_permitted);
    return {};
  }
  try {
    return recv_bytes(std::optional<std::size_t>{});
  } catch (const TruncatedMessage&) {
    ec = std::make_error_code(std::errc::connection_aborted);
  } catch (const ConnectionClosed&) {
    ec = std::make_error_code(std::errc::connection_reset);
  } catch (const MessageTooLarge&) {
    ec = std::make_error_code(std::errc::message_size);
  } catch (const ProtocolError&) {
    ec = std::make_error_code(std::errc::bad_message);
  } catch (const std::system_error& e) {
    ec = e.code();
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  } catch (...) {
    ec = std::make_error_code(std::errc::io_error);
  }
  return {};
}

bool Connection::poll(Timeout timeout) const {
  require_open("poll", true);
  if (pending_ || desync_ || rpos_ < rlen_) return true;
  return sys::wait_readable(fd_, timeout);
}

bool Connection::poll_spinning(std::chrono::microseconds spin) const {
  const auto until = std::chrono::steady_clock::now() + spin;
  do {
    if (poll()) return true;
    ::sched_yield();  // on a busy or single CPU, the peer runs now
  } while (std::chrono::steady_clock::now() < until);
  return false;
}

// ---- Pipe and wait ---------------------------------------------------------

std::pair<Connection, Connection> Pipe(bool duplex) {
  if (duplex) {
    auto [a, b] = sys::socket_pair(SOCK_STREAM);
    Connection ca(a.release(), true, true);
    return {std::move(ca), Connection(b.release(), true, true)};
  }
  // One way: a kernel pipe, as CPython's Pipe(False). A pipe message costs
  // about half a socket's (both measured in bench/); writes block SIGPIPE
  // for the writing thread, so a dead reader is still an exception.
  int fds[2];
  sys::check(::pipe2(fds, O_CLOEXEC), "pipe2");
  Connection reader(fds[0], true, false);
  return {std::move(reader), Connection(fds[1], false, true)};
}

std::vector<std::size_t> wait(std::span<const Waitable> objects, Timeout timeout) {
  std::vector<int> fds(objects.size());
  bool any_now = false;
  for (std::size_t i = 0; i < objects.size(); ++i) {
    if (objects[i].fd < 0) throw Error(fmt::format("wait: object {} has no file descriptor ({})", i, objects[i].fd));
    fds[i] = objects[i].fd;
    any_now = any_now || objects[i].ready_now;
  }
  std::unique_ptr<bool[]> ready(new bool[objects.size()]());
  if (!objects.empty() || timeout)
    sys::poll_readable(fds, std::span<bool>(ready.get(), objects.size()),
                       any_now ? Timeout(std::chrono::nanoseconds{0}) : timeout);
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < objects.size(); ++i)
    if (ready[i] || objects[i].ready_now) out.push_back(i);
  return out;
}

}  // namespace mproc
