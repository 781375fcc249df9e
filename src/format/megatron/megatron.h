// Megatron-Core `torch_dist` checkpoints: the Megatron layer on top of DCP.
//
// A torch_dist checkpoint folder (docs/megatron-format.md §1) is a PyTorch DCP
// folder (`.metadata` + `__R_I.distcp`, see format/dcp/) plus:
//   metadata.json                       the format marker (§1.2) -> ParseConfig
//   ../latest_checkpointed_iteration.txt  the tracker (§1.1)      -> ParseTracker
//   common.pt (core <= 0.18) or the DCP bytes entry `common_state/shard_0_1`
//     (core >= 0.19): the non-sharded "common" dict (§1.3)      -> ExtractCommonState
// and DCP keys that follow Megatron's naming: ShardedTensor keys
// (`decoder.layers.mlp.linear_fc1.weight`, stacked along a leading layer axis),
// ShardedObject unique keys `<key>/shard_<offsets>_<shape>` (§2.2), optimizer
// keys `optimizer.…` (§4). This header turns those into facts for `inspect`:
// which parallel layout wrote the checkpoint, what optimizer state it holds,
// what each data file holds. It knows files, not models: what model the args
// and shapes describe is the model layer's (src/model/summary.h), which reads
// them through CommonState, the Arg* helpers and FindTensor / FindLayerTensor.
//
// Pure format code: no file I/O. Callers pass text, parsed pickle values and a
// parsed dcp::Metadata. Nothing read from a file can abort; everything that is
// only informative (Summarize, DescribeFiles, Classify) never fails and says
// "unknown" instead.
//
// Thread-safety: all functions are pure. Lifetime: CommonState and Summary hold
// `const pickle::Value*` pointers into the arena that owns the common dict
// (e.g. the torch::TorchFile it was read from); they are valid only while that
// owner lives.
#ifndef CKPT_FORMAT_MEGATRON_MEGATRON_H_
#define CKPT_FORMAT_MEGATRON_MEGATRON_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/status.h"
#include "format/dcp/metadata.h"
#include "format/pickle/value.h"

namespace ckpt::megatron {

inline constexpr char kConfigFileName[] = "metadata.json";
inline constexpr char kTrackerFileName[] = "latest_checkpointed_iteration.txt";
inline constexpr char kCommonFileName[] = "common.pt";
// core >= 0.19: the common dict is the ShardedObject "common_state", shape (1,).
inline constexpr char kCommonStateKey[] = "common_state/shard_0_1";
// metadata.json larger than this is refused by ParseConfig (ResourceExhausted).
inline constexpr size_t kMaxConfigBytes = size_t{1} << 20;

// ---------------------------------------------------------------------------
// metadata.json (§1.2)

// `json.dump(dataclasses.asdict(CheckpointingConfig(...)))`.
struct Config {
  std::string sharded_backend;          // "torch_dist"
  int64_t sharded_backend_version = 1;  // dataclass default when absent
  // Present in files of core <= 0.18 ("torch", 1); absent from core >= 0.19.
  std::optional<std::string> common_backend;
  std::optional<int64_t> common_backend_version;
  nlohmann::json raw;  // the whole object, unknown keys included
};

// Parses metadata.json; `name` (the file's path) prefixes every error.
// Unknown keys are kept in `raw`, not fatal (newer writers may add fields).
// Errors: DataLoss (not JSON, not an object, sharded_backend missing or not a
// string, a known field of the wrong type); Unimplemented (sharded_backend
// "zarr" — recognised, removed from Megatron-Core in 0.16 and not read by
// ckptkit —, any other backend than "torch_dist", a backend version other
// than 1, a common_backend other than "torch"); ResourceExhausted (text
// larger than kMaxConfigBytes).
Result<Config> ParseConfig(std::string_view text, std::string_view name);

// ---------------------------------------------------------------------------
// latest_checkpointed_iteration.txt (§1.1)

struct Tracker {
  bool release = false;
  int64_t iteration = 0;  // 0 when release
};

// Megatron-LM `read_metadata`: `int(text.strip())`, else the literal
// "release". Python int syntax is accepted (surrounding whitespace, a sign,
// single '_' between digits). Errors: DataLoss naming `name` (empty, not a
// number nor "release", negative, does not fit int64).
Result<Tracker> ParseTracker(std::string_view text, std::string_view name);

// "iter_0000100" ('iter_{:07d}', longer when the number needs it) or "release".
std::string IterationDirName(const Tracker& t);

// ---------------------------------------------------------------------------
// The common (non-sharded) state dict (§1.3)

struct TopLevelKey {
  std::string key;   // the dict key (non-string keys as their repr)
  std::string type;  // pickle::TypeName, e.g. "argparse.Namespace", "dict"
};

struct CommonState {
  const pickle::Value* root = nullptr;  // the dict (after unwrapping [dict])
  bool unwrapped_list = false;          // root came as a one-element list (core >= 0.19)
  std::vector<TopLevelKey> top_level;   // in dict order

