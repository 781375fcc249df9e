// Reshard: a Megatron checkpoint in model space (MegatronView) written as a
// torch_dist checkpoint of another parallel layout (include/ckpt/reshard.h).
#include "ckpt/reshard.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <memory>
#include <set>

#include "checkpoint/legacy_reader.h"
#include "checkpoint/readers.h"
#include "checkpoint/torch_dist_writer.h"
#include "ckpt/checkpoint.h"
#include "ckpt/model.h"
#include "convert/dcp_entries.h"
#include "convert/legacy.h"
#include "convert/megatron_view.h"
#include "format/megatron/writer.h"
#include "format/torch/tree_writer.h"
#include "io/path_util.h"
#include "util/box.h"
#include "util/strings.h"

namespace ckpt {
namespace {

using internal_convert::MegatronView;
using internal_convert::OptimizerLayout;
using pickle::Kind;
using pickle::Value;

constexpr std::string_view kOptimizerState = "optimizer.state.";

Result<std::unique_ptr<MegatronView>> OpenView(const std::string& src, Env* env) {
  OpenOptions open;
  open.env = env;
  open.pickle_mode = PickleMode::kInspect;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open), StrCat("reading ", src));
  std::unique_ptr<MegatronView> view;
  if (reader->kind() == SourceKind::kLegacy) {
    CKPT_ASSIGN_OR_RETURN(view, MegatronView::OverLegacy(std::move(reader)), src);
  } else {
    CKPT_ASSIGN_OR_RETURN(internal_convert::TorchDistSource s,
                          internal_convert::TorchDistFromReader(std::move(reader), src, env, "reshard reads"));
    CKPT_ASSIGN_OR_RETURN(view, MegatronView::OverTorchDist(std::move(s)), src);
  }
  CKPT_RETURN_IF_ERROR(view->model_status(), StrCat(src, ": the model and its layout"));
  return view;
}

// Megatron-LM's padded vocabulary for the target TP: from the tokenizer's
// size when known; else every size the source's padding allows must give
// the same target padding.
Result<int64_t> TargetPaddedVocab(const model::ModelConfig& c, int64_t source_tp, int64_t target_tp,
                                  std::optional<int64_t> vocab_size) {
  if (!vocab_size) vocab_size = c.vocab_size;
  if (vocab_size) {
    if (*vocab_size < 1 || *vocab_size > c.padded_vocab_size) {
      return InvalidArgumentError(StrCat("vocab_size ", *vocab_size, " does not fit the source's ",
                                         c.padded_vocab_size, " embedding rows"));
    }
    return c.PaddedVocab(*vocab_size, target_tp);
  }
  const int64_t step = std::max<int64_t>(1, c.make_vocab_size_divisible_by) * std::max<int64_t>(1, source_tp);
  const int64_t low = std::max<int64_t>(1, c.padded_vocab_size - step + 1);
  const int64_t a = c.PaddedVocab(low, target_tp);
  const int64_t b = c.PaddedVocab(c.padded_vocab_size, target_tp);
  if (a != b) {
    return InvalidArgumentError(StrCat("the target's padded vocabulary is ", a, " or ", b,
                                       " depending on the tokenizer's size (args record only the padded ",
                                       c.padded_vocab_size, "): give vocab_size"));
  }
  return a;
}

// The sizes Megatron requires of a layout, beyond what ChunkParameters checks.
Status CheckFits(const model::ModelConfig& c, const model::ParallelLayout& l) {
  auto divides = [](std::string_view what, int64_t n, std::string_view by, int64_t d) -> Status {
    if (d > 0 && n % d == 0) return OkStatus();
    return InvalidArgumentError(StrCat(what, " ", n, " is not divisible by ", by, "=", d));
  };
  CKPT_RETURN_IF_ERROR(divides("num_attention_heads", c.num_attention_heads, "tp", l.tp));
  CKPT_RETURN_IF_ERROR(divides("num_query_groups", c.num_query_groups, "tp", l.tp));
  if (!c.moe() || c.ffn_hidden_size > 0) CKPT_RETURN_IF_ERROR(divides("ffn_hidden_size", c.ffn_hidden_size, "tp", l.tp));
  if (c.moe()) {
    CKPT_RETURN_IF_ERROR(divides("num_experts", c.num_experts, "ep", l.ep));
    CKPT_RETURN_IF_ERROR(divides("moe_ffn_hidden_size", c.moe_ffn_hidden_size, "etp", l.etp));
  }
  CKPT_RETURN_IF_ERROR(divides("padded vocabulary", c.padded_vocab_size, "tp", l.tp));
  return l.Stages(c.num_layers).status();
}

// The key a model tensor or optimizer state has, without the optimizer prefix.
std::string_view ModelKey(std::string_view key) {
  if (key.rfind(kOptimizerState, 0) != 0) return key;
  std::string_view rest = key.substr(kOptimizerState.size());
  const size_t dot = rest.find('.');
  return dot == std::string_view::npos ? rest : rest.substr(dot + 1);
}

bool VocabRows(std::string_view model_key) {
  return model_key == "embedding.word_embeddings.weight" || model_key == "output_layer.weight";
}

// The boxes each stored key is held in by the target's ranks (one per TP
// shard; two for a gated fc1 shard), over all model-parallel ranks.
Result<std::map<std::string, std::set<std::pair<std::vector<int64_t>, std::vector<int64_t>>>>> TargetBoxes(
    const model::ModelConfig& c, const model::ParallelLayout& l, const model::DistOptSettings& s,
    const std::vector<model::LegacyRankFolder>& folders) {
  std::map<std::string, std::set<std::pair<std::vector<int64_t>, std::vector<int64_t>>>> out;
  for (const model::LegacyRankFolder& f : folders) {
    CKPT_ASSIGN_OR_RETURN(model::RankOptimizer r, model::BuildRankOptimizer(c, l, s, f.at),
                          StrCat("the target layout ", model::LayoutString(l), " at ", f.folder));
    for (const auto& chunk : r.chunks) {
      for (const model::ChunkParam& p : chunk) {
        const model::StoredRef stored = model::TorchDistCandidates(p.global_name).front();
        for (Box& b : internal_convert::StoredShardBoxes(p, stored)) {
          out[stored.key].insert({std::move(b.start), std::move(b.count)});
        }
      }
    }
  }
  return out;
}


