// torch_dist -> legacy Megatron-LM layout (see legacy.h).
#include "convert/legacy.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <memory>
#include <vector>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/readers.h"
#include "ckpt/model.h"
#include "checkpoint/legacy_reader.h"
#include "checkpoint/torch_dist_writer.h"
#include "ckpt/engine.h"
#include "convert/dcp_entries.h"
#include "convert/megatron_view.h"
#include "format/megatron/writer.h"
#include "format/megatron/megatron.h"
#include "format/pickle/value.h"
#include "format/torch/tree_writer.h"
#include "util/strings.h"

namespace ckpt::internal_convert {
namespace {

using pickle::Value;

// A sink that writes `n` zero bytes in bounded pieces.
Status AppendZeros(ByteSink* out, uint64_t n) {
  static const std::string kZeros(1 << 16, '\0');
  while (n > 0) {
    const uint64_t k = std::min<uint64_t>(n, kZeros.size());
    CKPT_RETURN_IF_ERROR(out->Append(std::string_view(kZeros.data(), k)));
    n -= k;
  }
  return OkStatus();
}

// The value of string key `key` in a kDict, or nullptr.
Value* DictGet(Value* dict, std::string_view key) {
  if (dict == nullptr || dict->kind != pickle::Kind::kDict) return nullptr;
  for (auto& [k, v] : dict->dict()) {
    if (k->kind == pickle::Kind::kString && k->str() == key) return v;
  }
  return nullptr;
}

// A TorchFile that stays alive elsewhere, as the Reopener TorchTreeWriter wants.
torch::TorchTreeWriter::Reopener Borrow(const torch::TorchFile* f) {
  return [f]() -> Result<std::shared_ptr<const torch::TorchFile>> {
    return std::shared_ptr<const torch::TorchFile>(std::shared_ptr<void>(), f);
  };
}


// Writes the files of a LegacyPlan.
class PlanWriter {
 public:
  explicit PlanWriter(const LegacyPlan& plan) : plan_(plan) {}

  bool with_optimizer() const { return !plan_.states.empty(); }

  // model_optim_rng.pt of plan.ranks[rank].
  Status WriteModelFile(size_t rank, ByteSink* out) const {
    const model::RankOptimizer& r = plan_.ranks[rank];
    torch::TorchTreeWriter w;
    pickle::Arena& a = w.arena();
    LegacyPlan::Keep keep;
    CKPT_ASSIGN_OR_RETURN(Value * common, plan_.common(&w, &keep), "common state");
    Value* root = a.Dict();
    auto put = [&](std::string_view key, Value* v) { a.SetItem(root, w.Str(key), v); };
    for (const char* k : {"args", "checkpoint_version", "iteration"}) {
      if (Value* v = DictGet(common, k)) put(k, v);
    }
    for (size_t ch = 0; ch < r.chunks.size(); ++ch) {
      Value* model = a.Dict();
      model->ordered = true;
      for (const model::StateEntry& e : model::ChunkStateDict(r.chunks[ch])) {
        Value* v = nullptr;
        if (e.param < 0) {
          v = a.None();
        } else {
          const model::ChunkParam& p = r.chunks[ch][e.param];
          torch::TensorToSave t;
          t.dtype = plan_.params_dtype;
          t.shape = p.shape;
          t.nbytes = static_cast<uint64_t>(p.numel()) * DTypeSize(t.dtype);
          const size_t pi = static_cast<size_t>(e.param);
          t.write = [this, rank, ch, pi](ByteSink* sink) {
            return plan_.read_local(rank, static_cast<int64_t>(ch), pi, "", sink);
          };
          CKPT_ASSIGN_OR_RETURN(v, w.NewTensor(t), e.name);
        }
        a.SetItem(model, w.Str(e.name), v);
      }
      put(r.chunks.size() > 1 ? StrCat("model", ch) : std::string("model"), model);
    }
    if (with_optimizer()) {
      CKPT_ASSIGN_OR_RETURN(Value * opt, plan_.optimizer(rank, common, &w, &keep));
      put("optimizer", opt);
    }
    if (Value* v = DictGet(common, "opt_param_scheduler")) put("opt_param_scheduler", v);
    if (plan_.rng) {
      CKPT_ASSIGN_OR_RETURN(Value * rng, plan_.rng(rank, &w, &keep));
      if (rng) put("rng_state", rng);
    }
    if (Value* v = DictGet(common, "num_floating_point_operations_so_far")) {
      put("num_floating_point_operations_so_far", v);
    }
    torch::TorchWriteOptions wo;
    wo.archive_name = "model_optim_rng";
    return w.Write(root, out, wo);
  }

