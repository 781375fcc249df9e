// A Megatron checkpoint's training state in model space (internal to the
// convert layer).
//
// Megatron keeps optimizer state in several layouts: per parameter and
// global ("fully_reshardable" torch_dist: `optimizer.state.exp_avg.<key>`),
// or as the distributed optimizer's flat buffers, cut into buckets and
// padded ("dp_reshardable" torch_dist, legacy `distrib_optim.pt`), and the
// legacy format keeps even the model as TP-local shards per rank folder.
// MegatronView shows any of them as one CheckpointReader whose tensors are
// what a fully_reshardable torch_dist checkpoint of the same model holds:
// the model keys as torch_dist stores them (stacked `decoder.layers.<suffix>`
// with a leading layer axis, experts [layer, expert, ...]) and
// `optimizer.state.<state>.<key>` of the same shape for every optimizer
// state ("param" = the fp32 main parameters, "exp_avg", "exp_avg_sq").
// Tensors the source stores that way are read straight through; the others
// are assembled from per-rank shards that a ShardReader streams, placed by
// the model layer's layout (model::BuildRankOptimizer: which parameter lies
// where in which bucket of which buffer of which rank).
//
// Thread-safety: after Open, all const methods may be called concurrently
// if the ShardReader's may (both implementations here: yes).
#ifndef CKPT_CONVERT_MEGATRON_VIEW_H_
#define CKPT_CONVERT_MEGATRON_VIEW_H_

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/legacy_reader.h"
#include "ckpt/checkpoint.h"
#include "ckpt/convert.h"
#include "ckpt/model.h"
#include "format/megatron/megatron.h"
#include "format/torch/torch_file.h"
#include "util/box.h"

namespace ckpt::internal_convert {

// A torch_dist checkpoint opened for model conversions: the reader, its
// common state (args, iteration, optimizer groups, ...) and the stored keys.
struct TorchDistSource {
  std::unique_ptr<CheckpointReader> reader;
  const internal_checkpoint::DcpReader* dcp = nullptr;
  std::unique_ptr<torch::TorchFile> common_file;
  std::optional<megatron::CommonState> common;
  std::map<std::string, size_t, std::less<>> by_key;
};

// Opens `src` (root or iteration folder). `purpose` completes the error for
// a source of another kind ("to=\"hf\" converts").
// Errors: InvalidArgument when src is not torch_dist; those of OpenCheckpoint
// and of reading the common state.
Result<TorchDistSource> OpenTorchDist(const std::string& src, Env* env, std::string_view purpose);

// The same over a reader already open (in inspect mode) on `src`.
Result<TorchDistSource> TorchDistFromReader(std::unique_ptr<CheckpointReader> reader, const std::string& src, Env* env,
                                            std::string_view purpose);

// A Megatron checkpoint of either format for model conversions: torch_dist
// as OpenTorchDist opens it; a legacy folder as a MegatronView in model
// space (reader, with `common` copied from rank 0's file; `dcp` null).
// Errors: InvalidArgument for another kind of checkpoint (naming `purpose`);
// those of OpenTorchDist and MegatronView::OverLegacy.
Result<TorchDistSource> OpenMegatronSource(const std::string& src, Env* env, std::string_view purpose);

// The first stored key holding a module tensor (model::TorchDistCandidates).
std::optional<model::StoredRef> FindStored(const TorchDistSource& s, std::string_view module_name);

// Streams TP-local shards of one rank's parameters: the model weights
// (state "") or one optimizer state, as the parameter's local shape,
// row-major, in `dtype`.
class ShardReader {
 public:
  virtual ~ShardReader() = default;
  // `rank` is MegatronView::ranks()[folder] and `param` its chunk `chunk`'s
  // parameter; `buffer` and `where` locate it in the rank's dense or
  // `expert` buffers (gbuf_idx in that list; null when the optimizer does not
  // hold it). Errors name the rank, the parameter and the stored key.
  virtual Status ReadShard(const model::RankOptimizer& rank, size_t folder, int64_t chunk,
                           const model::ChunkParam& param, const model::ParamBuffer* buffer, bool expert,
                           int64_t gbuf_idx, const model::BufferParam* where, std::string_view state,
                           ByteSink* out) const = 0;
};

// The boxes parameter `p`'s TP shard fills in its stored global tensor
// (`stored.index` fixing the leading layer / expert axes), in the order of
// the shard's local rows: one box, or two for a gated fc1 shard (gate, up).
std::vector<Box> StoredShardBoxes(const model::ChunkParam& p, const model::StoredRef& stored);

// How a checkpoint keeps its distributed-optimizer state (docs/format.md §11.3).
enum class OptimizerLayout {
  kNone,                    // no optimizer state
  kFullyReshardable,        // torch_dist, model space: optimizer.state.<state>.<key>
  kFullyShardedModelSpace,  // torch_dist (core 0.8-0.15): per-parameter flattened pieces
  kDpReshardable,           // torch_dist: per-bucket flat buffers per dp_group_idx
  kDpZeroGatherScatter,     // torch_dist: whole buffers gathered on DP rank 0, one object each
  kLegacyDistribOptim,      // legacy distrib_optim.pt buffers
};
// "fully_reshardable", "fully_sharded_model_space", "dp_reshardable",
// "dp_zero_gather_scatter", "legacy distrib_optim.pt", "" (kNone).
std::string_view OptimizerLayoutName(OptimizerLayout layout);

class MegatronView final : public CheckpointReader {
 public:
  // Wraps a torch_dist source: model tensors straight through; optimizer
  // state straight through when stored model-space (fully_reshardable),
  // re-indexed from its reformulated N-D flattened tensors and renamed
  // (fp32_param -> param) when fully_sharded_model_space, assembled from its
  // buckets when dp_reshardable or dp_zero_gather_scatter.
  // Errors: InvalidArgument (args missing or contradicting the shapes, a
  // layout the model layer cannot build), DataLoss (bucket sizes that do
  // not match the recomputed layout, naming the key and both sizes),
  // Unimplemented (a sharding type not read yet, EP > 1 buckets).
  static Result<std::unique_ptr<MegatronView>> OverTorchDist(TorchDistSource source);

