// CheckpointReader implementations, one per source format (internal).
#ifndef CKPT_CHECKPOINT_READERS_H_
#define CKPT_CHECKPOINT_READERS_H_

#include <memory>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"

namespace ckpt::internal_checkpoint {

// A single .safetensors file.
Result<std::unique_ptr<CheckpointReader>> OpenSafetensors(std::shared_ptr<const ByteSource> file);

// A torch.save zip archive (.pt/.bin/.pth).
Result<std::unique_ptr<CheckpointReader>> OpenTorch(std::shared_ptr<const ByteSource> file,
                                                    PickleMode mode);

// A sharded set: `index_path` is a *.index.json naming shard files in its folder.
Result<std::unique_ptr<CheckpointReader>> OpenSharded(const std::string& index_path,
                                                      const OpenOptions& options);

// Opens one file by sniffing its first bytes (zip magic -> torch, u64 header
// length + '{' -> safetensors, a *.index.json name -> sharded).
Result<std::unique_ptr<CheckpointReader>> OpenFile(const std::string& path,
                                                   const OpenOptions& options);

bool EndsWith(std::string_view s, std::string_view suffix);

// The whole of a small file (metadata.json, the tracker).
// Errors: ResourceExhausted naming the path when it holds more than `max`
// bytes; the Env's open/read errors.
Result<std::string> ReadSmall(Env* env, const std::string& path, uint64_t max);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_READERS_H_
