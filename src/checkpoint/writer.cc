// WriteSafetensorsFile / WriteTorchFile: the format writers behind an atomic publish.
#include "ckpt/writer.h"

#include "format/safetensors/safetensors.h"
#include "format/torch/torch_writer.h"
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
  std::vector<torch::TensorToSave> items;
  items.reserve(tensors.size());
  for (const TensorToWrite& t : tensors) {
    items.push_back({t.key, t.dtype, t.shape, t.write});
  }
  // torch.save names the archive folder after the file (basename without its extension).
  std::string archive = Basename(path);
  if (size_t dot = archive.rfind('.'); dot != std::string::npos && dot > 0) archive.resize(dot);
  return WriteFileAtomically(env, path, [&](WritableFile* f) {
    return torch::SaveStateDict(items, archive, f);
  });
}

}  // namespace ckpt
