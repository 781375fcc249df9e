// CRC-32 (the zip / zlib polynomial) at memory speed.
//
// zlib's crc32 runs at about 4 GB/s here, which made the CRC the largest cost
// of writing and verifying torch.save archives; libdeflate's uses carry-less
// multiplication (PCLMUL) where the CPU has it. Same values as zlib's crc32:
// Crc32(0, ...) starts a CRC, and Crc32(previous, ...) continues one.
#ifndef CKPT_UTIL_CRC32_H_
#define CKPT_UTIL_CRC32_H_

#include <cstddef>
#include <cstdint>

namespace ckpt {

uint32_t Crc32(uint32_t crc, const void* data, size_t n);

}  // namespace ckpt

#endif  // CKPT_UTIL_CRC32_H_