// Why megatron-core (and Megatron-LM's load_checkpoint) would not load the
// source as it is at layout `tl` of model `tc` (empty: it would). The rules
// are the loaders': a legacy checkpoint is read by (TP, PP[, EP]) rank folder;
// every torch_dist tensor is checked against the model's global shape (the
// vocabulary rows depend on TP); the distributed optimizer's buckets
// (dp_reshardable, dp_zero_gather_scatter, distrib_optim.pt) are keyed by
// model-parallel rank and checked by their per-bucket unpadded sizes
// (DistributedOptimizer.load_parameter_state_from_dp_reshardable), which a
// DP change keeps only while the bucket boundaries stay put.
Result<std::vector<std::string>> LoadBlockers(const MegatronView& v, const model::ModelConfig& tc,
                                              const model::ParallelLayout& tl, const model::DistOptSettings& ts,
                                              const std::vector<model::LegacyRankFolder>& folders,
                                              bool with_optimizer) {
  std::vector<std::string> out;
  const model::ParallelLayout& sl = v.layout();
  const bool same_mp = sl.tp == tl.tp && sl.pp == tl.pp && std::max<int64_t>(sl.vpp, 1) == std::max<int64_t>(tl.vpp, 1) &&
                       sl.ep == tl.ep && sl.etp == tl.etp && sl.first_stage_layers == tl.first_stage_layers &&
                       sl.last_stage_layers == tl.last_stage_layers;
  if (v.legacy() != nullptr && !same_mp) {
    out.push_back(StrCat("a legacy checkpoint keeps one folder per model-parallel rank (", v.folders().size(),
                         " mp_rank_* folders of ", model::LayoutString(sl),
                         "): Megatron-LM loads it only at that TP / PP / EP (its load_checkpoint refuses the change)"));
  }
  const int64_t rows = v.config().padded_vocab_size;
  if (tc.padded_vocab_size != rows) {
    out.push_back(StrCat("the padded vocabulary changes ", rows, " -> ", tc.padded_vocab_size,
                         " (make_vocab_size_divisible_by ", v.config().make_vocab_size_divisible_by,
                         " x tp): embedding.word_embeddings.weight", v.config().tied_embeddings ? "" : " and output_layer.weight",
                         " are stored with ", rows, " rows; the target's model has ", tc.padded_vocab_size,
                         " (a global shape mismatch)"));
  }
  if (!with_optimizer) return out;
  const std::string_view sharding = internal_convert::OptimizerLayoutName(v.optimizer_layout());
  switch (v.optimizer_layout()) {
    case OptimizerLayout::kNone:
    case OptimizerLayout::kFullyReshardable:
      return out;
    case OptimizerLayout::kFullyShardedModelSpace:
      out.push_back("optimizer sharding fully_sharded_model_space (megatron-core 0.8-0.15): megatron-core 0.16 and "
                    "later cannot load its flattened_range tensors at any layout (0.15 and earlier load it at any)");
      return out;
    case OptimizerLayout::kDpReshardable:
    case OptimizerLayout::kDpZeroGatherScatter:
    case OptimizerLayout::kLegacyDistribOptim:
      break;
  }
  if (!same_mp) {
    out.push_back(StrCat("optimizer sharding ", sharding, " keeps the distributed optimizer's buckets per model-parallel "
                         "rank (", v.folders().size(), " of them at ", model::LayoutString(sl),
                         "): megatron-core finds them only at that TP / PP / VPP / EP / ETP (Megatron-LM refuses "
                         "earlier: \"(TP, PP) mismatch after resume ... not supported for DistributedOptimizer\")"));
    return out;
  }
  if (v.settings().packing != ts.packing) {
    out.push_back(StrCat("the buffers are packed as megatron-core <= 0.6 packs them (no 64-element alignment, ",
                         "buckets padded to DP only); megatron-core >= 0.7 computes other bucket sizes:"));
  }
  // The bucket sizes megatron-core computes at the target against the stored ones.
  constexpr size_t kMaxListed = 6;
  size_t moved = 0;
  auto note = [&](std::string line) {
    if (moved++ < kMaxListed) out.push_back(std::move(line));
  };
  for (size_t i = 0; i < folders.size() && i < v.ranks().size(); ++i) {
    CKPT_ASSIGN_OR_RETURN(model::RankOptimizer r, model::BuildRankOptimizer(tc, tl, ts, folders[i].at),
                          StrCat("the target layout at ", folders[i].folder));
    const model::RankOptimizer& s = v.ranks()[i];
    for (const bool expert : {false, true}) {
      const std::vector<model::ParamBuffer>& a = expert ? s.expert : s.dense;
      const std::vector<model::ParamBuffer>& b = expert ? r.expert : r.dense;
      if (a.size() != b.size()) {
        note(StrCat(folders[i].folder, ": ", a.size(), expert ? " expert" : "", " buffers stored, ", b.size(),
                    " at the target"));
        continue;
      }
      for (size_t g = 0; g < a.size(); ++g) {
        if (a[g].buckets.size() != b[g].buckets.size()) {
          note(StrCat(folders[i].folder, expert ? " expert" : "", " buffer ", g, ": ", a[g].buckets.size(),
                      " buckets stored, ", b[g].buckets.size(), " at DP=", tl.dp));
          continue;
        }
        for (size_t k = 0; k < a[g].buckets.size(); ++k) {
          if (a[g].buckets[k].numel_unpadded == b[g].buckets[k].numel_unpadded) continue;
          note(StrCat(folders[i].folder, expert ? " expert" : "", " buffer ", g, " bucket ", k, ": ",
                      a[g].buckets[k].numel_unpadded, " unpadded elements stored, ", b[g].buckets[k].numel_unpadded,
                      " at DP=", tl.dp, " (the bucket boundaries move)"));
        }
      }
    }
  }
  if (moved > kMaxListed) out.push_back(StrCat("... and ", moved - kMaxListed, " more buckets"));
  return out;
}

// Streams box `b` of the view's tensor `i`, whose first axis has `rows`
// stored rows (the source's padded vocabulary for a vocabulary tensor, else
// the full extent): rows past them are zeros.
Status ReadPadded(const MegatronView& v, size_t i, const Box& b, int64_t rows, ByteSink* sink) {
  if (b.start.empty() || b.start[0] + b.count[0] <= rows) return v.ReadTensorRegion(i, b.start, b.count, sink);
  Box in = b;
  in.count[0] = std::max<int64_t>(0, rows - b.start[0]);
  if (in.count[0] > 0) CKPT_RETURN_IF_ERROR(v.ReadTensorRegion(i, in.start, in.count, sink));
  Box pad = b;
  pad.count[0] = b.count[0] - in.count[0];
  return sink->Append(std::string(pad.numel() * DTypeSize(v.tensors()[i].dtype), '\0'));
}

