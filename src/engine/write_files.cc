// WriteFiles: a checkpoint's data files written concurrently into one folder,
// each atomically, stopped together when one fails (include/ckpt/engine.h).
#include <algorithm>
#include <atomic>
#include <set>
#include <system_error>
#include <thread>

#include "ckpt/engine.h"
#include "util/strings.h"

namespace ckpt::engine {
namespace {

// Forwards to a file, refusing further appends once another file failed, so
// that a failed save stops early instead of writing gigabytes that will be
// removed.
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
  uint64_t size = 0;
  bool direct_io = false;
};

}  // namespace

Result<WrittenFiles> WriteFiles(Env* env, const std::string& dir, std::span<const FileToWrite> files,
                                const WriteFilesOptions& options, const std::string& report_dir_in) {
  if (env == nullptr) env = Env::Default();
  const std::string& report_dir = report_dir_in.empty() ? dir : report_dir_in;
  std::set<std::string_view> names;
  for (const FileToWrite& f : files) {
    if (f.name.empty() || f.name.find('/') != std::string::npos || f.name == "." || f.name == "..") {
      return InvalidArgumentError(StrCat("file name ", Quote(f.name), " in ", report_dir, " is not a plain name"));
    }
    if (!names.insert(f.name).second) {
      return InvalidArgumentError(StrCat("file ", JoinPath(report_dir, f.name), " is to be written twice"));
    }
  }
  std::vector<FileResult> results(files.size());
  std::atomic<bool> cancel{false};
  auto write_file = [&](size_t i) {
    FileResult& r = results[i];
    if (cancel.load()) {
      r.cancelled = true;
      r.status = CancelledError("not written: another data file of this checkpoint failed");
      return;
    }
    const std::string path = JoinPath(dir, files[i].name);
    r.status = WriteFileAtomically(env, path, [&](WritableFile* out) {
      CancellableSink sink(out, &cancel, &r.cancelled);
      CKPT_RETURN_IF_ERROR(files[i].fill(&sink));
      r.size = out->Position();
      r.direct_io = out->direct_io();
      return OkStatus();
    }, options.direct_io);
    if (r.status.ok()) {
      r.published = true;
    } else {
      cancel.store(true);
      // A failure after the rename (the folder sync) leaves the file: remove it too.
      env->RemoveFile(path).IgnoreError();
    }
  };

  const size_t workers = std::min(files.size(), static_cast<size_t>(std::max<int64_t>(options.threads, 1)));
  if (workers <= 1) {
    for (size_t i = 0; i < files.size(); ++i) write_file(i);
  } else {
    // One task per file, taken in order by `workers` threads (this one included).
    std::atomic<size_t> next{0};
    auto work = [&]() {
      for (size_t i = next.fetch_add(1); i < files.size(); i = next.fetch_add(1)) write_file(i);
    };
    std::vector<std::thread> threads;
    threads.reserve(workers - 1);
    for (size_t t = 0; t + 1 < workers; ++t) {
      try {
        threads.emplace_back(work);
      } catch (const std::system_error&) {
        break;  // fewer threads: the ones started and this one take every file
      }
    }
    work();
    for (std::thread& th : threads) th.join();
  }

  // The root cause: the first failure in order that is not a cancellation
  // (there is one: cancelling needs a failure first).
  const FileResult* failed = nullptr;
  size_t failed_at = 0;
  for (bool want_cancelled : {false, true}) {
    for (size_t i = 0; i < files.size() && failed == nullptr; ++i) {
      if (!results[i].status.ok() && results[i].cancelled == want_cancelled) {
        failed = &results[i];
        failed_at = i;
      }
    }
  }
  if (failed != nullptr) {
    for (size_t i = files.size(); i-- > 0;) {
      if (results[i].published) env->RemoveFile(JoinPath(dir, files[i].name)).IgnoreError();
    }
    return failed->status.WithContext(StrCat("writing ", JoinPath(report_dir, files[failed_at].name)));
  }
  WrittenFiles out;
  out.sizes.reserve(files.size());
  for (const FileResult& r : results) {
    out.sizes.push_back(r.size);
    out.direct_io_files += r.direct_io ? 1 : 0;
  }
  return out;
}

}  // namespace ckpt::engine
