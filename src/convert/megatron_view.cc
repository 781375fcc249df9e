// MegatronView: a Megatron checkpoint's state in model space (see megatron_view.h).
#include "convert/megatron_view.h"

#include <functional>

#include "ckpt/convert.h"
#include "convert/cast.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>

#include "checkpoint/readers.h"
#include "io/path_util.h"
#include "model/args.h"
#include "util/box.h"
#include "util/strings.h"

namespace ckpt::internal_convert {

using internal_checkpoint::DcpReader;

Result<TorchDistSource> OpenTorchDist(const std::string& src, Env* env, std::string_view purpose) {
  OpenOptions open;
  open.env = env;
  open.pickle_mode = PickleMode::kInspect;  // args may hold Megatron enums; nothing runs
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open), StrCat("reading ", src));
  return TorchDistFromReader(std::move(reader), src, env, purpose);
}

Result<TorchDistSource> TorchDistFromReader(std::unique_ptr<CheckpointReader> reader, const std::string& src, Env* env,
                                            std::string_view purpose) {
  TorchDistSource s;
  s.reader = std::move(reader);
  s.dcp = s.reader->dcp_view();
  if (s.dcp == nullptr || s.reader->kind() != SourceKind::kTorchDist) {
    return InvalidArgumentError(StrCat(src, " is a ", s.reader->format(), " checkpoint; ", purpose,
                                       " a Megatron-Core torch_dist checkpoint "
                                       "(a root with latest_checkpointed_iteration.txt or an iter_XXXXXXX folder)"));
  }
  const std::string common_pt = JoinPath(s.dcp->folder(), megatron::kCommonFileName);
  std::string common_name;
  if (env->FileExists(common_pt)) {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(common_pt));
    std::shared_ptr<const ByteSource> bs(std::move(f));
    CKPT_ASSIGN_OR_RETURN(s.common_file, torch::TorchFile::Open(bs, pickle::Mode::kInspect), common_pt);
    common_name = common_pt;
  } else if (int64_t ei = s.dcp->metadata().FindEntry(megatron::kCommonStateKey); ei >= 0) {
    CKPT_ASSIGN_OR_RETURN(s.common_file, s.dcp->OpenBytes(s.dcp->metadata().entries[ei], pickle::Mode::kInspect),
                          StrCat(src, ": ", megatron::kCommonStateKey));
    common_name = megatron::kCommonStateKey;
  }
  if (s.common_file) {
    CKPT_ASSIGN_OR_RETURN(megatron::CommonState cs, megatron::ExtractCommonState(s.common_file->root(), common_name));
    s.common = std::move(cs);
  }
  const std::vector<TensorInfo>& ts = s.reader->tensors();
  for (size_t i = 0; i < ts.size(); ++i) s.by_key.emplace(ts[i].key, i);
  return s;
}

Result<TorchDistSource> OpenMegatronSource(const std::string& src, Env* env, std::string_view purpose) {
  OpenOptions open;
  open.env = env;
  open.pickle_mode = PickleMode::kInspect;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open), StrCat("reading ", src));
  if (reader->kind() != SourceKind::kLegacy) return TorchDistFromReader(std::move(reader), src, env, purpose);
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<MegatronView> view, MegatronView::OverLegacy(std::move(reader)), src);
  TorchDistSource s;
  if (view->common() != nullptr) s.common = *view->common();
  const std::vector<TensorInfo>& ts = view->tensors();
  for (size_t i = 0; i < ts.size(); ++i) s.by_key.emplace(ts[i].key, i);
  s.reader = std::move(view);
  return s;
}

std::optional<model::StoredRef> FindStored(const TorchDistSource& s, std::string_view module_name) {
  for (model::StoredRef& r : model::TorchDistCandidates(module_name)) {
    auto it = s.by_key.find(r.key);
    if (it == s.by_key.end()) continue;
    const TensorInfo& t = s.reader->tensors()[it->second];
    if (t.shape.size() < r.index.size()) continue;
    bool inside = true;
    for (size_t d = 0; d < r.index.size(); ++d) inside = inside && r.index[d] < t.shape[d];
    if (inside) return r;
  }
  return std::nullopt;
}

constexpr std::string_view kOptimizerState = "optimizer.state.";
constexpr std::string_view kDistributed = "optimizer.distributed.dp_group_idx_";
// fully_sharded_model_space names the fp32 main parameters fp32_param (the
// view, like fully_reshardable, says param).
constexpr std::string_view kFlattenedMainParams = "optimizer.state.fp32_param.";
constexpr std::string_view kMainParams = "optimizer.state.param.";

std::string_view OptimizerLayoutName(OptimizerLayout layout) {
  switch (layout) {
    case OptimizerLayout::kNone:
      return "";
    case OptimizerLayout::kFullyReshardable:
      return "fully_reshardable";
    case OptimizerLayout::kFullyShardedModelSpace:
      return "fully_sharded_model_space";
    case OptimizerLayout::kDpReshardable:
      return "dp_reshardable";
    case OptimizerLayout::kDpZeroGatherScatter:
      return "dp_zero_gather_scatter";
    case OptimizerLayout::kLegacyDistribOptim:
      return "legacy distrib_optim.pt";
  }
  return "?";
}

namespace {

// The torch_dist optimizer's bucket tensors (dp_reshardable): one flat fp32
// tensor per (model-parallel rank, buffer, bucket, state).
class DpReshardableShards final : public ShardReader {
 public:
  DpReshardableShards(const TorchDistSource* s, std::string dense_prefix, std::string expert_prefix)
      : s_(s), dense_prefix_(std::move(dense_prefix)), expert_prefix_(std::move(expert_prefix)) {}

  // optimizer.distributed.dp_group_idx_<I>.gbuf_idx_<g>.dtype_<pair>.bucket_idx_<b>.<state>, I the
  // rank's index in its model-parallel group (BuildRankOptimizer).
  static std::string Key(std::string_view prefix, int64_t group, int64_t gbuf, const model::ParamBuffer& b,
                         int64_t bucket, std::string_view state) {
    return StrCat(prefix, kDistributed, group, ".gbuf_idx_", gbuf, ".dtype_",
                  model::DTypePairName(b.param_dtype, b.grad_dtype), ".bucket_idx_", bucket, ".", state);
  }

  Status ReadShard(const model::RankOptimizer& rank, size_t, int64_t, const model::ChunkParam& param,
                   const model::ParamBuffer* buffer, bool expert, int64_t gbuf_idx, const model::BufferParam* where,
                   std::string_view state, ByteSink* out) const override {
    if (buffer == nullptr || where == nullptr) {
      return InternalError(StrCat(param.global_name, " is in no optimizer buffer"));
    }
    const std::string key = Key(expert ? expert_prefix_ : dense_prefix_,
                                expert ? rank.expert_dp_group_idx : rank.dense_dp_group_idx, gbuf_idx, *buffer,
                                where->bucket, state);
    auto it = s_->by_key.find(key);
    if (it == s_->by_key.end()) return DataLossError(StrCat("optimizer state ", Quote(key), " is missing"));
    const int64_t start = where->start - buffer->buckets[where->bucket].offset;
    const int64_t count = where->end - where->start;
    const std::vector<int64_t> st{start}, ct{count};
    return s_->reader->ReadTensorRegion(it->second, st, ct, out)
        .WithContext(StrCat(param.global_name, " (", param.module_name, " of pp rank ", rank.at.pp_rank,
                            ", tp rank ", rank.at.tp_rank, ")"));
  }


 private:
  const TorchDistSource* s_;
  std::string dense_prefix_;
  std::string expert_prefix_;
};

// The torch_dist optimizer sharding type dp_zero_gather_scatter: one
// ShardedObject per model-parallel rank holding the whole distrib_optim.pt
// dict (format C) of that rank; with a ChainedOptimizer (MoE, EP > 1) one per
// sub-optimizer, keys prefixed chained_0. (dense) / chained_1. (expert) and
// the expert one per expert-model-parallel rank.
class DpZeroShards final : public ShardReader {
 public:
  DpZeroShards(const TorchDistSource* s, std::string dense_prefix, std::string expert_prefix)
      : s_(s), dense_prefix_(std::move(dense_prefix)), expert_prefix_(std::move(expert_prefix)) {}

  std::string Key(const model::RankOptimizer& rank, bool expert) const {
    return StrCat(expert ? expert_prefix_ : dense_prefix_, kDistributed,
                  expert ? rank.expert_dp_group_idx : rank.dense_dp_group_idx, ".param_state/shard_0_1");
  }