// A copy of argparse.Namespace `ns` with `set` replacing (or adding) fields.
Result<Value*> EditArgs(torch::TorchTreeWriter* w, const Value* ns,
                        const std::vector<std::pair<std::string, Value*>>& set) {
  if (ns == nullptr || ns->kind != Kind::kObject || ns->state() == nullptr || ns->state()->kind != Kind::kDict) {
    return DataLossError("args is not an argparse.Namespace with a field dict");
  }
  pickle::Arena& a = w->arena();
  Value* fields = a.Dict();
  std::set<std::string> done;
  for (const auto& [k, v] : ns->state()->dict()) {
    Value* val = v;
    if (k->kind == Kind::kString) {
      for (const auto& [name, nv] : set) {
        if (k->str() == name) {
          val = nv;
          done.insert(name);
        }
      }
    }
    a.SetItem(fields, k, val);
  }
  for (const auto& [name, nv] : set) {
    if (!done.count(name)) a.SetItem(fields, w->Str(name), nv);
  }
  Value* out = a.New(Kind::kObject);
  *out = *ns;
  a.SetState(out, fields);
  return out;
}

Value* DictGet(Value* dict, std::string_view key) {
  if (dict == nullptr || dict->kind != Kind::kDict) return nullptr;
  for (auto& [k, v] : dict->dict()) {
    if (k->kind == Kind::kString && k->str() == key) return v;
  }
  return nullptr;
}

// One DistributedOptimizer's state_dict() as fully_reshardable keeps it in
// the common state: its param groups (and grad scaler), the sharding type.
Result<Value*> FullyReshardableOptimizer(torch::TorchTreeWriter* w, Value* sub) {
  if (sub == nullptr || sub->kind != Kind::kDict) return DataLossError("an optimizer state dict is not a dict");
  Value* d = w->arena().Dict();
  for (auto& [k, v] : sub->dict()) {
    if (k->kind == Kind::kString && (k->str() == "param_state" || k->str() == "param_state_sharding_type")) continue;
    w->arena().SetItem(d, k, v);
  }
  w->arena().SetItem(d, w->Str("param_state_sharding_type"), w->Str("fully_reshardable"));
  return d;
}

// The source's optimizer state dicts (param groups ...), one per
// sub-optimizer, imported into `w`: from the common state (model-space
// types), the dp_group_idx_0 objects (dp_reshardable, dp_zero_gather_scatter)
// or rank 0's model_optim_rng.pt (legacy).
Result<std::vector<Value*>> SourceOptimizers(const MegatronView& v, torch::TorchTreeWriter* w, Value* common_root,
                                             std::vector<std::shared_ptr<const torch::TorchFile>>* keep) {
  std::vector<Value*> out;
  auto split = [&](Value* opt) -> Status {
    if (opt == nullptr) return DataLossError("the optimizer's state dict (param groups) is missing");
    if (opt->kind == Kind::kList) {  // legacy ChainedOptimizer
      for (Value* x : opt->items()) out.push_back(x);
    } else if (opt->kind == Kind::kDict && !opt->dict().empty() && opt->dict().front().first->kind == Kind::kInt) {
      for (auto& [k, x] : opt->dict()) out.push_back(x);  // torch_dist ChainedOptimizer {0: .., 1: ..}
    } else {
      out.push_back(opt);
    }
    return OkStatus();
  };
  switch (v.optimizer_layout()) {
    case OptimizerLayout::kNone:
      return out;
    case OptimizerLayout::kFullyReshardable:
    case OptimizerLayout::kFullyShardedModelSpace:
    case OptimizerLayout::kLegacyDistribOptim:
      CKPT_RETURN_IF_ERROR(split(DictGet(common_root, "optimizer")));
      return out;
    case OptimizerLayout::kDpReshardable:
    case OptimizerLayout::kDpZeroGatherScatter:
      break;
  }
  const internal_checkpoint::DcpReader* d = v.torch_dist().dcp;
  if (d == nullptr) return InternalError("a torch_dist view without its DCP reader");
  // DistributedOptimizer.sharded_state_dict keeps each entry k of its
  // state_dict() (optimizer = the param groups, grad_scaler) as an object
  // optimizer.distributed.dp_group_idx_<I>.<k>; dp_group_idx_0's are rank 0's.
  for (const std::string prefix : {"", "chained_0.", "chained_1."}) {
    Value* sub = nullptr;
    for (const char* k : {"optimizer", "grad_scaler"}) {
      const std::string key = StrCat(prefix, "optimizer.distributed.dp_group_idx_0.", k, "/shard_0_1");
      const int64_t ei = d->metadata().FindEntry(key);
      if (ei < 0) continue;
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> f,
                            d->OpenBytes(d->metadata().entries[static_cast<size_t>(ei)], pickle::Mode::kInspect), key);
      std::shared_ptr<const torch::TorchFile> shared(std::move(f));
      keep->push_back(shared);
      CKPT_ASSIGN_OR_RETURN(Value * root,
                            w->Import(*shared, [shared]() -> Result<std::shared_ptr<const torch::TorchFile>> {
                              return shared;
                            }),
                            key);
      // A ShardedObject payload is torch.save([data]).
      if (root->kind == Kind::kList && root->items().size() == 1) root = root->items()[0];
      if (sub == nullptr) sub = w->arena().Dict();
      w->arena().SetItem(sub, w->Str(k), root);
    }
    if (sub != nullptr) out.push_back(sub);
  }
  if (out.empty()) return DataLossError("no optimizer.distributed.dp_group_idx_0.optimizer object (param groups)");
  return out;
}

// The source's common dict imported into `w` (0.19's wrapped form unwrapped).
Result<Value*> CommonRoot(const std::shared_ptr<const torch::TorchFile>& f, torch::TorchTreeWriter* w) {
  CKPT_ASSIGN_OR_RETURN(Value * root, w->Import(*f, [f]() -> Result<std::shared_ptr<const torch::TorchFile>> {
    return f;
  }));
  if (root->kind == Kind::kList && root->items().size() == 1) root = root->items()[0];
  if (root->kind != Kind::kDict) return DataLossError("the common state is not a dict");
  return root;
}

