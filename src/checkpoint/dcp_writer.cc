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

Result<DcpWriteReport> WriteDcpFiles(Env* env, const std::string& dir, const std::string& report_dir,
                                     std::span<const dcp::EntryToWrite> entries,
                                     const dcp::DcpWriteOptions& options) {
  CKPT_ASSIGN_OR_RETURN(std::vector<dcp::PlannedFile> plan, dcp::PlanDcpWrite(entries, options));
  const std::string md_path = JoinPath(dir, dcp::kMetadataFileName);
  // Each file's items and content digest, filled by its own task.
  std::vector<std::vector<dcp::WrittenItem>> per_file(plan.size());
  std::vector<uint64_t> digests(plan.size(), dcp::kFnvOffset);
  std::vector<engine::FileToWrite> files(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    files[i].name = plan[i].name;
    files[i].fill = [&, i](ByteSink* out) {
      return dcp::WriteDcpDataFile(entries, plan[i], out, &per_file[i], &digests[i]);
    };
  }
  engine::WriteFilesOptions wopts;
  wopts.threads = options.parallel ? std::max<int64_t>(options.thread_count, 1) : 1;
  CKPT_ASSIGN_OR_RETURN(std::vector<uint64_t> sizes, engine::WriteFiles(env, dir, files, wopts, report_dir));

  DcpWriteReport report;
  auto cleanup = [&]() {
    for (size_t i = plan.size(); i-- > 0;) env->RemoveFile(JoinPath(dir, plan[i].name)).IgnoreError();
  };
  std::vector<dcp::WrittenItem> written;
  std::map<std::string, std::vector<dcp::WrittenItem>> by_prefix;  // the manifests' items
  for (size_t i = 0; i < plan.size(); ++i) {
    for (dcp::WrittenItem& w : per_file[i]) {
      by_prefix[dcp::DataFilePrefix(plan[i].name)].push_back(w);
      written.push_back(std::move(w));
    }
    report.files.push_back(JoinPath(report_dir, plan[i].name));
    report.items += plan[i].items.size();
    report.bytes += sizes[i];
  }
  // The checksum manifests (format/dcp/manifest.h), after the data, before `.metadata`.
  std::vector<std::string> manifests;
  for (const auto& [prefix, items] : by_prefix) {
    const std::string name = dcp::ManifestFileName(prefix);
    const std::string text = dcp::SerializeManifestOf(items);
    Status s = WriteFileAtomically(env, JoinPath(dir, name), [&](WritableFile* out) { return out->Append(text); });
    manifests.push_back(name);
    if (!s.ok()) {
      for (const std::string& m : manifests) env->RemoveFile(JoinPath(dir, m)).IgnoreError();
      cleanup();
      return s.WithContext(StrCat("writing ", JoinPath(report_dir, name)));
    }
    report.files.push_back(JoinPath(report_dir, name));
  }
  Result<std::string> md = dcp::SerializeDcpMetadata(entries, written, options, dcp::CombineFileDigests(digests));
  if (!md.ok()) {
    for (const std::string& m : manifests) env->RemoveFile(JoinPath(dir, m)).IgnoreError();
    cleanup();
    return md.status();
  }
  Status s = WriteFileAtomically(env, md_path, [&](WritableFile* out) { return out->Append(*md); });
  if (!s.ok()) {
    env->RemoveFile(md_path).IgnoreError();
    for (const std::string& m : manifests) env->RemoveFile(JoinPath(dir, m)).IgnoreError();
    cleanup();
    return s.WithContext(StrCat("writing ", JoinPath(report_dir, dcp::kMetadataFileName)));
  }
  report.files.push_back(JoinPath(report_dir, dcp::kMetadataFileName));
  return report;
}

}  // namespace ckpt::internal_checkpoint
