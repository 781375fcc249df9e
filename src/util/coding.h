// Little- and big-endian fixed-width encoding (pickle, zip, safetensors).
#ifndef CKPT_UTIL_CODING_H_
#define CKPT_UTIL_CODING_H_

#include <cstdint>
#include <cstring>
#include <string>

namespace ckpt {

template <typename T>
inline T DecodeLE(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "little-endian hosts only");
  return v;
}

template <typename T>
inline void PutLE(std::string* dst, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  dst->append(buf, sizeof(T));
}

inline uint64_t DecodeBE64(const void* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return __builtin_bswap64(v);
}

inline void PutBE64(std::string* dst, uint64_t v) {
  v = __builtin_bswap64(v);
  char buf[8];
  std::memcpy(buf, &v, 8);
  dst->append(buf, 8);
}

}  // namespace ckpt

#endif  // CKPT_UTIL_CODING_H_