  std::optional<int64_t> iteration;
  std::optional<double> checkpoint_version;  // 3.0 for current Megatron-LM
  std::optional<double> num_floating_point_operations_so_far;

  // `args`: the argparse.Namespace (kObject) and its BUILD state, flattened.
  const pickle::Value* args = nullptr;
  std::string args_type;  // TypeName(args) ("argparse.Namespace")
  std::map<std::string, const pickle::Value*, std::less<>> args_fields;

  // `content_metadata` (core >= 0.13).
  const pickle::Value* content_metadata = nullptr;
  std::optional<std::string> distrib_optim_sharding_type;
  std::optional<bool> distrib_optim_fully_reshardable_mem_efficient;
  std::optional<bool> singleton_local_shards;
  std::optional<bool> chained_optim_avoid_prefix;

  const pickle::Value* opt_param_scheduler = nullptr;  // dict
  // `optimizer`: what the optimizer left in the common dict (param_groups,
  // grad_scaler, param_state_sharding_type ...).
  const pickle::Value* optimizer = nullptr;
  // optimizer["param_state_sharding_type"], or, for a ChainedOptimizer, the
  // distinct values found one level down (in dict order).
  std::vector<std::string> param_state_sharding_types;

  bool has_rng_state = false;            // "rng_state" present in the common dict
  bool has_rerun_state_machine = false;  // "rerun_state_machine" present
  bool has_model = false;                // "model" or "model0".. present