Value* TorchDType(pickle::Arena& a, DType d) {
  return a.Global("torch", std::string(DTypeName(d)));
}

// dp_reshardable: per model-parallel rank of the target and sub-optimizer
// (dense; expert with EP > 1), each bucket's state as a flat fp32 tensor of
// the bucket's unpadded size (parameters at their buffer offsets, alignment
// gaps zero), and the objects megatron keeps beside them: per_bucket_numel,
// per_bucket_numel_unpadded and the sub-optimizer's state dict entries
// (optimizer = the param groups; grad_scaler), each torch.save([value]).
Status AddBucketEntries(const MegatronView& v, std::shared_ptr<const torch::TorchFile> common_file,
                        const model::ModelConfig& c, const model::ParallelLayout& l, const model::DistOptSettings& s,
                        std::shared_ptr<internal_convert::ChunkProgress> progress,
                        std::vector<dcp::EntryToWrite>* entries, uint64_t* total) {
  const bool chained = c.moe() && l.ep > 1;
  std::map<std::string, size_t> index;
  for (size_t i = 0; i < v.tensors().size(); ++i) index.emplace(v.tensors()[i].key, i);
  std::vector<std::string> states = v.optimizer_states();
  // Every (sub-optimizer, dp_group_idx) once, with the rank that holds it.
  std::map<std::pair<int, int64_t>, model::ChunkCoords> groups;
  for (int64_t pp = 0; pp < l.pp; ++pp) {
    for (int64_t tp = 0; tp < l.tp; ++tp) groups.emplace(std::pair{0, tp + l.tp * pp}, model::ChunkCoords{pp, 0, tp, 0, 0});
    if (!chained) continue;
    for (int64_t ep = 0; ep < l.ep; ++ep) {
      for (int64_t etp = 0; etp < l.etp; ++etp) {
        model::ChunkCoords at{pp, 0, 0, ep, etp};
        groups.emplace(std::pair{1, etp + l.etp * (ep + l.ep * pp)}, at);
      }
    }
  }
  // Which state-dict entries each source sub-optimizer has (read once).
  std::set<std::pair<int, std::string>> present;
  {
    torch::TorchTreeWriter w;
    std::vector<std::shared_ptr<const torch::TorchFile>> keep;
    CKPT_ASSIGN_OR_RETURN(Value * root, CommonRoot(common_file, &w));
    CKPT_ASSIGN_OR_RETURN(std::vector<Value*> subs, SourceOptimizers(v, &w, root, &keep));
    if (subs.size() < (chained ? 2u : 1u)) {
      return DataLossError(StrCat("the source has ", subs.size(), " optimizer state dicts; the target needs ",
                                  chained ? 2 : 1));
    }
    for (size_t k = 0; k < subs.size(); ++k) {
      for (const char* name : {"optimizer", "grad_scaler"}) {
        if (DictGet(subs[k], name) != nullptr) present.emplace(static_cast<int>(k), name);
      }
    }
  }
  for (const auto& [which, at] : groups) {
    const auto [kind, group] = which;
    CKPT_ASSIGN_OR_RETURN(model::RankOptimizer r, model::BuildRankOptimizer(c, l, s, at));
    auto rank = std::make_shared<model::RankOptimizer>(std::move(r));
    const std::vector<model::ParamBuffer>& bufs = kind == 1 ? rank->expert : rank->dense;
    const std::string prefix =
        StrCat(chained ? StrCat("chained_", kind, ".") : std::string(), "optimizer.distributed.dp_group_idx_", group, ".");
    for (size_t g = 0; g < bufs.size(); ++g) {
      const model::ParamBuffer& buf = bufs[g];
      for (size_t b = 0; b < buf.buckets.size(); ++b) {
        for (const std::string& st : states) {
          dcp::EntryToWrite e;
          e.key = StrCat(prefix, "gbuf_idx_", g, ".dtype_", model::DTypePairName(buf.param_dtype, buf.grad_dtype),
                         ".bucket_idx_", b, ".", st);
          e.type = dcp::EntryType::kTensor;
          e.dtype = DType::kFloat32;
          const int64_t n = buf.buckets[b].numel_unpadded;
          e.size = {n};
          dcp::ChunkToWrite ch;
          ch.offsets = {0};
          ch.sizes = {n};
          const uint64_t nbytes = static_cast<uint64_t>(n) * 4;
          *total += nbytes;
          const bool expert = kind == 1;
          ch.write = [&v, rank, expert, g, b, st, index, progress, nbytes](ByteSink* sink) -> Status {
            const model::ParamBuffer& buf = (expert ? rank->expert : rank->dense)[g];
            const model::BufferBucket& k = buf.buckets[b];
            std::vector<const model::BufferParam*> in;
            for (const model::BufferParam& p : buf.params) {
              if (p.bucket == static_cast<int64_t>(b)) in.push_back(&p);
            }
            std::sort(in.begin(), in.end(), [](auto* x, auto* y) { return x->start < y->start; });
            int64_t at = k.offset;
            for (const model::BufferParam* p : in) {
              const model::ChunkParam& cp = rank->chunks[buf.chunk][p->param];
              const model::StoredRef stored = model::TorchDistCandidates(cp.global_name).front();
              auto it = index.find(StrCat(kOptimizerState, st, ".", stored.key));
              if (it == index.end()) {
                return DataLossError(StrCat("optimizer state ", Quote(StrCat(kOptimizerState, st, ".", stored.key)),
                                            " is not in the source"));
              }
              CKPT_RETURN_IF_ERROR(sink->Append(std::string(static_cast<size_t>(p->start - at) * 4, '\0')));
              const TensorInfo& t = v.tensors()[it->second];
              const int64_t rows = VocabRows(stored.key) && !t.shape.empty() ? t.shape[0] : INT64_MAX;
              for (const Box& box : internal_convert::StoredShardBoxes(cp, stored)) {
                CKPT_RETURN_IF_ERROR(ReadPadded(v, it->second, box, rows, sink).WithContext(cp.global_name));
              }
              at = p->end;
            }
            CKPT_RETURN_IF_ERROR(sink->Append(std::string(static_cast<size_t>(k.offset + k.numel_unpadded - at) * 4, '\0')));
            progress->Add(nbytes);
            return OkStatus();
          };
          e.chunks.push_back(std::move(ch));
          entries->push_back(std::move(e));
        }
      }
    }
    // per_bucket_numel[_unpadded]: [{(param dtype, grad dtype): [numel per bucket]}] per buffer.
    for (const bool unpadded : {false, true}) {
      dcp::EntryToWrite e;
      e.key = StrCat(prefix, unpadded ? "per_bucket_numel_unpadded" : "per_bucket_numel", "/shard_0_1");
      e.type = dcp::EntryType::kBytes;
      const bool expert = kind == 1;
      e.write_bytes = [rank, expert, unpadded](ByteSink* sink) -> Status {
        torch::TorchTreeWriter w;
        pickle::Arena& a = w.arena();
        Value* list = a.List({});
        for (const model::ParamBuffer& buf : expert ? rank->expert : rank->dense) {
          Value* sizes = a.List({});
          for (const model::BufferBucket& k : buf.buckets) a.Append(sizes, a.Int(unpadded ? k.numel_unpadded : k.numel));
          Value* d = a.Dict();
          a.SetItem(d, a.Tuple({TorchDType(a, buf.param_dtype), TorchDType(a, buf.grad_dtype)}), sizes);
          a.Append(list, d);
        }
        torch::TorchWriteOptions o;
        o.archive_name = "archive";
        return w.Write(a.List({list}), sink, o);
      };
      entries->push_back(std::move(e));
    }
    // The sub-optimizer's state dict entries, from the source's rank 0.
    for (const char* k : {"optimizer", "grad_scaler"}) {
      const int sub = kind;
      dcp::EntryToWrite e;
      e.key = StrCat(prefix, k, "/shard_0_1");
      e.type = dcp::EntryType::kBytes;
      const std::string name = k;
      if (!present.count({sub, name})) continue;
      e.write_bytes = [&v, common_file, sub, name](ByteSink* sink) -> Status {
        torch::TorchTreeWriter w;
        std::vector<std::shared_ptr<const torch::TorchFile>> keep;
        CKPT_ASSIGN_OR_RETURN(Value * root, CommonRoot(common_file, &w));
        CKPT_ASSIGN_OR_RETURN(std::vector<Value*> subs, SourceOptimizers(v, &w, root, &keep));
        torch::TorchWriteOptions o;
        o.archive_name = "archive";
        return w.Write(w.arena().List({DictGet(subs[sub], name)}), sink, o);
      };
      entries->push_back(std::move(e));
    }
  }
  return OkStatus();
}

