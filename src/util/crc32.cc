#include "util/crc32.h"

#include <libdeflate.h>

namespace ckpt {

uint32_t Crc32(uint32_t crc, const void* data, size_t n) {
  return libdeflate_crc32(crc, data, n);
}

}  // namespace ckpt
