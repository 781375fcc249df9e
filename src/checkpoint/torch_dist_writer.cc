// WriteTorchDistCheckpoint: publishing a Megatron-Core torch_dist checkpoint.
#include "checkpoint/torch_dist_writer.h"

#include <optional>

#include "checkpoint/dcp_writer.h"
#include "checkpoint/readers.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

using megatron::CoreVersion;

Status WriteText(Env* env, const std::string& path, const std::string& text) {
  return WriteFileAtomically(env, path, [&](WritableFile* f) { return f->Append(text); });
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
  std::optional<std::string> kept_tracker;  // the text of a tracker naming another complete iteration
  if (options.tracker && env->FileExists(tracker_path)) {
    auto text = ReadSmall(env, tracker_path, 4096);
    auto old = text.ok() ? megatron::ParseTracker(*text, tracker_path) : Result<megatron::Tracker>(text.status());
    // A tracker naming another iteration still names a complete checkpoint: keep it until ours replaces it.
    if (!old.ok() || megatron::IterationDirName(*old) == megatron::IterationDirName(*options.tracker)) {
      CKPT_RETURN_IF_ERROR(env->RemoveFile(tracker_path), "removing the tracker naming the folder being replaced");
      removed = true;
    } else {
      kept_tracker = *text;
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
    if (!s.ok()) {
      // The write may have failed before its rename (the kept tracker still
      // names the earlier, complete iteration: leave it) or after it
      // (directory sync): then ours is there, and the earlier one comes back.
      Result<std::string> now = ReadSmall(env, tracker_path, 4096);
      if (now.ok() && *now == tracker_text) {
        if (kept_tracker) {
          WriteText(env, tracker_path, *kept_tracker).IgnoreError();
        } else {
          env->RemoveFile(tracker_path).IgnoreError();
        }
      }
      return fail("", s.WithContext(StrCat("writing ", tracker_path)));
    }
    report.files.push_back(tracker_path);
  }
  return report;
}

}  // namespace ckpt::internal_checkpoint