// The target of a reshard: its layout (options over the source's), the model
// with the target's padded vocabulary, megatron-core's buffer settings (its
// 64-aligned packing) and the target's rank folders; checked against the
// model before anything else happens.
struct Target {
  model::ParallelLayout layout;
  model::ModelConfig config;
  model::DistOptSettings settings;
  std::vector<model::LegacyRankFolder> folders;
};

Result<Target> PlanTarget(const MegatronView& v, const ReshardOptions& options) {
  const model::ParallelLayout& sl = v.layout();
  Target t;
  model::ParallelLayout& tl = t.layout;
  tl = sl;
  if (options.tp) tl.tp = options.tp;
  if (options.pp) tl.pp = options.pp;
  if (options.vpp) tl.vpp = options.vpp;
  if (options.dp) tl.dp = options.dp;
  if (options.ep) tl.ep = options.ep;
  tl.etp = options.etp ? options.etp : (sl.etp == sl.tp ? tl.tp : sl.etp);
  if (tl.pp != sl.pp || tl.vpp != sl.vpp) {
    tl.first_stage_layers.reset();
    tl.last_stage_layers.reset();
  }
  CKPT_RETURN_IF_ERROR(tl.Validate(), "target layout");
  if (tl.vpp > 1 && tl.pp == 1) return InvalidArgumentError("vpp > 1 needs pp > 1 (interleaved pipeline)");
  t.config = v.config();
  CKPT_ASSIGN_OR_RETURN(t.config.padded_vocab_size, TargetPaddedVocab(v.config(), sl.tp, tl.tp, options.vocab_size));
  CKPT_RETURN_IF_ERROR(CheckFits(t.config, tl), StrCat("target layout ", model::LayoutString(tl)));
  t.settings = v.settings();
  t.settings.packing = model::BufferPacking::kAligned;
  CKPT_ASSIGN_OR_RETURN(t.folders, model::LegacyRanks(tl));
  return t;
}

// The legacy layout's args for target `tl`: the source's with the parallel
// sizes, world size, padded vocabulary and format replaced.
Result<Value*> TargetArgs(torch::TorchTreeWriter* w, const Value* ns, const model::ParallelLayout& tl,
                          const model::ModelConfig& tc, std::string_view format, std::optional<bool> fully) {
  pickle::Arena& a = w->arena();
  auto opt_int = [&](std::optional<int64_t> x) { return x ? a.Int(*x) : a.None(); };
  std::vector<std::pair<std::string, Value*>> set = {
      {"tensor_model_parallel_size", a.Int(tl.tp)},
      {"pipeline_model_parallel_size", a.Int(tl.pp)},
      {"virtual_pipeline_model_parallel_size", tl.vpp > 1 ? a.Int(tl.vpp) : a.None()},
      {"num_layers_per_virtual_pipeline_stage", tl.vpp > 1 ? a.Int(tc.num_layers / (tl.pp * tl.vpp)) : a.None()},
      {"data_parallel_size", a.Int(tl.dp)},
      {"expert_model_parallel_size", a.Int(tl.ep)},
      {"expert_tensor_parallel_size", a.Int(tl.etp)},
      {"decoder_first_pipeline_num_layers", opt_int(tl.first_stage_layers)},
      {"decoder_last_pipeline_num_layers", opt_int(tl.last_stage_layers)},
      {"world_size", a.Int(tl.world_size())},
      {"padded_vocab_size", a.Int(tc.padded_vocab_size)},
      {"ckpt_format", w->Str(format)}};
  if (fully) set.push_back({"dist_ckpt_optim_fully_reshardable", a.Bool(*fully)});
  return EditArgs(w, ns, set);
}

