// WriteDcpCheckpoint: data files first, .metadata last, each atomically.
#include "checkpoint/dcp_writer.h"

#include "util/strings.h"

namespace ckpt::internal_checkpoint {

Result<DcpWriteReport> WriteDcpCheckpoint(Env* env, const std::string& dir,
                                          std::span<const dcp::EntryToWrite> entries,
                                          const dcp::DcpWriteOptions& options) {
  if (env == nullptr) env = Env::Default();
  CKPT_ASSIGN_OR_RETURN(std::vector<dcp::PlannedFile> plan, dcp::PlanDcpWrite(entries, options));
  if (env->FileExists(dir) && !env->IsDirectory(dir)) {
    return InvalidArgumentError(StrCat("destination ", dir, " exists and is not a folder"));
  }
  CKPT_RETURN_IF_ERROR(env->CreateDirs(dir));
  const std::string md_path = JoinPath(dir, dcp::kMetadataFileName);
  if (env->FileExists(md_path)) {
    CKPT_RETURN_IF_ERROR(env->RemoveFile(md_path), "removing the previous checkpoint's .metadata");
  }

  DcpWriteReport report;
  auto cleanup = [&]() {
    for (auto it = report.files.rbegin(); it != report.files.rend(); ++it) env->RemoveFile(*it).IgnoreError();
  };
  std::vector<dcp::WrittenItem> written;
  uint64_t digest = dcp::kFnvOffset;
  for (const dcp::PlannedFile& f : plan) {
    const std::string path = JoinPath(dir, f.name);
    uint64_t size = 0;
    Status s = WriteFileAtomically(env, path, [&](WritableFile* out) {
      CKPT_RETURN_IF_ERROR(dcp::WriteDcpDataFile(entries, f, out, &written, &digest));
      size = out->Position();
      return OkStatus();
    });
    if (!s.ok()) {
      // A failure after the rename (directory sync) leaves the file: remove it too.
      env->RemoveFile(path).IgnoreError();
      cleanup();
      return s.WithContext(StrCat("writing ", path));
    }
    report.files.push_back(path);
    report.items += f.items.size();
    report.bytes += size;
  }
  Result<std::string> md = dcp::SerializeDcpMetadata(entries, written, options, digest);
  if (!md.ok()) {
    cleanup();
    return md.status();
  }
  Status s = WriteFileAtomically(env, md_path, [&](WritableFile* out) { return out->Append(*md); });
  if (!s.ok()) {
    env->RemoveFile(md_path).IgnoreError();
    cleanup();
    return s.WithContext(StrCat("writing ", md_path));
  }
  report.files.push_back(md_path);
  return report;
}

}  // namespace ckpt::internal_checkpoint
