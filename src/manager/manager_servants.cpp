// The container servants of the manager server (dict, list, array, set,
// value, namespace, user objects). They hold serialized bytes only, so the
// server needs no knowledge of the element types. Each has one handler per
// entry of its protocol table (mproc/detail/manager_protocol.hpp); the
// arguments arrive decoded and checked (manager_dispatch.hpp).
#include <poll.h>

#include <algorithm>
#include <list>
#include <map>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "manager/manager_servants.hpp"

namespace mproc::detail {

namespace {

using proto::Tag;
using View = std::string_view;

std::int64_t norm_index(std::int64_t i, std::size_t n) { return i < 0 ? i + static_cast<std::int64_t>(n) : i; }

// ---- dict: insertion-ordered --------------------------------------------------
class DictServant final : public ServantOf<proto::DictProtocol, DictServant> {
  using Entries = std::list<std::pair<std::string, std::string>>;
  using Index = std::unordered_map<View, Entries::iterator>;

 public:
  explicit DictServant(const std::vector<std::pair<View, View>>& init) { update(init); }

  void on(Tag<"set">, ServantCall&, View k, View v) { set(k, std::string(v)); }
  std::optional<View> on(Tag<"get">, ServantCall&, View k) { return found(index_.find(k)); }
  bool on(Tag<"contains">, ServantCall&, View k) { return index_.count(k) != 0; }
  bool on(Tag<"del">, ServantCall&, View k) {
    auto it = index_.find(k);
    if (it == index_.end()) return false;
    erase(it);
    return true;
  }
  std::optional<std::string> on(Tag<"pop">, ServantCall&, View k) {
    auto it = index_.find(k);
    if (it == index_.end()) return std::nullopt;
    std::string v = std::move(it->second->second);
    erase(it);
    return v;
  }
  View on(Tag<"setdefault">, ServantCall&, View k, View v) {
    auto it = index_.find(k);
    if (it == index_.end()) it = set(k, std::string(v));
    return it->second->second;
  }
  std::uint64_t on(Tag<"len">, ServantCall&) { return entries_.size(); }
  void on(Tag<"clear">, ServantCall&) {
    index_.clear();
    entries_.clear();
  }
  // The batch arrives whole (decoded before this runs): none of it is
  // applied when any of it is malformed.
  void on(Tag<"update">, ServantCall&, const std::vector<std::pair<View, View>>& batch) { update(batch); }
  const Entries& on(Tag<"items">, ServantCall&) { return entries_; }
  // (Views, not std::views: clang 14, the fuzz build's compiler, cannot use libstdc++'s.)
  std::vector<View> on(Tag<"keys">, ServantCall&) { return column<0>(); }
  std::vector<View> on(Tag<"values">, ServantCall&) { return column<1>(); }
  std::vector<std::optional<View>> on(Tag<"get_many">, ServantCall&, const std::vector<View>& keys) {
    std::vector<std::optional<View>> out;
    out.reserve(keys.size());
    for (View k : keys) out.push_back(found(index_.find(k)));
    return out;
  }

 private:
  template <std::size_t I>
  std::vector<View> column() const {
    std::vector<View> out;
    out.reserve(entries_.size());
    for (const auto& e : entries_) out.emplace_back(std::get<I>(e));
    return out;
  }
  void update(const std::vector<std::pair<View, View>>& batch) {
    index_.reserve(index_.size() + batch.size());
    for (auto& [k, v] : batch) set(k, std::string(v));
  }
  Index::iterator set(View k, std::string v) {
    auto it = index_.find(k);
    if (it != index_.end()) {
      it->second->second = std::move(v);
      return it;
    }
    entries_.emplace_back(std::string(k), std::move(v));
    auto node = std::prev(entries_.end());
    return index_.emplace(View(node->first), node).first;
  }
  void erase(Index::iterator it) {
    auto node = it->second;
    index_.erase(it);
    entries_.erase(node);
  }
  std::optional<View> found(Index::iterator it) const {
    if (it == index_.end()) return std::nullopt;
    return View(it->second->second);
  }
  Entries entries_;
  Index index_;
};

// ---- list and array (an array is a list of fixed length) ---------------------------
template <class P>
class ListServant final : public ServantOf<P, ListServant<P>> {
 public:
  explicit ListServant(const std::vector<View>& init) : items_(init.begin(), init.end()) {}

