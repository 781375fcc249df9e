// MemEnv: an Env held in memory. Semantics follow PosixEnv (see NewMemEnv in
// ckpt/env.h): a file is a shared node, so an open reader keeps the node alive
// across RemoveFile/RenameFile (like an open fd keeps its inode) and sees
// appends and truncations made through the same path (like pread on a live
// inode), within the size it had at open.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <new>
#include <set>
#include <utility>
#include <vector>

#include "ckpt/env.h"
#include "io/path_util.h"
#include "util/strings.h"

namespace ckpt {
namespace internal_io {
namespace {

struct MemFile {
  mutable std::mutex mu;
  std::string data;  // GUARDED_BY(mu)
};

class MemRandomAccessFile final : public RandomAccessFile {
 public:
  MemRandomAccessFile(std::string path, std::shared_ptr<const MemFile> file, uint64_t size)
      : path_(std::move(path)), file_(std::move(file)), size_(size) {}

  uint64_t Size() const override { return size_; }
  std::string_view Name() const override { return path_; }

  Status ReadAt(uint64_t offset, size_t n, void* dst) const override {
    CKPT_RETURN_IF_ERROR(CheckReadRange(path_, size_, offset, n, "file size"));
    std::lock_guard<std::mutex> l(file_->mu);
    const std::string& d = file_->data;
    // The file shrank since open (truncated by a new writer): a short read,
    // as pread gives on a truncated inode.
    size_t got = offset >= d.size() ? 0 : std::min<size_t>(n, d.size() - offset);
    if (got > 0) std::memcpy(dst, d.data() + offset, got);
    if (got < n) {
      return DataLossError(StrCat(path_, ": short read at offset ", offset, ": wanted ", n,
                                  " bytes, got ", got, " (file shrank?)"));
    }
    return OkStatus();
  }

 private:
  std::string path_;
  std::shared_ptr<const MemFile> file_;
  uint64_t size_;
};

class MemWritableFile final : public WritableFile {
 public:
  MemWritableFile(std::string path, std::shared_ptr<MemFile> file)
      : path_(std::move(path)), file_(std::move(file)) {}

  // Writes at pos_, as a descriptor writes at its offset: over bytes a
  // WriteAt put there, and past a truncation by another writer (a gap).
  Status Append(std::string_view data) override {
    if (closed_) return FailedPreconditionError(StrCat(path_, ": append after close"));
    CKPT_RETURN_IF_ERROR(WriteLocked(pos_, data));
    pos_ += data.size();
    return OkStatus();
  }
  uint64_t Position() const override { return pos_; }
  // Thread-safe: the node's mutex serializes the copies.
  Status WriteAt(uint64_t offset, std::string_view data) override {
    if (closed_) return FailedPreconditionError(StrCat(path_, ": write after close"));
    return WriteLocked(offset, data);
  }
  Status Sync() override {
    if (closed_) return FailedPreconditionError(StrCat(path_, ": sync after close"));
    return OkStatus();
  }
  Status Close() override {
    closed_ = true;
    return OkStatus();
  }

 private:
  // Copies data to [offset, offset + size) of the node, zero-filling a gap.
  Status WriteLocked(uint64_t offset, std::string_view data) {
    if (data.empty()) return OkStatus();
    if (offset > static_cast<uint64_t>(INT64_MAX) - data.size()) {
      return InvalidArgumentError(StrCat(path_, ": write of ", data.size(), " bytes at offset ",
                                         offset, ": end is past the largest file offset"));
    }
    const uint64_t end = offset + data.size();
    std::lock_guard<std::mutex> l(file_->mu);
    std::string& d = file_->data;
    try {
      if (end > d.size()) {
        if (end > d.max_size()) throw std::bad_alloc();
        d.resize(static_cast<size_t>(end), '\0');
      }
    } catch (const std::exception&) {  // bad_alloc, length_error
      return ResourceExhaustedError(StrCat(path_, ": write of ", data.size(),
                                           " bytes at offset ", offset, ": out of memory"));
    }
    std::memcpy(d.data() + offset, data.data(), data.size());
    return OkStatus();
  }

