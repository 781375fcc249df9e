// Convert with to=torch_dist (internal to the convert layer): what a source
// becomes in a Megatron-Core torch_dist checkpoint, published by
// internal_checkpoint::WriteTorchDistCheckpoint
// (src/checkpoint/torch_dist_writer.h has the files and the commit order).
//
// A DCP / torch_dist source (SourceKind kDcp / kTorchDist) keeps its entries,
// chunk layout, bytes items and planner paths, its common state (common.pt or
// the common_state entry, copied when the layout matches, re-serialized
// otherwise) and, for 0.19, its extra metadata.json keys. A torch.save state
// dict (kTorchFile with a dict root) gives the tensors Megatron's
// extract_matching_values would extract as entries and the rest as the
// common dict. Other sources: flat tensor entries, an empty common dict.
//
// Thread-safety: reentrant for different destinations (the entries' callbacks
// read the source with thread-safe reads; progress is mutex-guarded).
#ifndef CKPT_CONVERT_TORCH_DIST_H_
#define CKPT_CONVERT_TORCH_DIST_H_

#include <string>

#include "ckpt/convert.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

// Convert with options.to == kTorchDist (see ckpt/convert.h).
// Errors: InvalidArgument (bad megatron_version, negative iteration, dst
// names a file, max_shard_size set); those of OpenCheckpoint, of reading the
// source's common state (Unimplemented for a non-allowlisted global without
// allow_opaque, when the common state must be re-serialized) and of
// internal_checkpoint::WriteTorchDistCheckpoint.
Result<ConvertReport> ConvertToTorchDist(const std::string& src, const std::string& dst,
                                         const ConvertOptions& options, Env* env);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_TORCH_DIST_H_