  // Whether plan.ranks[rank]'s folder gets a distrib_optim.pt.
  bool HasOptimizerFile(size_t rank) const {
    const model::LegacyRankFolder& f = plan_.folders[rank];
    return with_optimizer() && (f.dense_optimizer || f.expert_optimizer);
  }

  // distrib_optim.pt of plan.ranks[rank]: one DistributedOptimizer's dict, or
  // for dense + expert (ChainedOptimizer.save_parameter_state) the list
  // [dense or None, expert or None], None where this rank is not that
  // sub-optimizer's DP rank 0.
  Status WriteOptimizerFile(size_t rank, ByteSink* out) const {
    const model::RankOptimizer& r = plan_.ranks[rank];
    const model::LegacyRankFolder& f = plan_.folders[rank];
    torch::TorchTreeWriter w;
    pickle::Arena& a = w.arena();
    Value* root = nullptr;
    // The dict keys are string literals in megatron's code: one object each
    // in the whole file (the pickle memo shares them across sub-optimizers).
    std::map<std::string, Value*, std::less<>> interned;
    if (r.expert.empty()) {
      CKPT_ASSIGN_OR_RETURN(root, BufferState(rank, false, &w, &interned));
    } else {
      Value* dense = a.None();
      Value* expert = a.None();
      if (f.dense_optimizer) {
        CKPT_ASSIGN_OR_RETURN(dense, BufferState(rank, false, &w, &interned));
      }
      if (f.expert_optimizer) {
        CKPT_ASSIGN_OR_RETURN(expert, BufferState(rank, true, &w, &interned));
      }
      root = a.List({dense, expert});
    }
    torch::TorchWriteOptions wo;
    wo.archive_name = "distrib_optim";
    return w.Write(root, out, wo);
  }

 private:
  // get_parameter_state_dp_zero's dict for the dense or expert buffers.
  Result<Value*> BufferState(size_t rank, bool expert, torch::TorchTreeWriter* wp,
                             std::map<std::string, Value*, std::less<>>* interned) const {
    torch::TorchTreeWriter& w = *wp;
    auto str = [&](std::string_view k) {
      auto it = interned->find(k);
      if (it == interned->end()) it = interned->emplace(std::string(k), w.Str(k)).first;
      return it->second;
    };
    const model::RankOptimizer& r = plan_.ranks[rank];
    const std::vector<model::ParamBuffer>& buffers = expert ? r.expert : r.dense;
    pickle::Arena& a = w.arena();
    Value* root = a.Dict();
    a.SetItem(root, str("buckets_coalesced"), a.Bool(true));
    for (size_t g = 0; g < buffers.size(); ++g) {
      const model::ParamBuffer& b = buffers[g];
      Value* per_dtype = a.Dict();
      Value* key = a.Tuple({a.Global("torch", std::string(DTypeName(b.param_dtype))),
                            a.Global("torch", std::string(DTypeName(b.grad_dtype)))});
      Value* states = a.Dict();
      for (const std::string& st : plan_.states) {
        torch::TensorToSave t;
        t.dtype = DType::kFloat32;
        t.shape = {b.numel_unpadded};
        t.nbytes = static_cast<uint64_t>(b.numel_unpadded) * 4;
        t.write = [this, rank, expert, g, st](ByteSink* sink) { return WriteWorld(rank, expert, g, st, sink); };
        CKPT_ASSIGN_OR_RETURN(Value * tensor, w.NewTensor(t), StrCat(expert ? "expert " : "", "buffer ", g, " ", st));
        a.SetItem(states, str(st), tensor);
      }
      a.SetItem(states, str("numel_unpadded"), a.Int(b.numel_unpadded));
      a.SetItem(per_dtype, key, states);
      a.SetItem(root, a.Int(static_cast<int64_t>(g)), per_dtype);
    }
    return root;
  }

