// libFuzzer target over the Connection frame decoder, checked against a
// model of the wire format. Input: 8 op bytes, then the byte stream a peer
// sends. The stream goes through a real socket in two parts: first a prefix
// on a non-blocking socket (a receive that needs more gets TimeoutError and
// must keep what arrived), then the rest and end of file. Each op is a
// receive call (raw, with a small maxlength, into a buffer, typed); its
// outcome and bytes must be what the model predicts from the stream. Memory:
// scripts/fuzz.sh runs it with -malloc_limit_mb, so a buffer sized by an
// announced length rather than by the bytes received fails the run.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "mproc/connection.hpp"

namespace {

using mproc::Bytes;
using mproc::Connection;

enum class Outcome { ok, timeout, truncated, closed, too_large, mismatch, protocol, deserialize };
const char* name(Outcome o) {
  static const char* names[] = {"ok", "timeout", "truncated", "closed", "too_large", "mismatch", "protocol",
                                "deserialize"};
  return names[static_cast<int>(o)];
}

[[noreturn]] void fail(const std::string& what) {
  std::fprintf(stderr, "fuzz_connection: %s\n", what.c_str());
  std::abort();
}

std::uint32_t tag_of(std::uint32_t fingerprint) { return fingerprint == 0 ? 1 : fingerprint; }

// What the receiver should see, from the bytes sent so far.
struct Model {
  std::span<const std::byte> stream;
  std::size_t pos = 0;    // start of the next frame
  std::size_t avail = 0;  // bytes written to the socket
  bool eof = false;       // the writer has shut down
  bool desync = false;