  Status ReadShard(const model::RankOptimizer& rank, size_t, int64_t, const model::ChunkParam& param,
                   const model::ParamBuffer* buffer, bool expert, int64_t gbuf_idx, const model::BufferParam* where,
                   std::string_view state, ByteSink* out) const override {
    if (buffer == nullptr || where == nullptr) {
      return InternalError(StrCat(param.global_name, " is in no optimizer buffer"));
    }
    const std::string object = Key(rank, expert);
    CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> f, Open(object));
    // The payload is torch.save([state]): list index 0, then gbuf, dtype pair, state key.
    const std::string key = StrCat("0.", gbuf_idx, ".", model::DTypePairName(buffer->param_dtype, buffer->grad_dtype),
                                   ".", state);
    const torch::TensorRecord* t = f->FindTensor(key);
    if (t == nullptr) return DataLossError(StrCat(object, ": no ", Quote(key), " (the layout from args needs it)"));
    if (t->shape.size() != 1 || t->shape[0] != buffer->numel_unpadded) {
      return DataLossError(StrCat(object, ": ", Quote(key), " holds ", t->shape.empty() ? 0 : t->shape[0],
                                  " elements; the layout from args gives ", buffer->numel_unpadded));
    }
    return f->ReadTensorElements(*t, static_cast<uint64_t>(buffer->WorldOffset(*where)),
                                 static_cast<uint64_t>(where->end - where->start), out)
        .WithContext(StrCat(param.global_name, " (", object, ")"));
  }

  Result<std::shared_ptr<const torch::TorchFile>> Open(const std::string& key) const {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = files_.find(key);
    if (it != files_.end()) return it->second;
    const int64_t ei = s_->dcp->metadata().FindEntry(key);
    if (ei < 0) return DataLossError(StrCat("optimizer state ", Quote(key), " is missing"));
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> f,
                          s_->dcp->OpenBytes(s_->dcp->metadata().entries[ei], pickle::Mode::kInspect), key);
    std::shared_ptr<const torch::TorchFile> shared(std::move(f));
    files_.emplace(key, shared);
    return shared;
  }

 private:
  const TorchDistSource* s_;
  std::string dense_prefix_;
  std::string expert_prefix_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<const torch::TorchFile>, std::less<>> files_;
};

// A legacy checkpoint's rank files: model shards from model_optim_rng.pt,
// optimizer state from distrib_optim.pt's world tensors (format C).
class LegacyShards final : public ShardReader {
 public:
  LegacyShards(const internal_checkpoint::LegacyReader* legacy, const std::vector<model::LegacyRankFolder>* folders)
      : legacy_(legacy), folders_(folders) {
    for (size_t i = 0; i < legacy->tensors().size(); ++i) by_key_.emplace(legacy->tensors()[i].key, i);
    for (const auto& r : legacy->ranks()) {
      if (r.distrib) {
        chained_[r.folder] = r.distrib->chained;
        distrib_[r.folder] = &*r.distrib;
      }
    }
  }

  Status ReadShard(const model::RankOptimizer& rank, size_t folder, int64_t chunk, const model::ChunkParam& param,
                   const model::ParamBuffer* buffer, bool expert, int64_t gbuf_idx, const model::BufferParam* where,
                   std::string_view state, ByteSink* out) const override {
    const std::string& dir = (*folders_)[folder].folder;
    if (state.empty()) {
      const std::string key = StrCat(dir, "/", rank.chunks.size() > 1 ? StrCat("model", chunk) : std::string("model"),
                                     ".", param.module_name);
      CKPT_ASSIGN_OR_RETURN(size_t i, Find(key, "model_optim_rng.pt"));
      const TensorInfo& t = legacy_->tensors()[i];
      if (t.shape != param.shape) {
        return DataLossError(StrCat(Quote(key), " has shape [", fmt::format("{}", fmt::join(t.shape, ", ")),
                                    "]; the layout from args gives this rank [",
                                    fmt::format("{}", fmt::join(param.shape, ", ")), "]"));
      }
      return legacy_->ReadTensor(i, out);
    }
    if (buffer == nullptr || where == nullptr) {
      return InternalError(StrCat(param.global_name, " is in no optimizer buffer"));
    }
    auto ch = chained_.find(dir);
    const bool chained = ch != chained_.end() && ch->second;
    const megatron::legacy::DistribOptimState* parsed = Parsed(dir, chained && expert ? 1 : 0);
    if (parsed != nullptr && parsed->format != megatron::legacy::DistribOptimFormat::kCoalesced) {
      // A/B: one tensor per bucket, the bucket's padded elements from its start.
      if (static_cast<size_t>(gbuf_idx) >= parsed->buffers.size()) {
        return DataLossError(StrCat(dir, "/distrib_optim.pt has no buffer ", gbuf_idx));
      }
      const std::string key = StrCat(dir, "/distrib_optim.", chained ? StrCat(expert ? 1 : 0, ".") : std::string(),
                                     gbuf_idx, ".", parsed->buffers[gbuf_idx].dtype_key, ".", state, ".", where->bucket);
      CKPT_ASSIGN_OR_RETURN(size_t i, Find(key, "distrib_optim.pt"));
      const model::BufferBucket& k = buffer->buckets[where->bucket];
      const TensorInfo& t = legacy_->tensors()[i];
      if (t.shape.size() != 1 || t.shape[0] != k.numel) {
        return DataLossError(StrCat(Quote(key), " holds ", t.shape.empty() ? 0 : t.shape[0],
                                    " elements; the bucket recomputed from args has ", k.numel));
      }
      const std::vector<int64_t> st{where->start - k.offset}, ct{where->end - where->start};
      return legacy_->ReadTensorRegion(i, st, ct, out).WithContext(StrCat(param.global_name, " (", dir, ")"));
    }
    const std::string key =
        StrCat(dir, "/distrib_optim.", chained ? StrCat(expert ? 1 : 0, ".") : std::string(), gbuf_idx, ".",
               model::DTypePairName(buffer->param_dtype, buffer->grad_dtype), ".", state);
    CKPT_ASSIGN_OR_RETURN(size_t i, Find(key, "distrib_optim.pt"));
    const TensorInfo& t = legacy_->tensors()[i];
    if (t.shape.size() != 1 || t.shape[0] != buffer->numel_unpadded) {
      return DataLossError(StrCat(Quote(key), " holds ", t.shape.empty() ? 0 : t.shape[0],
                                  " elements; the buffer layout recomputed from args gives ", buffer->numel_unpadded));
    }
    const std::vector<int64_t> st{buffer->WorldOffset(*where)}, ct{where->end - where->start};
    return legacy_->ReadTensorRegion(i, st, ct, out).WithContext(StrCat(param.global_name, " (", dir, ")"));
  }

 private:
  Result<size_t> Find(const std::string& key, std::string_view file) const {
    auto it = by_key_.find(key);
    if (it == by_key_.end()) {
      return DataLossError(StrCat(Quote(key), " is missing: the layout recomputed from args needs it in ", file));
    }
    return it->second;
  }

  // The parsed distrib_optim.pt state of sub-optimizer `sub` in `dir`, or null.
  const megatron::legacy::DistribOptimState* Parsed(const std::string& dir, size_t sub) const {
    auto it = distrib_.find(dir);
    if (it == distrib_.end() || sub >= it->second->optimizers.size() || !it->second->optimizers[sub]) return nullptr;
    return &*it->second->optimizers[sub];
  }

  const internal_checkpoint::LegacyReader* legacy_;
  const std::vector<model::LegacyRankFolder>* folders_;
  std::map<std::string, size_t, std::less<>> by_key_;
  std::map<std::string, bool, std::less<>> chained_;
  std::map<std::string, const megatron::legacy::DistribOptim*, std::less<>> distrib_;
};

}  // namespace

std::vector<Box> StoredShardBoxes(const model::ChunkParam& p, const model::StoredRef& stored) {
  std::vector<Box> out;
  for (const model::ShardRange& sr : model::ShardRanges(p)) {
    Box b;
    b.start = stored.index;
    b.count.assign(stored.index.size(), 1);
    for (size_t d = 0; d < p.global_shape.size(); ++d) {
      const bool cut = static_cast<int>(d) == sr.dim && p.split != model::TpSplit::kNone;
      b.start.push_back(cut ? sr.begin : 0);
      b.count.push_back(cut ? sr.end - sr.begin : p.global_shape[d]);
    }
    out.push_back(std::move(b));
  }
  return out;
}

