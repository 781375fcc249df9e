// WriteTorchDistCheckpoint: publishing a Megatron-Core torch_dist checkpoint.
#include "checkpoint/torch_dist_writer.h"

#include <memory>
#include <optional>
#include <string_view>

#include "checkpoint/dcp_writer.h"
#include "checkpoint/readers.h"
#include "ckpt/engine.h"
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
  wo.direct_io = options.direct_io;
  CKPT_RETURN_IF_ERROR(dcp::PlanDcpWrite(entries, wo).status());

  TorchDistWriteReport report;
  const std::string ckpt_dir = options.tracker ? JoinPath(dst, megatron::IterationDirName(*options.tracker)) : dst;
  report.checkpoint_dir = ckpt_dir;
  if (env->FileExists(dst) && !env->IsDirectory(dst)) {
    return InvalidArgumentError(StrCat("destination ", dst, " exists and is not a folder"));
  }
  const std::string tracker_path = JoinPath(dst, megatron::kTrackerFileName);
  const std::string config_path = JoinPath(ckpt_dir, megatron::kConfigFileName);
  const std::string common_path = JoinPath(ckpt_dir, megatron::kCommonFileName);

  // 2. Stage the folder beside the destination; an older checkpoint there
  // (and the tracker naming it) stays intact until the switch.
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<engine::FolderCommit> commit, engine::FolderCommit::Begin(env, ckpt_dir));
  const std::string stage = commit->staging();
  if (!megatron::CommonStateInDcp(v)) {
    Status s = WriteFileAtomically(env, JoinPath(stage, megatron::kCommonFileName),
                                   [&](WritableFile* f) { return write_common(f); });
    if (!s.ok()) return s.WithContext(StrCat("writing ", common_path));
    report.files.push_back(common_path);
  }
  CKPT_ASSIGN_OR_RETURN(DcpWriteReport dcp, WriteDcpFiles(env, stage, ckpt_dir, entries, wo));
  for (std::string& f : dcp.files) report.files.push_back(std::move(f));
  report.bytes = dcp.bytes;
  report.data_files = dcp.data_files;
  report.direct_io_files = dcp.direct_io_files;
  Status s = WriteText(env, JoinPath(stage, megatron::kConfigFileName), config);
  if (!s.ok()) return s.WithContext(StrCat("writing ", config_path));
  report.files.push_back(config_path);
  // 3. Other files of the folder carried over (an older checkpoint's files,
  // core >= 0.18's integrity.json manifest included, are not), the switch,
  // then the tracker (the root's commit point).
  CKPT_RETURN_IF_ERROR(commit->CarryOver([](std::string_view name) {
    return IsDcpFileName(name) || name == megatron::kCommonFileName || name == megatron::kConfigFileName ||
           name == "integrity.json";
  }));
  CKPT_RETURN_IF_ERROR(commit->Commit());
  if (options.tracker) {
    s = WriteText(env, tracker_path, tracker_text);
    if (!s.ok()) {
      // The iteration folder is complete and in place; the tracker names
      // what it named before (or, after a failed directory sync, this one).
      return s.WithContext(StrCat("writing ", tracker_path, " (", ckpt_dir, " is complete and in place)"));
    }
    report.files.push_back(tracker_path);
  }
  return report;
}

}  // namespace ckpt::internal_checkpoint
