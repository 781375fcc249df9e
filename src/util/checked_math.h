// Overflow-checked arithmetic for sizes read from files. A length field is a
// claim: every product and sum of untrusted numbers goes through these.
#ifndef CKPT_UTIL_CHECKED_MATH_H_
#define CKPT_UTIL_CHECKED_MATH_H_

#include <cstdint>
#include <optional>
#include <span>

namespace ckpt {

inline std::optional<uint64_t> CheckedAdd(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<uint64_t> CheckedMul(uint64_t a, uint64_t b) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<int64_t> CheckedAddSigned(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) return std::nullopt;
  return r;
}
inline std::optional<int64_t> CheckedMulSigned(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return std::nullopt;
  return r;
}

// Product of dims; nullopt if any dim is negative or the product overflows int64.
inline std::optional<int64_t> CheckedNumel(std::span<const int64_t> shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, d, &n)) return std::nullopt;
  }
  return n;
}

// True if [offset, offset+len) lies inside [0, size).
inline bool RangeInside(uint64_t offset, uint64_t len, uint64_t size) {
  return offset <= size && len <= size - offset;
}

}  // namespace ckpt

#endif  // CKPT_UTIL_CHECKED_MATH_H_
