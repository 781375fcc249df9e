// Megatron torch_dist -> Megatron-LM's legacy checkpoint layout (internal to
// the convert layer; see ckpt/convert.h for the options).
//
// What is written, for the source's own parallel layout, one folder per
// model-parallel rank (Megatron-LM checkpointing.py get_checkpoint_name):
//   dst/iter_<N:07d>/mp_rank_<TP:02d>[_<PP:03d>]/model_optim_rng.pt
//       torch.save of {args, checkpoint_version, iteration, model | model0..,
//       optimizer, opt_param_scheduler, rng_state,
//       num_floating_point_operations_so_far} as generate_state_dict builds
//       it: the source's common objects carried as they are, the model as
//       each chunk's state_dict_for_save_checkpoint() (local layer numbers,
//       TP-local shards, `_extra_state` None), the optimizer's param groups
//       (and grad scaler), the rank's own RNG state;
//   dst/iter_<N:07d>/mp_rank_.../distrib_optim.pt
//       DistributedOptimizer.save_parameter_state's dict
//       {"buckets_coalesced": True, gbuf_idx: {(param dtype, grad dtype):
//       {"param", "exp_avg", "exp_avg_sq": fp32 world tensors,
//       "numel_unpadded"}}}, each world tensor streamed parameter by
//       parameter at the offsets the model layer computes (alignment gaps
//       zero);
//   dst/latest_checkpointed_iteration.txt, last (the commit point).
// Every file is published atomically; on failure what this call wrote is
// removed. An iteration folder that already holds files is refused, so a
// checkpoint at the destination stays intact.
//
// Memory: one parameter shard (plus the torch.save copy buffers) at a time.
// Thread-safety: reentrant for different destinations.
#ifndef CKPT_CONVERT_LEGACY_H_
#define CKPT_CONVERT_LEGACY_H_

#include <string>

#include "ckpt/convert.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

// Errors: InvalidArgument (source not torch_dist, args that do not describe
// the model, the iteration folder exists and is not empty); Unimplemented
// (expert parallelism, dp_zero_gather_scatter); DataLoss (optimizer buckets
// that do not match the layout, missing tensors); I/O errors naming the file.
Result<ConvertReport> ConvertToLegacy(const std::string& src, const std::string& dst, const ConvertOptions& options,
                                      Env* env);

// Legacy Megatron-LM layout -> torch_dist, optimizer state model-space
// (`fully_reshardable`, so Megatron can load it at another layout): every
// model tensor and `optimizer.state.{param,exp_avg,exp_avg_sq}.<key>` as
// entries with one chunk per rank shard (as megatron-core writes them),
// the linear layers' `_extra_state` (None), each writer's RNG state, and
// the common dict {args, checkpoint_version, iteration, optimizer (param
// groups, sharding type), opt_param_scheduler,
// num_floating_point_operations_so_far, content_metadata}, published by the
// torch_dist writer (data first, metadata.json, then the tracker).
// Errors: as ConvertToLegacy; those of the torch_dist writer.
Result<ConvertReport> ConvertLegacyToTorchDist(const std::string& src, const std::string& dst,
                                               const ConvertOptions& options, Env* env);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_LEGACY_H_