  // Wraps a legacy checkpoint (a reader whose legacy_view() is set): every
  // tensor is assembled from the rank files, the model from
  // model_optim_rng.pt's TP-local shards at their layer / expert offsets,
  // the optimizer state from distrib_optim.pt's buffers (format C). Only the
  // model-space tensors are listed; objects() is empty (common() has args).
  // Errors: InvalidArgument (no args in rank 0's file, a layout the model
  // layer cannot build); DataLoss (a rank file or tensor the layout needs is
  // missing or has another shape, naming it); Unimplemented (distrib_optim
  // formats A/B of core <= 0.6).
  static Result<std::unique_ptr<MegatronView>> OverLegacy(std::unique_ptr<CheckpointReader> legacy);

  SourceKind kind() const override { return base_->kind(); }
  std::string_view format() const override { return base_->format(); }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return legacy_ ? objects_ : base_->objects(); }
  nlohmann::json Details() const override;
  Status ReadTensor(size_t i, ByteSink* out) const override;
  Status ReadTensorRegion(size_t i, std::span<const int64_t> start, std::span<const int64_t> count,
                          ByteSink* out) const override;

  const model::ModelConfig& config() const { return config_; }
  const model::ParallelLayout& layout() const { return layout_; }
  const model::DistOptSettings& settings() const { return settings_; }
  // One per legacy rank folder (model::LegacyRanks), in the same order.
  const std::vector<model::RankOptimizer>& ranks() const { return ranks_; }
  const std::vector<model::LegacyRankFolder>& folders() const { return folders_; }
  OptimizerLayout optimizer_layout() const { return optimizer_layout_; }
  bool has_optimizer() const { return optimizer_layout_ != OptimizerLayout::kNone; }
  const std::vector<std::string>& optimizer_states() const { return states_; }
  const megatron::CommonState* common() const { return common_; }
  // OK when config(), layout() and ranks() describe the checkpoint; else why
  // not (args missing, a model the layer does not know, EP > 1 ...).
  const Status& model_status() const { return model_status_; }
  // The torch_dist source (its DCP reader, common state and keys).
  const TorchDistSource& torch_dist() const { return torch_dist_; }
  // The legacy reader (OverLegacy), else null.
  const internal_checkpoint::LegacyReader* legacy() const { return legacy_; }

