// FunctionRef: (module build-id, offset) <-> address, checked on arrival.
//
// The loaded modules are read through dl_iterate_phdr into an immutable,
// cached snapshot. make() and resolve() are hot paths (one per task), and
// dl_iterate_phdr is not fork-safe (a child forked while another thread is
// inside it inherits the loader's lock taken and deadlocks on its next call),
// so the hot path never calls it: a cached module is checked with
// _dl_find_object (lock-free, glibc >= 2.35) to be the very module still
// loaded there (same link_map name pointer, load address and eh_frame). Only
// a miss (after dlopen/dlclose, or on an error path) rebuilds the snapshot.
// The snapshot pointer is guarded by a mutex that is also held across fork.
#include "mproc/function_ref.hpp"

#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "sys/no_destroy.hpp"

namespace mproc {
namespace {

struct Segment {
  std::uint64_t begin = 0;  // p_vaddr, i.e. offset from the module base
  std::uint64_t end = 0;    // p_vaddr + p_memsz
  bool exec = false;
};

struct Module {
  std::uintptr_t base = 0;            // dlpi_addr
  const char* name_ptr = nullptr;     // dlpi_name: the link_map's l_name itself
  const void* eh_frame = nullptr;     // PT_GNU_EH_FRAME, as _dl_find_object reports it
  std::uintptr_t probe = 0;           // an address inside the module (its first code byte)
  std::string name;
  std::array<std::uint8_t, 32> build_id{};
  std::uint8_t build_id_len = 0;
  std::vector<Segment> segments;  // PT_LOAD only
};

struct Snapshot {
  unsigned long long adds = 0, subs = 0;
  std::vector<Module> modules;
};

std::string hex(const std::uint8_t* p, std::size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(2 * n);
  for (std::size_t i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 0xf];
  }
  return s;
}

std::string hex_number(std::uint64_t v) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  do {
    s += digits[v & 0xf];
    v >>= 4;
  } while (v != 0);
  std::reverse(s.begin(), s.end());
  return "0x" + s;
}

std::size_t align_up(std::size_t v, std::size_t a) { return (v + a - 1) / a * a; }

// Reads the NT_GNU_BUILD_ID note from one PT_NOTE segment, if it has one.
bool read_build_id(const dl_phdr_info* info, const ElfW(Phdr)& ph, Module& m) {
  const auto* p = reinterpret_cast<const unsigned char*>(info->dlpi_addr + ph.p_vaddr);
  const std::size_t size = ph.p_memsz;
  const std::size_t align = ph.p_align == 8 ? 8 : 4;
  std::size_t pos = 0;
  while (pos + sizeof(ElfW(Nhdr)) <= size) {
    ElfW(Nhdr) nh;
    std::memcpy(&nh, p + pos, sizeof nh);
    const std::size_t name_at = pos + sizeof nh;
    const std::size_t desc_at = name_at + align_up(nh.n_namesz, align);
    const std::size_t next = desc_at + align_up(nh.n_descsz, align);
    if (desc_at > size || desc_at + nh.n_descsz > size) return false;
    if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 && std::memcmp(p + name_at, "GNU", 4) == 0 &&
        nh.n_descsz > 0) {
      const std::size_t n = std::min<std::size_t>(nh.n_descsz, m.build_id.size());
      std::memcpy(m.build_id.data(), p + desc_at, n);
      m.build_id_len = static_cast<std::uint8_t>(n);
      return true;
    }
    if (next <= pos) return false;
    pos = next;
  }
  return false;
}

int collect(dl_phdr_info* info, std::size_t, void* data) {
  auto& snap = *static_cast<Snapshot*>(data);
  snap.adds = info->dlpi_adds;
  snap.subs = info->dlpi_subs;
  Module m;
  m.base = info->dlpi_addr;
  m.name_ptr = info->dlpi_name;
  m.name = (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') ? info->dlpi_name : "main program";
  for (ElfW(Half) i = 0; i < info->dlpi_phnum; ++i) {
    const auto& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD) {
      m.segments.push_back({ph.p_vaddr, ph.p_vaddr + ph.p_memsz, (ph.p_flags & PF_X) != 0});
      if (m.probe == 0 && (ph.p_flags & PF_X) != 0 && ph.p_memsz != 0) m.probe = info->dlpi_addr + ph.p_vaddr;
    } else if (ph.p_type == PT_GNU_EH_FRAME) {
      m.eh_frame = reinterpret_cast<const void*>(info->dlpi_addr + ph.p_vaddr);
    }
    if (ph.p_type == PT_NOTE && m.build_id_len == 0) read_build_id(info, ph, m);
  }
  snap.modules.push_back(std::move(m));
  return 0;
}

// Never destroyed: usable from static destructors and atexit handlers.
// Constructed at compile time and its fork handlers registered at load, so no
// thread can be half-way through initialising it when another forks.
struct State {
  std::mutex mutex;
  std::shared_ptr<const Snapshot> snapshot;  // guarded by mutex
};
constinit sys::NoDestroy<State> g_state;