  // Fields present with an unexpected type (e.g. "iteration is str"): not fatal.
  std::vector<std::string> warnings;
};

// Extracts the known fields of the common dict. `root` is common.pt's root
// (a dict) or the payload of `common_state/shard_0_1` (a one-element list
// holding the dict; `[0]` is taken). `name` prefixes errors.
// Errors: DataLoss when root is null, not a dict, or a list/tuple that is not
// exactly one dict. Wrongly typed fields only add `warnings`.
Result<CommonState> ExtractCommonState(const pickle::Value* root, std::string_view name);

// Looks up args field `name`: returns the int (kInt/kBool), nullopt when
// absent, None or another type. (Helpers used by Summarize, exposed for the
// model and checkpoint layers.)
std::optional<int64_t> ArgInt(const CommonState& c, std::string_view name);
std::optional<bool> ArgBool(const CommonState& c, std::string_view name);
// kString as is; kGlobal as "module.name" (torch.bfloat16 -> "torch.bfloat16").
std::optional<std::string> ArgString(const CommonState& c, std::string_view name);

// ---------------------------------------------------------------------------
// Keys (§2.2, §3, §4)

// `<key>/shard_<offsets dot-joined>_<shape dot-joined>` (ShardedObject.unique_key).
struct ShardedObjectKey {
  std::string key;
  std::vector<int64_t> offset;
  std::vector<int64_t> shape;  // padded with -1 when one shorter than offset (older writers)
};

// Parses a unique key exactly as ShardedObject.empty_from_unique_key does
// (one '/', then "shard", offset and shape separated by '_', each a
// non-empty '.'-list of decimal ints). nullopt for anything else.
std::optional<ShardedObjectKey> ParseShardedObjectKey(std::string_view unique_key);

// Inverse of ParseShardedObjectKey (the -1 padding is written back as is).
std::string ShardedObjectKeyString(const ShardedObjectKey& k);

enum class KeyKind {
  kModel,           // model ShardedTensor
  kOptimizerState,  // optimizer moments, buckets, optimizer ShardedObjects
  kOptimizerParam,  // fp32 main params (optimizer.state.{fp32_param,param}.*, bucket .param)
  kExtraState,      // TE `*._extra_state` ShardedObjects
  kRngState,        // `rng_state` ShardedObjects
  kRerunState,      // `rerun_state_machine_state` ShardedObjects
  kCommonState,     // `common_state` (core >= 0.19)
  kShardedObject,   // any other ShardedObject
  kOther,           // a bytes entry that is no ShardedObject
};
inline constexpr int kKeyKindCount = 9;

// "model", "optimizer state", "fp32 main params", "extra state", "rng state",
// "rerun state", "common state", "sharded object", "other".
std::string_view KeyKindName(KeyKind k);

// Classifies a DCP key by name. `is_bytes`: the entry is a BytesStorageMetadata.
// A leading `chained_<n>.` (ChainedOptimizer without chained_optim_avoid_prefix)
// is looked through. Never fails.
KeyKind Classify(std::string_view key, bool is_bytes);

// "decoder.layers.12.mlp.x" with prefix "decoder.layers." -> 12, rest "mlp.x".
// nullopt unless prefix, 1 to 18 digits and a '.' follow each other.
std::optional<int64_t> PerLayerIndex(std::string_view key, std::string_view prefix,
                                     std::string_view* rest);

// The tensor entry `key` of `md`; nullptr when absent or a bytes entry.
// (Scans when md.entry_index lacks the key, for hand-built metadata.)
const dcp::Entry* FindTensor(const dcp::Metadata& md, std::string_view key);

// A model tensor under its stacked name ("decoder.layers.<suffix>", with the
// layer axis) or, failing that, the per-layer name of the lowest layer in
// `layer_ids` ("decoder.layers.<i>.<suffix>"); nullptr when neither exists.
// `stacked` tells which one was found.
const dcp::Entry* FindLayerTensor(const dcp::Metadata& md, std::string_view suffix,
                                  const std::vector<int64_t>& layer_ids, bool* stacked);

// ---------------------------------------------------------------------------
// What each data file holds

struct FileContents {
  std::string file;  // relative path, e.g. "__0_1.distcp"
  std::string prefix;  // "" or the separation hint of "<hint>__X_Y.distcp"
  std::optional<int64_t> rank;    // X: global rank of the writer
  std::optional<int64_t> writer;  // Y: file counter on that rank
  uint64_t bytes = 0;             // sum of item lengths (checked: saturates)
  int64_t items = 0;
  int64_t tensor_chunks = 0;
  int64_t bytes_items = 0;
  std::map<KeyKind, int64_t> items_by_kind;
  // Short human text, one per group, in first-appearance order:
  // "embedding", "decoder layers 0-3", "decoder.final_layernorm",
  // "optimizer state (decoder layers 0-3, embedding)", "rng state", ...
  std::vector<std::string> groups;
  // "__0_1.distcp: rank 0, file 1: 12 items (10 tensor chunks, 2 objects), 3.2 MiB: ..."
  std::string text;
};

// One FileContents per distinct storage item file, sorted by (prefix, rank,
// writer, name). Items without an entry are counted under kOther. Never fails.
std::vector<FileContents> DescribeFiles(const dcp::Metadata& md);

// "0-3,6,8-9" for a sorted set of ints.
std::string RangesString(const std::vector<int64_t>& sorted_unique);

// ---------------------------------------------------------------------------
// Layout and optimizer summary (the model's is model::SummarizeModel)

// A fact and where it came from.
struct ParallelLayout {
  std::optional<int64_t> tp, pp, dp, cp, ep, etp, vpp, world_size;
  std::optional<bool> sequence_parallel;
};

// What the chunk grid of `.metadata` (and the ShardedObject shapes) show
// about the parallel layout; model sizes from shapes are model::ShapeFacts.
struct GridFacts {
  std::optional<int64_t> tp;          // chunks along the TP axis of a TP-split tensor
  std::string tp_key;                 // the tensor that told
  std::optional<int64_t> pp;          // rng_state shape[0] (PP, TP[, DP])
  std::optional<int64_t> rng_tp;      // rng_state shape[1]
  std::optional<int64_t> world_size;  // rerun_state_machine_state shape[0]
  std::optional<int64_t> etp;         // chunks along the ETP axis of expert fc2
  bool stacked_layers = false;        // `decoder.layers.<name>` keys with a layer axis
  bool per_layer_keys = false;        // `decoder.layers.<i>.` keys
};

struct Summary {
  // Checkpoint-level facts from the common dict.
  bool has_common = false;
  std::optional<int64_t> iteration;
  std::optional<double> checkpoint_version;
  std::optional<double> num_floating_point_operations_so_far;