  const std::string path_;
  const std::shared_ptr<MemFile> file_;
  uint64_t pos_ = 0;
  bool closed_ = false;  // written by Close only, which runs alone
};

class MemEnv final : public Env {
 public:
  MemEnv() {
    dirs_.insert("/");
    dirs_.insert(".");
  }

  Result<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(const std::string& path) override {
    const std::string p = LexicallyNormal(path);
    std::lock_guard<std::mutex> l(mu_);
    if (dirs_.count(p)) {
      return InvalidArgumentError(StrCat(path, ": is a directory, expected a file"));
    }
    auto it = files_.find(p);
    if (it == files_.end()) {
      if (AncestorIsFileLocked(p)) {
        return InvalidArgumentError(StrCat("open ", path, ": Not a directory"));
      }
      return NotFoundError(StrCat("open ", path, ": No such file or directory"));
    }
    uint64_t size;
    {
      std::lock_guard<std::mutex> fl(it->second->mu);
      size = it->second->data.size();
    }
    return std::unique_ptr<RandomAccessFile>(new MemRandomAccessFile(path, it->second, size));
  }

  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) override {
    const std::string p = LexicallyNormal(path);
    std::lock_guard<std::mutex> l(mu_);
    if (dirs_.count(p)) {
      return InvalidArgumentError(StrCat("create ", path, ": Is a directory"));
    }
    CKPT_RETURN_IF_ERROR(CheckParentLocked("create ", path, p));
    std::shared_ptr<MemFile>& f = files_[p];
    if (f == nullptr) {
      f = std::make_shared<MemFile>();
    } else {
      // O_TRUNC: same node, so open readers see the truncation.
      std::lock_guard<std::mutex> fl(f->mu);
      f->data.clear();
      f->data.shrink_to_fit();
    }
    return std::unique_ptr<WritableFile>(new MemWritableFile(path, f));
  }

  bool FileExists(const std::string& path) override {
    const std::string p = LexicallyNormal(path);
    std::lock_guard<std::mutex> l(mu_);
    return files_.count(p) > 0 || dirs_.count(p) > 0;
  }

  bool IsDirectory(const std::string& path) override {
    const std::string p = LexicallyNormal(path);
    std::lock_guard<std::mutex> l(mu_);
    return dirs_.count(p) > 0;
  }

  Result<uint64_t> GetFileSize(const std::string& path) override {
    const std::string p = LexicallyNormal(path);
    std::lock_guard<std::mutex> l(mu_);
    if (dirs_.count(p)) {
      return InvalidArgumentError(StrCat("stat ", path, ": is a directory, expected a file"));
    }
    auto it = files_.find(p);
    if (it == files_.end()) {
      return NotFoundError(StrCat("stat ", path, ": No such file or directory"));
    }
    std::lock_guard<std::mutex> fl(it->second->mu);
    return static_cast<uint64_t>(it->second->data.size());
  }

  Result<std::vector<std::string>> GetChildren(const std::string& dir) override {
    const std::string d = LexicallyNormal(dir);
    std::lock_guard<std::mutex> l(mu_);
    if (!dirs_.count(d)) {
      if (files_.count(d)) return InvalidArgumentError(StrCat("list ", dir, ": Not a directory"));
      return NotFoundError(StrCat("list ", dir, ": No such file or directory"));
    }
    std::set<std::string> names;
    auto add = [&](const std::string& k) {
      if (k != d && Dirname(k) == d) names.insert(Basename(k));
    };
    for (const auto& [k, v] : files_) add(k);
    for (const std::string& k : dirs_) add(k);
    return std::vector<std::string>(names.begin(), names.end());
  }

