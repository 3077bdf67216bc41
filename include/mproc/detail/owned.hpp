// Light owning handles for the public headers, which leave `<memory>` out
// (issue 15: it costs a file including them ~13k preprocessed lines).
#pragma once
#include <utility>

namespace mproc::detail {

// Sole ownership of a heap object, as std::unique_ptr<T> (move-only). T may
// be incomplete where an Owned<T> is declared; it must be complete where one
// is destroyed or reset, as for unique_ptr: keep such members' owners'
// destructors and move assignments out of line.
template <class T>
class Owned {
 public:
  Owned() noexcept = default;
  explicit Owned(T* adopt) noexcept : p_(adopt) {}
  Owned(Owned&& other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
  Owned& operator=(Owned&& other) noexcept {
    if (this != &other) {
      reset();
      p_ = std::exchange(other.p_, nullptr);
    }
    return *this;
  }
  Owned(const Owned&) = delete;
  Owned& operator=(const Owned&) = delete;
  ~Owned() { reset(); }
  void reset() noexcept { delete std::exchange(p_, nullptr); }
  T* get() const noexcept { return p_; }
  T* operator->() const noexcept { return p_; }
  T& operator*() const noexcept { return *p_; }
  explicit operator bool() const noexcept { return p_ != nullptr; }

 private:
  T* p_ = nullptr;
};

}  // namespace mproc::detail