  std::uint64_t on(Tag<"len">, ServantCall&) { return items_.size(); }
  View on(Tag<"get">, ServantCall&, std::int64_t i) { return items_[at(i)]; }
  void on(Tag<"set">, ServantCall&, std::int64_t i, View v) { items_[at(i)] = std::string(v); }
  std::span<const std::string> on(Tag<"slice">, ServantCall&, std::optional<std::int64_t> start,
                                  std::optional<std::int64_t> stop) {
    const auto n = static_cast<std::int64_t>(items_.size());
    auto bound = [&](std::optional<std::int64_t> b, std::int64_t dflt) {
      return b ? std::clamp<std::int64_t>(norm_index(*b, items_.size()), 0, n) : dflt;
    };
    const std::int64_t lo = bound(start, 0), hi = std::max(lo, bound(stop, n));
    return std::span<const std::string>(items_).subspan(static_cast<std::size_t>(lo),
                                                        static_cast<std::size_t>(hi - lo));
  }
  void on(Tag<"append">, ServantCall&, View v) { items_.emplace_back(v); }
  void on(Tag<"extend">, ServantCall&, const std::vector<View>& add) { items_.insert(items_.end(), add.begin(), add.end()); }
  std::string on(Tag<"pop">, ServantCall&, std::int64_t i) {
    if (items_.empty()) throw IndexError("pop from empty list");
    const std::size_t k = at(i);
    std::string v = std::move(items_[k]);
    items_.erase(items_.begin() + static_cast<std::ptrdiff_t>(k));
    return v;
  }
  void on(Tag<"insert">, ServantCall&, std::int64_t i, View v) {
    const auto n = static_cast<std::int64_t>(items_.size());
    const std::int64_t k = std::clamp<std::int64_t>(norm_index(i, items_.size()), 0, n);
    items_.insert(items_.begin() + static_cast<std::ptrdiff_t>(k), std::string(v));
  }
  void on(Tag<"remove">, ServantCall&, View v) { items_.erase(find(v, "remove")); }
  std::uint64_t on(Tag<"index">, ServantCall&, View v) { return static_cast<std::uint64_t>(find(v, "index") - items_.begin()); }
  std::uint64_t on(Tag<"count">, ServantCall&, View v) {
    return static_cast<std::uint64_t>(std::count(items_.begin(), items_.end(), v));
  }
  void on(Tag<"clear">, ServantCall&) { items_.clear(); }

 private:
  std::size_t at(std::int64_t i) const {
    i = norm_index(i, items_.size());
    if (i < 0 || i >= static_cast<std::int64_t>(items_.size())) throw IndexError("list index out of range");
    return static_cast<std::size_t>(i);
  }
  std::vector<std::string>::iterator find(View v, const char* op) {
    auto it = std::find(items_.begin(), items_.end(), v);
    if (it == items_.end()) throw ValueError(fmt::format("list.{}(x): x not in list", op));
    return it;
  }
  std::vector<std::string> items_;
};

// ---- set ----------------------------------------------------------------------
struct StrHash {
  using is_transparent = void;
  std::size_t operator()(View s) const noexcept { return std::hash<View>{}(s); }
};

class SetServant final : public ServantOf<proto::SetProtocol, SetServant> {
 public:
  explicit SetServant(const std::vector<View>& init) { update(init); }

  bool on(Tag<"add">, ServantCall&, View v) { return items_.emplace(v).second; }
  bool on(Tag<"discard">, ServantCall&, View v) {
    auto it = items_.find(v);
    if (it == items_.end()) return false;
    items_.erase(it);
    return true;
  }
  bool on(Tag<"contains">, ServantCall&, View v) { return items_.find(v) != items_.end(); }
  std::uint64_t on(Tag<"len">, ServantCall&) { return items_.size(); }
  void on(Tag<"clear">, ServantCall&) { items_.clear(); }
  const auto& on(Tag<"items">, ServantCall&) { return items_; }
  void on(Tag<"update">, ServantCall&, const std::vector<View>& add) { update(add); }

 private:
  void update(const std::vector<View>& add) {
    for (View v : add) items_.emplace(v);
  }
  std::unordered_set<std::string, StrHash, std::equal_to<>> items_;
};

// ---- value --------------------------------------------------------------------
class ValueServant final : public ServantOf<proto::ValueProtocol, ValueServant> {
 public:
  explicit ValueServant(View v) : value_(v) {}
  View on(Tag<"get">, ServantCall&) { return value_; }
  void on(Tag<"set">, ServantCall&, View v) { value_ = std::string(v); }

