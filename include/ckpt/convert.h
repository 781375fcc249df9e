// Converting a checkpoint between file formats, streaming.
//
// Convert reads the source through OpenCheckpoint and writes the target one
// tensor at a time: peak memory is bounded by a copy buffer (and, for a
// non-contiguous torch view, by its storage), never by the checkpoint size.
// Every output file is written under a temporary name, fsynced and renamed;
// for sharded output the index file is published last. On failure no output
// that looks complete is left behind.
//
// Errors name the options as ConvertOptions spells them (`max_shard_size`,
// `thread_count`, `to="dcp"`), since both the CLI and Python reach them; the
// CLI's flags are those names with dashes (--max-shard-size). ParseSize and
// ParseTargetFormat are the one reading of a size and of a target name, for
// every front end.
//
// Thread-safety: Convert may run concurrently on different destinations; the
// parsing functions are pure.
#ifndef CKPT_CONVERT_H_
#define CKPT_CONVERT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/env.h"
#include "ckpt/status.h"
#include "ckpt/verify.h"

namespace ckpt {

enum class TargetFormat {
  kSafetensors,  // one .safetensors file, or a folder of shards + model.safetensors.index.json
  kTorch,        // one torch.save file, or a folder of shards + pytorch_model.bin.index.json
  kDcp,          // a torch.distributed.checkpoint folder (.metadata + __0_<n>.distcp)
  kTorchDist,    // a Megatron-Core torch_dist checkpoint (DCP + metadata.json + common state)
  kHf,           // a Hugging Face transformers model folder
  kLegacy,       // Megatron-LM's legacy layout: iter_N/mp_rank_XX[_YYY][_EEE]/model_optim_rng.pt + distrib_optim.pt
};

// A new target goes last here, in kAllTargetFormats and in the name table
// (src/convert/options.cc static_asserts the count).
inline constexpr size_t kTargetFormatCount = 6;
// Every target, in the order help texts and errors list them.
inline constexpr std::array<TargetFormat, kTargetFormatCount> kAllTargetFormats = {
    TargetFormat::kSafetensors, TargetFormat::kTorch, TargetFormat::kDcp, TargetFormat::kTorchDist,
    TargetFormat::kHf, TargetFormat::kLegacy};

// The target's name as the CLI (--to) and Python (to=) spell it:
// "safetensors", "torch", "dcp", "torch_dist", "hf", "legacy".
std::string_view TargetFormatName(TargetFormat to);

// The inverse of TargetFormatName (exact, case-sensitive).
// Errors: InvalidArgument naming the option `to`, the name given and every
// valid name.
Result<TargetFormat> ParseTargetFormat(std::string_view name);

// Reads a max_shard_size as transformers' convert_file_size_to_int
// (transformers/utils/hub.py) reads it: digits, then a unit, case-insensitive:
// "KB", "MB", "GB" are powers of 1000 ("5GB" = 5*10^9), "KiB", "MiB", "GiB"
// powers of 1024 ("5GiB" = 5*2^30); a decimal unit whose last letter is a
// lowercase 'b' counts bits, floor-divided by 8 as transformers does ("5Gb" =
// 625000000, "5gb" too). Digits alone are bytes (transformers takes an int).
// Errors: InvalidArgument naming the option `max_shard_size` and the text for
// anything else (a sign, a space, a decimal point, another unit such as "TB"
// or "B", no digits), for zero, and for more than 2^64-1 bytes.
Result<uint64_t> ParseSize(std::string_view text);

struct ConvertOptions {
  TargetFormat to = TargetFormat::kSafetensors;
  // kSafetensors, kTorch: 0 means one file. Otherwise DST is a folder and
  // tensors are split into shards of at most this many bytes (a larger tensor
  // gets a shard of its own), named as transformers names them. From text:
  // ParseSize.
  uint64_t max_shard_size = 0;
  // Read pickles in inspect mode: objects whose globals are not on the
  // allowlist travel as opaque records where the target can hold them (torch)
  // and are dropped with a warning where it cannot (safetensors). Without it,
  // such a global is an error (code Unimplemented).
  bool allow_opaque = false;
  // kDcp, kTorchDist: number of data files (torch's FileSystemWriter
  // thread_count), >= 1.
  int64_t thread_count = 1;
  // kDcp, kTorchDist: write the data files around the page cache (O_DIRECT)
  // where the file system allows (ConvertReport says where it did); false:
  // through the page cache, as torch's FileSystemWriter.
  bool direct_io = true;
  // kTorchDist: the megatron-core layout to write, "0.16" (core <= 0.18:
  // common.pt, 4-key metadata.json) or "0.19" (core >= 0.19: the
  // common_state DCP entry, 2-key metadata.json); "" means the newest, 0.19.
  std::string megatron_version;
  // kTorchDist: when set (or when the source is a Megatron-LM root), dst is a
  // Megatron-LM root: dst/iter_<N:07d>/ plus latest_checkpointed_iteration.txt.
  // A source root's own iteration (or "release") is used when unset.
  std::optional<int64_t> iteration;
  // kDcp: the `.metadata` layout, for readers older than torch 2.4:
  // "torch2.13" (the default, ""), "torch2.3" (no storage_meta / version) or
  // "torch2.0" (also the pre-2.3 TensorProperties class path); see
  // src/format/dcp/writer.h MetadataLayout.
  std::string dcp_metadata_layout;
  // Model conversion (to = kHf, and kTorchDist from an HF model folder).
  // kHf: an HF config.json to take the vocabulary size, token ids and the
  // family from (cross-checked against the checkpoint's args); "" for none.
  std::string hf_config;
  // kHf: the HF family ("llama", "qwen2", ..., see model::FamilyName); ""
  // guesses it from the args (or takes hf_config's).
  std::string family;
  // kHf: the unpadded vocabulary when neither args nor hf_config give it.
  std::optional<int64_t> vocab_size;
  // kHf: the output dtype, "bf16" / "fp16" / "fp32"; "" keeps the source's.
  // kTorchDist from HF: the same, for the Megatron params.
  std::string dtype;
  // kHf: write pytorch_model*.bin (torch.save) instead of safetensors.
  bool bin = false;
  // kTorchDist from an HF model: the parallel layout the checkpoint is for
  // (its args and vocabulary padding), and the Megatron layer spec whose
  // names to write: "local" (separate norm modules) or "te" (Transformer
  // Engine: norms fused into linear_qkv / linear_fc1).
  int64_t tp = 1;
  int64_t pp = 1;
  int64_t ep = 1;
  std::optional<int64_t> etp;  // default: tp
  std::string megatron_layer_spec = "local";
  int64_t make_vocab_size_divisible_by = 128;
  // kLegacy: leave the optimizer state out (model_optim_rng.pt without
  // `optimizer`, no distrib_optim.pt), as Megatron-LM's --no-save-optim.
  bool no_optimizer = false;
  Env* env = nullptr;  // nullptr: Env::Default()
  // Called after each tensor with (bytes done, bytes total). May be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

struct ConvertReport {
  std::vector<std::string> files;     // written, in order (index file last)
  std::vector<std::string> warnings;  // objects dropped, ...
  uint64_t tensors = 0;
  uint64_t bytes = 0;
  // kDcp, kTorchDist: data files written, and how many of them went around
  // the page cache (O_DIRECT; fewer where the file system refused it).
  size_t data_files = 0;
  size_t direct_io_files = 0;
};

// A DCP / Megatron torch_dist source converted to one torch.save file (no
// max_shard_size) gives what torch.distributed.checkpoint.format_utils.
// dcp_to_torch_save gives: the nested state dict rebuilt from planner_data,
// bytes entries carried as their original objects, byte-identical to torch's
// output in the cases tested (see src/convert/dcp_to_torch.h); each tensor
// is assembled from its chunks, so peak memory is about the largest tensor.
// Other targets get flat keys, as for any source.
//
// to=dcp: dst is a folder written as torch's FileSystemWriter writes it for
// one rank (see src/format/dcp/writer.h), `thread_count` data files. A DCP /
// torch_dist source keeps its entries, chunk layout, bytes entries (their
// stored torch.save archives) and planner_data (Megatron's metadata.json and
// common.pt are not written: a warning says so). A torch.save state dict is
// flattened as dcp.save flattens it: one chunk per tensor, nesting kept in
// planner_data, non-tensor values as bytes entries holding torch.save(value);
// the .distcp files are then byte-identical to torch's FileSystemWriter's.
// Safetensors and sharded sources: one chunk per tensor, flat keys; objects
// of a torch.save whose root is not a dict are dropped with a warning.
// `.metadata` is published last. torch's dcp.load / dcp_to_torch_save load it.
//
// to=torch_dist: what megatron-core's dist_checkpointing.save writes for
// the chosen version (src/convert/torch_dist.h,
// src/checkpoint/torch_dist_writer.h): the DCP files as to=dcp writes them
// (one rank: every source rank's items merged into __0_<n>.distcp),
// metadata.json and the common state (common.pt or the common_state entry),
// published data first, metadata.json last, then the Megatron-LM tracker.
// A torch_dist source keeps its common dict and extra metadata.json keys
// (0.19 only); a plain DCP source gets an empty common dict; a torch.save
// state dict gives its tensors as entries (one chunk each, flat keys) and
// everything else as the common dict, as Megatron's extract_matching_values
// splits it; safetensors and sharded sources an empty common dict.
//
// to=hf: a Megatron torch_dist checkpoint as a transformers model folder
// (src/convert/hf.h).
//
// to=legacy: a Megatron torch_dist checkpoint (any optimizer sharding type
// ckptkit reads) as Megatron-LM's legacy layout at the same parallel layout:
// dst/iter_<N:07d>/mp_rank_*/model_optim_rng.pt and distrib_optim.pt, then
// dst/latest_checkpointed_iteration.txt (src/convert/legacy.h).
//
// Converts src into dst. If dst ends in ".safetensors" (or ".pt"/".bin"/".pth"
// for torch) and max_shard_size is 0 it is one file; otherwise dst is a folder
// (created if needed) holding "model.safetensors" / "pytorch_model.bin", or
// shards plus an index when max_shard_size splits the tensors.
//
// Errors: those of OpenCheckpoint; InvalidArgument for a bad destination or
// an option that does not apply to the target (megatron_version and
// iteration outside torch_dist, dcp_metadata_layout outside dcp,
// max_shard_size with dcp or torch_dist), naming the option; Unimplemented
// for a dtype the target cannot hold, an opaque object in strict mode, or
// to=hf; I/O errors naming the file.
Result<ConvertReport> Convert(const std::string& src, const std::string& dst,
                              const ConvertOptions& options);

// Opens a Megatron checkpoint in model space: every tensor the checkpoint
// stores, plus `optimizer.state.<state>.<key>` for each model key and each
// optimizer state ("param" = fp32 main parameters, "exp_avg", "exp_avg_sq")
// shaped like the model tensor, also where the distributed optimizer stored
// them as flat buckets (dp_reshardable), reassembled with the buffer layout
// that the model layer recomputes from args (and checks against every
// stored bucket size). Any other checkpoint opens as OpenCheckpoint does.
// Errors: those of OpenCheckpoint; InvalidArgument (args missing or
// contradicting the shapes); DataLoss (buckets that do not match the
// recomputed layout, naming the key and both sizes); Unimplemented
// (dp_zero_gather_scatter, expert-parallel buckets).
Result<std::unique_ptr<CheckpointReader>> OpenModelSpace(const std::string& path, const OpenOptions& options = {});

// Checks a Megatron checkpoint's optimizer state against its model, in model
// space (a reader from OpenModelSpace): for every model tensor K with fp32
// main parameters `optimizer.state.param.K`, the main parameters rounded to
// K's dtype (round to nearest even, as torch's copy_) must equal K bit for
// bit, since the distributed optimizer copies them into the model after every
// step; `exp_avg_sq` must hold no negative value. A problem names the key, the
// count and the first index of the disagreement. Megatron-Core <= 0.19.2's own
// fully_reshardable save shifts the state of parameters past a buffer's first
// bucket (NVIDIA/Megatron-LM PR #5077): such checkpoints fail this check.
// Reads every optimizer tensor once (region by region along the leading axis).
// Errors: read errors; an empty list when there is no optimizer state.
Result<std::vector<VerifyProblem>> CheckOptimizerState(const CheckpointReader& model_space);

// What each rank folder of a legacy Megatron checkpoint holds by the model
// layer's recomputation from args: one line per folder (coordinates, global
// layers and virtual stages, experts, the dense / expert optimizer buffers),
// after checking every distrib_optim.pt buffer against that layout.
// Errors: DataLoss naming the file and buffer when the stored sizes are not
// the model's (or a folder / file the layout needs is missing); those of
// OpenModelSpace.
Result<std::vector<std::string>> DescribeLegacyLayout(const std::string& path, const OpenOptions& options = {});

// The same as a structure (for the layout map's grid): the layout from args,
// the layer count, and per rank folder its coordinates, the global layers of
// each of its virtual stages (model chunks) and its experts.
struct LegacyFolderLayout {
  std::string folder;  // "mp_rank_01_000"
  int64_t tp = 0, pp = 0, ep = 0;
  std::vector<std::vector<int64_t>> layers;  // per model chunk, global layer numbers in order
  std::vector<int64_t> experts;              // global expert numbers, sorted
  std::string line;                          // DescribeLegacyLayout's line for the folder
};
struct LegacyLayout {
  int64_t tp = 1, pp = 1, dp = 1, cp = 1, ep = 1, etp = 1, vpp = 1;
  int64_t num_layers = 0;
  std::vector<LegacyFolderLayout> folders;  // in the order of DescribeLegacyLayout's lines
};
// Errors: those of DescribeLegacyLayout.
Result<LegacyLayout> DescribeLegacyFolders(const std::string& path, const OpenOptions& options = {});

// The model-space key of optimizer state `state` of model tensor `key`:
// "optimizer.state.<state>.<key>" (`state` "param" also answers "fp32_param"
// and "main_param" ... as written: no aliasing here).
std::string OptimizerStateKey(std::string_view state, std::string_view key);

}  // namespace ckpt

#endif  // CKPT_CONVERT_H_
