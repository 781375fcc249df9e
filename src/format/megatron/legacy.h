// Megatron-LM LEGACY checkpoints (`--ckpt-format torch`): the per-rank layout.
//
// A legacy iteration folder (docs/format.md "Megatron legacy checkpoints",
// docs/megatron-format.md §5) holds one folder per model-parallel rank
// (megatron/training/checkpointing.py get_checkpoint_name):
//   iter_0000100/mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}]/model_optim_rng.pt
//                                                      /distrib_optim.pt   (distributed optimizer)
// The `_PPP` part is present iff PP > 1 and the `_EEE` part iff EP > 1, so a
// name with one suffix (`mp_rank_00_002`) is PP rank 2 or EP rank 2: only the
// sizes (args of rank 0) tell; without them the folder set is read the way
// find_checkpoint_rank_0 probes (none, EP only, PP only, PP + EP).
//
// This header turns what was read into structs:
//   - folder names and the (tp, pp, ep) grid           -> ParseRankFolderName, MapRankFolders
//   - model_optim_rng.pt (a torch.save dict)            -> ParseModelOptimRng
//   - distrib_optim.pt (formats A, B, C, chained list)  -> ParseDistribOptim
// Tensors are referred to as the torch::TorchFile of their file lists them
// (index into TorchFile::tensors() and its flattened key), so a reader can
// stream them; what a local tensor is in the global model (TP merge, layer
// offsets, optimizer buffer offsets) is the model layer's (src/model/).
//
// Pure format code: no I/O. Errors are Status values whose message names the
// file (the `name` argument, e.g. "mp_rank_00_001/distrib_optim.pt") and the
// key; nothing read from a file can abort. Structural errors (a wrong type
// where Megatron's code requires one) fail the parse with DataLoss;
// consistency findings (sizes that disagree) are listed in `problems` so a
// reader can still show the rest.
//
// Thread-safety: all functions are pure. Lifetime: the structs hold `const
// pickle::Value*` pointers into the TorchFile they were parsed from (and
// indices into its tensors()); they are valid only while that file lives.
#ifndef CKPT_FORMAT_MEGATRON_LEGACY_H_
#define CKPT_FORMAT_MEGATRON_LEGACY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dtype.h"
#include "ckpt/status.h"
#include "format/megatron/megatron.h"
#include "format/pickle/value.h"
#include "format/torch/torch_file.h"

namespace ckpt::megatron::legacy {

inline constexpr char kModelFileName[] = "model_optim_rng.pt";
inline constexpr char kDistribOptimFileName[] = "distrib_optim.pt";
inline constexpr char kRankFolderPrefix[] = "mp_rank_";
// MapRankFolders refuses grids with more ranks than this (InvalidArgument):
// sizes come from a file.
inline constexpr int64_t kMaxGridRanks = int64_t{1} << 20;

// ---------------------------------------------------------------------------
// Rank folders

// A (tp, pp, ep) model-parallel rank.
struct RankCoord {
  int64_t tp = 0;
  int64_t pp = 0;
  int64_t ep = 0;
  bool operator==(const RankCoord&) const = default;
};

// The numbers of a folder name: tp, then zero to two more. Only canonical
// names parse: what get_checkpoint_name writes ("mp_rank_" + at least 2 tp
// digits, each further part '_' + at least 3 digits, no extra leading zeros
// beyond that width).
struct RankFolderName {
  int64_t tp = 0;
  std::vector<int64_t> suffixes;  // 0, 1 (pp or ep) or 2 (pp, ep) numbers
};
std::optional<RankFolderName> ParseRankFolderName(std::string_view name);

// get_checkpoint_name's folder for a rank: `pipeline_parallel` iff PP > 1,
// `expert_parallel` iff EP > 1.
std::string RankFolder(const RankCoord& r, bool pipeline_parallel, bool expert_parallel);

// The parallel sizes that decide folder names.
struct GridSizes {
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t ep = 1;
};

// The folder of rank 0 as find_checkpoint_rank_0 finds it among `names`
// (names of folders that hold model_optim_rng.pt): "mp_rank_00", else
// "mp_rank_00_000" (EP only, then PP only: the same name), else
// "mp_rank_00_000_000". nullopt when none is present.
std::optional<std::string> FindRank0Folder(const std::vector<std::string>& names);

struct RankEntry {
  RankCoord coord;
  std::string folder;    // the name get_checkpoint_name gives it
  bool present = false;  // the folder is among the names
};

struct RankGrid {
  GridSizes sizes;
  // "args" (sizes given), or "folders" (inferred from the names: max index + 1).
  std::string sizes_source;
  bool pipeline_parallel = false;  // names carry _PPP
  bool expert_parallel = false;    // names carry _EEE
  // Inferred from names with one suffix: PP or EP cannot be told apart; the
  // suffix is taken as PP (the common case) and this is set.
  bool suffix_ambiguous = false;
  // Every rank, ordered tp fastest, then ep, then pp.
  std::vector<RankEntry> ranks;
  std::vector<std::string> missing;     // expected folders absent from the names
  std::vector<std::string> unexpected;  // mp_rank_* names not in the grid (or not canonical)