Status MegatronView::BuildModel() {
  TorchDistSource& s = torch_dist_;
  if (common_ == nullptr) return InvalidArgumentError("the checkpoint has no common state (args)");
  model::ShapeOf shape_of = [&](std::string_view key) -> std::optional<std::vector<int64_t>> {
    auto it = s.by_key.find(key);
    if (it == s.by_key.end()) return std::nullopt;
    return base_->tensors()[it->second].shape;
  };
  CKPT_ASSIGN_OR_RETURN(config_, model::ConfigFromArgs(common_, shape_of));
  CKPT_ASSIGN_OR_RETURN(layout_, model::LayoutFromArgs(*common_));
  settings_ = model::DistOptFromArgs(*common_, std::nullopt);
  // The stored parameter dtype decides the buffers' dtype (params_dtype in
  // args may be absent).
  if (auto emb = s.by_key.find("embedding.word_embeddings.weight"); emb != s.by_key.end()) {
    settings_.params_dtype = base_->tensors()[emb->second].dtype;
  }
  return BuildRanks();
}

Status MegatronView::BuildRanks() {
  // One optimizer per legacy rank folder: the model-parallel ranks that
  // Megatron-LM's legacy save writes (for EP 1: every (tp, pp)).
  CKPT_ASSIGN_OR_RETURN(folders_, model::LegacyRanks(layout_));
  for (const model::LegacyRankFolder& f : folders_) {
    CKPT_ASSIGN_OR_RETURN(model::RankOptimizer r, model::BuildRankOptimizer(config_, layout_, settings_, f.at),
                          StrCat("the distributed optimizer's layout of ", f.folder));
    ranks_.push_back(std::move(r));
  }
  return OkStatus();
}

void MegatronView::AddAssembled(const std::string& state, DType dtype) {
  std::map<std::string, size_t> index;
  for (size_t ri = 0; ri < ranks_.size(); ++ri) {
    const model::RankOptimizer& r = ranks_[ri];
    // Where each parameter of each chunk is in the rank's buffers.
    std::map<std::pair<int64_t, size_t>, std::tuple<bool, int64_t, size_t>> placed;
    for (bool expert : {false, true}) {
      const std::vector<model::ParamBuffer>& bufs = expert ? r.expert : r.dense;
      for (size_t g = 0; g < bufs.size(); ++g) {
        for (size_t w = 0; w < bufs[g].params.size(); ++w) {
          placed[{bufs[g].chunk, bufs[g].params[w].param}] = {expert, static_cast<int64_t>(g), w};
        }
      }
    }
    for (size_t ch = 0; ch < r.chunks.size(); ++ch) {
      for (size_t pi = 0; pi < r.chunks[ch].size(); ++pi) {
        const model::ChunkParam& p = r.chunks[ch][pi];
        // Each shard once: dense parameters from the folder that holds the
        // dense optimizer (one per (tp, pp)), replicated ones from tp rank 0;
        // experts from the folder that holds the expert optimizer.
        const model::LegacyRankFolder& f = folders_[ri];
        if (p.expert ? !f.expert_optimizer
                     : (!f.dense_optimizer || (p.split == model::TpSplit::kNone && r.at.tp_rank != 0))) {
          continue;
        }
        // The model tensor as torch_dist names and shapes it.
        model::StoredRef stored;
        std::vector<int64_t> shape;
        if (legacy_ == nullptr) {
          std::optional<model::StoredRef> found = FindStored(torch_dist_, p.global_name);
          if (!found) continue;  // the model check reports missing tensors
          stored = *found;
          shape = base_->tensors()[torch_dist_.by_key.at(stored.key)].shape;
        } else {
          stored = model::TorchDistCandidates(p.global_name).front();
          shape.reserve(2 + p.global_shape.size());
          if (stored.index.size() >= 1) shape.push_back(config_.num_layers);
          if (stored.index.size() >= 2) shape.push_back(config_.num_experts);
          shape.insert(shape.end(), p.global_shape.begin(), p.global_shape.end());
        }
        const std::string key = state.empty() ? stored.key : StrCat(kOptimizerState, state, ".", stored.key);
        auto [it, fresh] = index.emplace(key, virtual_.size());
        if (fresh) {
          TensorInfo t;
          t.key = key;
          t.dtype = dtype;
          t.shape = shape;
          uint64_t n = DTypeSize(dtype);
          for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
          t.nbytes = n;
          tensors_.push_back(std::move(t));
          Virtual v;
          v.state = state;
          virtual_.push_back(std::move(v));
        }
        Piece piece;
        piece.rank = ri;
        piece.chunk = static_cast<int64_t>(ch);
        piece.param = pi;
        if (auto pl = placed.find({static_cast<int64_t>(ch), pi}); pl != placed.end()) {
          piece.expert = std::get<0>(pl->second);
          piece.gbuf = std::get<1>(pl->second);
          piece.where = std::get<2>(pl->second);
        }
        const std::vector<model::ShardRange> ranges = model::ShardRanges(p);
        int64_t local_row = 0;
        piece.dest = StoredShardBoxes(p, stored);
        for (const model::ShardRange& sr : ranges) {
          if (p.split == model::TpSplit::kNone) {
            piece.local.push_back(Box::Whole(p.shape));
          } else {
            Box l = Box::Whole(p.shape);
            l.start[sr.dim] = sr.dim == 0 ? local_row : 0;
            l.count[sr.dim] = sr.end - sr.begin;
            if (sr.dim == 0) local_row += sr.end - sr.begin;
            piece.local.push_back(std::move(l));
          }
        }
        virtual_[it->second].pieces.push_back(std::move(piece));
      }
    }
  }
}

