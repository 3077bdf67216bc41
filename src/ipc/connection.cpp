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

#include "ipc/bulk_payload.hpp"
#include "mproc/detail/deadline.hpp"
#include "sys/fd.hpp"
#include "sys/pages.hpp"

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

[[noreturn]] void throw_peer_closed(const OSError& e) {
  throw ConnectionClosed(fmt::format("peer closed: {}", e.what()));
}

bool is_peer_gone(const OSError& e) {
  return e.code() == std::errc::broken_pipe || e.code() == std::errc::connection_reset;
}

void check_range(std::size_t total, std::size_t offset, std::optional<std::size_t> size,
                 const char* op) {
  if (offset > total)
    throw ValueError(fmt::format("{}: offset {} is past the buffer's end ({} bytes)", op, offset, total));
  if (size && *size > total - offset)
    throw ValueError(
        fmt::format("{}: offset {} + size {} is past the buffer's end ({} bytes)", op, offset, *size, total));
}

}  // namespace

static_assert(sizeof(std::uint32_t) * 2 + sizeof(std::uint64_t) == Connection::kHeaderSize);

Connection::Connection() noexcept = default;

Connection::Connection(int fd, bool readable, bool writable) {
  sys::UniqueFd owned(fd);  // closed if anything below throws
  if (fd < 0) throw Error(fmt::format("Connection: invalid file descriptor {}", fd));
  if (!readable && !writable) throw Error("Connection: neither readable nor writable");
  socket_ = sys::is_socket(fd);
  if (socket_) {
    int domain = 0, type = 0;
    socklen_t len = sizeof domain;
    const bool known = ::getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0;
    len = sizeof type;
    unix_ = known && domain == AF_UNIX && ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0 &&
            type == SOCK_STREAM;
  }
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
      unix_(o.unix_),
      bulk_threshold_(o.bulk_threshold_),
      bulk_(std::move(o.bulk_)),
      rstream_(std::exchange(o.rstream_, 0)),
      max_message_size_(o.max_message_size_),
      desync_(std::exchange(o.desync_, false)),
      pending_(std::exchange(o.pending_, std::nullopt)),
      scratch_(std::move(o.scratch_)),
      rbuf_(std::move(o.rbuf_)),
      rpos_(std::exchange(o.rpos_, 0)),
      rlen_(std::exchange(o.rlen_, 0)),
      in_(std::move(o.in_)),
      in_got_(std::exchange(o.in_got_, 0)),
      resuming_(std::exchange(o.resuming_, false)) {}

Connection& Connection::operator=(Connection&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    readable_ = o.readable_;
    writable_ = o.writable_;
    socket_ = o.socket_;
    unix_ = o.unix_;
    bulk_threshold_ = o.bulk_threshold_;
    bulk_ = std::move(o.bulk_);
    rstream_ = std::exchange(o.rstream_, 0);
    max_message_size_ = o.max_message_size_;
    desync_ = std::exchange(o.desync_, false);
    pending_ = std::exchange(o.pending_, std::nullopt);
    scratch_ = std::move(o.scratch_);
    rbuf_ = std::move(o.rbuf_);
    rpos_ = std::exchange(o.rpos_, 0);
    rlen_ = std::exchange(o.rlen_, 0);
    in_ = std::move(o.in_);
    in_got_ = std::exchange(o.in_got_, 0);
    resuming_ = std::exchange(o.resuming_, false);
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
  Bytes().swap(in_);
  in_got_ = 0;
  resuming_ = false;
  bulk_.reset();  // our slabs: a receiver holding one keeps it alive with its own fd
  rstream_ = 0;
}

detail::BulkState& Connection::bulk() {
  if (!bulk_) bulk_ = detail::Owned<detail::BulkState>(new detail::BulkState());
  return *bulk_;
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
  } catch (const OSError& e) {
    if (is_peer_gone(e)) throw_peer_closed(e);
    throw;
  }
}

