// WriteTorchDistCheckpoint and convert --to torch_dist.
#include "checkpoint/torch_dist_writer.h"

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include "checkpoint/dcp_entries.h"
#include "checkpoint/dcp_reader.h"
#include "checkpoint/dcp_writer.h"
#include "checkpoint/readers.h"
#include "checkpoint/torch_rewrite.h"
#include "ckpt/checkpoint.h"
#include "format/torch/torch_file.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

using megatron::CommonSource;
using megatron::CoreVersion;

std::string Normal(const std::string& p) {
  std::string n = std::filesystem::path(p).lexically_normal().string();
  while (n.size() > 1 && n.back() == '/') n.pop_back();
  return n;
}

Status WriteText(Env* env, const std::string& path, const std::string& text) {
  return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
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
// layout, bytes items and planner paths, as --to dcp keeps them; the common
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
    // again, as --to dcp copies bytes entries.
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
        CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, d.DataFile(item.relative_path));
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

}  // namespace

Result<TorchDistWriteReport> WriteTorchDistCheckpoint(Env* env, const std::string& dst,
                                                      std::vector<dcp::EntryToWrite> entries,
                                                      std::function<Status(ByteSink*)> write_common,
                                                      const TorchDistWriteOptions& options) {
  if (env == nullptr) env = Env::Default();
  const CoreVersion v = options.version;
  // 1. Everything that can be refused, before touching disk.
  for (const dcp::EntryToWrite& e : entries) {
    if (e.key == megatron::kCommonStateKey) {
      return InvalidArgumentError(StrCat("entry ", Quote(e.key), " is the common state's own key"));
    }
  }
  if (!write_common) return InvalidArgumentError("no common state writer");
  CKPT_ASSIGN_OR_RETURN(std::string config, megatron::SerializeConfig(v, options.carried_config));
  std::string tracker_text;
  if (options.tracker) {
    CKPT_ASSIGN_OR_RETURN(tracker_text, megatron::SerializeTracker(*options.tracker));
  }
  if (megatron::CommonStateInDcp(v)) {
    // dist_checkpointing.save (0.19): sharded_state_dict["common_state"] = ShardedObject(
    //   "common_state", state_dict, (1,), (0,), replica_id=rank) after everything else.
    dcp::EntryToWrite c;
    c.key = megatron::kCommonStateKey;
    c.type = dcp::EntryType::kBytes;
    c.write_bytes = write_common;
    entries.push_back(std::move(c));
  }
  dcp::DcpWriteOptions wo;
  wo.thread_count = options.thread_count;
  CKPT_RETURN_IF_ERROR(dcp::PlanDcpWrite(entries, wo).status());

  TorchDistWriteReport report;
  const std::string ckpt_dir = options.tracker ? JoinPath(dst, megatron::IterationDirName(*options.tracker)) : dst;
  report.checkpoint_dir = ckpt_dir;
  for (const std::string& p : {dst, ckpt_dir}) {
    if (env->FileExists(p) && !env->IsDirectory(p)) {
      return InvalidArgumentError(StrCat("destination ", p, " exists and is not a folder"));
    }
  }
  CKPT_RETURN_IF_ERROR(env->CreateDirs(ckpt_dir));

  // 2. Retract the old commit points of what is about to be replaced.
  const std::string tracker_path = JoinPath(dst, megatron::kTrackerFileName);
  const std::string config_path = JoinPath(ckpt_dir, megatron::kConfigFileName);
  const std::string common_path = JoinPath(ckpt_dir, megatron::kCommonFileName);
  // core >= 0.18's optional SHA-256 manifest of the folder: stale once anything is rewritten.
  const std::string integrity_path = JoinPath(ckpt_dir, "integrity.json");
  bool removed = false;
  if (options.tracker && env->FileExists(tracker_path)) {
    auto text = ReadSmall(env, tracker_path, 4096);
    auto old = text.ok() ? megatron::ParseTracker(*text, tracker_path) : Result<megatron::Tracker>(text.status());
    // A tracker naming another iteration still names a complete checkpoint: keep it until ours replaces it.
    if (!old.ok() || megatron::IterationDirName(*old) == megatron::IterationDirName(*options.tracker)) {
      CKPT_RETURN_IF_ERROR(env->RemoveFile(tracker_path), "removing the tracker naming the folder being replaced");
      removed = true;
    }
  }
  for (const std::string& p : {config_path, common_path, integrity_path}) {
    if (env->FileExists(p)) {
      CKPT_RETURN_IF_ERROR(env->RemoveFile(p), "removing the previous checkpoint's files");
      removed = true;
    }
  }
  if (removed) {
    CKPT_RETURN_IF_ERROR(env->SyncDir(ckpt_dir));
    if (options.tracker) CKPT_RETURN_IF_ERROR(env->SyncDir(dst));
  }

  // 3. Publish; on failure remove what was published, newest (the commit points) first.
  auto fail = [&](const std::string& path, Status s) -> Status {
    // WriteFileAtomically can fail after its rename (directory sync): remove `path` too.
    if (!path.empty()) env->RemoveFile(path).IgnoreError();
    for (auto it = report.files.rbegin(); it != report.files.rend(); ++it) env->RemoveFile(*it).IgnoreError();
    return path.empty() ? s : s.WithContext(StrCat("writing ", path));
  };
  if (!megatron::CommonStateInDcp(v)) {
    Status s = WriteFileAtomically(env, common_path, [&](WritableFile* f) { return write_common(f); });
    if (!s.ok()) return fail(common_path, s);
    report.files.push_back(common_path);
  }
  Result<DcpWriteReport> dcp = WriteDcpCheckpoint(env, ckpt_dir, entries, wo);
  if (!dcp.ok()) return fail("", dcp.status());  // WriteDcpCheckpoint removed its own files
  for (std::string& f : dcp->files) report.files.push_back(std::move(f));
  report.bytes = dcp->bytes;
  Status s = WriteText(env, config_path, config);
  if (!s.ok()) return fail(config_path, s);
  report.files.push_back(config_path);
  if (options.tracker) {
    s = WriteText(env, tracker_path, tracker_text);
    if (!s.ok()) return fail(tracker_path, s);
    report.files.push_back(tracker_path);
  }
  return report;
}