// Writes the resharded checkpoint as Megatron-LM's legacy layout at the
// target: every rank folder's model_optim_rng.pt (TP-local shards read from
// the view's global tensors, vocabulary re-padded) and distrib_optim.pt (the
// target's buffers, parameters at their offsets), through the legacy writer.
Result<ReshardReport> ReshardToLegacy(const MegatronView& v, const std::string& src, const std::string& dst,
                                      const Target& t, std::shared_ptr<const torch::TorchFile> common_file,
                                      bool with_optimizer, const ReshardOptions& options, Env* env,
                                      ReshardReport report) {
  auto plan = std::make_shared<internal_convert::LegacyPlan>();
  plan->folders = t.folders;
  plan->params_dtype = v.settings().params_dtype;
  if (with_optimizer) {
    CKPT_ASSIGN_OR_RETURN(plan->states, internal_convert::LegacyOptimizerStates(v), src);
  }
  auto progress = std::make_shared<internal_convert::ChunkProgress>(options.progress);
  uint64_t total = 0;
  for (const model::LegacyRankFolder& f : t.folders) {
    CKPT_ASSIGN_OR_RETURN(model::RankOptimizer r, model::BuildRankOptimizer(t.config, t.layout, t.settings, f.at),
                          StrCat("the target layout at ", f.folder));
    if (f.model_file) {
      for (const auto& chunk : r.chunks) {
        for (const model::ChunkParam& p : chunk) total += static_cast<uint64_t>(p.numel()) * DTypeSize(plan->params_dtype);
        report.tensors += chunk.size();
      }
    }
    if (with_optimizer && (f.dense_optimizer || f.expert_optimizer)) {
      for (const auto* bufs : {&r.dense, &r.expert}) {
        for (const model::ParamBuffer& b : *bufs) {
          total += static_cast<uint64_t>(b.numel_unpadded) * 4 * plan->states.size();
          report.tensors += plan->states.size();
        }
      }
    }
    plan->ranks.push_back(std::move(r));
  }
  progress->set_total(total);
  report.bytes = total;
  if (options.check_only) return report;

  std::optional<int64_t> iteration = options.iteration;
  if (!iteration && v.common() != nullptr) iteration = v.common()->iteration;
  if (!iteration) return InvalidArgumentError(StrCat(src, ": no iteration recorded; give one (iteration)"));
  std::map<std::string, size_t, std::less<>> index;
  for (size_t i = 0; i < v.tensors().size(); ++i) index.emplace(v.tensors()[i].key, i);
  const MegatronView* vp = &v;
  const internal_convert::LegacyPlan* pp = plan.get();
  plan->read_local = [vp, pp, index = std::move(index), progress](size_t rank, int64_t chunk, size_t param,
                                                                  std::string_view state, ByteSink* out) -> Status {
    const model::ChunkParam& cp = pp->ranks[rank].chunks[static_cast<size_t>(chunk)][param];
    const model::StoredRef stored = model::TorchDistCandidates(cp.global_name).front();
    const std::string key = state.empty() ? stored.key : StrCat(kOptimizerState, state, ".", stored.key);
    auto it = index.find(key);
    if (it == index.end()) return DataLossError(StrCat(Quote(key), " is not in the source"));
    const TensorInfo& ti = vp->tensors()[it->second];
    const DType want = state.empty() ? pp->params_dtype : DType::kFloat32;
    if (ti.dtype != want) {
      return DataLossError(StrCat(Quote(key), " is ", DTypeName(ti.dtype), "; the legacy layout keeps it as ",
                                  DTypeName(want)));
    }
    const int64_t rows = VocabRows(stored.key) && !ti.shape.empty() ? ti.shape[0] : INT64_MAX;
    for (const Box& box : internal_convert::StoredShardBoxes(cp, stored)) {
      CKPT_RETURN_IF_ERROR(ReadPadded(*vp, it->second, box, rows, out).WithContext(cp.global_name));
      progress->Add(box.numel() * DTypeSize(want));
    }
    return OkStatus();
  };
  const model::ParallelLayout tl = t.layout;
  const model::ModelConfig tc = t.config;
  const int64_t it_out = *iteration;
  plan->common = [common_file, tl, tc, it_out](torch::TorchTreeWriter* w,
                                              internal_convert::LegacyPlan::Keep*) -> Result<Value*> {
    CKPT_ASSIGN_OR_RETURN(Value * src_root, CommonRoot(common_file, w));
    Value* root = w->arena().Dict();
    CKPT_ASSIGN_OR_RETURN(Value * args, TargetArgs(w, DictGet(src_root, "args"), tl, tc, "torch", std::nullopt));
    w->arena().SetItem(root, w->Str("args"), args);
    if (Value* x = DictGet(src_root, "checkpoint_version")) w->arena().SetItem(root, w->Str("checkpoint_version"), x);
    w->arena().SetItem(root, w->Str("iteration"), w->arena().Int(it_out));
    // "optimizer" too: not written as it is, but what plan->optimizer reads
    // the param groups from (SourceOptimizers), without importing the source again.
    for (const char* k : {"opt_param_scheduler", "num_floating_point_operations_so_far", "optimizer"}) {
      if (Value* x = DictGet(src_root, k)) w->arena().SetItem(root, w->Str(k), x);
    }
    return root;
  };
  plan->optimizer = [vp, pp](size_t rank, Value* common, torch::TorchTreeWriter* w,
                             internal_convert::LegacyPlan::Keep* keep) -> Result<Value*> {
    CKPT_ASSIGN_OR_RETURN(std::vector<Value*> subs, SourceOptimizers(*vp, w, common, keep));
    const size_t need = pp->ranks[rank].expert.empty() ? 1 : 2;
    if (subs.size() != need) {
      return DataLossError(StrCat("the source has ", subs.size(), " optimizer state dicts; ",
                                  pp->folders[rank].folder, " needs ", need));
    }
    if (need == 1) return internal_convert::LegacyOptimizerFromModelSpace(subs[0], w);
    Value* chained = w->arena().Dict();
    for (size_t k = 0; k < subs.size(); ++k) w->arena().SetItem(chained, w->arena().Int(static_cast<int64_t>(k)), subs[k]);
    return internal_convert::LegacyOptimizerFromModelSpace(chained, w);
  };
  CKPT_ASSIGN_OR_RETURN(ConvertReport r, internal_convert::WriteLegacyCheckpoint(env, dst, it_out, *plan));
  report.files = std::move(r.files);
  return report;
}

}  // namespace