Result<std::unique_ptr<MegatronView>> MegatronView::OverTorchDist(TorchDistSource source) {
  std::unique_ptr<MegatronView> v(new MegatronView());
  v->torch_dist_ = std::move(source);
  TorchDistSource& s = v->torch_dist_;
  v->base_ = s.reader.get();
  v->common_ = s.common ? &*s.common : nullptr;
  v->tensors_ = v->base_->tensors();
  v->virtual_.resize(v->tensors_.size());
  for (size_t i = 0; i < v->virtual_.size(); ++i) v->virtual_[i].base = static_cast<int64_t>(i);

  // Which optimizer layout the checkpoint holds.
  bool model_space = false;
  bool flattened = false;  // fully_sharded_model_space: fp32_param, not param
  std::string bucket_prefix;
  bool buckets = false;
  bool gather_scatter = false;
  std::set<std::string> states;
  for (const TensorInfo& t : v->tensors_) {
    std::string_view k = t.key;
    if (k.rfind(kOptimizerState, 0) == 0) {
      model_space = true;
      flattened = flattened || k.rfind(kFlattenedMainParams, 0) == 0;
      continue;
    }
    size_t at = k.find(kDistributed);
    if (at == std::string_view::npos) continue;
    if (k.find(".bucket_idx_") != std::string_view::npos) {
      buckets = true;
      bucket_prefix = std::string(k.substr(0, at));
      states.insert(std::string(k.substr(k.rfind('.') + 1)));
    }
  }
  std::string gather_prefix;
  for (const ObjectInfo& o : v->base_->objects()) {
    const size_t at = o.key.find(kDistributed);
    if (at != std::string::npos && o.key.find(".param_state/") != std::string::npos) {
      gather_scatter = true;
      gather_prefix = o.key.substr(0, at);
    }
  }
  // The model and the layout that placed the buckets. A checkpoint whose
  // args do not describe a model the layer knows still opens straight
  // through (model_status() says why there is no layout).
  v->model_status_ = v->BuildModel();
  if (model_space || (!buckets && !gather_scatter)) {
    v->optimizer_layout_ = model_space ? OptimizerLayout::kFullyReshardable : OptimizerLayout::kNone;
    if (flattened) {
      v->optimizer_layout_ = OptimizerLayout::kFullyShardedModelSpace;
      CKPT_RETURN_IF_ERROR(v->MapFlattenedModelSpace());
    }
    for (const TensorInfo& t : v->tensors_) {
      if (t.key.rfind(kOptimizerState, 0) != 0) continue;
      const std::string st = t.key.substr(kOptimizerState.size(), t.key.find('.', kOptimizerState.size()) -
                                                                      kOptimizerState.size());
      if (std::find(v->states_.begin(), v->states_.end(), st) == v->states_.end()) v->states_.push_back(st);
    }
    for (size_t i = 0; i < v->tensors_.size(); ++i) v->by_key_.emplace(v->tensors_[i].key, i);
    return v;  // already model space (or no optimizer state): straight through
  }
  if (gather_scatter && !buckets) {
    v->optimizer_layout_ = OptimizerLayout::kDpZeroGatherScatter;
    CKPT_RETURN_IF_ERROR(v->model_status_);
    // A ChainedOptimizer (EP > 1) keeps chained_0. (dense) / chained_1. (expert) objects.
    const bool chained = gather_prefix.rfind("chained_", 0) == 0;
    auto shards = std::make_unique<DpZeroShards>(&v->torch_dist_, chained ? "chained_0." : gather_prefix,
                                                 "chained_1.");
    // Every rank's dicts must hold each buffer at its recomputed size.
    std::vector<std::string> states;
    for (const model::RankOptimizer& r : v->ranks_) {
      for (bool expert : {false, true}) {
        const std::vector<model::ParamBuffer>& buffers = expert ? r.expert : r.dense;
        if (buffers.empty()) continue;
        const std::string object = shards->Key(r, expert);
        CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> f, shards->Open(object));
        for (size_t g = 0; g < buffers.size(); ++g) {
          const std::string pair = model::DTypePairName(buffers[g].param_dtype, buffers[g].grad_dtype);
          const std::string prefix = StrCat("0.", g, ".", pair, ".");
          bool found = false;
          for (const torch::TensorRecord& t : f->tensors()) {
            if (t.key.rfind(prefix, 0) != 0) continue;
            found = true;
            const std::string st = t.key.substr(prefix.size());
            if (t.shape.size() != 1 || t.shape[0] != buffers[g].numel_unpadded) {
              return DataLossError(StrCat(object, ": ", Quote(t.key), " holds ", t.shape.empty() ? 0 : t.shape[0],
                                          " elements; the layout recomputed from args (",
                                          model::LayoutString(v->layout_), ") gives ", buffers[g].numel_unpadded));
            }
            if (std::find(states.begin(), states.end(), st) == states.end()) states.push_back(st);
          }
          if (!found) {
            return DataLossError(
                StrCat(object, ": buffer ", g, " ", pair, " is missing (the layout from args has it)"));
          }
        }
      }
    }
    v->shards_ = std::move(shards);
    for (const std::string& st : states) {
      v->states_.push_back(st);
      v->AddAssembled(st, DType::kFloat32);
    }
    CKPT_RETURN_IF_ERROR(v->Finish());
    return v;
  }
  v->optimizer_layout_ = OptimizerLayout::kDpReshardable;
  CKPT_RETURN_IF_ERROR(v->model_status_);
  // A ChainedOptimizer (dense + expert) prefixes its sub-optimizers' keys
  // "chained_0." / "chained_1." (seen in megatron-core 0.16.1's EP saves);
  // a single optimizer has none.
  const bool chained = bucket_prefix.rfind("chained_", 0) == 0;
  const std::string dense_prefix = chained ? "chained_0." : bucket_prefix;
  const std::string expert_prefix = "chained_1.";
  auto prefix_of = [&](bool expert) { return expert ? expert_prefix : dense_prefix; };
  auto group_of = [](const model::RankOptimizer& r, bool expert) {
    return expert ? r.expert_dp_group_idx : r.dense_dp_group_idx;
  };


  // The padded bucket sizes megatron recorded (per_bucket_numel: one
  // {dtype pair: [padded numel per bucket]} per buffer) depend on the DP
  // size: they must be the layout's, each divisible by the DP size.
  for (size_t ri = 0; ri < v->ranks_.size(); ++ri) {
    for (bool expert : {false, true}) {
      const model::RankOptimizer& r = v->ranks_[ri];
      const model::LegacyRankFolder& fold = v->folders_[ri];
      if (expert ? !fold.expert_optimizer : !fold.dense_optimizer) continue;
      const std::vector<model::ParamBuffer>& bufs = expert ? r.expert : r.dense;
      if (bufs.empty()) continue;
      const std::string key =
          StrCat(prefix_of(expert), kDistributed, group_of(r, expert), ".per_bucket_numel/shard_0_1");
      const int64_t ei = s.dcp->metadata().FindEntry(key);
      if (ei < 0) continue;
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> f,
                            s.dcp->OpenBytes(s.dcp->metadata().entries[ei], pickle::Mode::kInspect), key);
      const pickle::Value* root = f->root();
      if (root && root->kind == pickle::Kind::kList && root->items().size() == 1) root = root->items()[0];
      if (root == nullptr || root->kind != pickle::Kind::kList || root->items().size() != bufs.size()) {
        return DataLossError(StrCat(key, ": expected a list of ", bufs.size(), " buffers' bucket sizes, found ",
                                    root ? pickle::Repr(root, 80) : std::string("nothing")));
      }
      for (size_t g = 0; g < bufs.size(); ++g) {
        const pickle::Value* d = root->items()[g];
        const pickle::Value* sizes = (d && d->kind == pickle::Kind::kDict && d->dict().size() == 1) ? d->dict()[0].second
                                                                                                 : nullptr;
        if (sizes == nullptr || sizes->kind != pickle::Kind::kList) {
          return DataLossError(StrCat(key, ": buffer ", g, " is not {dtype: [bucket sizes]}"));
        }
        const model::ParamBuffer& b = bufs[g];
        for (size_t k = 0; k < sizes->items().size(); ++k) {
          const pickle::Value* n = sizes->items()[k];
          if (n->kind != pickle::Kind::kInt) return DataLossError(StrCat(key, ": bucket ", k, " size is not an int"));
          if (n->i % b.dp != 0) {
            return DataLossError(StrCat(key, ": buffer ", g, " bucket ", k, " is padded to ", n->i,
                                        " elements, which the data-parallel size ", b.dp,
                                        " from args does not divide: args do not describe the run that saved it"));
          }
          if (k >= b.buckets.size() || n->i != b.buckets[k].numel) {
            return DataLossError(StrCat(key, ": buffer ", g, " bucket ", k, " is padded to ", n->i,
                                        " elements; the layout from args (", model::LayoutString(v->layout_),
                                        ") gives ", k < b.buckets.size() ? b.buckets[k].numel : 0));
          }
        }
        if (sizes->items().size() != b.buckets.size()) {
          return DataLossError(StrCat(key, ": buffer ", g, " has ", sizes->items().size(), " buckets; the layout gives ",
                                      b.buckets.size()));
        }
      }
    }
  }
  // Every bucket the layout predicts must be stored with its predicted size.
  for (size_t ri = 0; ri < v->ranks_.size(); ++ri) {
    for (bool expert : {false, true}) {
      const model::RankOptimizer& r = v->ranks_[ri];
      const model::LegacyRankFolder& fold = v->folders_[ri];
      if (expert ? !fold.expert_optimizer : !fold.dense_optimizer) continue;
      const std::vector<model::ParamBuffer>& bufs = expert ? r.expert : r.dense;
      for (size_t g = 0; g < bufs.size(); ++g) {
        const model::ParamBuffer& b = bufs[g];
        for (size_t k = 0; k < b.buckets.size(); ++k) {
          for (const std::string& st : states) {
            const std::string key = DpReshardableShards::Key(prefix_of(expert), group_of(r, expert),
                                                             static_cast<int64_t>(g), b, static_cast<int64_t>(k), st);
            auto it = s.by_key.find(key);
            if (it == s.by_key.end()) {
              return DataLossError(StrCat("optimizer bucket ", Quote(key), " is missing: the layout recomputed from args (",
                                          model::LayoutString(v->layout_), ", ", model::LayerSpecName(v->settings_.spec),
                                          " layer spec) predicts it"));
            }
            const TensorInfo& t = v->base_->tensors()[it->second];
            if (t.shape.size() != 1 || t.shape[0] != b.buckets[k].numel_unpadded) {
              return DataLossError(StrCat("optimizer bucket ", Quote(key), " holds ",
                                          t.shape.empty() ? 0 : t.shape[0], " elements; the layout recomputed from args (",
                                          model::LayoutString(v->layout_), ", ", model::LayerSpecName(v->settings_.spec),
                                          " layer spec) gives ", b.buckets[k].numel_unpadded));
            }
          }
        }
      }
    }
  }
  auto shards = std::make_unique<DpReshardableShards>(&v->torch_dist_, dense_prefix, expert_prefix);
  v->shards_ = std::move(shards);
  // The bucket tensors are shown as what they hold: per-parameter state.
  {
    std::vector<TensorInfo> kept;
    std::vector<Virtual> kept_v;
    for (size_t i = 0; i < v->tensors_.size(); ++i) {
      const std::string& k = v->tensors_[i].key;
      if (k.find(kDistributed) != std::string::npos && k.find(".bucket_idx_") != std::string::npos) continue;
      kept.push_back(v->tensors_[i]);
      kept_v.push_back(v->virtual_[i]);
    }
    v->tensors_ = std::move(kept);
    v->virtual_ = std::move(kept_v);
  }
  for (const std::string& st : states) {
    v->states_.push_back(st);
    v->AddAssembled(st, DType::kFloat32);
  }
  CKPT_RETURN_IF_ERROR(v->Finish());
  return v;
}