void Connection::send_bulk(std::uint32_t tag, std::span<const std::span<const std::byte>> parts,
                           std::size_t total) {
  detail::BulkState& b = bulk();
  const int slab = b.sender.stage(parts, total);
  std::byte header[kHeaderSize];
  const Header h{kBulkMagic, tag, static_cast<std::uint64_t>(total)};
  std::memcpy(header, &h.magic, 4);
  std::memcpy(header + 4, &h.tag, 4);
  std::memcpy(header + 8, &h.length, 8);
  try {
    sys::send_with_fds(fd_, header, kHeaderSize, std::span<const int>(&slab, 1));
  } catch (const OSError& e) {
    if (is_peer_gone(e)) throw_peer_closed(e);
    throw;
  }
  b.sender.after_send();
}

void Connection::send_frame(std::uint32_t tag, Bytes& buf) {
  require_open("send", false);
  if (sends_through_shared_memory(buf.size() - kHeaderSize)) {
    const std::span<const std::byte> part(buf.data() + kHeaderSize, buf.size() - kHeaderSize);
    send_bulk(tag, std::span(&part, 1), part.size());
    if (buf.capacity() > kScratchKeep) Bytes().swap(buf);
    return;
  }
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
  if (sends_through_shared_memory(n)) {
    const std::span<const std::byte> part(src, n);
    send_bulk(0, std::span(&part, 1), n);
    return;
  }
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
//
// An incoming message, as the reader sees it:
//
//   no frame ──16 header bytes──▶ pending_ (tag and length checked by each
//      ▲       (kept in rbuf_       call; a refused frame stays here)
//      │        until complete)          │ a call that accepts it
//      │                                 ▼
//      └──── last payload byte ──── in_[0, in_got_): payload received so far,
//            (message returned)     grown as bytes arrive, never to more than
//                                   max(kFirstChunk, 2 × in_got_) or the length
//                                   (resuming_: a recv began it and timed out)
//
// A read that times out (SO_RCVTIMEO, or a non-blocking socket) throws
// TimeoutError and leaves every state as it was: the next call resumes.

namespace {
// A payload buffer starts at most this large and then doubles as bytes come,
// so an announced length costs memory only once its bytes arrive.
constexpr std::size_t kFirstChunk = std::size_t{64} << 10;
// Once this fraction of a payload has arrived, its buffer reserves the rest.
constexpr std::size_t kReserveAhead = 64;
// Reads at least this large go straight to their destination.
constexpr std::size_t kReadAhead = std::size_t{64} << 10;

[[noreturn]] void throw_timeout(const char* what, std::size_t got, std::size_t expected) {
  throw TimeoutError(fmt::format("recv: timed out with {} of the {} {} bytes received (kept: the next recv "
                                 "resumes)", got, expected, what));
}
}  // namespace

ssize_t Connection::read_stream(std::byte* dst, std::size_t n) {
  if (unix_) return detail::recv_stream(fd_, dst, n, rstream_, bulk().arrived);
  const ssize_t r = ::read(fd_, dst, n);
  if (r > 0) rstream_ += static_cast<std::uint64_t>(r);
  return r;
}

std::size_t Connection::read_some(std::byte* dst, std::size_t n) {
  if (rpos_ < rlen_) {
    const std::size_t take = std::min(n, rlen_ - rpos_);
    std::memcpy(dst, rbuf_.data() + rpos_, take);
    rpos_ += take;
    return take;
  }
  const bool direct = n >= kReadAhead;
  if (!direct && rbuf_.size() < kReadAhead) rbuf_.resize(kReadAhead);
  for (;;) {
    ssize_t r = direct ? read_stream(dst, n) : read_stream(rbuf_.data(), rbuf_.size());
    if (r > 0) {
      if (direct) return static_cast<std::size_t>(r);
      rpos_ = 0;
      rlen_ = static_cast<std::size_t>(r);
      return read_some(dst, n);
    }
    if (r == 0) return 0;
    if (errno == EINTR) continue;
    if (errno == ECONNRESET) return 0;  // a peer that died with unread data: end of file
    if (errno == EAGAIN || errno == EWOULDBLOCK) throw TimeoutError("recv: timed out");
    sys::throw_errno("read");
  }
}

bool Connection::fill_header() {
  // The header is complete in rbuf_ before anything is consumed, so a
  // timeout or an end of file in its middle loses nothing and miscounts
  // nothing.
  if (rbuf_.size() < kReadAhead) rbuf_.resize(kReadAhead);
  if (rpos_ > 0 && rlen_ - rpos_ < kHeaderSize) {  // room behind what is left
    std::memmove(rbuf_.data(), rbuf_.data() + rpos_, rlen_ - rpos_);
    rlen_ -= rpos_;
    rpos_ = 0;
  }
  while (rlen_ - rpos_ < kHeaderSize) {
    ssize_t r = read_stream(rbuf_.data() + rlen_, rbuf_.size() - rlen_);
    if (r > 0) {
      rlen_ += static_cast<std::size_t>(r);
    } else if (r == 0 || errno == ECONNRESET) {
      return false;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      throw_timeout("header", rlen_ - rpos_, kHeaderSize);
    } else if (errno != EINTR) {
      desync_ = true;
      sys::throw_errno("read");
    }
  }
  return true;
}

const Connection::Header& Connection::next_header() {
  if (pending_) return *pending_;
  if (!fill_header()) {
    const std::size_t got = rlen_ - rpos_;
    rpos_ = rlen_ = 0;
    if (got == 0) throw ConnectionClosed("recv: connection closed (end of file)");
    throw TruncatedMessage(got, kHeaderSize);
  }
  const unsigned char* raw = reinterpret_cast<const unsigned char*>(rbuf_.data() + rpos_);
  Header h{};
  std::memcpy(&h.magic, raw, 4);
  std::memcpy(&h.tag, raw + 4, 4);
  std::memcpy(&h.length, raw + 8, 8);
  // The stream position of this header: an fd attached to it arrived with
  // a read ending inside it; every other fd that came so far is dropped.
  const std::uint64_t start = rstream_ - (rlen_ - rpos_);
  sys::UniqueFd frame_fd;
  if (bulk_) frame_fd = detail::take_header_fd(bulk_->arrived, start, kHeaderSize);
  rpos_ += kHeaderSize;
  if (h.magic == kBulkMagic) {
    bulk().frame_fd = std::move(frame_fd);
    pending_ = h;
    return *pending_;
  }
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

void Connection::drop_frame() noexcept {
  pending_.reset();
  if (bulk_) bulk_->frame_fd.reset();
  resuming_ = false;
  Bytes().swap(in_);
  in_got_ = 0;
}

void Connection::receive_into(std::byte* dst, std::size_t upto, std::size_t length) {
  // dst (the caller's buffer, or in_ itself) holds at least `upto` bytes of
  // the `length`-byte payload. Bytes an earlier, timed-out call kept in in_
  // come first.
  if (dst != in_.data() && in_got_ > 0) std::memcpy(dst, in_.data(), in_got_);
  std::size_t got = in_got_;
  while (got < upto) {
    std::size_t r = 0;
    try {
      r = read_some(dst + got, upto - got);
    } catch (const TimeoutError&) {
      if (dst != in_.data()) in_.assign(dst, dst + got);  // keep them for the next call
      in_got_ = got;
      resuming_ = true;
      throw_timeout("payload", got, length);
    } catch (...) {
      drop_frame();
      desync_ = true;  // the stream's position inside the payload is unknown
      throw;
    }
    if (r == 0) {
      drop_frame();
      throw TruncatedMessage(got, length);
    }
    got += r;
    if (dst == in_.data()) in_got_ = got;
  }
}

// The pending frame is a bulk frame (its fd checked before anything is
// allocated by the caller): its payload into dst. Any fault drops the frame;
// the stream's framing is intact (the frame was only a header).
void Connection::receive_bulk(std::byte* dst, std::size_t length) {
  try {
    detail::read_bulk(*bulk_, detail::VerifiedSlab{slab_dev_, slab_ino_}, dst, length);
  } catch (...) {
    drop_frame();
    throw;
  }
  drop_frame();
}

void Connection::check_bulk_frame(std::uint64_t length) {
  try {
    if (!bulk_ || !bulk_->frame_fd)
      throw ProtocolError(fmt::format("recv: bulk frame of {} bytes came without a file descriptor", length));
    const detail::VerifiedSlab v = detail::verify_bulk_fd(bulk_->frame_fd.get(), length);
    slab_dev_ = v.dev;
    slab_ino_ = v.ino;
  } catch (...) {
    drop_frame();
    throw;
  }
}

bool Connection::pending_bulk() const noexcept { return pending_ && pending_->magic == kBulkMagic; }

Bytes Connection::receive_payload(std::uint64_t length64) {
  const auto length = static_cast<std::size_t>(length64);
  if (pending_bulk()) {
    check_bulk_frame(length64);
    Bytes out;
    try {
      out.reserve(length);
      sys::advise_huge_pages(out.data(), length);
      out.resize(length);
    } catch (...) {
      drop_frame();
      throw;
    }
    receive_bulk(out.data(), length);
    return out;
  }
  // Memory follows the bytes received. The buffer's size (zero-filled, so
  // resident) doubles only when full: at most 2 x the bytes received +
  // 64 KiB. Its capacity (address space, resident only once touched)
  // doubles with it, and jumps to the whole length once the bytes received
  // are 1/64 of it, so a large message is copied once, early (a 64 MiB one:
  // at 1 MiB), rather than at every doubling. Measured on a 64 MiB receive:
  // doubling alone cost 1.8x the CPU time of the old single allocation
  // (twice the pages to fault), a jump at 1/16 about 1.05x, at 1/64 1.0x.
  while (in_got_ < length) {
    if (in_.size() == in_got_) {
      const std::size_t next = std::min(length, std::max(kFirstChunk, in_got_ * 2));
      if (next > in_.capacity()) {  // reserve exactly: resize alone could round past the length
        if (in_got_ >= length / kReserveAhead) {
          try {
            in_.reserve(length);
            sys::advise_huge_pages(in_.data(), length);
          } catch (const std::bad_alloc&) {  // no address space to spare (RLIMIT_AS): just double
          }
        }
        in_.reserve(next);
      }
      in_.resize(next);
    }
    receive_into(in_.data(), in_.size(), length);  // fills in_; throws with in_ / in_got_ kept
  }
  Bytes out = std::move(in_);
  drop_frame();
  return out;
}

Bytes Connection::recv_frame(std::uint32_t expect_tag, std::uint64_t limit, const char* type_name) {
  return receive_payload(begin_frame("recv", expect_tag, limit, type_name));
}

Bytes Connection::recv_bytes(std::optional<std::size_t> maxlength) {
  std::uint64_t limit = max_message_size_;
  if (maxlength) limit = std::min<std::uint64_t>(limit, *maxlength);
  return receive_payload(begin_frame("recv_bytes", 0, limit, nullptr));
}

std::size_t Connection::recv_bytes_into(std::span<std::byte> buf, std::size_t offset) {
  check_range(buf.size(), offset, std::nullopt, "recv_bytes_into");
  const std::uint64_t limit = std::min<std::uint64_t>(max_message_size_, buf.size() - offset);
  const auto length = static_cast<std::size_t>(begin_frame("recv_bytes_into", 0, limit, nullptr));
  if (pending_bulk()) {
    check_bulk_frame(length);
    receive_bulk(buf.data() + offset, length);
    return length;
  }
  receive_into(buf.data() + offset, length, length);
  drop_frame();
  return length;
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
  } catch (const OSError& e) {
    ec = e.code();
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
  } catch (...) {
    ec = std::make_error_code(std::errc::io_error);
  }
  return {};
}

bool Connection::ready_now() const noexcept {
  if (fd_ < 0) return false;
  if (desync_) return true;  // recv throws at once
  // A pending header whose payload no recv has begun: recv answers at once
  // (the message, or why it is refused). A payload a timed-out recv began
  // waits for more bytes, like a partial header.
  if (pending_) return !resuming_ || rpos_ < rlen_;
  return rlen_ - rpos_ >= kHeaderSize;
}

bool Connection::poll(Timeout timeout) const {
  require_open("poll", true);
  if (ready_now()) return true;
  return sys::wait_readable(fd_, timeout);
}

bool Connection::poll_spinning_ns(std::int64_t spin_ns) const {
  const detail::Deadline until = detail::deadline_after(Timeout::from_nanoseconds(spin_ns));
  do {
    if (poll()) return true;
    ::sched_yield();  // on a busy or single CPU, the peer runs now
  } while (!until.passed());
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
                       any_now ? Timeout::from_nanoseconds(0) : timeout);
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < objects.size(); ++i)
    if (ready[i] || objects[i].ready_now) out.push_back(i);
  return out;
}

}  // namespace mproc