  Status CreateDirs(const std::string& dir) override {
    if (dir.empty()) return OkStatus();
    const std::string d = LexicallyNormal(dir);
    std::lock_guard<std::mutex> l(mu_);
    // Walk from the top so the first component that is a file is named.
    std::vector<std::string> chain;
    for (std::string p = d; !dirs_.count(p); p = Dirname(p)) chain.push_back(p);
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
      if (files_.count(*it)) {
        return FailedPreconditionError(
            StrCat("mkdir ", dir, ": ", *it, " exists and is not a directory"));
      }
      dirs_.insert(*it);
    }
    return OkStatus();
  }

  Status RemoveFile(const std::string& path) override {
    const std::string p = LexicallyNormal(path);
    std::lock_guard<std::mutex> l(mu_);
    if (dirs_.count(p)) return InvalidArgumentError(StrCat("remove ", path, ": Is a directory"));
    if (files_.erase(p) == 0) {
      return NotFoundError(StrCat("remove ", path, ": No such file or directory"));
    }
    return OkStatus();
  }

  Status RemoveDir(const std::string& dir) override {
    const std::string p = LexicallyNormal(dir);
    std::lock_guard<std::mutex> l(mu_);
    if (!dirs_.count(p)) return NotFoundError(StrCat("remove folder ", dir, ": No such file or directory"));
    const std::string prefix = p + "/";
    for (const auto& [name, _] : files_) {
      if (name.compare(0, prefix.size(), prefix) == 0) {
        return FailedPreconditionError(StrCat("remove folder ", dir, ": Directory not empty"));
      }
    }
    for (const std::string& d : dirs_) {
      if (d.compare(0, prefix.size(), prefix) == 0) {
        return FailedPreconditionError(StrCat("remove folder ", dir, ": Directory not empty"));
      }
    }
    dirs_.erase(p);
    return OkStatus();
  }

  Status RenameFile(const std::string& from, const std::string& to) override {
    const std::string f = LexicallyNormal(from);
    const std::string t = LexicallyNormal(to);
    std::lock_guard<std::mutex> l(mu_);
    const std::string what = StrCat("rename ", from, " -> ", to);
    if (dirs_.count(f)) {
      if (f == t) return OkStatus();
      if (t.compare(0, f.size() + 1, f + "/") == 0) return InvalidArgumentError(StrCat(what, ": Invalid argument"));
      if (files_.count(t)) return InvalidArgumentError(StrCat(what, ": Not a directory"));
      if (dirs_.count(t)) {
        if (!EmptyDirLocked(t)) return FailedPreconditionError(StrCat(what, ": Directory not empty"));
      } else {
        CKPT_RETURN_IF_ERROR(CheckParentLocked(what, "", t));
      }
      MoveTreeLocked(f, t);
      return OkStatus();
    }
    auto it = files_.find(f);
    if (it == files_.end()) return NotFoundError(StrCat(what, ": No such file or directory"));
    if (dirs_.count(t)) return InvalidArgumentError(StrCat(what, ": Is a directory"));
    CKPT_RETURN_IF_ERROR(CheckParentLocked(what, "", t));
    if (f == t) return OkStatus();
    std::shared_ptr<MemFile> node = std::move(it->second);
    files_.erase(it);
    files_[t] = std::move(node);  // One step under mu_: atomic replace.
    return OkStatus();
  }

  Status ExchangePaths(const std::string& a, const std::string& b) override {
    const std::string x = LexicallyNormal(a);
    const std::string y = LexicallyNormal(b);
    std::lock_guard<std::mutex> l(mu_);
    const std::string what = StrCat("exchange ", a, " <-> ", b);
    auto exists = [&](const std::string& p) { return dirs_.count(p) > 0 || files_.count(p) > 0; };
    if (!exists(x) || !exists(y)) return NotFoundError(StrCat(what, ": No such file or directory"));
    if (x == y) return OkStatus();
    if (y.compare(0, x.size() + 1, x + "/") == 0 || x.compare(0, y.size() + 1, y + "/") == 0) {
      return InvalidArgumentError(StrCat(what, ": Invalid argument"));
    }
    // Through a name neither tree uses: x -> tmp, y -> x, tmp -> y, one step under mu_.
    const std::string tmp = StrCat(x, "\x01exchange");
    MoveTreeLocked(x, tmp);
    MoveTreeLocked(y, x);
    MoveTreeLocked(tmp, y);
    return OkStatus();
  }