  // One buffer's world tensor: each bucket's first numel_unpadded elements,
  // the parameters' local shards at their offsets, zeros between.
  Status WriteWorld(size_t rank, bool expert, size_t g, const std::string& state, ByteSink* out) const {
    const model::RankOptimizer& r = plan_.ranks[rank];
    const model::ParamBuffer& b = expert ? r.expert[g] : r.dense[g];
    int64_t cursor = 0;
    // Parameters sorted by offset (the layout order is by offset already).
    for (const model::BufferParam& p : b.params) {
      const int64_t at = b.WorldOffset(p);
      if (at < cursor) return InternalError(StrCat("buffer ", g, ": parameters overlap at ", at));
      CKPT_RETURN_IF_ERROR(AppendZeros(out, static_cast<uint64_t>(at - cursor) * 4));
      CKPT_RETURN_IF_ERROR(plan_.read_local(rank, b.chunk, p.param, state, out));
      cursor = at + (p.end - p.start);
    }
    if (cursor > b.numel_unpadded) return InternalError(StrCat("buffer ", g, " overflows numel_unpadded"));
    return AppendZeros(out, static_cast<uint64_t>(b.numel_unpadded - cursor) * 4);
  }

  const LegacyPlan& plan_;
};

// The parts of a LegacyPlan that a torch_dist view at its own layout gives:
// the common state, each rank's optimizer entry and RNG state.
class ViewObjects {
 public:
  explicit ViewObjects(const MegatronView& view) : view_(view) {}

  Result<Value*> Common(torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) const {
    const TorchDistSource& s = view_.torch_dist();
    CKPT_ASSIGN_OR_RETURN(Value * common, w->Import(*s.common_file, Borrow(s.common_file.get())));
    // core >= 0.19 keeps the common dict as the ShardedObject `common_state`: [dict].
    if (common->kind == pickle::Kind::kList && common->items().size() == 1) common = common->items()[0];
    return common;
  }

  // {"optimizer": {"param_groups": [...]}, ["grad_scaler": ...]}, as
  // DistributedOptimizer.state_dict() returns it.
  Result<Value*> OptimizerEntry(size_t rank, Value* common, torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) const {
    pickle::Arena& a = w->arena();
    if (view_.optimizer_layout() == OptimizerLayout::kFullyReshardable ||
        view_.optimizer_layout() == OptimizerLayout::kFullyShardedModelSpace) {
      return LegacyOptimizerFromModelSpace(DictGet(common, "optimizer"), w);
    }
    // dp_reshardable / dp_zero_gather_scatter: per model-parallel rank
    // ShardedObjects; a ChainedOptimizer's keys carry "chained_<k>." and its
    // legacy state_dict() is the list of the sub-optimizers'.
    const model::RankOptimizer& r = view_.ranks()[rank];
    const bool chained = !r.expert.empty();
    auto one = [&](std::string_view prefix, int64_t group) -> Result<Value*> {
      Value* d = a.Dict();
      for (const char* part : {"optimizer", "grad_scaler"}) {
        CKPT_ASSIGN_OR_RETURN(
            Value * v, ObjectPayload(StrCat(prefix, "optimizer.distributed.dp_group_idx_", group, ".", part, "/shard_0_1"),
                                     w, keep));
        if (v != nullptr) a.SetItem(d, w->Str(part), v);
      }
      if (DictGet(d, "optimizer") == nullptr) {
        return DataLossError(StrCat(prefix, "optimizer.distributed.dp_group_idx_", group,
                                    ".optimizer (the param groups of pp rank ", r.at.pp_rank, ", tp rank ",
                                    r.at.tp_rank, ") is missing"));
      }
      return d;
    };
    if (!chained) return one("", r.dense_dp_group_idx);
    CKPT_ASSIGN_OR_RETURN(Value * dense, one("chained_0.", r.dense_dp_group_idx));
    CKPT_ASSIGN_OR_RETURN(Value * expert, one("chained_1.", r.expert_dp_group_idx));
    return a.List({dense, expert});
  }