  ParallelLayout from_args;  // empty when there are no args
  GridFacts from_chunks;
  // Each disagreement, e.g. "TP: args 2, chunk grid 4 (decoder.layers.self_attention.linear_qkv.weight)".
  // The checkpoint layer appends the model's (model::ModelSummary::mismatches)
  // and sets layout_mismatch again, so that inspect lists them in one place.
  std::vector<std::string> mismatches;
  bool layout_mismatch = false;  // !mismatches.empty()

  struct Optimizer {
    bool present = false;  // optimizer keys in .metadata or "optimizer" in common
    std::optional<std::string> type;  // args.optimizer ("adam", "sgd")
    std::optional<bool> use_distributed_optimizer;
    std::optional<std::string> sharding_type;
    // "content_metadata", "optimizer.param_state_sharding_type",
    // "inferred from args.ckpt_fully_parallel_save" or "".
    std::string sharding_type_source;
    int64_t state_keys = 0;  // .metadata entries of kind kOptimizerState
    int64_t param_keys = 0;  // kOptimizerParam
  } optimizer;

  std::map<KeyKind, int64_t> keys_by_kind;  // .metadata entries per kind
  std::optional<bool> singleton_local_shards;
};

// Summarizes a checkpoint's layout and optimizer. `common` may be null (no
// common.pt / no common_state). Never fails; what cannot be told stays unset.
Summary Summarize(const CommonState* common, const dcp::Metadata& md);

// Machine-readable form (unset facts are omitted). The checkpoint layer adds
// "model" and the model facts of "layout_from_chunks" (model::ToJson).
nlohmann::json ToJson(const Summary& s);

// Human lines in two parts, between which the checkpoint layer puts the
// model's (model::ToText). LayoutText: the iteration, the layout, e.g.
// "parallel layout: TP=2 PP=2 DP=2 (world 8) — from args; chunk grid agrees",
// and one "  mismatch: ..." line each. ContentsText: the optimizer and the
// key classes ("optimizer: adam, distributed, ...", "keys: model 12, ...").
std::vector<std::string> LayoutText(const Summary& s);
std::vector<std::string> ContentsText(const Summary& s);

}  // namespace ckpt::megatron

#endif  // CKPT_FORMAT_MEGATRON_MEGATRON_H_