  Status SyncDir(const std::string& dir) override {
    const std::string d = LexicallyNormal(dir);
    std::lock_guard<std::mutex> l(mu_);
    if (!dirs_.count(d)) {
      if (files_.count(d)) {
        return InvalidArgumentError(StrCat("open dir ", dir, ": Not a directory"));
      }
      return NotFoundError(StrCat("open dir ", dir, ": No such file or directory"));
    }
    return OkStatus();
  }

 private:
  // Errors: NotFound if the parent directory of normalized path p is missing,
  // InvalidArgument if it is a file (ENOTDIR), as PosixEnv maps them.
  Status CheckParentLocked(std::string_view verb, const std::string& path,
                           const std::string& p) const {
    const std::string parent = Dirname(p);
    if (dirs_.count(parent)) return OkStatus();
    if (files_.count(parent)) {
      return InvalidArgumentError(StrCat(verb, path, ": Not a directory (", parent,
                                         " is a file)"));
    }
    return NotFoundError(StrCat(verb, path, ": No such file or directory (directory ", parent,
                                " does not exist)"));
  }

  bool EmptyDirLocked(const std::string& d) const {
    const std::string prefix = d + "/";
    auto f = files_.lower_bound(prefix);
    if (f != files_.end() && f->first.compare(0, prefix.size(), prefix) == 0) return false;
    auto s = dirs_.lower_bound(prefix);
    return !(s != dirs_.end() && s->compare(0, prefix.size(), prefix) == 0);
  }

  // Re-keys path `from` (a file, or a directory and everything under it) to
  // `to`, replacing an empty directory or file there. Open handles keep their
  // nodes.
  void MoveTreeLocked(const std::string& from, const std::string& to) {
    const std::string prefix = from + "/";
    if (auto it = files_.find(from); it != files_.end()) {
      std::shared_ptr<MemFile> node = std::move(it->second);
      files_.erase(it);
      dirs_.erase(to);
      files_[to] = std::move(node);
      return;
    }
    std::vector<std::pair<std::string, std::shared_ptr<MemFile>>> moved_files;
    for (auto it = files_.lower_bound(prefix); it != files_.end() && it->first.compare(0, prefix.size(), prefix) == 0;) {
      moved_files.emplace_back(to + it->first.substr(from.size()), std::move(it->second));
      it = files_.erase(it);
    }
    std::vector<std::string> moved_dirs;
    for (auto it = dirs_.lower_bound(prefix); it != dirs_.end() && it->compare(0, prefix.size(), prefix) == 0;) {
      moved_dirs.push_back(to + it->substr(from.size()));
      it = dirs_.erase(it);
    }
    dirs_.erase(from);
    files_.erase(to);
    dirs_.insert(to);
    for (auto& [p, n] : moved_files) files_[p] = std::move(n);
    for (std::string& d : moved_dirs) dirs_.insert(std::move(d));
  }

  // ENOTDIR: some proper ancestor of normalized path p is a file.
  bool AncestorIsFileLocked(const std::string& p) const {
    for (std::string a = Dirname(p); !dirs_.count(a); a = Dirname(a)) {
      if (files_.count(a)) return true;
      if (a == Dirname(a)) break;
    }
    return false;
  }

  std::mutex mu_;
  std::map<std::string, std::shared_ptr<MemFile>> files_;  // GUARDED_BY(mu_)
  std::set<std::string> dirs_;                             // GUARDED_BY(mu_)
};

}  // namespace
}  // namespace internal_io

std::unique_ptr<Env> NewMemEnv() { return std::make_unique<internal_io::MemEnv>(); }

}  // namespace ckpt
