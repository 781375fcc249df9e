// Resharding a Megatron checkpoint to another parallel layout, offline.
//
// Reshard reads a Megatron checkpoint (torch_dist with any optimizer sharding
// type, or legacy mp_rank_* folders) in model space (the global tensors and
// per-parameter optimizer states, src/convert/megatron_view.h) and writes a
// torch_dist checkpoint for the target layout: tensors chunked as the
// target's ranks hold them (TP shards, gated fc1 halves apart), the
// embedding / output layer re-padded to the target's padded vocabulary, the
// optimizer state model-space (`fully_reshardable`, which megatron-core loads
// at any layout) or in the target layout's own buckets (`dp_reshardable`,
// megatron-core's default), `args` describing the target layout and the
// content metadata saying which, so Megatron loads it without extra flags.
// Peak memory is a few parameters' state (each chunk is read and written on
// its own). The target layout is checked against the model (heads, query
// groups, FFN, layers per stage, experts, vocabulary) before anything is
// written; the output is published as WriteTorchDistCheckpoint publishes
// (nothing that looks complete on failure).
//
// Errors name the options as ReshardOptions spells them (`tp`, `pp`, ...).
// Thread-safety: Reshard may run concurrently on different destinations.
#ifndef CKPT_RESHARD_H_
#define CKPT_RESHARD_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt {

// How the output keeps the distributed optimizer's state.
enum class OptimizerSharding {
  // Per parameter, global (optimizer.state.<state>.<key>): megatron-core
  // loads it at any layout.
  kFullyReshardable,
  // The target layout's flat buckets per model-parallel rank
  // (optimizer.distributed.dp_group_idx_<I>.gbuf_idx_<g>...bucket_idx_<b>.<state>),
  // megatron-core's default: loads only at that layout, and saves cheaply.
  kDpReshardable,
};

// The output's format.
enum class ReshardFormat {
  kTorchDist,  // iter_N/ with __<rank>_<writer>.distcp, .metadata, common state
  kLegacy,     // Megatron-LM's iter_N/mp_rank_*/{model_optim_rng.pt, distrib_optim.pt}
};

struct ReshardOptions {
  // Target sizes; 0 keeps the source's (etp: the target tp when the source's
  // etp equals its tp, else the source's etp).
  int64_t tp = 0;
  int64_t pp = 0;
  int64_t vpp = 0;
  int64_t dp = 0;
  int64_t ep = 0;
  int64_t etp = 0;
  // The tokenizer's vocabulary size, when args do not record it and the
  // target's padded vocabulary would otherwise be ambiguous.
  std::optional<int64_t> vocab_size;
  ReshardFormat to = ReshardFormat::kTorchDist;
  // torch_dist output only (legacy keeps its distrib_optim.pt buffers).
  OptimizerSharding optimizer_sharding = OptimizerSharding::kFullyReshardable;
  bool no_optimizer = false;       // leave the optimizer state out
  std::string megatron_version;    // "0.16" / "0.19" form of the output ("" = newest)
  std::optional<int64_t> iteration;  // the output's iteration (default: the source's)
  int thread_count = 0;            // writer threads (0: the writer's default)
  bool direct_io = true;           // ConvertOptions::direct_io
  // Only check and describe (the preflight): nothing is written.
  bool check_only = false;
  std::function<void(uint64_t done, uint64_t total)> progress;
  Env* env = nullptr;
};

struct ReshardReport {
  std::string source_layout;  // "TP=1 PP=4 DP=2 (world 8)"
  std::string target_layout;
  std::string optimizer;      // the source's optimizer sharding type ("" when none)
  // Whether megatron-core would load the source as it is at the target
  // layout (no reshard needed), and if not, why: one line per reason (the
  // optimizer's sharding type, buckets whose boundaries move, the padded
  // vocabulary, a legacy checkpoint's rank folders).
  bool loads_as_is = false;
  std::vector<std::string> load_blockers;
  int64_t source_padded_vocab = 0;
  int64_t target_padded_vocab = 0;
  std::vector<std::string> files;
  std::vector<std::string> warnings;
  uint64_t tensors = 0;
  uint64_t bytes = 0;
  size_t data_files = 0;       // as ConvertReport's
  size_t direct_io_files = 0;
};

// Reshards `src` (a Megatron-LM root or iteration folder, torch_dist or
// legacy) into `dst` (a root: iter_N/ and latest_checkpointed_iteration.txt).
// Errors: InvalidArgument (a target size that does not fit the model, naming
// it and the size it must divide; a source that is not a Megatron checkpoint;
// dst == src); DataLoss (a source whose stored sizes contradict its args);
// Unimplemented (an expert-parallel change that turns one optimizer into two
// or back); those of reading and writing.
Result<ReshardReport> Reshard(const std::string& src, const std::string& dst, const ReshardOptions& options);

// What a Megatron checkpoint can be resumed at (the preflight without a
// target, for `inspect`): each size of one parallel dimension that fits the
// model, the others kept at the source's, and whether megatron-core would
// load the source there as it is.
struct ReshardChoices {
  std::string layout;     // the source's
  std::string optimizer;  // the source's optimizer sharding type ("" when none)
  int64_t padded_vocab = 0;
  struct Size {
    std::string name;  // "tp", "pp" (without interleaving), "dp" (powers of two up to max(8, 2 * dp)), "ep"
    int64_t size = 0;
    int64_t padded_vocab = 0;  // the target's
    bool reshardable = true;   // false: reshard refuses it (an EP change that splits or joins optimizers)
    std::vector<std::string> load_blockers;  // empty: megatron-core loads the source as it is there
  };
  std::vector<Size> sizes;
};

// The choices for `src`; `base` gives vocab_size, no_optimizer and env (its
// sizes are ignored). A size whose padded vocabulary is ambiguous (args
// without vocab_size) is left out unless base.vocab_size is set.
// Errors: as Reshard's for opening the source.
Result<ReshardChoices> DescribeReshard(const std::string& src, const ReshardOptions& base);

}  // namespace ckpt

#endif  // CKPT_RESHARD_H_