  // The rank's RNG state: the ShardedObject rng_state at (pp rank, tp rank[, dp rank 0]).
  Result<Value*> RngState(size_t rank, torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) const {
    const model::RankOptimizer& r = view_.ranks()[rank];
    CKPT_ASSIGN_OR_RETURN(model::RankCoordinates writer,
                          model::GlobalRankCoordinates(view_.layout(), view_.folders()[rank].rank));
    const internal_checkpoint::DcpReader* dcp = view_.torch_dist().dcp;
    for (const dcp::Entry& e : dcp->metadata().entries) {
      std::optional<megatron::ShardedObjectKey> k = megatron::ParseShardedObjectKey(e.key);
      if (!k || k->key != "rng_state" || k->offset.size() < 2) continue;
      if (k->offset[0] != r.at.pp_rank || k->offset[1] != r.at.tp_rank) continue;
      // (PP, TP, DP) with --data-parallel-random-init or expert parallelism.
      if (k->offset.size() > 2 && k->offset[2] != writer.dp_rank) continue;
      return ObjectPayload(e.key, w, keep);
    }
    return static_cast<Value*>(nullptr);
  }

 private:
  // The data of ShardedObject `key` (its payload's one element), imported
  // into `w`; nullptr when absent.
  Result<Value*> ObjectPayload(const std::string& key, torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) const {
    const internal_checkpoint::DcpReader* dcp = view_.torch_dist().dcp;
    const int64_t ei = dcp->metadata().FindEntry(key);
    if (ei < 0) return static_cast<Value*>(nullptr);
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> f,
                          dcp->OpenBytes(dcp->metadata().entries[ei], pickle::Mode::kInspect), key);
    std::shared_ptr<const torch::TorchFile> shared(std::move(f));
    keep->push_back(shared);
    CKPT_ASSIGN_OR_RETURN(Value * v, w->Import(*shared, Borrow(shared.get())), key);
    // dist_checkpointing saves a ShardedObject as torch.save([data]).
    if (v->kind != pickle::Kind::kList || v->items().size() != 1) {
      return DataLossError(StrCat(key, ": a ShardedObject payload is a one-element list, found ", pickle::TypeName(v)));
    }
    return v->items()[0];
  }

  const MegatronView& view_;
};

}  // namespace

Result<Value*> LegacyOptimizerFromModelSpace(Value* opt, torch::TorchTreeWriter* w) {
  if (opt == nullptr || opt->kind != pickle::Kind::kDict) {
    return DataLossError("the common state has no optimizer dict (param groups)");
  }
  pickle::Arena& a = w->arena();
  // One DistributedOptimizer's state_dict() without the sharding type and,
  // fully_sharded_model_space, the per-parameter steps the common state
  // keeps ({idx: {"step": tensor}}; legacy keeps them in the param groups).
  auto strip = [&](Value* sub) {
    Value* d = a.Dict();
    for (auto& [k, v] : sub->dict()) {
      if (k->kind == pickle::Kind::kString && (k->str() == "param_state_sharding_type" || k->str() == "param_state")) {
        continue;
      }
      a.SetItem(d, k, v);
    }
    return d;
  };
  // A ChainedOptimizer (dense + expert) keeps {0: state, 1: state}; its
  // legacy state_dict() is the list of them.
  if (!opt->dict().empty() && opt->dict().front().first->kind == pickle::Kind::kInt) {
    Value* list = a.List({});
    for (auto& [k, v] : opt->dict()) {
      if (v->kind != pickle::Kind::kDict) return DataLossError("a chained optimizer entry is not a dict");
      a.Append(list, strip(v));
    }
    return list;
  }
  return strip(opt);
}