Status MegatronView::MapFlattenedModelSpace() {
  const dcp::Metadata* md = torch_dist_.dcp ? &torch_dist_.dcp->metadata() : nullptr;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    TensorInfo& t = tensors_[i];
    if (t.key.rfind(kOptimizerState, 0) != 0) continue;
    const std::string stored = t.key;
    if (t.key.rfind(kFlattenedMainParams, 0) == 0) {
      t.key = StrCat(kMainParams, std::string_view(t.key).substr(kFlattenedMainParams.size()));
    }
    // Megatron records the original shape of every tensor it reformulated
    // (MCoreMetadata.mcore_data); a 1-D one is stored as is.
    if (md == nullptr) continue;
    auto orig = md->nd_reformulated_shapes.find(stored);
    if (orig == md->nd_reformulated_shapes.end()) continue;
    const std::vector<int64_t>& shape = orig->second;
    const std::vector<int64_t> grid = t.shape;  // grid + [numel(local)]
    auto bad = [&](std::string_view why) {
      return DataLossError(StrCat(Quote(stored), ": stored N-D flattened as [", fmt::format("{}", fmt::join(grid, ", ")),
                                  "] for the original shape [", fmt::format("{}", fmt::join(shape, ", ")), "]: ", why));
    };
    if (grid.size() != shape.size() + 1) return bad("not one axis more than the original");
    std::vector<int64_t> local(shape.size());
    int64_t numel = 1;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (grid[d] <= 0 || shape[d] < 0 || shape[d] % grid[d] != 0) return bad("the grid does not divide the shape");
      local[d] = shape[d] / grid[d];
      if (local[d] != 0 && numel > INT64_MAX / local[d]) return bad("too many elements");
      numel *= local[d];
    }
    if (numel != grid.back()) return bad(StrCat("a cell holds ", grid.back(), " elements, the local shape ", numel));
    // Model space: the original shape, one chunk per cell (a TP shard, or a
    // gated fc1's gate or up half of one).
    t.shape = shape;
    t.chunks.clear();
    const int64_t cells = numel == 0 ? 0 : static_cast<int64_t>(t.nbytes / DTypeSize(t.dtype)) / numel;
    for (int64_t c = 0; c < cells; ++c) {
      std::vector<int64_t>& offsets = chunk_dims_.emplace_back(shape.size());
      for (int64_t d = static_cast<int64_t>(shape.size()) - 1, rest = c; d >= 0; --d) {
        offsets[static_cast<size_t>(d)] = (rest % grid[d]) * local[d];
        rest /= grid[d];
      }
      ChunkInfo ch;
      ch.offsets = offsets;
      ch.sizes = chunk_dims_.emplace_back(local);
      t.chunks.push_back(ch);
    }
    virtual_[i].local = std::move(local);
  }
  return OkStatus();
}

Status MegatronView::ReadReformulated(const Virtual& v, const TensorInfo& t, const Box& region, ByteSink* out) const {
  const uint64_t esize = DTypeSize(t.dtype);
  const size_t rank = v.local.size();
  int64_t numel = 1;
  for (int64_t l : v.local) numel *= l;
  // The cells the region meets, per axis [first, last].
  std::vector<int64_t> first(rank), last(rank), cell(rank);
  for (size_t d = 0; d < rank; ++d) {
    if (region.count[d] == 0) return OkStatus();
    first[d] = region.start[d] / v.local[d];
    last[d] = (region.start[d] + region.count[d] - 1) / v.local[d];
  }
  auto stored_cell = [&](const std::vector<int64_t>& c, ByteSink* sink) {
    std::vector<int64_t> start(c), count(rank, 1);
    start.push_back(0);
    count.push_back(numel);
    return base_->ReadTensorRegion(static_cast<size_t>(v.base), start, count, sink);
  };
  auto cell_box = [&](const std::vector<int64_t>& c) {
    Box b;
    for (size_t d = 0; d < rank; ++d) {
      b.start.push_back(c[d] * v.local[d]);
      b.count.push_back(v.local[d]);
    }
    return b;
  };
  // Exactly one cell (a rank's shard, as the legacy writer asks): stream it.
  if (first == last) {
    const Box b = cell_box(first);
    if (b.start == region.start && b.count == region.count) return stored_cell(first, out);
  }
  std::string buf(region.numel() * esize, '\0');
  cell = first;
  while (true) {
    StringSink data;
    CKPT_RETURN_IF_ERROR(stored_cell(cell, &data));
    if (data.str().size() != static_cast<uint64_t>(numel) * esize) {
      return DataLossError(StrCat("a cell read ", data.str().size(), " bytes, expected ",
                                  static_cast<uint64_t>(numel) * esize));
    }
    for (BoxScatter sc(cell_box(cell), region, esize); sc.has_runs(); sc.Next()) {
      std::memcpy(buf.data() + sc.run().dst, data.str().data() + sc.run().src, sc.run().len);
    }
    size_t d = rank;
    while (d > 0 && cell[d - 1] == last[d - 1]) {
      cell[d - 1] = first[d - 1];
      --d;
    }
    if (d == 0) break;
    ++cell[d - 1];
  }
  return out->Append(buf);
}

Status MegatronView::Finish() {
  // Coverage: the pieces of every assembled tensor tile it exactly. They are
  // its chunks (one per rank shard; two for a gated fc1 shard).
  for (size_t i = 0; i < virtual_.size(); ++i) {
    if (virtual_[i].base >= 0) continue;
    uint64_t covered = 0;
    tensors_[i].chunks.clear();
    for (const Piece& p : virtual_[i].pieces) {
      for (const Box& d : p.dest) {
        covered += d.numel();
        ChunkInfo c;
        c.offsets = chunk_dims_.emplace_back(d.start);
        c.sizes = chunk_dims_.emplace_back(d.count);
        tensors_[i].chunks.push_back(c);
      }
    }
    uint64_t total = 1;
    for (int64_t d : tensors_[i].shape) total *= static_cast<uint64_t>(d);
    if (covered != total) {
      return DataLossError(StrCat(Quote(tensors_[i].key), ": the rank shards cover ", covered, " of its ", total,
                                  " elements (", model::LayoutString(layout_), ")"));
    }
  }
  for (size_t i = 0; i < tensors_.size(); ++i) by_key_.emplace(tensors_[i].key, i);
  return OkStatus();
}

}  // namespace ckpt::internal_convert

namespace ckpt {

Result<std::unique_ptr<CheckpointReader>> OpenModelSpace(const std::string& path, const OpenOptions& options) {
  OpenOptions open = options;
  Env* env = open.env ? open.env : Env::Default();
  open.env = env;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(path, open));
  if (reader->kind() == SourceKind::kLegacy) {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<internal_convert::MegatronView> v,
                          internal_convert::MegatronView::OverLegacy(std::move(reader)), path);
    return std::unique_ptr<CheckpointReader>(std::move(v));
  }
  if (reader->kind() != SourceKind::kTorchDist) return reader;
  // The view reads args in inspect mode (they may hold Megatron enums): a
  // reader opened strictly is opened again that way.
  if (open.pickle_mode != PickleMode::kInspect) {
    reader.reset();
    open.pickle_mode = PickleMode::kInspect;
    CKPT_ASSIGN_OR_RETURN(reader, OpenCheckpoint(path, open));
  }
  CKPT_ASSIGN_OR_RETURN(internal_convert::TorchDistSource s,
                        internal_convert::TorchDistFromReader(std::move(reader), path, env,
                                                              "the model-space view reads"));
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<internal_convert::MegatronView> v,
                        internal_convert::MegatronView::OverTorchDist(std::move(s)), path);
  return std::unique_ptr<CheckpointReader>(std::move(v));
}

