// Internal: large task arguments and results of the local pool through
// shared memory (issue 13).
//
// Each worker gets one anonymous memfd from the engine (created before the
// worker starts, passed like its result ring; never named, so nothing can
// reach /dev/shm, and it goes with the last process that maps it). The engine
// seals it against shrinking and growing, so a task in the worker cannot
// truncate it under the engine's mapping (no SIGBUS there).
//
//   [0, 4096)                      Header {results_consumed}
//   [kArgsAt, kArgsAt + kArgsCap)  arguments: the engine writes, the worker reads
//   [kResultsAt, + kResultsCap)    results: the worker writes, the engine reads
//
// A task whose payload is at least kThreshold bytes is copied into the
// arguments area and the socket carries only TaskMsg{id, entry, offset,
// length}; the worker runs the entry point on a span over its mapping (no
// copy on its side). A result of at least kThreshold bytes is copied into the
// results area and the ring carries only ResultMsg{..., offset, length}; the
// engine copies it out once.
//
// Both areas are FIFO regions (RegionFifo): a region is taken after the last
// one still held, or from the start once the start has room for all that is
// held plus it, so a steady stream reuses the same pages (faulted once per
// worker, not per task) and keeps finding room after each wrap.
//
// Region lifecycle (which transition settles each):
//   argument: staged (send) ──result of that task read (on_result)──▶ free
//             staged ──worker died / doomed──▶ the whole arena goes with the
//               Worker (replace); requeued tasks are staged again elsewhere
//             no room (many large tasks queued) ──▶ the task goes inline on
//               the socket as before (the Connection's own bulk path)
//   result:   placed by the worker ──descriptor in the ring──▶ read by the
//             engine, which counts it in Header::results_consumed ──▶ the
//             worker frees it (its oldest) when it sees the count
//             no room ──▶ the worker waits for the engine as for a full ring;
//               larger than the area ──▶ chunks through the ring as before
//
// Trust: the engine does not trust what the worker writes. A result
// descriptor is checked against the area's bounds before anything is read
// (ProtocolError naming the byte count: that worker's fault, its task fails
// with WorkerFault); no fd travels with a descriptor, so a worker cannot
// name memory that is not its own arena. The worker trusts the engine (it
// runs the engine's code), but checks bounds anyway.
#pragma once
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>

#include "sys/fd.hpp"

namespace mproc::detail {

// Regions handed out and given back in order, within [0, cap).
class RegionFifo {
 public:
  explicit RegionFifo(std::size_t cap) : cap_(cap) {}
  // The offset of `len` free bytes, or none (no room now).
  std::optional<std::size_t> take(std::size_t len, std::uint64_t tag);
  // Gives back the region tagged `tag` (the oldest, normally). False if none.
  bool give_back(std::uint64_t tag);
  // Frees the oldest region (there must be one).
  void pop_oldest() noexcept;
  bool empty() const noexcept { return regions_.empty(); }
  std::size_t cap() const noexcept { return cap_; }

 private:
  static constexpr std::uint64_t kHole = ~std::uint64_t{0};  // given back out of order, still in line
  struct Region {
    std::uint64_t tag;
    std::size_t off, len;
  };
  std::size_t cap_;
  std::deque<Region> regions_;
  std::size_t held_ = 0;  // the regions' bytes, holes included
  std::size_t peak_ = 0;  // the most held (or asked for) at once: how early take() may wrap
};

class TaskArena {
 public:
  static constexpr std::size_t kThreshold = std::size_t{256} << 10;
  static constexpr std::size_t kArgsCap = std::size_t{256} << 20;
  static constexpr std::size_t kResultsCap = std::size_t{256} << 20;

  TaskArena() = default;
  static TaskArena create();       // engine
  static TaskArena attach(int fd);  // worker (takes fd)
  TaskArena(TaskArena&&) noexcept;
  TaskArena& operator=(TaskArena&&) noexcept;
  ~TaskArena();
  int fd() const noexcept { return fd_.get(); }
  explicit operator bool() const noexcept { return base_ != nullptr; }

  // ---- engine ----
  // Copies a task's payload into the arguments area; none when it does not fit now.
  std::optional<std::size_t> stage_argument(std::uint64_t task, std::span<const std::byte> payload);
  // Takes a region of `len` bytes for a task's argument, for the engine to
  // write at argument_data(offset) (a payload encoded straight into the
  // arena); none when it does not fit now. Freed as stage_argument's.
  std::optional<std::size_t> reserve_argument(std::uint64_t task, std::size_t len);
  std::byte* argument_data(std::size_t off) const noexcept;
  void release_argument(std::uint64_t task) { (void)args_.give_back(task); }
  // The result the worker placed at [off, off + len) of the results area;
  // ProtocolError (naming the byte count) when that is not inside it.
  std::span<const std::byte> result(std::uint64_t off, std::uint64_t len) const;
  // After the engine copied a result out: the worker may reuse its region.
  void result_consumed() noexcept;

  // ---- worker ----
  // The argument the engine staged; ProtocolError when out of bounds.
  std::span<const std::byte> argument(std::uint64_t off, std::uint64_t len) const;
  // Copies a result into the results area; none when there is no room now
  // (the engine has not read earlier ones yet).
  std::optional<std::size_t> place_result(std::span<const std::byte> data);

 private:
  struct Header;
  sys::UniqueFd fd_;
  std::byte* base_ = nullptr;
  RegionFifo args_{kArgsCap};
  RegionFifo results_{kResultsCap};
  std::uint64_t results_placed_ = 0, results_freed_ = 0;  // worker's own counts
  Header* header() const noexcept;
};

}  // namespace mproc::detail
