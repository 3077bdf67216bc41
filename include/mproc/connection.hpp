// Connection and Pipe: framed, typed messages between two processes, as
// Python's multiprocessing.connection.
//
// Wire format of one message: a 16-byte header {magic u32, tag u32, length u64}
// then `length` payload bytes. tag 0 is raw bytes (send_bytes); any other tag
// is the fingerprint of the C++ type that send<T>() serialized, so recv<U>()
// of another type is caught before any byte of the payload is read.
//
// Errors (Python's names in brackets):
// - the peer closed its end, or died, at a message boundary: ConnectionClosed
//   [EOFError]; in the middle of a message: TruncatedMessage (a
//   ConnectionClosed) with the bytes received / expected of the header or
//   payload being read;
// - send() to a peer that is gone: ConnectionClosed("peer closed: ...")
//   [BrokenPipeError]; never SIGPIPE;
// - bytes that are not a frame (bad magic): ProtocolError; the stream has lost
//   its framing, so every later recv throws ProtocolError too;
// - an announced length over the limit: MessageTooLarge, before anything is
//   allocated; the message stays pending and a later call with a larger limit
//   reads it;
// - memory follows the bytes received: the payload buffer starts at 64 KiB
//   (or the length, if smaller) and doubles only when full, so a header
//   announcing 1 GiB costs nothing until its bytes arrive;
// - a read that times out (SO_RCVTIMEO on the socket, or O_NONBLOCK):
//   TimeoutError, with the part of the message received kept; the next call
//   resumes it;
// - recv<T>() of a message of another type: TypeMismatch; stays pending;
// - recv/send/poll on a closed connection or in a direction the connection
//   does not have: mproc::Error ("recv on a write-only connection");
// - offset/size outside the given buffer: ValueError.
// A Connection is not thread-safe (as in Python): one reader and one writer at
// a time, or a lock around it.
//
// Large messages (issue 13): on a Unix-socket Connection (Pipe(), Listener
// on a Unix address) a message of at least bulk_threshold() payload bytes
// travels through shared memory: the sender copies it into a reused, sealed
// memfd and the frame is only a header {magic "MPRB", tag, length} with the
// memfd attached (SCM_RIGHTS); the receiver checks the fd and copies the
// payload out. One copy on each side, no stream, no page faults on the
// sender after the first message. The receiver refuses (ProtocolError
// naming what was wrong, the frame dropped, the stream still usable) a bulk
// header without an fd, an fd that is not a sealed mproc memfd, or one
// smaller than, or with less memory than, the announced length; see
// docs/security.md. Pipes (Pipe(false)) and TCP keep the stream.
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <span>
#include <string_view>
#include <sys/types.h>
#include <system_error>
#include <utility>
#include <vector>

#include "mproc/errors.hpp"
#include "mproc/process.hpp"
#include "mproc/detail/codec.hpp"
#include "mproc/detail/owned.hpp"
#include "mproc/timeout.hpp"

namespace mproc {

namespace detail {
struct BulkState;
}

class Connection {
 public:
  static constexpr std::uint32_t kMagic = 0x4d505243;  // "MPRC"
  // A bulk frame's header: the payload is in the memfd attached to it.
  static constexpr std::uint32_t kBulkMagic = 0x4d505242;  // "MPRB"
  static constexpr std::uint64_t kDefaultMaxMessageSize = std::uint64_t{1} << 30;
  // Messages of at least this many payload bytes go through shared memory
  // on a Unix socket (chosen by measurement: docs/benchmarks.md, "Bulk data").
  static constexpr std::size_t kDefaultBulkThreshold = std::size_t{256} << 10;

  Connection() noexcept;
  // Takes ownership of fd.
  Connection(int fd, bool readable, bool writable);
  Connection(Connection&&) noexcept;
  Connection& operator=(Connection&&) noexcept;
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // ---- typed messages ----
  template <class T>
  void send(const T& value) {
    Bytes& buf = scratch_;
    buf.assign(kHeaderSize, std::byte{0});
    serialize_into(buf, value);
    send_frame(type_tag<T>(), buf);
  }
  // Throws TypeMismatch (message stays pending) if the next message is not a T,
  // DeserializeError if its bytes do not make a T, ConnectionClosed at EOF.
  template <class T>
  T recv() {
    Bytes payload = recv_frame(type_tag<T>(), max_message_size_, typeid(T).name());
    return from_bytes<T>(payload);
  }

