// WriteDcpCheckpoint: the folder staged beside the destination (engine::
// FolderCommit), data files first (concurrently, one task per file),
// .metadata last, then switched over in one step.
#include "checkpoint/dcp_writer.h"

#include <algorithm>
#include <atomic>
#include <system_error>
#include <thread>

#include "ckpt/engine.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

// Forwards to a file, refusing further appends once another file failed, so
// that a failed checkpoint stops early instead of writing gigabytes that will
// be removed.
class CancellableSink final : public ByteSink {
 public:
  CancellableSink(ByteSink* out, const std::atomic<bool>* cancel, bool* cancelled)
      : out_(out), cancel_(cancel), cancelled_(cancelled) {}
  Status Append(std::string_view data) override {
    if (cancel_->load(std::memory_order_relaxed)) {
      *cancelled_ = true;
      return CancelledError("stopped: another data file of this checkpoint failed");
    }
    return out_->Append(data);
  }
  uint64_t Position() const override { return out_->Position(); }

 private:
  ByteSink* out_;
  const std::atomic<bool>* cancel_;
  bool* cancelled_;
};

// What one file's task left behind. Each task writes only its own slot.
struct FileResult {
  Status status;
  bool cancelled = false;  // skipped or stopped because another file failed
  bool published = false;  // renamed into place
  std::vector<dcp::WrittenItem> written;
  uint64_t digest = dcp::kFnvOffset;
  uint64_t size = 0;
};

}  // namespace

bool IsDcpFileName(std::string_view name) {
  return name == dcp::kMetadataFileName || (name.size() > 7 && name.substr(name.size() - 7) == ".distcp");
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
  std::vector<FileResult> results(plan.size());
  std::atomic<bool> cancel{false};
  auto write_file = [&](size_t i) {
    FileResult& r = results[i];
    if (cancel.load()) {
      r.cancelled = true;
      r.status = CancelledError("not written: another data file of this checkpoint failed");
      return;
    }
    const std::string path = JoinPath(dir, plan[i].name);
    r.status = WriteFileAtomically(env, path, [&](WritableFile* out) {
      CancellableSink sink(out, &cancel, &r.cancelled);
      CKPT_RETURN_IF_ERROR(dcp::WriteDcpDataFile(entries, plan[i], &sink, &r.written, &r.digest));
      r.size = out->Position();
      return OkStatus();
    });
    if (r.status.ok()) {
      r.published = true;
    } else {
      cancel.store(true);
      // A failure after the rename (directory sync) leaves the file: remove it too.
      env->RemoveFile(path).IgnoreError();
    }
  };

  const size_t workers =
      options.parallel ? std::min(plan.size(), static_cast<size_t>(std::max<int64_t>(options.thread_count, 1))) : 1;
  if (workers <= 1) {
    for (size_t i = 0; i < plan.size(); ++i) write_file(i);
  } else {
    // One task per file, taken in plan order by `workers` threads (the
    // calling thread included). Plain threads rather than a TBB arena: the
    // tasks block on I/O, and an arena caps concurrency at the core count.
    std::atomic<size_t> next{0};
    auto work = [&]() {
      for (size_t i = next.fetch_add(1); i < plan.size(); i = next.fetch_add(1)) write_file(i);
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (size_t t = 0; t + 1 < workers; ++t) {
      try {
        threads.emplace_back(work);
      } catch (const std::system_error&) {
        break;  // fewer threads; the ones started and this one take every file
      }
    }
    work();
    for (std::thread& th : threads) th.join();
  }

  DcpWriteReport report;
  auto cleanup = [&]() {
    for (size_t i = plan.size(); i-- > 0;) {
      if (results[i].published) env->RemoveFile(JoinPath(dir, plan[i].name)).IgnoreError();
    }
  };
  // The root cause: the first failure in plan order that is not a
  // cancellation (there is one: cancelling needs a failure first).
  const FileResult* failed = nullptr;
  size_t failed_at = 0;
  for (bool want_cancelled : {false, true}) {
    for (size_t i = 0; i < plan.size() && failed == nullptr; ++i) {
      if (!results[i].status.ok() && results[i].cancelled == want_cancelled) {
        failed = &results[i];
        failed_at = i;
      }
    }
  }
  if (failed != nullptr) {
    cleanup();
    return failed->status.WithContext(StrCat("writing ", JoinPath(report_dir, plan[failed_at].name)));
  }

  std::vector<dcp::WrittenItem> written;
  std::vector<uint64_t> digests;
  digests.reserve(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    FileResult& r = results[i];
    for (dcp::WrittenItem& w : r.written) written.push_back(std::move(w));
    digests.push_back(r.digest);
    report.files.push_back(JoinPath(report_dir, plan[i].name));
    report.items += plan[i].items.size();
    report.bytes += r.size;
  }
  Result<std::string> md = dcp::SerializeDcpMetadata(entries, written, options, dcp::CombineFileDigests(digests));
  if (!md.ok()) {
    cleanup();
    return md.status();
  }
  Status s = WriteFileAtomically(env, md_path, [&](WritableFile* out) { return out->Append(*md); });
  if (!s.ok()) {
    env->RemoveFile(md_path).IgnoreError();
    cleanup();
    return s.WithContext(StrCat("writing ", JoinPath(report_dir, dcp::kMetadataFileName)));
  }
  report.files.push_back(JoinPath(report_dir, dcp::kMetadataFileName));
  return report;
}

}  // namespace ckpt::internal_checkpoint