namespace {

// Reads tensor i slab by slab along its leading axis (or whole when 0-D/1-D),
// calling fn(first element index, bytes).
// Calls fn(box, bytes of that box) over tensor i piece by piece: its stored
// chunks (a model-space view's assembled tensors list their rank shards as
// chunks, each read straight from one shard), else one leading index at a
// time. Memory: one piece.
Status ForEachPiece(const CheckpointReader& r, size_t i, const std::function<Status(const Box&, std::string_view)>& fn) {
  const TensorInfo& t = r.tensors()[i];
  std::vector<Box> boxes;
  for (const ChunkInfo& c : t.chunks) boxes.push_back(MakeBox(c.offsets, c.sizes));
  if (boxes.empty() && t.shape.size() >= 2) {
    for (int64_t k = 0; k < t.shape[0]; ++k) {
      Box b = Box::Whole(t.shape);
      b.start[0] = k;
      b.count[0] = 1;
      boxes.push_back(std::move(b));
    }
  }
  if (boxes.empty()) boxes.push_back(Box::Whole(t.shape));
  for (const Box& b : boxes) {
    StringSink data;
    CKPT_RETURN_IF_ERROR(r.ReadTensorRegion(i, b.start, b.count, &data));
    CKPT_RETURN_IF_ERROR(fn(b, data.str()));
  }
  return OkStatus();
}

// The row-major index in `shape` of element e (row-major) of box b.
uint64_t FlatIndex(const Box& b, const std::vector<int64_t>& shape, uint64_t e) {
  uint64_t flat = 0;
  std::vector<int64_t> idx(b.count.size());
  for (size_t d = b.count.size(); d-- > 0;) {
    const uint64_t c = static_cast<uint64_t>(b.count[d]);
    idx[d] = b.start[d] + static_cast<int64_t>(c ? e % c : 0);
    e = c ? e / c : 0;
  }
  for (size_t d = 0; d < shape.size(); ++d) flat = flat * static_cast<uint64_t>(shape[d]) + static_cast<uint64_t>(idx[d]);
  return flat;
}

}  // namespace

Result<std::vector<VerifyProblem>> CheckOptimizerState(const CheckpointReader& r) {
  std::vector<VerifyProblem> problems;
  std::map<std::string, size_t, std::less<>> by_key;
  for (size_t i = 0; i < r.tensors().size(); ++i) by_key.emplace(r.tensors()[i].key, i);
  const std::string param_prefix = StrCat(internal_convert::kOptimizerState, "param.");
  const std::string sq_prefix = StrCat(internal_convert::kOptimizerState, "exp_avg_sq.");
  for (const auto& [key, i] : by_key) {
    const TensorInfo& t = r.tensors()[i];
    if (key.rfind(param_prefix, 0) == 0) {
      auto m = by_key.find(std::string_view(key).substr(param_prefix.size()));
      if (m == by_key.end()) continue;
      const TensorInfo& model = r.tensors()[m->second];
      if (t.dtype != DType::kFloat32 || model.shape != t.shape ||
          (model.dtype != DType::kBFloat16 && model.dtype != DType::kFloat16 && model.dtype != DType::kFloat32)) {
        continue;
      }
      // The model tensor's piece beside each piece of the main params.
      uint64_t bad = 0, first = UINT64_MAX;
      CKPT_RETURN_IF_ERROR(ForEachPiece(r, i, [&](const Box& b, std::string_view main) {
        if (main.empty()) return OkStatus();
        StringSink mw_sink;
        CKPT_RETURN_IF_ERROR(r.ReadTensorRegion(m->second, b.start, b.count, &mw_sink));
        const std::string& mw = mw_sink.str();
        const uint64_t n = main.size() / 4;
        for (uint64_t e = 0; e < n; ++e) {
          float f;
          std::memcpy(&f, main.data() + 4 * e, 4);
          bool same;
          if (model.dtype == DType::kFloat32) {
            same = std::memcmp(main.data() + 4 * e, mw.data() + 4 * e, 4) == 0;
          } else {
            uint16_t want;
            std::memcpy(&want, mw.data() + 2 * e, 2);
            const uint16_t got = model.dtype == DType::kBFloat16 ? internal_convert::FloatToBf16(f)
                                                                 : internal_convert::FloatToHalf(f);
            same = got == want;
          }
          if (!same) {
            first = std::min(first, FlatIndex(b, t.shape, e));
            ++bad;
          }
        }
        return OkStatus();
      }));
      if (bad > 0) {
        problems.push_back({"", false, 0, key,
                            StrCat(bad, " of the fp32 main parameters, from element ", first,
                                   ", do not round to the model weights of ", Quote(model.key), " (", DTypeName(model.dtype),
                                   "): the optimizer state is not this model's (misaligned or stale); megatron-core "
                                   "<= 0.19.2's fully_reshardable save shifts parameters past a buffer's first bucket "
                                   "(NVIDIA/Megatron-LM PR #5077)")});
      }
    } else if (key.rfind(sq_prefix, 0) == 0 && t.dtype == DType::kFloat32) {
      uint64_t neg = 0, first = UINT64_MAX;
      CKPT_RETURN_IF_ERROR(ForEachPiece(r, i, [&](const Box& box, std::string_view b) {
        for (uint64_t e = 0; e < b.size() / 4; ++e) {
          float f;
          std::memcpy(&f, b.data() + 4 * e, 4);
          if (f < 0) {
            first = std::min(first, FlatIndex(box, t.shape, e));
            ++neg;
          }
        }
        return OkStatus();
      }));
      if (neg > 0) {
        problems.push_back({"", false, 0, key,
                            StrCat(neg, " negative second moments, from element ", first,
                                   ": exp_avg_sq cannot be negative (corrupt or misplaced optimizer state)")});
      }
    }
  }
  return problems;
}

Result<LegacyLayout> DescribeLegacyFolders(const std::string& path, const OpenOptions& options) {
  OpenOptions open = options;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(path, open));
  if (reader->kind() != SourceKind::kLegacy) return InvalidArgumentError(StrCat(path, " is not a legacy checkpoint"));
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<internal_convert::MegatronView> v,
                        internal_convert::MegatronView::OverLegacy(std::move(reader)));
  LegacyLayout out;
  const model::ParallelLayout& l = v->layout();
  out.tp = l.tp;
  out.pp = l.pp;
  out.dp = l.dp;
  out.cp = l.cp;
  out.ep = l.ep;
  out.etp = l.etp;
  out.vpp = l.vpp;
  out.num_layers = v->config().num_layers;
  out.folders = v->FolderSummary();
  return out;
}

Result<std::vector<std::string>> DescribeLegacyLayout(const std::string& path, const OpenOptions& options) {
  CKPT_ASSIGN_OR_RETURN(LegacyLayout layout, DescribeLegacyFolders(path, options));
  std::vector<std::string> lines;
  for (LegacyFolderLayout& f : layout.folders) lines.push_back(std::move(f.line));
  return lines;
}

std::string OptimizerStateKey(std::string_view state, std::string_view key) {
  return StrCat(internal_convert::kOptimizerState, state, ".", key);
}

}  // namespace ckpt

