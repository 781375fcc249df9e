// Convert with to=torch_dist: a source's entries and common state, published
// by WriteTorchDistCheckpoint.
#include "convert/torch_dist.h"

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/readers.h"
#include "checkpoint/torch_dist_writer.h"
#include "ckpt/checkpoint.h"
#include "convert/dcp_entries.h"
#include "convert/megatron_view.h"
#include "format/torch/torch_file.h"
#include "util/strings.h"

namespace ckpt::internal_convert {
namespace {

using internal_checkpoint::DcpReader;
using internal_checkpoint::EndsWith;
using internal_checkpoint::IsMegatronRoot;
using internal_checkpoint::MegatronIteration;
using internal_checkpoint::ReadSmall;
using internal_checkpoint::ResolveMegatronRoot;
using internal_checkpoint::TorchDistWriteOptions;
using internal_checkpoint::TorchDistWriteReport;
using internal_checkpoint::WriteTorchDistCheckpoint;
using megatron::CommonSource;
using megatron::CoreVersion;

std::string Normal(const std::string& p) {
  std::string n = std::filesystem::path(p).lexically_normal().string();
  while (n.size() > 1 && n.back() == '/') n.pop_back();
  return n;
}

// The common state of a source and how to write it in the target's form.
struct CommonPlan {
  std::function<Status(ByteSink*)> write;
};

// A torch.save archive re-opened from an Env on each call (common.pt).
torch::TorchTreeWriter::Reopener ReopenFile(Env* env, std::string path, pickle::Mode mode) {
  return [env, path = std::move(path), mode]() -> Result<std::shared_ptr<const torch::TorchFile>> {
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(path));
    std::shared_ptr<const ByteSource> src(std::move(f));
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> tf, torch::TorchFile::Open(src, mode));
    return std::shared_ptr<const torch::TorchFile>(std::move(tf));
  };
}

// Writes the common state of `reopen`'s archive (read as `source`) in
// version `v`'s form. Opens it only when called, so nothing stays open.
std::function<Status(ByteSink*)> Reserialize(CoreVersion v, CommonSource source,
                                             torch::TorchTreeWriter::Reopener reopen, std::string what) {
  return [v, source, reopen = std::move(reopen), what = std::move(what)](ByteSink* sink) -> Status {
    CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> f, reopen(), what);
    return megatron::WriteCommonState(v, f.get(), source, reopen, sink).WithContext(what);
  };
}

// DCP / torch_dist source: its entries (without the common state), chunk
// layout, bytes items and planner paths, as to=dcp keeps them; the common
// state from common.pt or the common_state entry.
Status FromDcp(const DcpReader& d, const std::string& src, CoreVersion v, const ConvertOptions& options, Env* env,
               ChunkProgress* progress, std::vector<dcp::EntryToWrite>* entries, CommonPlan* common,
               nlohmann::ordered_json* carried, ConvertReport* report) {
  const dcp::Metadata& md = d.metadata();
  const pickle::Mode mode = options.allow_opaque ? pickle::Mode::kInspect : pickle::Mode::kStrict;
  CKPT_ASSIGN_OR_RETURN(*entries, DcpSourceEntries(d, src, progress->AsCallback(), megatron::kCommonStateKey));
  int64_t common_entry = -1;
  for (size_t ei = 0; ei < md.entries.size(); ++ei) {
    if (md.entries[ei].key == megatron::kCommonStateKey) common_entry = static_cast<int64_t>(ei);
  }

  // The common state: common.pt first, as core 0.19's load_common_state_dict does.
  const std::string common_pt = JoinPath(d.folder(), megatron::kCommonFileName);
  if (env->FileExists(common_pt)) {
    if (v == CoreVersion::k0_16) {
      // Same form: the file as stored.
      common->write = [env, common_pt](ByteSink* sink) -> Status {
        CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(common_pt));
        return CopyRange(*f, 0, f->Size(), sink);
      };
    } else {
      common->write =
          Reserialize(v, CommonSource::kDict, ReopenFile(env, common_pt, mode), StrCat("reading ", common_pt));
    }
    // Open it now so a damaged (or, when re-serialized, strictly refused)
    // common.pt fails before anything is written; a copy is not unpickled
    // again, as to=dcp copies bytes entries.
    CKPT_RETURN_IF_ERROR(ReopenFile(env, common_pt, v == CoreVersion::k0_16 ? pickle::Mode::kInspect : mode)().status(),
                         StrCat("reading ", common_pt));
  } else if (common_entry >= 0) {
    const dcp::Entry& e = md.entries[static_cast<size_t>(common_entry)];
    if (e.item < 0 || static_cast<size_t>(e.item) >= md.items.size()) {
      return DataLossError(StrCat(src, ": bytes entry ", Quote(e.key), " has no storage item"));
    }
    const dcp::StorageItem item = md.items[static_cast<size_t>(e.item)];
    const std::string what = StrCat("reading ", src, ": ", megatron::kCommonStateKey);
    if (v == CoreVersion::k0_19) {
      CKPT_RETURN_IF_ERROR(d.OpenBytes(e, pickle::Mode::kInspect).status(), what);
      common->write = [&d, item](ByteSink* sink) -> Status {
        CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, d.DataFile(std::string(item.relative_path)));
        CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> bytes, dcp::OpenItemBytes(file, item));
        return CopyRange(*bytes, 0, bytes->Size(), sink);
      };
    } else {
      torch::TorchTreeWriter::Reopener reopen = [&d, e, mode]() -> Result<std::shared_ptr<const torch::TorchFile>> {
        CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> f, d.OpenBytes(e, mode));
        return std::shared_ptr<const torch::TorchFile>(std::move(f));
      };
      CKPT_RETURN_IF_ERROR(reopen().status(), what);
      common->write = Reserialize(v, CommonSource::kWrappedDict, std::move(reopen), what);
    }
  } else {
    common->write = [v](ByteSink* sink) {
      return megatron::WriteCommonState(v, nullptr, CommonSource::kDict, nullptr, sink);
    };
  }

  // metadata.json keys that are no CheckpointingConfig field travel (0.19 only).
  const std::string cfg_path = JoinPath(d.folder(), megatron::kConfigFileName);
  if (env->FileExists(cfg_path)) {
    CKPT_ASSIGN_OR_RETURN(std::string text, ReadSmall(env, cfg_path, megatron::kMaxConfigBytes));
    nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) {
      report->warnings.push_back(StrCat(cfg_path, " is not a JSON object: none of its fields are carried"));
    } else {
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (megatron::IsConfigField(it.key())) continue;
        if (v == CoreVersion::k0_16) {
          report->warnings.push_back(
              StrCat("dropped metadata.json field ", Quote(it.key()),
                     ": megatron-core 0.16.1 refuses fields CheckpointingConfig does not declare"));
        } else {
          (*carried)[it.key()] = it.value();
        }
      }
    }
  }
  return OkStatus();
}

