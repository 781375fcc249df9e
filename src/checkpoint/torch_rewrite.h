// Writing a torch.save file back out with its whole object tree (internal).
#ifndef CKPT_CHECKPOINT_TORCH_REWRITE_H_
#define CKPT_CHECKPOINT_TORCH_REWRITE_H_

#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"
#include "format/torch/torch_file.h"

namespace ckpt::internal_checkpoint {

// If reader is a torch.save reader (reader.torch_file() set), writes its
// tree (non-tensor objects, opaque records, shared storages and views kept)
// to path atomically, with the archive folder named after path's stem as
// torch.save does.
// Errors: FailedPrecondition if reader is not a torch.save reader; those of
// torch::RewriteTorchFile and the Env.
Status RewriteTorchFile(const CheckpointReader& reader, const std::string& path, Env* env);

// The archive folder torch.save uses for a file: its basename without the
// last extension ("dir/model.pt" -> "model").
std::string TorchArchiveName(const std::string& path);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_TORCH_REWRITE_H_