 private:
  std::string value_;
};

// ---- namespace ------------------------------------------------------------------
class NamespaceServant final : public ServantOf<proto::NamespaceProtocol, NamespaceServant> {
 public:
  explicit NamespaceServant(proto::None) {}
  void on(Tag<"set">, ServantCall&, View name, View type, View value) {
    values_[std::string(name)] = {std::string(type), std::string(value)};
  }
  const std::pair<std::string, std::string>& on(Tag<"get">, ServantCall&, View name) {
    auto it = values_.find(name);
    if (it == values_.end()) throw AttributeError(fmt::format("Namespace has no attribute '{}'", name));
    return it->second;
  }
  bool on(Tag<"has">, ServantCall&, View name) { return values_.count(name) != 0; }
  bool on(Tag<"del">, ServantCall&, View name) {
    auto it = values_.find(name);
    if (it == values_.end()) return false;
    values_.erase(it);
    return true;
  }
  std::vector<View> on(Tag<"names">, ServantCall&) {
    std::vector<View> out;
    out.reserve(values_.size());
    for (const auto& [name, value] : values_) out.emplace_back(name);
    return out;
  }

 private:
  std::map<std::string, std::pair<std::string, std::string>, std::less<>> values_;
};

// ---- registered user types ------------------------------------------------------------
// An instance of a registered type (made by the type's make(), one call at a
// time under ServantOf's lock). A method is found by name and its argument
// types are checked against the caller's before anything is decoded.
class UserServant final : public ServantOf<proto::UserProtocol, UserServant> {
 public:
  explicit UserServant(std::shared_ptr<const ServedType> type) : type_(std::move(type)), obj_(type_->make()) {}
  UserServant(const UserServant&) = delete;
  UserServant& operator=(const UserServant&) = delete;
  ~UserServant() override { type_->destroy(obj_); }

  Bytes on(Tag<"call">, ServantCall&, View method, View arg_types, std::span<const std::byte> args) {
    auto it = type_->methods.find(method);
    if (it == type_->methods.end())
      throw ValueError(fmt::format("mproc::Manager: {} has no method '{}'", type_->name, method));
    const UserMethod& m = it->second;
    if (arg_types != m.arg_sig)
      throw ValueError(fmt::format("mproc::Manager: {}.{} takes ({}), not ({})", type_->name, m.name, m.arg_desc,
                                   demangle_args(arg_types)));
    Bytes out;
    m.invoke(m, obj_, args, out);
    return out;
  }

 private:
  // "std::tuple<int, std::string>" -> "int, std::string"
  static std::string demangle_args(View mangled) {
    std::string d = demangle(std::string(mangled).c_str());
    if (d.starts_with("std::tuple<") && d.ends_with('>')) return d.substr(11, d.size() - 12);
    return d;
  }
  std::shared_ptr<const ServedType> type_;
  void* obj_;
};

constexpr BuiltinKind kContainerKinds[] = {
    builtin_kind<proto::DictProtocol, DictServant>(),
    builtin_kind<proto::ListProtocol, ListServant<proto::ListProtocol>>(),
    builtin_kind<proto::ArrayProtocol, ListServant<proto::ArrayProtocol>>(),
    builtin_kind<proto::SetProtocol, SetServant>(),
    builtin_kind<proto::ValueProtocol, ValueServant>(),
    builtin_kind<proto::NamespaceProtocol, NamespaceServant>(),
};

}  // namespace

std::span<const BuiltinKind> container_kinds() { return kContainerKinds; }

std::unique_ptr<Servant> make_user_servant(std::shared_ptr<const ServedType> type) {
  return std::make_unique<UserServant>(std::move(type));
}

void TypeRegistry::add(UserType type) {
  auto served = std::make_shared<ServedType>();
  served->name = type.name;
  served->make = type.make;
  served->destroy = type.destroy;
  for (UserMethod& m : type.methods) served->methods.emplace(m.name, std::move(m));
  types[std::move(type.name)] = std::move(served);
}

bool CallContext::peer_gone() const {
  if (peer_fd < 0) return false;
  pollfd p{peer_fd, POLLRDHUP, 0};
  return ::poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace mproc::detail