// torch.save state dict: the tensors Megatron would extract become entries
// (one chunk each, the reader's flat keys), the rest is the common dict.
Status FromTorchStateDict(const CheckpointReader& reader, const torch::TorchFile& tf, const std::string& src,
                          CoreVersion v, ChunkProgress* progress, std::vector<dcp::EntryToWrite>* entries,
                          CommonPlan* common) {
  CKPT_ASSIGN_OR_RETURN(std::vector<size_t> extracted, megatron::ExtractedTensors(tf), StrCat("reading ", src));
  CKPT_ASSIGN_OR_RETURN(*entries, FlatTensorEntries(reader, src, progress->AsCallback(), &extracted));
  // The reader owns the archive and outlives the write.
  std::shared_ptr<const torch::TorchFile> file(&tf, [](const torch::TorchFile*) {});
  common->write = Reserialize(
      v, CommonSource::kStateDict, [file]() -> Result<std::shared_ptr<const torch::TorchFile>> { return file; },
      StrCat("reading ", src));
  return OkStatus();
}

// A fully_sharded_model_space source (megatron-core 0.8-0.15): its optimizer
// tensors are N-D flattened pieces that core >= 0.16 refuses to load
// (flattened_range), so they cannot be carried as stored. They are written in
// model space, fully_reshardable, as MegatronView re-indexes them (same
// values, fp32_param renamed param, one chunk per TP shard), and the common
// state says so: the optimizer's param_state_sharding_type and the content
// metadata become fully_reshardable, the per-parameter steps
// (optimizer.param_state) go (fully_reshardable keeps them in the param groups).
Status OptimizerToModelSpace(const MegatronView& view, const std::string& src, Env* env,
                             std::vector<dcp::EntryToWrite>* entries, CommonPlan* common, CoreVersion v) {
  constexpr std::string_view kState = "optimizer.state.";
  std::vector<dcp::EntryToWrite> kept;
  for (dcp::EntryToWrite& e : *entries) {
    if (e.key.rfind(kState, 0) != 0) kept.push_back(std::move(e));
  }
  const MegatronView* vw = &view;
  for (size_t i = 0; i < view.tensors().size(); ++i) {
    const TensorInfo& t = view.tensors()[i];
    if (t.key.rfind(kState, 0) != 0) continue;
    dcp::EntryToWrite e;
    e.key = t.key;
    e.type = dcp::EntryType::kTensor;
    e.dtype = t.dtype;
    e.size = t.shape;
    for (const Box& b : view.ShardBoxes(i)) {
      dcp::ChunkToWrite c;
      c.offsets = b.start;
      c.sizes = b.count;
      c.write = [vw, i, b](ByteSink* sink) { return vw->ReadTensorRegion(i, b.start, b.count, sink); };
      e.chunks.push_back(std::move(c));
    }
    kept.push_back(std::move(e));
  }
  *entries = std::move(kept);

  const DcpReader* d = view.torch_dist().dcp;
  if (d == nullptr) return InternalError("a torch_dist view without its DCP reader");
  const std::string common_pt = JoinPath(d->folder(), megatron::kCommonFileName);
  if (!env->FileExists(common_pt)) {
    return DataLossError(StrCat(src, ": a fully_sharded_model_space checkpoint without ", megatron::kCommonFileName,
                                " (megatron-core <= 0.15 keeps its common state there)"));
  }
  // Args may hold Megatron enums: read as the model-space view does.
  torch::TorchTreeWriter::Reopener reopen = ReopenFile(env, common_pt, pickle::Mode::kInspect);
  CKPT_RETURN_IF_ERROR(reopen().status(), StrCat("reading ", common_pt));
  common->write = [reopen, common_pt, v](ByteSink* sink) -> Status {
    using pickle::Kind;
    using pickle::Value;
    CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const torch::TorchFile> f, reopen(), StrCat("reading ", common_pt));
    torch::TorchTreeWriter w;
    pickle::Arena& a = w.arena();
    CKPT_ASSIGN_OR_RETURN(Value * src_root, w.Import(*f, reopen), StrCat("reading ", common_pt));
    if (src_root == nullptr || src_root->kind != Kind::kDict) {
      return DataLossError(StrCat(common_pt, ": the common state is not a dict"));
    }
    auto is = [](const Value* k, std::string_view name) { return k->kind == Kind::kString && k->str() == name; };
    // One DistributedOptimizer's state dict, fully_reshardable.
    auto optimizer = [&](Value* sub) -> Result<Value*> {
      if (sub->kind != Kind::kDict) return DataLossError(StrCat(common_pt, ": an optimizer entry is not a dict"));
      Value* out = a.Dict();
      for (auto& [k, val] : sub->dict()) {
        if (is(k, "param_state")) continue;
        a.SetItem(out, k, is(k, "param_state_sharding_type") ? w.Str("fully_reshardable") : val);
      }
      return out;
    };
    Value* root = a.Dict();
    for (auto& [k, val] : src_root->dict()) {
      if (is(k, "optimizer") && val->kind == Kind::kDict) {
        Value* out = nullptr;
        // A ChainedOptimizer keeps {0: state, 1: state}.
        if (!val->dict().empty() && val->dict().front().first->kind == Kind::kInt) {
          out = a.Dict();
          for (auto& [ck, cv] : val->dict()) {
            CKPT_ASSIGN_OR_RETURN(Value * sub, optimizer(cv));
            a.SetItem(out, ck, sub);
          }
        } else {
          CKPT_ASSIGN_OR_RETURN(out, optimizer(val));
        }
        a.SetItem(root, k, out);
      } else if (is(k, "content_metadata") && val->kind == Kind::kDict) {
        Value* cm = a.Dict();
        for (auto& [ck, cv] : val->dict()) {
          if (is(ck, "distrib_optim_fully_reshardable_mem_efficient")) continue;
          a.SetItem(cm, ck, is(ck, "distrib_optim_sharding_type") ? w.Str("fully_reshardable") : cv);
          if (is(ck, "distrib_optim_sharding_type")) {
            a.SetItem(cm, w.Str("distrib_optim_fully_reshardable_mem_efficient"), a.Bool(false));
          }
        }
        a.SetItem(root, k, cm);
      } else {
        a.SetItem(root, k, val);
      }
    }
    return megatron::WriteCommonTree(v, &w, root, sink);
  };
  return OkStatus();
}

}  // namespace