Result<ConvertReport> WriteLegacyCheckpoint(Env* env, const std::string& dst, int64_t iteration,
                                            const LegacyPlan& plan) {
  PlanWriter writer(plan);
  megatron::Tracker tracker;
  tracker.iteration = iteration;
  const std::string iter_dir = JoinPath(dst, megatron::IterationDirName(tracker));
  if (env->FileExists(dst) && !env->IsDirectory(dst)) {
    return InvalidArgumentError(StrCat("destination ", dst, " exists and is not a folder"));
  }
  // The iteration folder is staged beside itself and switched over whole: an
  // older checkpoint there stays intact until the new one is complete.
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<engine::FolderCommit> commit, engine::FolderCommit::Begin(env, iter_dir));
  ConvertReport report;
  std::vector<std::string> staged;  // the files' paths in the staging folder
  uint64_t total = 0;
  for (size_t ri = 0; ri < plan.ranks.size(); ++ri) {
    const model::LegacyRankFolder& rf = plan.folders[ri];
    const std::string folder = JoinPath(commit->staging(), rf.folder);
    CKPT_RETURN_IF_ERROR(env->CreateDirs(folder));
    if (rf.model_file) {
      const std::string model_path = JoinPath(folder, "model_optim_rng.pt");
      Status st = WriteFileAtomically(env, model_path, [&](WritableFile* f) { return writer.WriteModelFile(ri, f); });
      if (!st.ok()) return st.WithContext(JoinPath(JoinPath(iter_dir, rf.folder), "model_optim_rng.pt"));
      report.files.push_back(JoinPath(JoinPath(iter_dir, rf.folder), "model_optim_rng.pt"));
      staged.push_back(model_path);
    }
    if (writer.HasOptimizerFile(ri)) {
      const std::string optim_path = JoinPath(folder, "distrib_optim.pt");
      Status st =
          WriteFileAtomically(env, optim_path, [&](WritableFile* f) { return writer.WriteOptimizerFile(ri, f); });
      if (!st.ok()) return st.WithContext(JoinPath(JoinPath(iter_dir, rf.folder), "distrib_optim.pt"));
      report.files.push_back(JoinPath(JoinPath(iter_dir, rf.folder), "distrib_optim.pt"));
      staged.push_back(optim_path);
    }
    if (plan.progress) plan.progress(ri + 1, plan.ranks.size());
  }
  for (const std::string& f : staged) {
    if (auto size = env->GetFileSize(f); size.ok()) total += *size;
  }
  // Other entries of an existing iteration folder (not its rank folders) carried over.
  CKPT_RETURN_IF_ERROR(commit->CarryOver([](std::string_view name) { return name.rfind("mp_rank_", 0) == 0; }));
  CKPT_RETURN_IF_ERROR(commit->Commit());
  const std::string tracker_path = JoinPath(dst, megatron::kTrackerFileName);
  Status st = WriteFileAtomically(env, tracker_path,
                                  [&](WritableFile* f) { return f->Append(std::to_string(iteration)); });
  if (!st.ok()) return st.WithContext(StrCat(tracker_path, " (", iter_dir, " is complete and in place)"));
  report.files.push_back(tracker_path);
  report.bytes = total;
  report.tensors = 0;
  for (size_t ri = 0; ri < plan.ranks.size(); ++ri) {
    const model::RankOptimizer& r = plan.ranks[ri];
    if (plan.folders[ri].model_file) {
      for (const auto& chunk : r.chunks) report.tensors += chunk.size();
    }
    if (writer.HasOptimizerFile(ri)) report.tensors += plan.states.size() * (r.dense.size() + r.expert.size());
  }
  return report;
}