// The mutex is held across fork, so a child forked while another thread held
// it does not inherit it locked.
[[maybe_unused]] const int g_state_atfork =
    ::pthread_atfork([] { g_state.value.mutex.lock(); }, [] { g_state.value.mutex.unlock(); },
                     [] { g_state.value.mutex.unlock(); });

State& state() { return g_state.value; }

// The cached snapshot, or a fresh one when `rebuild` (or none yet).
std::shared_ptr<const Snapshot> modules(bool rebuild) {
  State& st = state();
  if (!rebuild) {
    std::lock_guard lock(st.mutex);
    if (st.snapshot) return st.snapshot;
  }
  auto snap = std::make_shared<Snapshot>();
  dl_iterate_phdr(collect, snap.get());
  std::shared_ptr<const Snapshot> old;  // released outside the lock
  std::lock_guard lock(st.mutex);
  // The counters only grow: never replace a newer snapshot with an older one.
  if (!st.snapshot || snap->adds + snap->subs >= st.snapshot->adds + st.snapshot->subs) {
    old = std::move(st.snapshot);
    st.snapshot = snap;
  }
  return snap;
}

// True when the module loaded at `addr` now is the one `m` describes.
bool still_loaded(const Module& m, std::uintptr_t addr) {
  dl_find_object fo;
  if (_dl_find_object(reinterpret_cast<void*>(addr), &fo) != 0) return false;
  return fo.dlfo_link_map->l_addr == m.base && fo.dlfo_link_map->l_name == m.name_ptr &&
         fo.dlfo_eh_frame == m.eh_frame;
}

bool is_in(const Segment& s, std::uint64_t off) { return off >= s.begin && off < s.end; }

}  // namespace

FunctionRef FunctionRef::make(const void* address, std::uint32_t signature) {
  const auto addr = reinterpret_cast<std::uintptr_t>(address);
  if (addr == 0) throw FunctionRefError("FunctionRef: null function pointer");
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto snap = modules(attempt > 0);
    for (const Module& m : snap->modules) {
      if (addr < m.base) continue;
      const std::uint64_t off = addr - m.base;
      auto seg = std::find_if(m.segments.begin(), m.segments.end(), [&](const Segment& s) { return is_in(s, off); });
      if (seg == m.segments.end()) continue;
      if (!still_loaded(m, addr)) break;  // the snapshot is stale: rebuild it
      if (!seg->exec)
        throw FunctionRefError("FunctionRef: address " + hex_number(addr) + " lies in a non-executable segment of " +
                               m.name + " (not a function)");
      if (m.build_id_len == 0)
        throw FunctionRefError("FunctionRef: module " + m.name +
                               " has no GNU build-id, so its functions cannot be named across processes; link "
                               "it with -Wl,--build-id");
      FunctionRef r;
      r.build_id_ = m.build_id;
      r.build_id_len_ = m.build_id_len;
      r.offset_ = off;
      r.signature_ = signature;
      return r;
    }
  }
  throw FunctionRefError("FunctionRef: address " + hex_number(addr) + " is not inside any loaded module");
}

const void* FunctionRef::resolve(std::uint32_t signature) const {
  if (empty()) throw FunctionRefError("FunctionRef: cannot resolve an empty reference");
  for (int attempt = 0; attempt < 2; ++attempt) {
    const auto snap = modules(attempt > 0);
    const Module* mod = nullptr;
    for (const Module& m : snap->modules) {
      if (m.build_id_len == build_id_len_ &&
          std::equal(m.build_id.begin(), m.build_id.begin() + build_id_len_, build_id_.begin())) {
        mod = &m;
        break;
      }
    }
    if (mod == nullptr || mod->probe == 0 || !still_loaded(*mod, mod->probe)) continue;
    const bool in_code = std::any_of(mod->segments.begin(), mod->segments.end(),
                                     [&](const Segment& s) { return s.exec && is_in(s, offset_); });
    if (!in_code)
      throw FunctionRefError("FunctionRef " + to_string() + ": offset " + hex_number(offset_) +
                             " lies outside the executable segments of " + mod->name);
    if (signature != signature_)
      throw FunctionRefError("FunctionRef " + to_string() + ": signature mismatch (made for fingerprint " +
                             hex_number(signature_) + ", requested as " + hex_number(signature) + ")");
    return reinterpret_cast<const void*>(mod->base + offset_);
  }
  throw FunctionRefError("FunctionRef " + to_string() + ": unknown build-id " + build_id_hex() +
                         " (different binary?): no module loaded in this process has it");
}

std::string FunctionRef::build_id_hex() const { return hex(build_id_.data(), build_id_len_); }

std::string FunctionRef::to_string() const {
  if (empty()) return "<empty FunctionRef>";
  return build_id_hex() + "+" + hex_number(offset_);
}

}  // namespace mproc