Result<ReshardReport> Reshard(const std::string& src, const std::string& dst, const ReshardOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  for (auto [name, v] : {std::pair<const char*, int64_t>{"tp", options.tp}, {"pp", options.pp}, {"vpp", options.vpp},
                         {"dp", options.dp}, {"ep", options.ep}, {"etp", options.etp}}) {
    if (v < 0) return InvalidArgumentError(StrCat(name, " ", v, " is negative"));
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<MegatronView> view, OpenView(src, env));
  const MegatronView* v = view.get();
  CKPT_ASSIGN_OR_RETURN(Target t, PlanTarget(*v, options));
  const model::ParallelLayout& sl = v->layout();
  const model::ParallelLayout& tl = t.layout;
  const model::ModelConfig& tc = t.config;
  const model::DistOptSettings& ts = t.settings;
  const std::vector<model::LegacyRankFolder>& folders = t.folders;
  if (v->config().moe() && (sl.ep > 1) != (tl.ep > 1) && v->has_optimizer() && !options.no_optimizer) {
    return UnimplementedError(StrCat("ep ", sl.ep, " -> ", tl.ep, " turns one distributed optimizer into a dense and "
                                     "an expert one (or back): not resharded yet (no_optimizer drops the state)"));
  }

  ReshardReport report;
  report.source_layout = model::LayoutString(sl);
  report.target_layout = model::LayoutString(tl);
  report.optimizer = std::string(internal_convert::OptimizerLayoutName(v->optimizer_layout()));
  report.source_padded_vocab = v->config().padded_vocab_size;
  report.target_padded_vocab = tc.padded_vocab_size;
  const bool with_optimizer = v->has_optimizer() && !options.no_optimizer;
  const bool buckets = with_optimizer && options.optimizer_sharding == OptimizerSharding::kDpReshardable;
  CKPT_ASSIGN_OR_RETURN(report.load_blockers, LoadBlockers(*v, tc, tl, ts, folders, with_optimizer));
  report.loads_as_is = report.load_blockers.empty();

  // The source's common state (args, param groups, ...).
  const internal_checkpoint::LegacyReader* legacy = v->legacy();
  std::shared_ptr<const torch::TorchFile> common_file;
  if (legacy != nullptr) {
    for (const auto& r : legacy->ranks()) {
      if (r.folder != legacy->rank0_folder()) continue;
      CKPT_ASSIGN_OR_RETURN(common_file,
                            legacy->OpenRankFile(r.coord, internal_checkpoint::LegacyReader::FileKind::kModel));
    }
  } else if (v->torch_dist().common_file) {
    const torch::TorchFile* raw = v->torch_dist().common_file.get();
    common_file = std::shared_ptr<const torch::TorchFile>(raw, [](const torch::TorchFile*) {});
  }
  if (!common_file) return DataLossError(StrCat(src, ": no common state (args, iteration)"));
  report.warnings.push_back(
      "RNG state not carried (it is per rank of the source layout): load with --no-load-rng, as Megatron-LM itself "
      "ignores it when the parallel layout changes");
  if (options.to == ReshardFormat::kLegacy) {
    if (buckets) return InvalidArgumentError("optimizer_sharding applies to torch_dist output (to=legacy has its own)");
    return ReshardToLegacy(*v, src, dst, t, common_file, with_optimizer, options, env, std::move(report));
  }
  CKPT_ASSIGN_OR_RETURN(auto boxes, TargetBoxes(tc, tl, ts, folders));
  // Entries: every model-space tensor (optimizer states unless dropped),
  // chunked by the target's shards, vocabulary rows re-padded.
  std::vector<dcp::EntryToWrite> entries;
  auto progress = std::make_shared<internal_convert::ChunkProgress>(options.progress);
  uint64_t total = 0;
  for (size_t i = 0; i < v->tensors().size(); ++i) {
    const TensorInfo& t = v->tensors()[i];
    const bool state = t.key.rfind(kOptimizerState, 0) == 0;
    if (state && (!with_optimizer || buckets)) continue;
    const std::string_view mk = ModelKey(t.key);
    dcp::EntryToWrite e;
    e.key = t.key;
    e.type = dcp::EntryType::kTensor;
    e.dtype = t.dtype;
    e.size = t.shape;
    const bool vocab = VocabRows(mk) && !t.shape.empty();
    const int64_t rows = vocab ? t.shape[0] : 0;  // the source's
    if (vocab) e.size[0] = tc.padded_vocab_size;
    std::vector<Box> chunks;
    if (auto it = boxes.find(std::string(mk)); it != boxes.end()) {
      for (const auto& [start, count] : it->second) chunks.push_back(Box{start, count});
    } else {
      chunks.push_back(Box::Whole(e.size));  // a tensor the model layer does not place: whole
    }
    const uint64_t esize = DTypeSize(t.dtype);
    for (const Box& b : chunks) {
      if (b.start.size() != e.size.size()) {
        return DataLossError(StrCat(Quote(t.key), ": stored with ", t.shape.size(),
                                    " dimensions; the model layer places it with ", b.start.size()));
      }
      dcp::ChunkToWrite c;
      c.offsets = b.start;
      c.sizes = b.count;
      const uint64_t nbytes = b.numel() * esize;
      total += nbytes;
      c.write = [v, i, b, rows, vocab, progress, nbytes](ByteSink* sink) -> Status {
        // Rows past the source's padded vocabulary are new padding: zeros.
        CKPT_RETURN_IF_ERROR(ReadPadded(*v, i, b, vocab ? rows : INT64_MAX, sink));
        progress->Add(nbytes);
        return OkStatus();
      };
      e.chunks.push_back(std::move(c));
    }
    entries.push_back(std::move(e));
    ++report.tensors;
  }
  if (buckets) {
    CKPT_RETURN_IF_ERROR(AddBucketEntries(*v, common_file, tc, tl, ts, progress, &entries, &total));
  }
  progress->set_total(total);
  report.bytes = total;
  for (const std::string& key : model::ExtraStateObjects(tc)) entries.push_back(internal_convert::NoneObjectEntry(key));
  if (options.check_only) return report;

  internal_checkpoint::TorchDistWriteOptions wo;
  if (!options.megatron_version.empty()) {
    CKPT_ASSIGN_OR_RETURN(wo.version, megatron::ParseCoreVersion(options.megatron_version), "megatron_version");
  }
  if (options.thread_count > 0) wo.thread_count = options.thread_count;
  wo.direct_io = options.direct_io;
  std::optional<int64_t> iteration = options.iteration;
  if (!iteration && v->common() != nullptr) iteration = v->common()->iteration;
  if (!iteration) return InvalidArgumentError(StrCat(src, ": no iteration recorded; give one (iteration)"));
  wo.tracker = megatron::Tracker{false, *iteration};

  // The common state: the source's, args for the target, the optimizer's
  // param groups in fully_reshardable form.
  const int64_t it_out = *iteration;
  auto write_common = [v, common_file, tl, tc, it_out, with_optimizer, buckets,
                       version = wo.version](ByteSink* sink) -> Status {
    torch::TorchTreeWriter w;
    pickle::Arena& a = w.arena();
    std::vector<std::shared_ptr<const torch::TorchFile>> keep;
    CKPT_ASSIGN_OR_RETURN(Value * src_root,
                          w.Import(*common_file, [common_file]() -> Result<std::shared_ptr<const torch::TorchFile>> {
                            return common_file;
                          }));
    if (src_root->kind == Kind::kList && src_root->items().size() == 1) src_root = src_root->items()[0];  // 0.19 form
    if (src_root->kind != Kind::kDict) return DataLossError("the common state is not a dict");
    Value* root = a.Dict();
    CKPT_ASSIGN_OR_RETURN(Value * args,
                          TargetArgs(&w, DictGet(src_root, "args"), tl, tc, "torch_dist", !buckets));
    a.SetItem(root, w.Str("args"), args);
    for (const char* k : {"checkpoint_version"}) {
      if (Value* x = DictGet(src_root, k)) a.SetItem(root, w.Str(k), x);
    }
    a.SetItem(root, w.Str("iteration"), a.Int(it_out));
    if (with_optimizer) {
      CKPT_ASSIGN_OR_RETURN(std::vector<Value*> subs, SourceOptimizers(*v, &w, src_root, &keep));
      // dp_reshardable keeps the param groups in per-rank objects; the
      // common state says only the sharding type.
      auto one = [&](Value* sub) -> Result<Value*> {
        if (!buckets) return FullyReshardableOptimizer(&w, sub);
        Value* d = a.Dict();
        a.SetItem(d, w.Str("param_state_sharding_type"), w.Str("dp_reshardable"));
        return d;
      };
      Value* opt = nullptr;
      if (subs.size() == 1) {
        CKPT_ASSIGN_OR_RETURN(opt, one(subs[0]));
      } else {
        opt = a.Dict();
        for (size_t k = 0; k < subs.size(); ++k) {
          CKPT_ASSIGN_OR_RETURN(Value * sub, one(subs[k]));
          a.SetItem(opt, a.Int(static_cast<int64_t>(k)), sub);
        }
      }
      a.SetItem(root, w.Str("optimizer"), opt);
    }
    for (const char* k : {"opt_param_scheduler", "num_floating_point_operations_so_far", "rerun_state_machine"}) {
      if (Value* x = DictGet(src_root, k)) a.SetItem(root, w.Str(k), x);
    }
    a.SetItem(root, w.Str("content_metadata"),
              megatron::DistOptContentMetadata(&w, buckets ? "dp_reshardable" : "fully_reshardable"));
    return megatron::WriteCommonTree(version, &w, root, sink);
  };
  CKPT_ASSIGN_OR_RETURN(internal_checkpoint::TorchDistWriteReport r,
                        internal_checkpoint::WriteTorchDistCheckpoint(env, dst, std::move(entries), write_common, wo));
  report.files = std::move(r.files);
  report.data_files = r.data_files;
  report.direct_io_files = r.direct_io_files;
  return report;
}

