// Writing tensors from memory or from any producer into a checkpoint file.
//
// The caller describes each tensor (key, dtype, shape) and gives a callback
// that streams its contiguous little-endian bytes; the writer never holds more
// than the bytes in flight. Files are published atomically (temporary sibling,
// fsync, rename, fsync of the directory): on failure nothing is left at `path`
// but what was there before.
//
// Thread-safety: functions are reentrant; callbacks run on the calling thread.
#ifndef CKPT_WRITER_H_
#define CKPT_WRITER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt {

struct TensorToWrite {
  std::string key;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  // Streams exactly numel * DTypeSize(dtype) bytes.
  std::function<Status(ByteSink*)> write;
};

// Writes a .safetensors file byte-identical to safetensors.torch.save_file for
// the same tensors and metadata (a metadata map with more than one key is
// written sorted; safetensors' own order varies run to run).
// Errors: InvalidArgument for duplicate keys or a dtype safetensors cannot hold
// (complex128, quantized, ...); a callback writing the wrong byte count;
// I/O errors naming the path.
Status WriteSafetensorsFile(const std::string& path, std::span<const TensorToWrite> tensors,
                            const std::optional<std::map<std::string, std::string>>& metadata,
                            Env* env = nullptr);

// Writes a torch.save archive holding a dict {key: tensor} in the given order,
// loadable by torch.load(weights_only=True) and torch.load(mmap=True).
// Errors: InvalidArgument for duplicate keys; as above otherwise.
Status WriteTorchFile(const std::string& path, std::span<const TensorToWrite> tensors,
                      Env* env = nullptr);

}  // namespace ckpt

#endif  // CKPT_WRITER_H_