Result<ConvertReport> ConvertToLegacy(const std::string& src, const std::string& dst, const ConvertOptions& options,
                                      Env* env) {
  CKPT_ASSIGN_OR_RETURN(TorchDistSource s, OpenTorchDist(src, env, "to=\"legacy\" converts"));
  std::optional<int64_t> iteration = options.iteration;
  if (!iteration && s.common) iteration = s.common->iteration;
  if (!iteration) {
    return InvalidArgumentError(StrCat(src, ": the checkpoint records no iteration; give one (iteration)"));
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<MegatronView> view, MegatronView::OverTorchDist(std::move(s)), src);
  CKPT_RETURN_IF_ERROR(view->model_status(), StrCat(src, ": the model and its parallel layout"));
  if (!view->torch_dist().common_file) {
    return InvalidArgumentError(StrCat(src, ": the checkpoint has no common state (args, iteration)"));
  }
  LegacyPlan plan;
  plan.ranks = view->ranks();
  plan.folders = view->folders();
  plan.params_dtype = view->settings().params_dtype;
  if (!options.no_optimizer && view->has_optimizer()) {
    CKPT_ASSIGN_OR_RETURN(plan.states, LegacyOptimizerStates(*view), src);
  }
  const MegatronView* v = view.get();
  auto objects = std::make_shared<ViewObjects>(*v);
  plan.read_local = [v](size_t rank, int64_t chunk, size_t param, std::string_view state, ByteSink* out) {
    return v->ReadLocal(rank, chunk, param, state, out);
  };
  plan.common = [objects](torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) { return objects->Common(w, keep); };
  plan.optimizer = [objects](size_t rank, Value* common, torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) {
    return objects->OptimizerEntry(rank, common, w, keep);
  };
  plan.rng = [objects](size_t rank, torch::TorchTreeWriter* w, LegacyPlan::Keep* keep) {
    return objects->RngState(rank, w, keep);
  };
  plan.progress = options.progress;
  CKPT_ASSIGN_OR_RETURN(ConvertReport report, WriteLegacyCheckpoint(env, dst, *iteration, plan));
  if (options.no_optimizer && view->has_optimizer()) {
    report.warnings.push_back("optimizer state left out (no_optimizer)");
  }
  return report;
}

Result<std::vector<std::string>> LegacyOptimizerStates(const MegatronView& view) {
  // Optimizer states, in the order save_parameter_state writes them.
  std::vector<std::string> found;
  for (const char* st : {"param", "exp_avg", "exp_avg_sq"}) {
    for (const TensorInfo& t : view.tensors()) {
      if (t.key.rfind(StrCat("optimizer.state.", st, "."), 0) == 0) {
        found.push_back(st);
        break;
      }
    }
  }
  // Other optimizers' states after Adam's, in the view's order.
  for (const std::string& st : view.optimizer_states()) {
    if (std::find(found.begin(), found.end(), st) == found.end()) found.push_back(st);
  }
  if (found.empty() || found.front() != "param") {
    return DataLossError(StrCat("the ", OptimizerLayoutName(view.optimizer_layout()),
                                " optimizer state has no fp32 main parameters (optimizer.state.param.*)"));
  }
  return found;
}

namespace {

// The value of `key` in the root dict of a legacy rank file, imported into `w`.
Result<Value*> RankFileValue(const internal_checkpoint::LegacyReader& legacy, const std::string& folder,
                             std::string_view key, torch::TorchTreeWriter* w,
                             std::vector<std::shared_ptr<const torch::TorchFile>>* keep) {
  for (const auto& r : legacy.ranks()) {
    if (r.folder != folder) continue;
    CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> f,
                          legacy.OpenRankFile(r.coord, internal_checkpoint::LegacyReader::FileKind::kModel));
    keep->push_back(f);
    const torch::TorchFile* raw = f.get();
    CKPT_ASSIGN_OR_RETURN(Value * root, w->Import(*raw, Borrow(raw)), StrCat(folder, "/model_optim_rng.pt"));
    return DictGet(root, key);
  }
  return NotFoundError(StrCat("rank folder ", folder, " is missing"));
}

}  // namespace