  // Predicts an op's outcome (and on ok the payload), and advances.
  Outcome next(std::uint32_t want_tag, std::uint64_t limit, std::span<const std::byte>& payload) {
    if (desync) return Outcome::protocol;
    const std::size_t have = avail - pos;
    if (have < Connection::kHeaderSize) {
      if (!eof) return Outcome::timeout;
      pos = avail;
      return have == 0 ? Outcome::closed : Outcome::truncated;
    }
    std::uint32_t magic = 0, tag = 0;
    std::uint64_t length = 0;
    std::memcpy(&magic, stream.data() + pos, 4);
    std::memcpy(&tag, stream.data() + pos + 4, 4);
    std::memcpy(&length, stream.data() + pos + 8, 8);
    if (magic == Connection::kBulkMagic) {
      // A bulk header: checked against the limit and the type as any frame;
      // then refused (no fd can come with this stream) and dropped, the
      // framing intact.
      if (length > limit) return Outcome::too_large;
      if (want_tag != 0 && tag != want_tag) return Outcome::mismatch;
      pos += Connection::kHeaderSize;
      return Outcome::protocol;
    }
    if (magic != Connection::kMagic) {
      desync = true;
      return Outcome::protocol;
    }
    if (length > limit) return Outcome::too_large;
    if (want_tag != 0 && tag != want_tag) return Outcome::mismatch;
    if (have - Connection::kHeaderSize < length) {
      if (!eof) return Outcome::timeout;
      pos = avail;
      return Outcome::truncated;
    }
    payload = stream.subspan(pos + Connection::kHeaderSize, static_cast<std::size_t>(length));
    pos += Connection::kHeaderSize + static_cast<std::size_t>(length);
    return Outcome::ok;
  }
};

template <class F>
Outcome run(F&& f) {
  try {
    f();
    return Outcome::ok;
  } catch (const mproc::TimeoutError&) {
    return Outcome::timeout;
  } catch (const mproc::TruncatedMessage&) {
    return Outcome::truncated;
  } catch (const mproc::ConnectionClosed&) {
    return Outcome::closed;
  } catch (const mproc::MessageTooLarge&) {
    return Outcome::too_large;
  } catch (const mproc::TypeMismatch&) {
    return Outcome::mismatch;
  } catch (const mproc::ProtocolError&) {
    return Outcome::protocol;
  } catch (const mproc::DeserializeError&) {
    return Outcome::deserialize;
  }
}

template <class T>
void typed_op(Connection& rx, Model& model, int step) {
  std::span<const std::byte> expect_bytes;
  Outcome expect = model.next(tag_of(mproc::type_fingerprint<T>()), rx.max_message_size(), expect_bytes);
  bool expect_decodes = false;
  T expected{};
  if (expect == Outcome::ok) {
    try {
      expected = mproc::from_bytes<T>(expect_bytes);
      expect_decodes = true;
    } catch (const mproc::DeserializeError&) {
      expect = Outcome::deserialize;
    }
  }
  T got{};
  const Outcome out = run([&] { got = rx.recv<T>(); });
  if (out != expect) fail("step " + std::to_string(step) + ": typed recv gave " + name(out) + ", model " + name(expect));
  if (expect_decodes && !(got == expected)) fail("step " + std::to_string(step) + ": typed recv returned another value");
}

void raw_op(Connection& rx, Model& model, std::uint8_t op, int step) {
  std::span<const std::byte> expect_bytes;
  Bytes got;
  Outcome expect = Outcome::ok, out = Outcome::ok;
  switch (op % 3) {
    case 0:
      expect = model.next(0, rx.max_message_size(), expect_bytes);
      out = run([&] { got = rx.recv_bytes(); });
      break;
    case 1: {
      const std::size_t maxlength = static_cast<std::size_t>(op >> 2) * 8;
      expect = model.next(0, std::min<std::uint64_t>(maxlength, rx.max_message_size()), expect_bytes);
      out = run([&] { got = rx.recv_bytes(maxlength); });
      break;
    }
    default: {
      Bytes buf(300);
      const std::size_t offset = (op >> 2) % 50;
      expect = model.next(0, std::min<std::uint64_t>(buf.size() - offset, rx.max_message_size()), expect_bytes);
      out = run([&] {
        const std::size_t n = rx.recv_bytes_into(buf, offset);
        got.assign(buf.begin() + static_cast<std::ptrdiff_t>(offset),
                   buf.begin() + static_cast<std::ptrdiff_t>(offset + n));
      });
    }
  }
  if (out != expect) fail("step " + std::to_string(step) + ": raw recv gave " + name(out) + ", model " + name(expect));
  if (out == Outcome::ok && !std::equal(got.begin(), got.end(), expect_bytes.begin(), expect_bytes.end()))
    fail("step " + std::to_string(step) + ": raw recv returned other bytes than were sent");
}

void write_all(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w <= 0) fail("write to the socket failed");
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::size_t kOps = 8;
  if (size < kOps + 1 || size > (64 << 10)) return 0;  // the stream must fit in the socket buffer
  const std::span<const std::uint8_t> ops(data, kOps);
  const auto stream = std::as_bytes(std::span<const std::uint8_t>(data + kOps + 1, size - kOps - 1));
  const std::size_t split = stream.size() * data[kOps] / 255;

  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) fail("socketpair");
  int sndbuf = 1 << 20;
  ::setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  Connection rx(sv[0], true, false);
  if (ops[0] & 0x80) rx.set_max_message_size(4096);  // else the default 1 GiB: memory must follow bytes
  Model model{stream};

  // Phase 1: a prefix on a non-blocking socket.
  ::fcntl(sv[0], F_SETFL, O_NONBLOCK);
  write_all(sv[1], stream.data(), split);
  model.avail = split;
  int step = 0;
  auto do_op = [&](std::uint8_t op) {
    switch (op % 5) {
      case 0: typed_op<std::string>(rx, model, step); break;
      case 1: typed_op<std::vector<int>>(rx, model, step); break;
      default: raw_op(rx, model, static_cast<std::uint8_t>(op / 5), step);
    }
    ++step;
  };
  for (std::size_t i = 0; i < 4; ++i) do_op(ops[i]);

  // Phase 2: the rest, then end of file, on a blocking socket.
  write_all(sv[1], stream.data() + split, stream.size() - split);
  ::shutdown(sv[1], SHUT_WR);
  model.avail = stream.size();
  model.eof = true;
  ::fcntl(sv[0], F_SETFL, 0);
  for (int i = 0; i < 64 && !(model.pos == model.avail && i > 8); ++i) do_op(ops[i % kOps]);
  ::close(sv[1]);
  return 0;
}