  // ---- raw bytes ----
  // Sends buf[offset, offset+size) (size defaults to the rest).
  void send_bytes(std::span<const std::byte> buf, std::size_t offset = 0,
                  std::optional<std::size_t> size = std::nullopt);
  void send_bytes(std::string_view s) { send_bytes(std::as_bytes(std::span(s.data(), s.size()))); }
  // Receives the next message whatever its type. A message longer than
  // maxlength (or max_message_size(), whichever is smaller) throws
  // MessageTooLarge and stays pending.
  Bytes recv_bytes(std::optional<std::size_t> maxlength = std::nullopt);
  // Receives into buf at offset; returns the message size. A message that
  // does not fit throws MessageTooLarge and stays pending.
  std::size_t recv_bytes_into(std::span<std::byte> buf, std::size_t offset = 0);
  // Non-throwing form: sets ec (and returns empty) instead of throwing:
  // connection_reset at end of file, connection_aborted for a truncated
  // message, message_size, bad_message for a bad frame, bad_file_descriptor
  // on a closed connection, operation_not_permitted on a write-only one.
  Bytes recv_bytes(std::error_code& ec) noexcept;

  // Whether a message (or EOF) is ready within timeout (default: no wait;
  // nullopt waits forever).
  bool poll(Timeout timeout = Timeout::from_nanoseconds(0)) const;
  // Polls without sleeping for up to `spin`, yielding the CPU between looks:
  // true as soon as a message is ready, false when the time ran out. For a
  // peer expected to answer within microseconds it saves a sleep and a
  // wake-up (pool workers, manager clients and server).
  template <detail::duration_like D>
  bool poll_spinning(const D& spin) const {
    return poll_spinning_ns(detail::to_nanoseconds(spin));
  }
  void close() noexcept;
  bool closed() const noexcept { return fd_ < 0; }
  bool readable() const noexcept { return readable_; }
  bool writable() const noexcept { return writable_; }
  int fileno() const;
  // Upper bound on an incoming message; larger announced lengths are refused
  // before anything is allocated.
  void set_max_message_size(std::uint64_t n) noexcept { max_message_size_ = n; }
  std::uint64_t max_message_size() const noexcept { return max_message_size_; }
  // Payload size from which a message goes through shared memory (Unix
  // sockets only); SIZE_MAX keeps every message in the stream.
  void set_bulk_threshold(std::size_t n) noexcept { bulk_threshold_ = n; }
  std::size_t bulk_threshold() const noexcept { return bulk_threshold_; }
  // Whether a message of n payload bytes would go through shared memory.
  bool sends_through_shared_memory(std::size_t n) const noexcept { return unix_ && n >= bulk_threshold_; }
  // True when a message (or part of one) was already read from the socket:
  // a header whose payload waits, or bytes in the read buffer.
  bool has_pending() const noexcept { return pending_.has_value() || rpos_ < rlen_; }
  // True when a recv would answer without waiting for the socket: a whole
  // header is buffered, or pending and not yet begun (wait() and poll() count
  // it as ready; a part of a message is not).
  bool ready_now() const noexcept;

  static constexpr std::size_t kHeaderSize = 16;

  // A Connection given (moved) to a Process target reaches the child under
  // every start method: inherited under fork, passed as a file descriptor
  // (SCM_RIGHTS) under spawn and forkserver. Only as a target argument.
  void save(OutputArchive& ar) const {
    if (has_pending()) throw ValueError("mproc::Connection: cannot hand over a connection holding unread data");
    ar(ar.attach_fd(fd_, "mproc::Connection"), readable_, writable_);
  }
  void load(InputArchive& ar);

