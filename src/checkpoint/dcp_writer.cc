// WriteDcpCheckpoint: the folder staged beside the destination (engine::
// FolderCommit), data files first (concurrently, one task per file),
// .metadata last, then switched over in one step.
#include "checkpoint/dcp_writer.h"

#include <algorithm>
#include <map>

#include "ckpt/engine.h"
#include "format/dcp/manifest.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {

bool IsDcpFileName(std::string_view name) {
  return name == dcp::kMetadataFileName || (name.size() > 7 && name.substr(name.size() - 7) == ".distcp") ||
         dcp::IsManifestFileName(name);
}

Result<DcpWriteReport> WriteDcpCheckpoint(Env* env, const std::string& dir,
                                          std::span<const dcp::EntryToWrite> entries,
                                          const dcp::DcpWriteOptions& options) {
  if (env == nullptr) env = Env::Default();
  CKPT_RETURN_IF_ERROR(dcp::PlanDcpWrite(entries, options).status());
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<engine::FolderCommit> commit, engine::FolderCommit::Begin(env, dir));
  CKPT_ASSIGN_OR_RETURN(DcpWriteReport report, WriteDcpFiles(env, commit->staging(), dir, entries, options));
  CKPT_RETURN_IF_ERROR(commit->CarryOver(IsDcpFileName));
  CKPT_RETURN_IF_ERROR(commit->Commit());
  return report;
}

Result<DcpDataFiles> WriteDcpDataFiles(Env* env, const std::string& dir, const std::string& report_dir,
                                       std::span<const dcp::EntryToWrite> entries,
                                       std::span<const dcp::PlannedFile> plan, int64_t threads,
                                       bool direct_io) {
  DcpDataFiles out;
  out.items.resize(plan.size());
  out.digests.assign(plan.size(), dcp::kFnvOffset);
  // Each file's items and content digest, filled by its own task.
  std::vector<engine::FileToWrite> files(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    files[i].name = plan[i].name;
    files[i].fill = [&, i](ByteSink* sink) {
      return dcp::WriteDcpDataFile(entries, plan[i], sink, &out.items[i], &out.digests[i]);
    };
  }
  engine::WriteFilesOptions wopts;
  wopts.threads = threads;
  wopts.direct_io = direct_io;
  CKPT_ASSIGN_OR_RETURN(engine::WrittenFiles written, engine::WriteFiles(env, dir, files, wopts, report_dir));
  out.sizes = std::move(written.sizes);
  out.direct_io_files = written.direct_io_files;
  // The checksum manifests (format/dcp/manifest.h), one per set of data files
  // of one prefix, after their data.
  std::map<std::string, std::vector<dcp::WrittenItem>> by_prefix;
  for (size_t i = 0; i < plan.size(); ++i) {
    std::vector<dcp::WrittenItem>& items = by_prefix[dcp::DataFilePrefix(plan[i].name)];
    items.insert(items.end(), out.items[i].begin(), out.items[i].end());
  }
  for (const auto& [prefix, items] : by_prefix) {
    const std::string name = dcp::ManifestFileName(prefix);
    const std::string text = dcp::SerializeManifestOf(items);
    out.manifests.push_back(name);
    Status s = WriteFileAtomically(env, JoinPath(dir, name), [&](WritableFile* f) { return f->Append(text); });
    if (!s.ok()) {
      RemoveDcpDataFiles(env, dir, plan, out);
      return s.WithContext(StrCat("writing ", JoinPath(report_dir, name)));
    }
  }
  return out;
}

void RemoveDcpDataFiles(Env* env, const std::string& dir, std::span<const dcp::PlannedFile> plan,
                        const DcpDataFiles& written) {
  for (const std::string& m : written.manifests) env->RemoveFile(JoinPath(dir, m)).IgnoreError();
  for (size_t i = plan.size(); i-- > 0;) env->RemoveFile(JoinPath(dir, plan[i].name)).IgnoreError();
}

Result<DcpWriteReport> WriteDcpFiles(Env* env, const std::string& dir, const std::string& report_dir,
                                     std::span<const dcp::EntryToWrite> entries,
                                     const dcp::DcpWriteOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::vector<dcp::PlannedFile> plan, dcp::PlanDcpWrite(entries, options));
  CKPT_ASSIGN_OR_RETURN(
      DcpDataFiles data,
      WriteDcpDataFiles(env, dir, report_dir, entries, plan,
                        options.parallel ? std::max<int64_t>(options.thread_count, 1) : 1, options.direct_io));
  DcpWriteReport report;
  report.data_files = plan.size();
  report.direct_io_files = data.direct_io_files;
  std::vector<dcp::WrittenItem> written;
  for (size_t i = 0; i < plan.size(); ++i) {
    written.insert(written.end(), data.items[i].begin(), data.items[i].end());
    report.files.push_back(JoinPath(report_dir, plan[i].name));
    report.items += plan[i].items.size();
    report.bytes += data.sizes[i];
  }
  for (const std::string& m : data.manifests) report.files.push_back(JoinPath(report_dir, m));
  const std::string md_path = JoinPath(dir, dcp::kMetadataFileName);
  Result<std::string> md =
      dcp::SerializeDcpMetadata(entries, written, options, dcp::CombineFileDigests(data.digests));
  Status s = md.ok() ? WriteFileAtomically(env, md_path, [&](WritableFile* out) { return out->Append(*md); })
                     : md.status();
  if (!s.ok()) {
    env->RemoveFile(md_path).IgnoreError();
    RemoveDcpDataFiles(env, dir, plan, data);
    return md.ok() ? s.WithContext(StrCat("writing ", JoinPath(report_dir, dcp::kMetadataFileName))) : s;
  }
  report.files.push_back(JoinPath(report_dir, dcp::kMetadataFileName));
  return report;
}

}  // namespace ckpt::internal_checkpoint
