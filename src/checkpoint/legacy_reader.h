// CheckpointReader over a Megatron-LM LEGACY checkpoint (`--ckpt-format torch`):
// an iteration folder (iter_XXXXXXX or release, reached from the root through
// latest_checkpointed_iteration.txt) whose children are rank folders
// mp_rank_TT[_PPP][_EEE], each with model_optim_rng.pt and, with the
// distributed optimizer, distrib_optim.pt (docs/format.md "Megatron legacy
// checkpoints"; format/megatron/legacy.h for the parsing).
//
// This is the RAW view: every tensor of every rank file, under
//   <rank folder>/<key in model_optim_rng.pt>          mp_rank_00_001/model.decoder.layers.0.mlp.linear_fc1.weight
//   <rank folder>/distrib_optim.<key in distrib_optim.pt>
//                          mp_rank_00_001/distrib_optim.0.(torch.bfloat16, torch.float32).exp_avg
//                          (chained: mp_rank_00_001/distrib_optim.1.0.(torch.bfloat16, torch.float32).param)
// where a key is the torch.save file's flattened path (format/torch/torch_file.h:
// dict keys and list indices joined by '.'), so the local (TP-sharded, stage-local)
// tensors are listed as stored. Objects: every rank file's non-tensor leaves, prefixed
// the same way. Building the global model from the local tensors (TP merge, layer
// offsets, optimizer buffer -> per-parameter state) is the model layer's job; it
// reads this reader through legacy_view().
//
// Open lists the iteration folder, reads rank 0's model_optim_rng.pt (found
// as find_checkpoint_rank_0 does) for args, maps every (tp, pp, ep) rank to
// its folder (sizes from args, else from the folder names), then opens each
// rank file once to list its tensors and parse its structure, keeping only
// pointer-free structs (TorchFiles are dropped, except rank 0's model file).
// Problems (missing / unexpected rank folders, a missing model_optim_rng.pt or
// distrib_optim.pt when args.use_distributed_optimizer, files that do not
// parse, distrib_optim sizes that disagree, an iteration that differs between
// ranks) do not fail Open: they are listed in problems() and Details()
// ["problems"], so `inspect` exits 1 and `verify` lists them; the tensors of a
// file that did not open are not listed.
//
// Thread-safety: immutable after Open except a mutex-guarded cache of open
// rank files; every method may be called concurrently.
#ifndef CKPT_CHECKPOINT_LEGACY_READER_H_
#define CKPT_CHECKPOINT_LEGACY_READER_H_

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "format/megatron/legacy.h"
#include "format/megatron/megatron.h"
#include "format/torch/torch_file.h"

namespace ckpt::internal_checkpoint {

// Rank files kept open at once by LegacyReader::OpenRankFile's cache.
inline constexpr size_t kLegacyOpenFileCache = 8;

// True when `dir` holds at least one mp_rank_* folder (a legacy iteration folder).
bool IsLegacyIterationDir(Env* env, const std::string& dir);

class LegacyReader : public CheckpointReader {
 public:
  enum class FileKind { kModel, kDistribOptim };  // model_optim_rng.pt, distrib_optim.pt

  // What one rank file holds (no pointers: valid for the reader's lifetime).
  struct RankFile {
    bool present = false;      // the file exists
    uint64_t size = 0;         // bytes
    bool opened = false;       // it parsed; false with present: see problems()
    size_t first_tensor = 0;   // its tensors are tensors()[first_tensor, first_tensor + tensor_count)
    size_t tensor_count = 0;
  };
  struct Rank {
    megatron::legacy::RankCoord coord;
    std::string folder;    // "mp_rank_00_001"
    bool present = false;  // the folder exists
    RankFile model;        // model_optim_rng.pt
    RankFile distrib_optim;
    // model_optim_rng.pt's model chunks ("model" or "model0".."modelN"), their
    // local keys and TorchFile tensor indices.
    std::vector<megatron::legacy::ModelChunk> chunks;
    std::optional<int64_t> iteration;  // the file's own `iteration`
    bool has_optimizer = false;
    bool chained_optimizer = false;
    int64_t optimizers = 0;            // entries of `optimizer` (1, or the list's length)
    bool distributed_optimizer = false;  // every entry has no `state` (tensor state in distrib_optim.pt)
    // distrib_optim.pt parsed (buffers, formats, state tensors; nullopt when absent or broken).
    std::optional<megatron::legacy::DistribOptim> distrib;
    std::vector<std::string> other_files;  // e.g. layer_wise_optimizer_0.pt (listed, not read)
  };
  struct Problem {
    std::string file;  // relative to the iteration folder ("mp_rank_01_000/distrib_optim.pt"), or ""
    std::string message;
  };

  // `dir`: the iteration folder. `tracker_iteration`: the tracker's number when
  // reached from a root (nullopt for release or a folder opened directly).
  // Errors: NotFound (no mp_rank_* folder); the Env's errors listing `dir`.
  // Everything else is a problem, not an error.
  static Result<std::unique_ptr<LegacyReader>> Open(const std::string& dir, std::optional<int64_t> tracker_iteration,
                                                    const OpenOptions& options);