  // The entry of a rank, nullptr when outside the grid.
  const RankEntry* Find(const RankCoord& r) const;
};

// Maps every (tp, pp, ep) rank of the grid to its folder. `names`: the
// children of the iteration folder (others than mp_rank_* are ignored).
// `sizes`: from args when known (tensor_model_parallel_size,
// pipeline_model_parallel_size, expert_model_parallel_size); nullopt infers
// them from the names (see RankGrid::sizes_source, suffix_ambiguous).
// Missing and unexpected folders are listed, not errors.
// Errors: InvalidArgument naming `dir` when a size is < 1 or the grid has more
// than kMaxGridRanks ranks; NotFound when sizes are inferred and no name is a
// rank folder.
Result<RankGrid> MapRankFolders(const std::vector<std::string>& names,
                                const std::optional<GridSizes>& sizes, std::string_view dir);

// One line per missing and unexpected folder, e.g.
// "iter_0000010: rank folder mp_rank_01_001 (tp 1, pp 1, ep 0) is missing".
std::vector<std::string> GridProblems(const RankGrid& g, std::string_view dir);

// ---------------------------------------------------------------------------
// A tensor as its torch.save file lists it.

struct TensorRef {
  size_t index = 0;   // into TorchFile::tensors()
  std::string key;    // TorchFile::tensors()[index].key, e.g. "0.(torch.bfloat16, torch.float32).param"
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
};

// ---------------------------------------------------------------------------
// distrib_optim.pt (§5.3)

enum class DistribOptimFormat {
  kCoalesced,  // C: "buckets_coalesced": True, one world tensor per state key (core >= 0.7)
  kPerBucket,  // B: (param_dtype, grad_dtype) keys, a tensor per bucket, per_bucket_numel* (core 0.6)
  kPerBucketLegacy,  // A: a single dtype key, a tensor per bucket (core <= 0.5)
};
// "C (buckets coalesced)", "B (per bucket)", "A (per bucket, single dtype key)".
std::string_view DistribOptimFormatName(DistribOptimFormat f);

// One optimizer state key of a buffer: "param" (the fp32 main params),
// "exp_avg", "exp_avg_sq", or whatever the optimizer keeps.
struct StateTensors {
  std::string name;
  // C: exactly one (the world tensor, numel_unpadded long). A/B: one per bucket.
  std::vector<TensorRef> tensors;
};

// One gbuf_idx entry: a buffer of one (param_dtype, grad_dtype).
struct Buffer {
  int64_t index = 0;       // gbuf_idx
  std::string dtype_key;   // the dict key as written: "(torch.bfloat16, torch.float32)" / "torch.float32"
  std::string param_dtype;  // "torch.bfloat16" (A: the single dtype)
  std::string grad_dtype;   // "torch.float32"
  std::optional<int64_t> numel_unpadded;      // C
  std::vector<int64_t> bucket_numel;           // B (and A when present): per_bucket_numel
  std::vector<int64_t> bucket_numel_unpadded;  // B: per_bucket_numel_unpadded
  std::vector<StateTensors> states;            // in dict order
  // Elements of the buffer's state: C numel_unpadded; A/B the sum of the
  // first state key's bucket tensors.
  int64_t numel() const;
};

// One optimizer's state dict.
struct DistribOptimState {
  DistribOptimFormat format = DistribOptimFormat::kCoalesced;
  std::vector<Buffer> buffers;  // by gbuf_idx, 0..N-1
};

struct DistribOptim {
  // The root was a list (ChainedOptimizer with more than one sub-optimizer
  // that has a distributed state).
  bool chained = false;
  // One per sub-optimizer (one in all when !chained); nullopt where the list
  // holds None (this rank is not DP rank 0 of that sub-optimizer).
  std::vector<std::optional<DistribOptimState>> optimizers;
  // Consistency findings, each naming the file and the key, e.g.
  // "distrib_optim.pt: buffer 0 (torch.bfloat16, torch.float32): exp_avg has 1200
  // elements, numel_unpadded says 1216".
  std::vector<std::string> problems;
};

// Parses the unpickled root of distrib_optim.pt (file.root()). `name` (the
// file, relative to the iteration folder) prefixes errors and problems.
// Checks: C: numel_unpadded an int >= 0, each state tensor 1-D and
// numel_unpadded long; A/B: per_bucket_numel* lists of one {dtype: [ints]}
// per buffer, same dtype key as the buffer, unpadded <= padded, every state
// key with one tensor per bucket of the padded length (A without
// per_bucket_numel: the same lengths for every key); gbuf_idx 0..N-1.
// Errors: DataLoss naming `name` and the key (root not a dict nor list, a
// buffer not a dict of one dtype key, a state value that is not a tensor or
// list of tensors, numel_unpadded not an int, unknown top-level keys).
Result<DistribOptim> ParseDistribOptim(const torch::TorchFile& file, std::string_view name);

// OK when d.problems is empty; else DataLoss with the first problem and the count.
Status CheckDistribOptim(const DistribOptim& d);

// ---------------------------------------------------------------------------
// model_optim_rng.pt (§5.2)

// One model chunk: "model" (no VPP) or "model<v>" (virtual pipeline chunk v).
struct ModelChunk {
  std::string name;                // "model", "model0", ...
  std::optional<int64_t> vpp_rank;  // v of "model<v>"
  // The chunk's tensors (key = the state dict's local key, e.g.
  // "decoder.layers.0.self_attention.linear_qkv.weight"; layer indices are
  // local to the PP stage / VPP chunk, shapes TP-local).
  std::vector<TensorRef> tensors;
  std::vector<std::string> local_keys;  // tensors[i]'s key without "<name>."
  int64_t other_entries = 0;  // non-tensor leaves (BytesIO _extra_state, None ...)
};

// One optimizer's state_dict() (an element of the list for a ChainedOptimizer).
struct OptimizerEntry {
  const pickle::Value* value = nullptr;  // the dict
  std::string key_prefix;  // TorchFile key prefix: "optimizer." or "optimizer.<i>."
  const pickle::Value* param_groups = nullptr;  // optimizer["optimizer"]["param_groups"] (a list)
  int64_t param_group_count = 0;
  const pickle::Value* grad_scaler = nullptr;   // absent or None: nullptr
  // Non-distributed optimizers (Float16OptimizerWithFloat16Params, FP32Optimizer):
  const pickle::Value* state = nullptr;  // optimizer["optimizer"]["state"]: {param id: {exp_avg ...}}
  int64_t state_entries = 0;
  const pickle::Value* fp32_from_fp16_params = nullptr;  // [[fp32 tensor per param] per group]
  // No "state" in the inner dict: the tensor state is in distrib_optim.pt.
  bool distributed = false;
  std::vector<TensorRef> tensors;  // tensors under key_prefix
};

struct ModelOptimRng {
  CommonState common;  // args, iteration, checkpoint_version, opt_param_scheduler, ...
  std::vector<ModelChunk> chunks;  // "model", or "model0".."modelN" by v
  bool has_optimizer = false;
  bool chained_optimizer = false;  // `optimizer` is a list
  std::vector<OptimizerEntry> optimizers;
  // Tensors neither in a model chunk nor under optimizer (rng states ...).
  int64_t other_tensors = 0;
  // Findings that do not stop reading (a model chunk that is not a dict, a
  // VPP chunk index gap ...), each naming the file and key.
  std::vector<std::string> problems;
};

// Parses model_optim_rng.pt. The common fields go through ExtractCommonState.
// Errors: DataLoss naming `name` (root not a dict; as ExtractCommonState).
Result<ModelOptimRng> ParseModelOptimRng(const torch::TorchFile& file, std::string_view name);

}  // namespace ckpt::megatron::legacy

#endif  // CKPT_FORMAT_MEGATRON_LEGACY_H_