Result<ConvertReport> ConvertToTorchDist(const std::string& src, const std::string& dst,
                                         const ConvertOptions& options, Env* env) {
  if (options.max_shard_size > 0) {
    return InvalidArgumentError("max_shard_size does not apply with to=\"torch_dist\" (use thread_count)");
  }
  if (EndsWith(dst, ".safetensors") || EndsWith(dst, ".pt") || EndsWith(dst, ".bin") || EndsWith(dst, ".pth") ||
      EndsWith(dst, ".json")) {
    return InvalidArgumentError(
        StrCat("destination ", dst, " names a file, but a torch_dist checkpoint is a folder (name a folder)"));
  }
  TorchDistWriteOptions wo;
  wo.thread_count = options.thread_count;
  wo.direct_io = options.direct_io;
  if (!options.megatron_version.empty()) {
    CKPT_ASSIGN_OR_RETURN(wo.version, megatron::ParseCoreVersion(options.megatron_version), "megatron_version");
  }
  if (options.iteration && *options.iteration < 0) {
    return InvalidArgumentError(StrCat("iteration ", *options.iteration, " is negative"));
  }

  // A Megatron-LM root in, a Megatron-LM root out (its iteration unless options.iteration).
  std::string src_ckpt = src;
  if (IsMegatronRoot(env, src)) {
    CKPT_ASSIGN_OR_RETURN(MegatronIteration it, ResolveMegatronRoot(env, src), StrCat("reading ", src));
    src_ckpt = it.dir;
    wo.tracker = it.iteration ? megatron::Tracker{false, *it.iteration} : megatron::Tracker{true, 0};
  }
  if (options.iteration) wo.tracker = megatron::Tracker{false, *options.iteration};
  const std::string out_ckpt = wo.tracker ? JoinPath(dst, megatron::IterationDirName(*wo.tracker)) : dst;
  if (Normal(out_ckpt) == Normal(src_ckpt) || Normal(dst) == Normal(src_ckpt)) {
    return InvalidArgumentError(StrCat("destination ", dst, " is the source checkpoint ", src_ckpt,
                                       " (convert into another folder)"));
  }

  OpenOptions open;
  open.env = env;
  open.pickle_mode = options.allow_opaque ? PickleMode::kInspect : PickleMode::kStrict;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open), StrCat("reading ", src));

  ConvertReport report;
  ChunkProgress progress(options.progress);
  std::vector<dcp::EntryToWrite> entries;
  CommonPlan common;
  std::unique_ptr<MegatronView> view;  // outlives the write: its entries read through it
  if (const DcpReader* d = reader->dcp_view()) {
    CKPT_RETURN_IF_ERROR(FromDcp(*d, src, wo.version, options, env, &progress, &entries, &common,
                                 &wo.carried_config, &report));
    if (!d->metadata().nd_reformulated_shapes.empty() && reader->kind() == SourceKind::kTorchDist) {
      // Megatron's N-D flattened optimizer tensors: re-indexed in model space.
      CKPT_ASSIGN_OR_RETURN(TorchDistSource ts,
                            TorchDistFromReader(std::move(reader), src, env, "to=\"torch_dist\" converts"));
      CKPT_ASSIGN_OR_RETURN(view, MegatronView::OverTorchDist(std::move(ts)), StrCat("reading ", src));
      if (view->optimizer_layout() != OptimizerLayout::kFullyShardedModelSpace) {
        return UnimplementedError(StrCat(src, ": N-D flattened tensors (megatron-core <= 0.15) outside a "
                                         "fully_sharded_model_space optimizer state are not converted"));
      }
      CKPT_RETURN_IF_ERROR(OptimizerToModelSpace(*view, src, env, &entries, &common, wo.version));
      report.warnings.push_back(
          "optimizer state fully_sharded_model_space (N-D flattened, megatron-core <= 0.15) written as "
          "fully_reshardable: megatron-core >= 0.16 cannot load flattened tensors");
    }
  } else if (const torch::TorchFile* tf = reader->torch_file();
             tf != nullptr && tf->root() != nullptr && tf->root()->kind == pickle::Kind::kDict) {
    CKPT_RETURN_IF_ERROR(FromTorchStateDict(*reader, *tf, src, wo.version, &progress, &entries, &common));
  } else {
    // Safetensors, sharded sets, a torch.save whose root is not a dict: flat
    // tensors, an empty common dict.
    CKPT_ASSIGN_OR_RETURN(entries, FlatTensorEntries(*reader, src, progress.AsCallback()));
    for (const ObjectInfo& o : reader->objects()) {
      report.warnings.push_back(StrCat("dropped non-tensor object ", Quote(o.key), " (", o.type,
                                       "): the common state of a ", reader->format(),
                                       " source whose root is not a dict is empty"));
    }
    const CoreVersion v = wo.version;
    common.write = [v](ByteSink* sink) {
      return megatron::WriteCommonState(v, nullptr, CommonSource::kDict, nullptr, sink);
    };
  }

  uint64_t total = 0;
  for (const dcp::EntryToWrite& e : entries) {
    if (e.type != dcp::EntryType::kTensor) continue;
    uint64_t n = DTypeSize(e.dtype);
    for (int64_t s : e.size) n *= static_cast<uint64_t>(s);
    total += n;
    ++report.tensors;
  }
  progress.set_total(total);
  CKPT_ASSIGN_OR_RETURN(TorchDistWriteReport r,
                        WriteTorchDistCheckpoint(env, dst, std::move(entries), common.write, wo));
  report.files = std::move(r.files);
  report.data_files = r.data_files;
  report.direct_io_files = r.direct_io_files;
  report.bytes = total;
  return report;
}


}  // namespace ckpt::internal_convert