Result<ReshardChoices> DescribeReshard(const std::string& src, const ReshardOptions& base) {
  Env* env = base.env ? base.env : Env::Default();
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<MegatronView> view, OpenView(src, env));
  const MegatronView& v = *view;
  const model::ParallelLayout& sl = v.layout();
  const model::ModelConfig& c = v.config();
  const bool with_optimizer = v.has_optimizer() && !base.no_optimizer;
  ReshardChoices out;
  out.layout = model::LayoutString(sl);
  out.optimizer = std::string(internal_convert::OptimizerLayoutName(v.optimizer_layout()));
  out.padded_vocab = c.padded_vocab_size;
  // One size changed at a time, the others kept.
  auto try_size = [&](std::string_view name, int64_t size) -> Status {
    ReshardOptions o = base;
    o.tp = o.pp = o.vpp = o.dp = o.ep = o.etp = 0;
    if (name == "tp") o.tp = size;
    if (name == "pp" && size != sl.pp) {
      o.pp = size;
      o.vpp = 1;
    }
    if (name == "dp") o.dp = size;
    if (name == "ep") o.ep = size;
    ReshardChoices::Size s;
    s.name = std::string(name);
    s.size = size;
    Result<Target> t = PlanTarget(v, o);
    if (!t.ok()) {
      if (t.status().code() != Code::kInvalidArgument) return t.status();
      return OkStatus();  // does not fit the model: not a choice
    }
    s.padded_vocab = t->config.padded_vocab_size;
    if (c.moe() && (sl.ep > 1) != (t->layout.ep > 1) && with_optimizer) {
      s.reshardable = false;
    }
    CKPT_ASSIGN_OR_RETURN(s.load_blockers, LoadBlockers(v, t->config, t->layout, t->settings, t->folders, with_optimizer));
    out.sizes.push_back(std::move(s));
    return OkStatus();
  };
  auto divisors = [](int64_t n) {
    std::vector<int64_t> d;
    for (int64_t i = 1; i <= n && i <= 1024; ++i) {
      if (n % i == 0) d.push_back(i);
    }
    return d;
  };
  for (int64_t tp : divisors(c.num_attention_heads)) CKPT_RETURN_IF_ERROR(try_size("tp", tp));
  for (int64_t pp : divisors(c.num_layers)) CKPT_RETURN_IF_ERROR(try_size("pp", pp));
  for (int64_t dp = 1; dp <= std::max<int64_t>(8, 2 * sl.dp); dp *= 2) CKPT_RETURN_IF_ERROR(try_size("dp", dp));
  if (c.moe()) {
    for (int64_t ep : divisors(c.num_experts)) CKPT_RETURN_IF_ERROR(try_size("ep", ep));
  }
  return out;
}

}  // namespace ckpt