Result<ConvertReport> ConvertToTorchDist(const std::string& src, const std::string& dst,
                                         const ConvertOptions& options, Env* env) {
  if (options.max_shard_size > 0) {
    return InvalidArgumentError("--max-shard-size does not apply to --to torch_dist (use --thread-count)");
  }
  if (EndsWith(dst, ".safetensors") || EndsWith(dst, ".pt") || EndsWith(dst, ".bin") || EndsWith(dst, ".pth") ||
      EndsWith(dst, ".json")) {
    return InvalidArgumentError(
        StrCat("destination ", dst, " names a file, but a torch_dist checkpoint is a folder (name a folder)"));
  }
  TorchDistWriteOptions wo;
  wo.thread_count = options.thread_count;
  if (!options.megatron_version.empty()) {
    CKPT_ASSIGN_OR_RETURN(wo.version, megatron::ParseCoreVersion(options.megatron_version));
  }
  if (options.iteration && *options.iteration < 0) {
    return InvalidArgumentError(StrCat("--iteration ", *options.iteration, " is negative"));
  }

  // A Megatron-LM root in, a Megatron-LM root out (its iteration unless --iteration).
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
  if (const auto* d = dynamic_cast<const DcpReader*>(reader.get())) {
    CKPT_RETURN_IF_ERROR(FromDcp(*d, src, wo.version, options, env, &progress, &entries, &common,
                                 &wo.carried_config, &report));
  } else if (const torch::TorchFile* tf = TorchFileOf(*reader);
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
  report.bytes = total;
  return report;
}

}  // namespace ckpt::internal_checkpoint