Result<ConvertReport> ConvertLegacyToTorchDist(const std::string& src, const std::string& dst,
                                               const ConvertOptions& options, Env* env) {
  OpenOptions open;
  open.env = env;
  open.pickle_mode = PickleMode::kInspect;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open), StrCat("reading ", src));
  const internal_checkpoint::LegacyReader* legacy = reader->legacy_view();
  if (legacy == nullptr) return InternalError("not a legacy checkpoint");
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<MegatronView> view, MegatronView::OverLegacy(std::move(reader)), src);
  std::vector<std::string> warnings;
  for (const auto& p : legacy->problems()) {
    return DataLossError(StrCat(src, ": ", p.file.empty() ? "" : StrCat(p.file, ": "), p.message));
  }
  const std::string rank0 = legacy->rank0_folder();
  std::optional<int64_t> iteration = options.iteration ? options.iteration : legacy->iteration();
  if (!iteration) return InvalidArgumentError(StrCat(src, ": no iteration recorded; give one (iteration)"));

  // Entries: every model-space tensor, one chunk per rank shard.
  std::vector<dcp::EntryToWrite> entries;
  auto progress = std::make_shared<ChunkProgress>(options.progress);
  uint64_t total = 0;
  const MegatronView* v = view.get();
  for (size_t i = 0; i < v->tensors().size(); ++i) {
    const TensorInfo& t = v->tensors()[i];
    dcp::EntryToWrite e;
    e.key = t.key;
    e.type = dcp::EntryType::kTensor;
    e.dtype = t.dtype;
    e.size = t.shape;
    for (const Box& b : v->ShardBoxes(i)) {
      dcp::ChunkToWrite c;
      c.offsets = b.start;
      c.sizes = b.count;
      const uint64_t nbytes = b.numel() * DTypeSize(t.dtype);
      total += nbytes;
      c.write = [v, i, b, progress, nbytes](ByteSink* sink) -> Status {
        CKPT_RETURN_IF_ERROR(v->ReadTensorRegion(i, b.start, b.count, sink));
        progress->Add(nbytes);
        return OkStatus();
      };
      e.chunks.push_back(std::move(c));
    }
    entries.push_back(std::move(e));
  }
  progress->set_total(total);
  // The linear layers' _extra_state: None (the local spec keeps no FP8 metadata).
  for (const std::string& key : model::ExtraStateObjects(v->config())) entries.push_back(NoneObjectEntry(key));
  // Each writer's RNG state (Megatron-LM get_rng_state: a ShardedObject over
  // (PP, TP), or with expert parallelism over (PP, TP, DP), one per DP rank;
  // a legacy checkpoint holds only the writers' DP ranks).
  {
    const model::ParallelLayout& l = v->layout();
    const int64_t dp = l.dp * l.cp;
    std::set<std::pair<int64_t, int64_t>> covered;
    for (const model::LegacyRankFolder& f : v->folders()) {
      if (!f.model_file) continue;
      CKPT_ASSIGN_OR_RETURN(model::RankCoordinates c, model::GlobalRankCoordinates(l, f.rank));
      dcp::EntryToWrite e;
      e.key = l.ep > 1 ? StrCat("rng_state/shard_", f.at.pp_rank, ".", f.at.tp_rank, ".", c.dp_rank, "_", l.pp, ".",
                                l.tp, ".", dp)
                       : StrCat("rng_state/shard_", f.at.pp_rank, ".", f.at.tp_rank, "_", l.pp, ".", l.tp);
      covered.insert({f.at.pp_rank * l.tp + f.at.tp_rank, c.dp_rank});
      e.type = dcp::EntryType::kBytes;
      const std::string folder = f.folder;
      e.write_bytes = [legacy, folder](ByteSink* sink) -> Status {
        torch::TorchTreeWriter w;
        std::vector<std::shared_ptr<const torch::TorchFile>> keep;
        CKPT_ASSIGN_OR_RETURN(Value * rng, RankFileValue(*legacy, folder, "rng_state", &w, &keep));
        if (rng == nullptr) return DataLossError(StrCat(folder, "/model_optim_rng.pt has no rng_state"));
        torch::TorchWriteOptions o;
        o.archive_name = "archive";
        return w.Write(w.arena().List({rng}), sink, o);
      };
      entries.push_back(std::move(e));
    }
    if (l.ep > 1 && static_cast<int64_t>(covered.size()) < l.pp * l.tp * dp) {
      warnings.push_back(StrCat("RNG state of ", l.pp * l.tp * dp - static_cast<int64_t>(covered.size()),
                                " of ", l.pp * l.tp * dp, " (pp, tp, dp) ranks not in the legacy files (only the "
                                "writers' are): load with --no-load-rng"));
    }
  }

  internal_checkpoint::TorchDistWriteOptions wo;
  if (!options.megatron_version.empty()) {
    CKPT_ASSIGN_OR_RETURN(wo.version, megatron::ParseCoreVersion(options.megatron_version), "megatron_version");
  }
  wo.thread_count = options.thread_count;
  wo.direct_io = options.direct_io;
  wo.tracker = megatron::Tracker{false, *iteration};

  // The common dict, from rank 0's model_optim_rng.pt.
  const bool with_optimizer = v->has_optimizer();
  auto write_common = [legacy, rank0, with_optimizer, version = wo.version](ByteSink* sink) -> Status {
    torch::TorchTreeWriter w;
    pickle::Arena& a = w.arena();
    std::vector<std::shared_ptr<const torch::TorchFile>> keep;
    Value* root = a.Dict();
    auto carry = [&](std::string_view key) -> Status {
      CKPT_ASSIGN_OR_RETURN(Value * val, RankFileValue(*legacy, rank0, key, &w, &keep));
      if (val != nullptr) a.SetItem(root, w.Str(key), val);
      return OkStatus();
    };
    for (const char* k : {"args", "checkpoint_version", "iteration"}) CKPT_RETURN_IF_ERROR(carry(k));
    if (with_optimizer) {
      CKPT_ASSIGN_OR_RETURN(Value * opt, RankFileValue(*legacy, rank0, "optimizer", &w, &keep));
      if (opt == nullptr) return DataLossError(StrCat(rank0, "/model_optim_rng.pt has no optimizer entry"));
      auto with_type = [&](Value* sub) -> Result<Value*> {
        if (sub->kind != pickle::Kind::kDict) return DataLossError("an optimizer entry is not a dict");
        Value* d = a.Dict();
        a.SetPairs(d, sub->dict());
        a.SetItem(d, w.Str("param_state_sharding_type"), w.Str("fully_reshardable"));
        return d;
      };
      Value* out = nullptr;
      if (opt->kind == pickle::Kind::kList) {  // ChainedOptimizer: {0: ..., 1: ...}
        out = a.Dict();
        for (size_t k = 0; k < opt->items().size(); ++k) {
          CKPT_ASSIGN_OR_RETURN(Value * sub, with_type(opt->items()[k]));
          a.SetItem(out, a.Int(static_cast<int64_t>(k)), sub);
        }
      } else {
        CKPT_ASSIGN_OR_RETURN(out, with_type(opt));
      }
      a.SetItem(root, w.Str("optimizer"), out);
    }
    for (const char* k : {"opt_param_scheduler", "num_floating_point_operations_so_far"}) {
      CKPT_RETURN_IF_ERROR(carry(k));
    }
    a.SetItem(root, w.Str("content_metadata"), megatron::DistOptContentMetadata(&w, "fully_reshardable"));
    return megatron::WriteCommonTree(version, &w, root, sink);
  };
  CKPT_ASSIGN_OR_RETURN(internal_checkpoint::TorchDistWriteReport r,
                        internal_checkpoint::WriteTorchDistCheckpoint(env, dst, std::move(entries), write_common, wo));
  ConvertReport report;
  report.files = std::move(r.files);
  report.data_files = r.data_files;
  report.direct_io_files = r.direct_io_files;
  report.tensors = v->tensors().size();
  report.bytes = total;
  report.warnings = std::move(warnings);
  return report;
}

}  // namespace ckpt::internal_convert
