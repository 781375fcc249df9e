// Convert: stream a checkpoint from any readable format into safetensors or
// torch.save files, one tensor at a time, or hand it to the DCP, torch_dist
// and hf converters. Sources are told apart by CheckpointReader::kind() and
// its typed views.
#include "ckpt/convert.h"

#include <fmt/format.h>

#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/readers.h"
#include "checkpoint/torch_rewrite.h"
#include "ckpt/checkpoint.h"
#include "ckpt/engine.h"
#include "ckpt/writer.h"
#include "convert/dcp_entries.h"
#include "convert/dcp_from_torch.h"
#include "convert/dcp_to_torch.h"
#include "convert/hf.h"
#include "convert/legacy.h"
#include "convert/torch_dist.h"
#include "format/safetensors/safetensors.h"
#include "util/strings.h"

namespace ckpt {
namespace {

using internal_checkpoint::EndsWith;

bool IsTorchFileName(std::string_view s) {
  return EndsWith(s, ".pt") || EndsWith(s, ".bin") || EndsWith(s, ".pth");
}

// safetensors metadata to write: the source's own when it is a safetensors
// file with string metadata, else {"format": "pt"} as transformers writes.
std::map<std::string, std::string> OutputMetadata(const CheckpointReader& reader) {
  std::map<std::string, std::string> md;
  if (reader.kind() == SourceKind::kSafetensors) {
    nlohmann::json d = reader.Details();
    if (d.contains("metadata") && d["metadata"].is_object()) {
      for (auto it = d["metadata"].begin(); it != d["metadata"].end(); ++it) {
        if (it.value().is_string()) md[it.key()] = it.value().get<std::string>();
      }
      return md;
    }
  }
  md["format"] = "pt";
  return md;
}

// to=dcp: one DCP entry per source tensor (one chunk), or for a DCP source
// its own entries, chunks, bytes items and planner paths.
Result<ConvertReport> ConvertToDcp(const CheckpointReader& reader, const std::string& src,
                                   const std::string& dst, const ConvertOptions& options, Env* env) {
  if (EndsWith(dst, ".safetensors") || IsTorchFileName(dst) || EndsWith(dst, ".json")) {
    return InvalidArgumentError(
        StrCat("destination ", dst, " names a file, but a DCP checkpoint is a folder (name a folder)"));
  }
  const std::vector<TensorInfo>& tensors = reader.tensors();
  uint64_t total = 0;
  for (const TensorInfo& t : tensors) total += t.nbytes;
  internal_convert::ChunkProgress progress(options.progress);
  progress.set_total(total);
  const internal_convert::ChunkDone on_chunk = progress.AsCallback();
  ConvertReport report;
  std::vector<dcp::EntryToWrite> entries;

  if (const internal_checkpoint::DcpReader* d = reader.dcp_view()) {
    if (reader.kind() == SourceKind::kTorchDist) {
      report.warnings.push_back(StrCat(
          "the output is a plain DCP folder: the ", reader.format(),
          " files around .metadata (metadata.json, common.pt, the iteration tracker) and .metadata's extra "
          "attributes are not written (to=\"torch_dist\" writes them)"));
    }
    CKPT_ASSIGN_OR_RETURN(entries, internal_convert::DcpSourceEntries(*d, src, on_chunk));
  } else if (const torch::TorchFile* tf = reader.torch_file();
             tf != nullptr && tf->root() != nullptr && tf->root()->kind == pickle::Kind::kDict) {
    // torch.save of a state dict: nesting and non-tensor values kept, as dcp.save flattens them.
    auto r = internal_convert::TorchStateDictToDcpEntries(*tf, reader, on_chunk);
    if (!r.ok()) return r.status().WithContext(StrCat("reading ", src));
    entries = std::move(*r);
  } else {
    CKPT_ASSIGN_OR_RETURN(entries, internal_convert::FlatTensorEntries(reader, src, on_chunk));
    for (const ObjectInfo& o : reader.objects()) {
      report.warnings.push_back(StrCat("dropped non-tensor object ", Quote(o.key), " (", o.type,
                                       "): to=\"dcp\" writes tensors only from a ", reader.format(), " source"));
    }
  }

  dcp::DcpWriteOptions wo;
  wo.thread_count = options.thread_count;
  wo.direct_io = options.direct_io;
  if (!options.dcp_metadata_layout.empty()) {
    CKPT_ASSIGN_OR_RETURN(wo.metadata_layout, dcp::ParseMetadataLayout(options.dcp_metadata_layout),
                          "dcp_metadata_layout");
  }
  CKPT_ASSIGN_OR_RETURN(internal_checkpoint::DcpWriteReport r,
                        internal_checkpoint::WriteDcpCheckpoint(env, dst, entries, wo));
  report.files = std::move(r.files);
  report.data_files = r.data_files;
  report.direct_io_files = r.direct_io_files;
  report.tensors = tensors.size();
  report.bytes = total;
  return report;
}

// Options that only some targets read, refused (naming the option) for the
// others rather than ignored.
// Whether src opens as a legacy Megatron-LM checkpoint (mp_rank_* folders).
bool IsLegacySource(Env* env, const std::string& src) {
  OpenOptions o;
  o.env = env;
  o.pickle_mode = PickleMode::kInspect;
  Result<std::unique_ptr<CheckpointReader>> r = OpenCheckpoint(src, o);
  return r.ok() && (*r)->kind() == SourceKind::kLegacy;
}

Status CheckOptionsApply(const ConvertOptions& options) {
  const TargetFormat to = options.to;
  if (!options.megatron_version.empty() && to != TargetFormat::kTorchDist) {
    return InvalidArgumentError(StrCat("megatron_version applies only with to=\"torch_dist\" (not to=\"",
                                       TargetFormatName(to), "\")"));
  }
  if (options.iteration && to != TargetFormat::kTorchDist && to != TargetFormat::kLegacy) {
    return InvalidArgumentError(StrCat("iteration applies only with to=\"torch_dist\" or to=\"legacy\" (not to=\"",
                                       TargetFormatName(to), "\")"));
  }
  if (!options.dcp_metadata_layout.empty() && to != TargetFormat::kDcp) {
    return InvalidArgumentError(
        StrCat("dcp_metadata_layout applies only with to=\"dcp\" (not to=\"", TargetFormatName(to), "\")"));
  }
  if (options.max_shard_size > 0 && (to == TargetFormat::kDcp || to == TargetFormat::kTorchDist)) {
    return InvalidArgumentError(
        StrCat("max_shard_size does not apply with to=\"", TargetFormatName(to), "\" (use thread_count)"));
  }
  if (to != TargetFormat::kHf &&
      (!options.hf_config.empty() || !options.family.empty() || options.vocab_size || options.bin)) {
    return InvalidArgumentError(StrCat("hf_config, family, vocab_size and bin apply only with to=\"hf\" (not to=\"",
                                       TargetFormatName(to), "\")"));
  }
  if (to != TargetFormat::kTorchDist && (options.tp != 1 || options.pp != 1 || options.ep != 1 || options.etp ||
                                         options.megatron_layer_spec != "local" ||
                                         options.make_vocab_size_divisible_by != 128)) {
    return InvalidArgumentError(StrCat(
        "tp, pp, ep, etp, megatron_layer_spec and make_vocab_size_divisible_by apply only with to=\"torch_dist\" "
        "from an HF model folder (not to=\"", TargetFormatName(to), "\")"));
  }
  if (options.no_optimizer && to != TargetFormat::kLegacy) {
    return InvalidArgumentError(StrCat("no_optimizer applies only with to=\"legacy\" (not to=\"", TargetFormatName(to),
                                       "\")"));
  }
  if (!options.dtype.empty() && to != TargetFormat::kHf && to != TargetFormat::kTorchDist) {
    return InvalidArgumentError(StrCat("dtype applies only with to=\"hf\" or an HF model to=\"torch_dist\""));
  }
  return OkStatus();
}

}  // namespace

Result<ConvertReport> Convert(const std::string& src, const std::string& dst,
                              const ConvertOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  if (static_cast<size_t>(options.to) >= kTargetFormatCount) {
    return InvalidArgumentError(StrCat("to: unknown target ", static_cast<int>(options.to)));
  }
  CKPT_RETURN_IF_ERROR(CheckOptionsApply(options));
  switch (options.to) {
    case TargetFormat::kTorchDist:
      // An HF model folder (config.json naming a supported architecture) is a
      // model conversion; anything else keeps its tensors' own names.
      if (internal_convert::IsHfModelFolder(env, src)) {
        return internal_convert::ConvertHfToTorchDist(src, dst, options, env);
      }
      if (options.tp != 1 || options.pp != 1 || options.ep != 1 || options.etp || !options.dtype.empty() ||
          options.megatron_layer_spec != "local" || options.make_vocab_size_divisible_by != 128) {
        return InvalidArgumentError(StrCat(
            src, " is not an HF model folder (config.json naming a supported architecture): tp, pp, ep, etp, dtype, "
                 "megatron_layer_spec and make_vocab_size_divisible_by apply to HF models only"));
      }
      if (IsLegacySource(env, src)) return internal_convert::ConvertLegacyToTorchDist(src, dst, options, env);
      return internal_convert::ConvertToTorchDist(src, dst, options, env);
    case TargetFormat::kHf:
      return internal_convert::ConvertToHf(src, dst, options, env);
    case TargetFormat::kLegacy:
      return internal_convert::ConvertToLegacy(src, dst, options, env);
    case TargetFormat::kDcp:
    case TargetFormat::kSafetensors:
    case TargetFormat::kTorch:
      break;  // below
  }
  if (options.to == TargetFormat::kDcp) {
    OpenOptions open;
    open.env = env;
    open.pickle_mode = options.allow_opaque ? PickleMode::kInspect : PickleMode::kStrict;
    CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open),
                          StrCat("reading ", src));
    return ConvertToDcp(*reader, src, dst, options, env);
  }
  const bool to_st = options.to == TargetFormat::kSafetensors;
  // A destination named like the other format is a mistake, not a folder name.
  if (to_st ? IsTorchFileName(dst) : EndsWith(dst, ".safetensors")) {
    return InvalidArgumentError(StrCat("destination ", dst, " names a ", to_st ? "torch.save" : "safetensors",
                                       " file, but the target is to=\"", TargetFormatName(options.to),
                                       "\" (change the target or the name)"));
  }
  OpenOptions open;
  open.env = env;
  open.pickle_mode = options.allow_opaque ? PickleMode::kInspect : PickleMode::kStrict;
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader, OpenCheckpoint(src, open),
                        StrCat("reading ", src));
  // A legacy Megatron checkpoint converts in model space: the global tensors
  // (and optimizer states) a torch_dist checkpoint of it would hold, not its
  // per-rank shards.
  if (reader->kind() == SourceKind::kLegacy) {
    reader.reset();
    CKPT_ASSIGN_OR_RETURN(reader, OpenModelSpace(src, open), StrCat("reading ", src));
  }
  const std::vector<TensorInfo>& tensors = reader->tensors();

  ConvertReport report;
  // Where the output goes.
  const bool single_name = to_st ? EndsWith(dst, ".safetensors") : IsTorchFileName(dst);
  if (options.max_shard_size > 0 && single_name) {
    return InvalidArgumentError(StrCat(
        "destination ", dst, ": with max_shard_size the destination is a folder, not a file"));
  }
  // A folder destination is built beside itself and switched over whole
  // (engine::FolderCommit): an older save there stays intact until the new
  // one is complete, no shard of it survives, other files are carried over.
  std::unique_ptr<engine::FolderCommit> commit;
  std::string dir = single_name ? Dirname(dst) : dst;  // where the files are written
  if (!single_name) {
    if (env->FileExists(dst) && !env->IsDirectory(dst)) {
      return InvalidArgumentError(StrCat("destination ", dst, " exists and is not a folder (name a ",
                                         to_st ? ".safetensors" : ".pt/.bin", " file, or a folder)"));
    }
    CKPT_ASSIGN_OR_RETURN(commit, engine::FolderCommit::Begin(env, dst));
    dir = commit->staging();
  } else if (!env->IsDirectory(dir)) {
    return NotFoundError(StrCat("destination folder ", dir, " does not exist"));
  }
  // The path a file written at `path` (in `dir`) has once published.
  auto final_path = [&](const std::string& path) { return commit ? JoinPath(dst, Basename(path)) : path; };
  auto publish = [&]() -> Status {
    if (!commit) return OkStatus();
    // Weight files of an older save of this kind (other shard counts, the
    // single / sharded form) are replaced; other files carried over.
    CKPT_RETURN_IF_ERROR(commit->CarryOver(
        [bin = !to_st](std::string_view name) { return internal_convert::IsHfWeightFileName(name, bin); }));
    return commit->Commit();
  };

  uint64_t total = 0;
  for (const TensorInfo& t : tensors) total += t.nbytes;

  // torch -> torch into one file keeps the whole object tree (objects,
  // shared storages, views) instead of flattening it.
  if (!to_st && options.max_shard_size == 0 && reader->kind() == SourceKind::kTorchFile) {
    std::string path = single_name ? dst : JoinPath(dir, "pytorch_model.bin");
    const bool existed = env->FileExists(path);
    Status s = internal_checkpoint::RewriteTorchFile(*reader, path, env);
    if (!s.ok()) {
      // A failure after the rename (directory sync) leaves the new file in place.
      if (!existed) env->RemoveFile(path).IgnoreError();
      return s;  // WriteFileAtomically names the path
    }
    CKPT_RETURN_IF_ERROR(publish());
    report.files.push_back(final_path(path));
    report.tensors = tensors.size();
    report.bytes = total;
    if (options.progress) options.progress(total, total);
    return report;
  }

  // DCP (and Megatron torch_dist) -> torch into one file: the nested state
  // dict with its non-tensor objects, as dcp_to_torch_save writes it.
  if (!to_st && options.max_shard_size == 0) {
    if (const internal_checkpoint::DcpReader* dcp = reader->dcp_view()) {
      std::string path = single_name ? dst : JoinPath(dir, "pytorch_model.bin");
      const bool existed = env->FileExists(path);
      internal_convert::DcpToTorchOptions o;
      o.env = env;
      o.mode = options.allow_opaque ? pickle::Mode::kInspect : pickle::Mode::kStrict;
      o.progress = options.progress;
      auto r = internal_convert::WriteDcpAsTorchSave(*dcp, path, o);
      if (!r.ok()) {
        if (!existed) env->RemoveFile(path).IgnoreError();
        return r.status();
      }
      CKPT_RETURN_IF_ERROR(publish());
      report.files.push_back(final_path(path));
      report.tensors = r->tensors;
      report.bytes = r->bytes;
      return report;
    }
  }

  // Flat outputs: validate every key and dtype before writing anything.
  std::set<std::string> seen;
  for (const TensorInfo& t : tensors) {
    if (!seen.insert(t.key).second) {
      return DataLossError(StrCat(src, ": two tensors flatten to the same key ", Quote(t.key)));
    }
    if (to_st && DTypeSafetensorsName(t.dtype).empty()) {
      return UnimplementedError(StrCat(src, ": tensor ", Quote(t.key), " has dtype ",
                                       DTypeName(t.dtype), ", which safetensors cannot hold"));
    }
  }

  for (const ObjectInfo& o : reader->objects()) {
    report.warnings.push_back(StrCat("dropped non-tensor object ", Quote(o.key), " (", o.type,
                                     "): ", to_st ? "safetensors" : "a flat torch state dict",
                                     " holds only tensors"));
  }

  // Shards (one shard when max_shard_size is 0).
  std::vector<safetensors::ShardTensor> st;
  st.reserve(tensors.size());
  for (const TensorInfo& t : tensors) st.push_back({t.key, t.nbytes, -1});
  safetensors::ShardPlanOptions plan_options;
  plan_options.max_shard_size = options.max_shard_size ? options.max_shard_size : UINT64_MAX;
  plan_options.prefix = to_st ? "model" : "pytorch_model";
  plan_options.extension = to_st ? ".safetensors" : ".bin";
  CKPT_ASSIGN_OR_RETURN(safetensors::ShardPlan plan, safetensors::PlanShards(st, plan_options));
  if (plan.shards.empty()) {
    // No tensors at all: still write one (empty) file, so the output exists and loads.
    plan.shards.push_back({plan_options.prefix + plan_options.extension, {}});
  }

  const std::map<std::string, std::string> metadata = OutputMetadata(*reader);
  uint64_t done = 0;
  // On failure, remove what this run published, newest first, plus the file
  // being written if this run created it: WriteFileAtomically fails after its
  // rename when the directory sync fails, leaving a complete-looking file
  // (an index naming shards we are about to remove, or a stray shard). A file
  // that existed before and failed before the rename keeps its old content.
  auto cleanup = [&](const std::string& failed, bool existed) {
    if (!existed) env->RemoveFile(failed).IgnoreError();
    for (auto it = report.files.rbegin(); it != report.files.rend(); ++it) {
      env->RemoveFile(*it).IgnoreError();
    }
  };
  for (const auto& [file_name, indices] : plan.shards) {
    std::string path = single_name ? dst : JoinPath(dir, file_name);
    std::vector<TensorToWrite> items;
    items.reserve(indices.size());
    for (size_t i : indices) {
      const TensorInfo& t = tensors[i];
      items.push_back({t.key, t.dtype, t.shape, [&reader, &options, &done, total, i, &t](ByteSink* sink) {
                         Status s = reader->ReadTensor(i, sink);
                         if (s.ok()) {
                           done += t.nbytes;
                           if (options.progress) options.progress(done, total);
                         }
                         return s;
                       }});
    }
    const bool existed = env->FileExists(path);
    Status s = to_st ? WriteSafetensorsFile(path, items, metadata, env)
                     : WriteTorchFile(path, items, env);
    if (!s.ok()) {
      cleanup(path, existed);
      return s;  // WriteFileAtomically names the path
    }
    report.files.push_back(path);
  }
  if (plan.shards.size() > 1) {
    CKPT_ASSIGN_OR_RETURN(std::string index_text, safetensors::SerializeIndex(plan.Index(st)));
    std::string index_path =
        JoinPath(dir, to_st ? "model.safetensors.index.json" : "pytorch_model.bin.index.json");
    const bool existed = env->FileExists(index_path);
    Status s = WriteFileAtomically(env, index_path, [&](WritableFile* f) { return f->Append(index_text); });
    if (!s.ok()) {
      cleanup(index_path, existed);
      return s;
    }
    report.files.push_back(index_path);
  }
  CKPT_RETURN_IF_ERROR(publish());
  for (std::string& f : report.files) f = final_path(f);
  report.tensors = tensors.size();
  report.bytes = total;
  return report;
}

}  // namespace ckpt