  SourceKind kind() const override { return SourceKind::kLegacy; }
  std::string_view format() const override { return "megatron-legacy"; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return objects_; }
  nlohmann::json Details() const override;
  // Opens (or reuses) the rank file and streams the tensor. Errors name the
  // file and key (as TorchFile::ReadTensor; the file's open errors).
  Status ReadTensor(size_t i, ByteSink* out) const override;
  // A region that is contiguous in the tensor (1-D ranges, slabs of leading
  // rows) is read as that byte range of its record only; others as the base
  // class does.
  Status ReadTensorRegion(size_t i, std::span<const int64_t> start, std::span<const int64_t> count,
                          ByteSink* out) const override;
  const LegacyReader* legacy_view() const override { return this; }

  // ---- The view for the model layer ----

  const std::string& folder() const { return dir_; }
  // The iteration: the tracker's, else rank 0's `iteration`.
  std::optional<int64_t> iteration() const { return iteration_; }
  const megatron::legacy::RankGrid& grid() const { return grid_; }
  // Every rank of the grid, in grid().ranks order (tp fastest, then ep, then pp).
  const std::vector<Rank>& ranks() const { return ranks_; }
  // The rank of a coordinate; nullptr outside the grid.
  const Rank* FindRank(const megatron::legacy::RankCoord& r) const;
  // The folder whose model_optim_rng.pt gave args (find_checkpoint_rank_0), "" if none.
  const std::string& rank0_folder() const { return rank0_folder_; }
  // Rank 0's common state (args, iteration, checkpoint_version,
  // opt_param_scheduler, optimizer ...); nullptr when rank 0's file is
  // missing or broken. Points into rank0_file(); same lifetime as the reader.
  const megatron::CommonState* common() const { return common_ ? &*common_ : nullptr; }
  // Rank 0's model_optim_rng.pt, kept open (nullptr as common()).
  const torch::TorchFile* rank0_file() const { return rank0_file_.get(); }
  const std::vector<Problem>& problems() const { return problems_; }
  // Human lines: the iteration, the layout from args, the rank grid (one line
  // per rank folder, its files, model chunks and distrib_optim buffers, at most
  // 64 ranks), the optimizer. Details()["summary_text"] holds the same.
  std::vector<std::string> SummaryText() const;
  // Where tensors()[i] lives: its rank (index into ranks()), file and index in
  // that file's TorchFile::tensors(). REQUIRES: i < tensors().size().
  struct TensorLocation {
    size_t rank = 0;
    FileKind file = FileKind::kModel;
    size_t index = 0;
  };
  const TensorLocation& location(size_t i) const { return locations_[i]; }
  // The path of a rank file relative to folder(): "mp_rank_00_001/distrib_optim.pt".
  static std::string RelativePath(const Rank& r, FileKind f);

  // Opens the rank file (strict / inspect per the OpenOptions), or returns
  // it from a small cache (kLegacyOpenFileCache files). The file stays valid
  // as long as the returned pointer is held.
  // Errors: NotFound when the rank or file is absent; as TorchFile::Open,
  // prefixed with the relative path.
  Result<std::shared_ptr<const torch::TorchFile>> OpenRankFile(const megatron::legacy::RankCoord& r,
                                                               FileKind f) const;

 private:
  LegacyReader() = default;
  Status Init(const std::string& dir, std::optional<int64_t> tracker_iteration, const OpenOptions& options);
  Result<std::shared_ptr<const torch::TorchFile>> OpenPath(const std::string& rel) const;
  // A message that repeats `file: ` at its start (format errors name their file) loses it.
  void AddProblem(std::string file, std::string message) {
    if (!file.empty() && message.rfind(file + ": ", 0) == 0) message.erase(0, file.size() + 2);
    problems_.push_back({std::move(file), std::move(message)});
  }
  void AddFileTensors(size_t rank, FileKind f, const torch::TorchFile& tf, const std::string& prefix);

  Env* env_ = nullptr;
  pickle::Mode mode_ = pickle::Mode::kStrict;
  std::string dir_;
  std::optional<int64_t> tracker_iteration_;
  std::optional<int64_t> iteration_;
  megatron::legacy::RankGrid grid_;
  std::vector<Rank> ranks_;
  std::string rank0_folder_;
  std::shared_ptr<const torch::TorchFile> rank0_file_;
  std::optional<megatron::CommonState> common_;
  std::optional<bool> use_distributed_optimizer_;
  bool no_save_optim_ = false;
  std::vector<Problem> problems_;
  std::vector<TensorInfo> tensors_;
  std::vector<TensorLocation> locations_;
  std::vector<ObjectInfo> objects_;
  mutable std::mutex mu_;
  mutable std::list<std::pair<std::string, std::shared_ptr<const torch::TorchFile>>> cache_;  // MRU first
};

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_LEGACY_READER_H_