  // One line per legacy rank folder: its coordinates, global layers (and
  // virtual stages), experts, and the optimizer buffers the model's layout
  // gives it: "mp_rank_00_001: tp 0 pp 1, layers 2-3; dense optimizer 1
  // buffers, 1 buckets, 2816 elements".
  std::vector<LegacyFolderLayout> FolderSummary() const;

  // The boxes tensors()[i] is stored in, one per rank shard (two for a gated
  // fc1 shard) for an assembled tensor, the stored chunks of a tensor read
  // straight through (the whole tensor when it has none).
  std::vector<Box> ShardBoxes(size_t i) const;

  // Streams the TP-local shard of parameter `param` of chunk `chunk` of
  // ranks()[rank] as that rank holds it (its local shape, row-major): the
  // model weights (state "") or optimizer state `state`.
  // Errors: NotFound when the checkpoint has no such tensor; read errors.
  Status ReadLocal(size_t rank, int64_t chunk, size_t param, std::string_view state, ByteSink* out) const;

 private:
  // One TP shard placed in a virtual tensor: the rank's parameter, and the
  // boxes (global coordinates) its local rows fill: one box, or two for a
  // gated fc1 shard ([gate_r; up_r]).
  struct Piece {
    size_t rank = 0;
    int64_t chunk = 0;
    size_t param = 0;
    bool expert = false;  // in the expert buffers
    int64_t gbuf = -1;    // the optimizer buffer holding it (index in the dense or expert list), -1: none
    size_t where = 0;   // its BufferParam in that buffer
    std::vector<Box> dest;   // in the virtual tensor
    std::vector<Box> local;  // the matching boxes of the local shard
  };
  struct Virtual {
    int64_t base = -1;  // >= 0: read straight from base_'s tensor
    // With `base`: the tensor is stored N-D flattened (core 0.8-0.15): base_'s
    // tensor has shape grid + [numel(local)], cell c holding the row-major
    // local box at c * local (docs/format.md §11.3). Empty: stored as is.
    std::vector<int64_t> local;
    std::string state;  // "" model; else the optimizer state
    std::vector<Piece> pieces;
  };

  MegatronView() = default;
  Status BuildModel();
  // Checks that the assembled tensors are covered exactly; indexes keys.
  Status Finish();
  // Every distrib_optim.pt buffer against the recomputed layout (legacy).
  Status CheckLegacyBuffers() const;
  Status BuildRanks();
  // Adds the virtual tensors of `state` ("" = model) assembled from shards.
  void AddAssembled(const std::string& state, DType dtype);
  Status ReadPieces(const Virtual& v, const TensorInfo& t, const Box& region, ByteSink* out) const;
  // Reads `region` of a tensor stored N-D flattened (Virtual::local).
  Status ReadReformulated(const Virtual& v, const TensorInfo& t, const Box& region, ByteSink* out) const;
  // fully_sharded_model_space: renames the optimizer tensors and re-indexes
  // the reformulated ones (their DCP shapes checked against the original
  // shapes Megatron recorded).
  Status MapFlattenedModelSpace();

  TorchDistSource torch_dist_;
  std::unique_ptr<CheckpointReader> owned_;  // the legacy reader
  const internal_checkpoint::LegacyReader* legacy_ = nullptr;
  std::vector<ObjectInfo> objects_;
  const CheckpointReader* base_ = nullptr;
  const megatron::CommonState* common_ = nullptr;
  std::unique_ptr<ShardReader> shards_;
  model::ModelConfig config_;
  model::ParallelLayout layout_;
  model::DistOptSettings settings_;
  std::vector<model::RankOptimizer> ranks_;
  std::vector<model::LegacyRankFolder> folders_;
  Status model_status_;
  OptimizerLayout optimizer_layout_ = OptimizerLayout::kNone;
  std::vector<std::string> states_;
  std::vector<TensorInfo> tensors_;
  std::deque<std::vector<int64_t>> chunk_dims_;  // what tensors_' chunks view
  std::vector<Virtual> virtual_;
  std::map<std::string, size_t, std::less<>> by_key_;
};

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_MEGATRON_VIEW_H_