 private:
  struct Header {
    std::uint32_t magic;
    std::uint32_t tag;
    std::uint64_t length;
  };
  template <class T>
  static std::uint32_t type_tag() noexcept {
    const std::uint32_t t = type_fingerprint<T>();  // cached there, fork-safely
    return t == 0 ? 1 : t;
  }
  // buf holds kHeaderSize reserved bytes followed by the payload.
  void send_frame(std::uint32_t tag, Bytes& buf);
  // expect_tag 0 accepts any tag.
  Bytes recv_frame(std::uint32_t expect_tag, std::uint64_t limit, const char* type_name);
  // Checks the next header against the limit and tag; returns its length.
  std::uint64_t begin_frame(const char* op, std::uint32_t expect_tag, std::uint64_t limit,
                            const char* type_name);
  const Header& next_header();
  // Reads until rbuf_ holds a whole header; false at end of file.
  bool fill_header();
  // Up to n bytes of the stream (read-ahead first); 0 at end of file.
  std::size_t read_some(std::byte* dst, std::size_t n);
  // Receives the pending `length`-byte payload into dst[0, upto), after
  // what in_ kept.
  void receive_into(std::byte* dst, std::size_t upto, std::size_t length);
  // Receives the pending payload into in_, growing it as bytes arrive.
  Bytes receive_payload(std::uint64_t length);
  void drop_frame() noexcept;
  void require_open(const char* op, bool want_read) const;
  void write_frame(const std::byte* data, std::size_t n);
  // Large payloads (src/ipc/bulk_payload.*): the concatenation of parts through
  // a slab; the pending bulk frame's payload into dst.
  void send_bulk(std::uint32_t tag, std::span<const std::span<const std::byte>> parts, std::size_t total);
  void receive_bulk(std::byte* dst, std::size_t length);
  // Throws ProtocolError (frame dropped) unless the pending bulk frame's fd
  // is fit to read `length` bytes from.
  void check_bulk_frame(std::uint64_t length);
  bool pending_bulk() const noexcept;
  detail::BulkState& bulk();
  bool poll_spinning_ns(std::int64_t spin_ns) const;
  // read(2) on the stream; on a Unix socket, recvmsg keeping arrived fds.
  ssize_t read_stream(std::byte* dst, std::size_t n);

  int fd_ = -1;
  bool readable_ = false, writable_ = false, socket_ = false;
  bool unix_ = false;  // an AF_UNIX socket: fds can travel (bulk frames)
  std::size_t bulk_threshold_ = kDefaultBulkThreshold;
  detail::Owned<detail::BulkState> bulk_;  // slabs, arrived fds, the pending frame's fd
  std::uint64_t rstream_ = 0;  // bytes read from the stream so far (places arrived fds)
  dev_t slab_dev_ = 0;  // the pending bulk frame's slab, once checked
  ino_t slab_ino_ = 0;
  std::uint64_t max_message_size_ = kDefaultMaxMessageSize;
  bool desync_ = false;  // a bad frame was read: the stream has lost its framing
  std::optional<Header> pending_;
  Bytes scratch_;
  // Read-ahead: one read() takes a header and a small payload together, and
  // several small messages at once. poll()/wait() count what it holds.
  Bytes rbuf_;
  std::size_t rpos_ = 0, rlen_ = 0;
  // The pending frame's payload received so far: in_[0, in_got_).
  Bytes in_;
  std::size_t in_got_ = 0;
  bool resuming_ = false;  // a recv began the pending payload and timed out
};

// Python's Pipe(duplex): duplex gives two read-write ends; otherwise
// (reader, writer).
std::pair<Connection, Connection> Pipe(bool duplex = true);

// Something wait() can watch: a Connection, a Process's sentinel or a raw fd.
struct Waitable {
  int fd;
  bool ready_now = false;  // a Connection with a pending message
  Waitable(int f) : fd(f) {}  // NOLINT(google-explicit-constructor)
  Waitable(const Connection& c) : fd(c.fileno()), ready_now(c.ready_now()) {}  // NOLINT
  Waitable(const Process& p) : fd(p.sentinel()) {}  // NOLINT
};

// Python's multiprocessing.connection.wait: the indices of the objects that
// are ready (readable, closed, or ended) within timeout; empty on timeout.
std::vector<std::size_t> wait(std::span<const Waitable> objects, Timeout timeout = std::nullopt);
inline std::vector<std::size_t> wait(std::initializer_list<Waitable> objects, Timeout timeout = std::nullopt) {
  return wait(std::span<const Waitable>(objects.begin(), objects.size()), timeout);
}

}  // namespace mproc