namespace ckpt::internal_convert {

Status MegatronView::ReadLocal(size_t rank, int64_t chunk, size_t param, std::string_view state, ByteSink* out) const {
  const model::RankOptimizer& r = ranks_.at(rank);
  const model::ChunkParam& p = r.chunks.at(chunk).at(param);
  std::optional<model::StoredRef> stored;
  if (legacy_ != nullptr) {
    stored = model::TorchDistCandidates(p.global_name).front();
  } else {
    stored = FindStored(torch_dist_, p.global_name);
  }
  if (!stored) return NotFoundError(StrCat("the checkpoint has no tensor for ", p.global_name));
  const std::string key = state.empty() ? stored->key : StrCat(kOptimizerState, state, ".", stored->key);
  auto it = by_key_.find(key);
  if (it == by_key_.end()) return NotFoundError(StrCat("the checkpoint has no tensor ", Quote(key)));
  for (const Box& b : StoredShardBoxes(p, *stored)) {
    CKPT_RETURN_IF_ERROR(ReadTensorRegion(it->second, b.start, b.count, out),
                         StrCat(p.module_name, " of ", folders_.at(rank).folder));
  }
  return OkStatus();
}

Result<std::unique_ptr<MegatronView>> MegatronView::OverLegacy(std::unique_ptr<CheckpointReader> reader) {
  std::unique_ptr<MegatronView> v(new MegatronView());
  v->legacy_ = reader->legacy_view();
  if (v->legacy_ == nullptr) return InvalidArgumentError("not a legacy Megatron checkpoint");
  v->owned_ = std::move(reader);
  v->base_ = v->owned_.get();
  v->common_ = v->legacy_->common();
  if (v->common_ == nullptr) {
    return InvalidArgumentError(StrCat("no readable model_optim_rng.pt with args (rank 0's, ",
                                       v->legacy_->rank0_folder().empty() ? "none found" : v->legacy_->rank0_folder(),
                                       "): the model and its layout are unknown"));
  }
  // The layer spec from rank 0's own parameter names.
  model::LayerSpec spec = model::LayerSpec::kTransformerEngine;
  for (const TensorInfo& t : v->legacy_->tensors()) {
    if (t.key.find(".input_layernorm.") != std::string::npos) spec = model::LayerSpec::kLocal;
  }
  model::ShapeOf none = [](std::string_view) -> std::optional<std::vector<int64_t>> { return std::nullopt; };
  CKPT_ASSIGN_OR_RETURN(v->config_, model::ConfigFromArgs(v->common_, none));
  CKPT_ASSIGN_OR_RETURN(v->layout_, model::LayoutFromArgs(*v->common_));
  v->settings_ = model::DistOptFromArgs(*v->common_, spec);
  // distrib_optim.pt formats A/B (core <= 0.6) come from buffers packed the old way.
  std::optional<megatron::legacy::DistribOptimFormat> format;
  for (const auto& r : v->legacy_->ranks()) {
    if (!r.distrib) continue;
    for (const auto& o : r.distrib->optimizers) {
      if (!o) continue;
      if (format && *format != o->format) {
        return DataLossError(StrCat(r.folder, "/distrib_optim.pt is in format ",
                                    megatron::legacy::DistribOptimFormatName(o->format), ", another rank's in ",
                                    megatron::legacy::DistribOptimFormatName(*format)));
      }
      format = o->format;
    }
  }
  if (format && *format != megatron::legacy::DistribOptimFormat::kCoalesced) {
    v->settings_.packing = model::BufferPacking::kPacked;
  }
  CKPT_RETURN_IF_ERROR(v->BuildRanks());
  v->model_status_ = OkStatus();
  // The stored dtype of the model (args may not say it).
  for (const TensorInfo& t : v->legacy_->tensors()) {
    if (t.key.find("/model") != std::string::npos) {
      v->settings_.params_dtype = t.dtype;
      break;
    }
  }
  CKPT_RETURN_IF_ERROR(v->CheckLegacyBuffers());
  v->shards_ = std::make_unique<LegacyShards>(v->legacy_, &v->folders_);
  v->AddAssembled("", v->settings_.params_dtype);
  // Optimizer states held by every distrib_optim buffer (format C).
  std::vector<std::string> states;
  bool distrib = false;
  for (const auto& r : v->legacy_->ranks()) {
    if (!r.distrib) continue;
    distrib = true;
    for (const auto& o : r.distrib->optimizers) {
      if (!o) continue;
      for (const auto& b : o->buffers) {
        for (const auto& st : b.states) {
          if (std::find(states.begin(), states.end(), st.name) == states.end()) states.push_back(st.name);
        }
      }
    }
  }
  if (distrib) {
    v->optimizer_layout_ = OptimizerLayout::kLegacyDistribOptim;
    for (const std::string& st : states) {
      v->states_.push_back(st);
      v->AddAssembled(st, DType::kFloat32);
    }
  }
  CKPT_RETURN_IF_ERROR(v->Finish());
  return v;
}

Status MegatronView::CheckLegacyBuffers() const {
  std::map<std::string, const internal_checkpoint::LegacyReader::Rank*, std::less<>> by_folder;
  for (const auto& r : legacy_->ranks()) by_folder[r.folder] = &r;
  for (size_t ri = 0; ri < folders_.size(); ++ri) {
    const model::LegacyRankFolder& f = folders_[ri];
    auto it = by_folder.find(f.folder);
    if (it == by_folder.end() || !it->second->present) {
      return DataLossError(StrCat("rank folder ", f.folder, " is missing: the layout from args (",
                                  model::LayoutString(layout_), ") writes it"));
    }
    const auto& rank = *it->second;
    if (f.model_file && !rank.model.opened) {
      return DataLossError(StrCat(f.folder, "/model_optim_rng.pt is ", rank.model.present ? "unreadable" : "missing"));
    }
    if (!rank.distrib) continue;  // no optimizer state in this folder (or none at all)
    const model::RankOptimizer& r = ranks_[ri];
    const bool chained = rank.distrib->chained;
    for (int kind = 0; kind < 2; ++kind) {
      const bool expert = kind == 1;
      const bool held = expert ? f.expert_optimizer : f.dense_optimizer;
      const std::vector<model::ParamBuffer>& want = expert ? r.expert : r.dense;
      if (!held || want.empty()) continue;
      const size_t sub = chained ? static_cast<size_t>(kind) : 0;
      if (!chained && expert) continue;
      if (sub >= rank.distrib->optimizers.size() || !rank.distrib->optimizers[sub]) {
        return DataLossError(StrCat(f.folder, "/distrib_optim.pt: the ", expert ? "expert" : "dense",
                                    " optimizer's state is missing (this folder's rank is its DP rank 0)"));
      }
      const auto& got = rank.distrib->optimizers[sub]->buffers;
      if (got.size() != want.size()) {
        return DataLossError(StrCat(f.folder, "/distrib_optim.pt: ", got.size(), " ", expert ? "expert " : "",
                                    "buffers; the model (", model::LayoutString(layout_), ", ",
                                    model::LayerSpecName(settings_.spec), " layer spec) gives ", want.size()));
      }
      const bool per_bucket = rank.distrib->optimizers[sub]->format != megatron::legacy::DistribOptimFormat::kCoalesced;
      for (size_t g = 0; g < want.size(); ++g) {
        const std::string dt = model::DTypePairName(want[g].param_dtype, want[g].grad_dtype);
        if (per_bucket) {
          // A/B: a tensor per bucket of its padded size (and, B, the sizes listed).
          const std::string where = StrCat(f.folder, "/distrib_optim.pt: ", chained ? StrCat("optimizer ", sub, " ") : "",
                                           "buffer ", g, " ", got[g].dtype_key);
          if (rank.distrib->optimizers[sub]->format == megatron::legacy::DistribOptimFormat::kPerBucket &&
              got[g].dtype_key != dt) {
            return DataLossError(StrCat(where, ": the model's buffer ", g, " is ", dt));
          }
          const auto& buckets = want[g].buckets;
          auto listed = [&](std::string_view what, const std::vector<int64_t>& have, auto field) -> Status {
            if (have.empty()) return OkStatus();
            std::vector<int64_t> expect;
            for (const model::BufferBucket& k : buckets) expect.push_back(field(k));
            if (have == expect) return OkStatus();
            return DataLossError(StrCat(where, ": ", what, " [", fmt::format("{}", fmt::join(have, ", ")),
                                        "]; the model's buffer layout (", model::LayoutString(layout_), ", ",
                                        model::LayerSpecName(settings_.spec), " layer spec, DP ",
                                        expert ? r.expert_dp : r.dense_dp, ", megatron-core <= 0.6 packing) gives [",
                                        fmt::format("{}", fmt::join(expect, ", ")), "]"));
          };
          CKPT_RETURN_IF_ERROR(listed("per_bucket_numel", got[g].bucket_numel,
                                      [](const model::BufferBucket& k) { return k.numel; }));
          CKPT_RETURN_IF_ERROR(listed("per_bucket_numel_unpadded", got[g].bucket_numel_unpadded,
                                      [](const model::BufferBucket& k) { return k.numel_unpadded; }));
          for (const auto& st : got[g].states) {
            std::vector<int64_t> lengths;
            for (const auto& t : st.tensors) lengths.push_back(t.numel);
            CKPT_RETURN_IF_ERROR(listed(StrCat(st.name, " bucket tensors of"), lengths,
                                        [](const model::BufferBucket& k) { return k.numel; }));
          }
          continue;
        }
        if (got[g].dtype_key != dt || got[g].numel() != want[g].numel_unpadded) {
          return DataLossError(StrCat(f.folder, "/distrib_optim.pt: ", chained ? StrCat("optimizer ", sub, " ") : "",
                                      "buffer ", g, " ", got[g].dtype_key, " holds ", got[g].numel(),
                                      " elements; the model's buffer layout (", model::LayoutString(layout_), ", ",
                                      model::LayerSpecName(settings_.spec), " layer spec, DP ",
                                      expert ? r.expert_dp : r.dense_dp, ") gives ", dt, " with ",
                                      want[g].numel_unpadded));
        }
      }
    }
  }
  return OkStatus();
}

std::vector<LegacyFolderLayout> MegatronView::FolderSummary() const {
  std::vector<LegacyFolderLayout> out;
  for (size_t ri = 0; ri < folders_.size() && ri < ranks_.size(); ++ri) {
    const model::LegacyRankFolder& f = folders_[ri];
    const model::RankOptimizer& r = ranks_[ri];
    LegacyFolderLayout fl;
    fl.folder = f.folder;
    fl.tp = f.at.tp_rank;
    fl.pp = f.at.pp_rank;
    fl.ep = f.at.ep_rank;
    std::vector<int64_t> ids;
    std::set<int64_t> experts;
    for (const auto& chunk : r.chunks) {
      std::vector<int64_t>& chunk_layers = fl.layers.emplace_back();
      for (const model::ChunkParam& p : chunk) {
        std::string_view rest;
        if (auto l = megatron::PerLayerIndex(p.global_name, "decoder.layers.", &rest)) {
          if (ids.empty() || ids.back() != *l) ids.push_back(*l);
          if (chunk_layers.empty() || chunk_layers.back() != *l) chunk_layers.push_back(*l);
          if (p.expert || rest.rfind("mlp.experts.experts.", 0) == 0) {
            std::string_view er = rest.substr(std::string_view("mlp.experts.experts.").size());
            experts.insert(std::stoll(std::string(er.substr(0, er.find('.')))));
          }
        }
      }
    }
    std::vector<int64_t> sorted(ids);
    std::sort(sorted.begin(), sorted.end());
    sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
    std::string line = StrCat(f.folder, ": tp ", f.at.tp_rank, " pp ", f.at.pp_rank);
    if (layout_.ep > 1) line += StrCat(" ep ", f.at.ep_rank);
    line += StrCat(", layers ", sorted.empty() ? std::string("none") : megatron::RangesString(sorted));
    if (r.chunks.size() > 1) line += StrCat(" in ", r.chunks.size(), " virtual stages");
    if (!experts.empty()) {
      line += StrCat(", experts ", megatron::RangesString(std::vector<int64_t>(experts.begin(), experts.end())));
    }
    auto buffers = [](const std::vector<model::ParamBuffer>& bs) {
      int64_t n = 0, buckets = 0;
      for (const auto& b : bs) {
        n += b.numel_unpadded;
        buckets += static_cast<int64_t>(b.buckets.size());
      }
      return StrCat(bs.size(), " buffers, ", buckets, " buckets, ", n, " elements");
    };
    if (f.dense_optimizer && !r.dense.empty()) line += StrCat("; dense optimizer ", buffers(r.dense));
    if (f.expert_optimizer && !r.expert.empty()) line += StrCat("; expert optimizer ", buffers(r.expert));
    for (std::vector<int64_t>& l : fl.layers) {
      std::sort(l.begin(), l.end());
      l.erase(std::unique(l.begin(), l.end()), l.end());
    }
    fl.experts.assign(experts.begin(), experts.end());
    fl.line = std::move(line);
    out.push_back(std::move(fl));
  }
  return out;
}

std::vector<Box> MegatronView::ShardBoxes(size_t i) const {
  std::vector<Box> out;
  const Virtual& v = virtual_.at(i);
  if (v.base >= 0) {
    for (const ChunkInfo& c : tensors_[i].chunks) out.push_back(MakeBox(c.offsets, c.sizes));
    if (out.empty()) out.push_back(Box::Whole(tensors_[i].shape));
    return out;
  }
  for (const Piece& p : v.pieces) {
    for (const Box& b : p.dest) out.push_back(b);
  }
  return out;
}

nlohmann::json MegatronView::Details() const {
  nlohmann::json d = base_->Details();
  d["model_space_view"] = {{"optimizer_layout", OptimizerLayoutName(optimizer_layout_)}, {"assembled_states", states_},
                           {"ranks", ranks_.size()}};
  return d;
}

Status MegatronView::ReadTensor(size_t i, ByteSink* out) const {
  const Box whole = Box::Whole(tensors_.at(i).shape);
  return ReadTensorRegion(i, whole.start, whole.count, out);
}

Status MegatronView::ReadTensorRegion(size_t i, std::span<const int64_t> start, std::span<const int64_t> count,
                                      ByteSink* out) const {
  const Virtual& v = virtual_.at(i);
  if (v.base >= 0 && v.local.empty()) return base_->ReadTensorRegion(static_cast<size_t>(v.base), start, count, out);
  const TensorInfo& t = tensors_[i];
  Box region{{start.begin(), start.end()}, {count.begin(), count.end()}};
  CKPT_RETURN_IF_ERROR(CheckBoxInside(region, t.shape, StrCat("region of ", Quote(t.key))));
  if (v.base >= 0) return ReadReformulated(v, t, region, out).WithContext(StrCat("tensor ", Quote(t.key)));
  return ReadPieces(v, t, region, out).WithContext(StrCat("tensor ", Quote(t.key)));
}

Status MegatronView::ReadPieces(const Virtual& v, const TensorInfo& t, const Box& region, ByteSink* out) const {
  const uint64_t esize = DTypeSize(t.dtype);
  // A region inside one shard box (a rank's shard, as ReadLocal and the
  // legacy writer ask for, or part of one: a target TP shard cut from a
  // source shard): stream the shard through, keeping the region's bytes, no
  // buffers. The virtual tensor's box may have leading axes of extent 1 the
  // local shard lacks (the layer axis of a stacked tensor).
  for (const Piece& p : v.pieces) {
    for (size_t k = 0; k < p.dest.size(); ++k) {
      const Box& d = p.dest[k];
      const Box& l = p.local[k];
      if (d.start.size() != region.start.size() || d.start.size() < l.start.size()) continue;
      const size_t extra = d.start.size() - l.start.size();
      bool inside = true;
      for (size_t i = 0; i < d.start.size() && inside; ++i) {
        inside = region.start[i] >= d.start[i] && region.start[i] + region.count[i] <= d.start[i] + d.count[i] &&
                 (i < extra ? d.count[i] == 1 : d.count[i] == l.count[i - extra]);
      }
      if (!inside) continue;
      Box sub;
      for (size_t i = extra; i < d.start.size(); ++i) {
        sub.start.push_back(l.start[i - extra] + region.start[i] - d.start[i]);
        sub.count.push_back(region.count[i]);
      }
      const model::RankOptimizer& r = ranks_[p.rank];
      const model::ChunkParam& param = r.chunks[p.chunk][p.param];
      const model::ParamBuffer* buffer = p.gbuf >= 0 ? &(p.expert ? r.expert : r.dense)[p.gbuf] : nullptr;
      const model::BufferParam* where = buffer ? &buffer->params[p.where] : nullptr;
      RegionSink sink(Box::Whole(param.shape), sub, esize, out);
      CKPT_RETURN_IF_ERROR(
          shards_->ReadShard(r, p.rank, p.chunk, param, buffer, p.expert, p.gbuf, where, v.state, &sink));
      return sink.Finish().WithContext(param.global_name);
    }
  }
  std::string buf(region.numel() * esize, '\0');
  for (const Piece& p : v.pieces) {
    bool meets = false;
    for (const Box& d : p.dest) meets = meets || Overlaps(d, region);
    if (!meets) continue;
    const model::RankOptimizer& r = ranks_[p.rank];
    const model::ChunkParam& param = r.chunks[p.chunk][p.param];
    const model::ParamBuffer* buffer = p.gbuf >= 0 ? &(p.expert ? r.expert : r.dense)[p.gbuf] : nullptr;
    const model::BufferParam* where = buffer ? &buffer->params[p.where] : nullptr;
    StringSink shard;
    CKPT_RETURN_IF_ERROR(
        shards_->ReadShard(r, p.rank, p.chunk, param, buffer, p.expert, p.gbuf, where, v.state, &shard));
    if (shard.str().size() != static_cast<uint64_t>(param.numel()) * esize) {
      return DataLossError(StrCat(param.global_name, ": read ", shard.str().size(), " bytes, expected ",
                                  static_cast<uint64_t>(param.numel()) * esize));
    }
    const Box whole_local = Box::Whole(param.shape);
    for (size_t k = 0; k < p.dest.size(); ++k) {
      if (!Overlaps(p.dest[k], region)) continue;
      // The local box's bytes, contiguous, then into the region.
      std::string part(p.local[k].numel() * esize, '\0');
      for (BoxScatter sc(whole_local, p.local[k], esize); sc.has_runs(); sc.Next()) {
        std::memcpy(part.data() + sc.run().dst, shard.str().data() + sc.run().src, sc.run().len);
      }
      for (BoxScatter sc(p.dest[k], region, esize); sc.has_runs(); sc.Next()) {
        std::memcpy(buf.data() + sc.run().dst, part.data() + sc.run().src, sc.run().len);
      }
    }
  }
  return out->Append(buf);
}

}  // namespace ckpt::internal_convert
