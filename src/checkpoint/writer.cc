// WriteSafetensorsFile / WriteTorchFile: the format writers behind an atomic publish.
#include "ckpt/writer.h"

#include "checkpoint/torch_rewrite.h"

#include "format/safetensors/safetensors.h"
#include "format/torch/torch_writer.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt {


Status WriteSafetensorsFile(const std::string& path, std::span<const TensorToWrite> tensors,
                            const std::optional<std::map<std::string, std::string>>& metadata,
                            Env* env) {
  if (env == nullptr) env = Env::Default();
  std::vector<safetensors::WriteEntry> entries;
  entries.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    entries.push_back({safetensors::TensorSpec{t.key, t.dtype, t.shape}, t.write});
  }
  return WriteFileAtomically(env, path, [&](WritableFile* f) {
    return safetensors::WriteFile(entries, metadata, f);
  });
}

Status WriteTorchFile(const std::string& path, std::span<const TensorToWrite> tensors, Env* env) {
  if (env == nullptr) env = Env::Default();
  torch::StateDict sd(/*ordered=*/false);
  for (const TensorToWrite& t : tensors) {
    std::optional<int64_t> numel = CheckedNumel(t.shape);
    std::optional<uint64_t> nbytes =
        numel ? CheckedMul(static_cast<uint64_t>(*numel), static_cast<uint64_t>(DTypeSize(t.dtype)))
              : std::nullopt;
    if (!nbytes) return InvalidArgumentError(StrCat("tensor ", Quote(t.key), ": invalid shape"));
    torch::TensorToSave item;
    item.dtype = t.dtype;
    item.shape = t.shape;
    item.nbytes = *nbytes;
    item.write = t.write;
    CKPT_RETURN_IF_ERROR(sd.AddTensor(t.key, std::move(item)));
  }
  torch::TorchWriteOptions options;
  options.archive_name = internal_checkpoint::TorchArchiveName(path);
  return WriteFileAtomically(env, path, [&](WritableFile* f) {
    return torch::WriteStateDict(sd, f, options);
  });
}

}  // namespace ckpt
