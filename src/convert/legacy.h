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
// The iteration folder is built beside itself and switched over in one step
// (engine::FolderCommit): a checkpoint at the destination stays intact until
// the new one is complete, and a failure leaves it as it was.
//
// Memory: one parameter shard (plus the torch.save copy buffers) at a time.
// Thread-safety: reentrant for different destinations.
#ifndef CKPT_CONVERT_LEGACY_H_
#define CKPT_CONVERT_LEGACY_H_

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/convert.h"
#include "ckpt/model.h"
#include "format/pickle/value.h"
#include "format/torch/tree_writer.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

class MegatronView;

// What a legacy checkpoint is written from: the output layout's rank folders
// and, per rank, where its tensors and objects come from. ConvertToLegacy
// fills it from a torch_dist checkpoint at its own layout; reshard from any
// Megatron checkpoint at a target layout.
struct LegacyPlan {
  using Keep = std::vector<std::shared_ptr<const torch::TorchFile>>;  // imports kept alive until written
  std::vector<model::RankOptimizer> ranks;     // one per folder
  std::vector<model::LegacyRankFolder> folders;
  DType params_dtype = DType::kBFloat16;
  // The optimizer states distrib_optim.pt holds ("param" first); empty: no
  // distrib_optim.pt and no "optimizer" entry.
  std::vector<std::string> states;
  // Streams parameter `param` of chunk `chunk` of ranks[rank] as that rank
  // holds it (its TP-local shape, row-major): the weights (state "", in
  // params_dtype) or optimizer state `state` (fp32).
  std::function<Status(size_t rank, int64_t chunk, size_t param, std::string_view state, ByteSink* out)> read_local;
  // A dict with the entries every rank file takes as they are: args,
  // checkpoint_version, iteration, opt_param_scheduler,
  // num_floating_point_operations_so_far (those present).
  std::function<Result<pickle::Value*>(torch::TorchTreeWriter* w, Keep* keep)> common;
  // Rank `rank`'s "optimizer" entry (DistributedOptimizer.state_dict(); a
  // list for a ChainedOptimizer), given common()'s dict.
  std::function<Result<pickle::Value*>(size_t rank, pickle::Value* common, torch::TorchTreeWriter* w, Keep* keep)>
      optimizer;
  // Rank `rank`'s rng_state (nullptr: none); may be unset.
  std::function<Result<pickle::Value*>(size_t rank, torch::TorchTreeWriter* w, Keep* keep)> rng;
  std::function<void(uint64_t done, uint64_t total)> progress;  // rank files done
};

// Writes `plan` as dst/iter_<N:07d>/mp_rank_*/{model_optim_rng.pt,
// distrib_optim.pt} and then dst/latest_checkpointed_iteration.txt: the
// iteration folder is staged beside itself and switched over whole
// (engine::FolderCommit), so an older checkpoint there stays intact until the
// new one is complete; on failure before the switch nothing changed. Entries
// of the old folder other than mp_rank_* are carried over.
Result<ConvertReport> WriteLegacyCheckpoint(Env* env, const std::string& dst, int64_t iteration,
                                            const LegacyPlan& plan);

// The optimizer states a legacy distrib_optim.pt of `view` holds: "param",
// Adam's exp_avg and exp_avg_sq, then any others the view has.
// Errors: DataLoss when there are no fp32 main parameters.
Result<std::vector<std::string>> LegacyOptimizerStates(const MegatronView& view);

// The legacy "optimizer" entry (DistributedOptimizer.state_dict(), a list for
// a ChainedOptimizer) from a model-space optimizer dict of a torch_dist
// common state (fully_reshardable: {param_groups, param_state_sharding_type,
// ...} or {0: .., 1: ..}), imported into `w`.
Result<pickle::Value*> LegacyOptimizerFromModelSpace(pickle::Value* opt, torch::TorchTreeWriter* w);

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
