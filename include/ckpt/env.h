// Env: the one seam between ckptkit and the operating system's files.
//
// Every file operation goes through an Env, so tests can swap the disk for
// memory (MemEnv) or for one that fails on cue (FaultEnv). Errors name the path
// and, for reads and writes, the offset and byte counts.
//
// Thread-safety: Env methods are thread-safe. RandomAccessFile::ReadAt is
// thread-safe; a WritableFile is used by one thread at a time, except that
// several threads may call WritableFile::WriteAt at once (see there).
#ifndef CKPT_ENV_H_
#define CKPT_ENV_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"

namespace ckpt {

// A file opened for positional reads. Its ByteSource::Name() is the path.
class RandomAccessFile : public ByteSource {};

// A file opened for writing: sequentially (ByteSink::Append, at Position())
// and positionally (WriteAt).
//
// Thread-safety: WriteAt calls may run concurrently with each other, from any
// number of threads, when their byte ranges are disjoint. Every other method
// (Append, Position, Sync, Close, the destructor) must not run concurrently
// with any call on the same file, WriteAt included: e.g. Append on one thread
// while another calls WriteAt is not supported. Overlapping concurrent
// WriteAt ranges leave unspecified bytes in the overlap.
//
// Errors are sticky on PosixEnv: after a failed write, fsync or close the
// file's content is unknown, and every later Append/WriteAt/Sync/Close
// returns the first error.
class WritableFile : public ByteSink {
 public:
  // Writes all of data at byte `offset` of the file, extending it as needed;
  // a gap between the old end and `offset` reads as zeros. Independent of the
  // Append position: Position() is not changed (it counts Append bytes only),
  // and a later Append still writes at Position(), over any WriteAt bytes
  // there. If an Append range and a WriteAt range overlap, which bytes win is
  // unspecified (Append may buffer); keep them disjoint. WriteAt bytes are
  // durable after a successful Sync, like appended ones. An empty `data` is a
  // no-op (it does not extend the file).
  // Errors (naming the path and offset): FailedPrecondition after Close;
  // InvalidArgument if offset + data.size() exceeds INT64_MAX; I/O errors
  // (ResourceExhausted for ENOSPC), as Append.
  virtual Status WriteAt(uint64_t offset, std::string_view data) = 0;
  // Flushes buffered bytes and fsyncs. Errors: I/O (ResourceExhausted for ENOSPC).
  virtual Status Sync() = 0;
  // Flushes and closes; further calls fail. Errors: as Sync (without fsync).
  virtual Status Close() = 0;
  // Whether the file's bytes go around the page cache (O_DIRECT; see
  // Env::NewDirectWritableFile). False for ordinary files.
  virtual bool direct_io() const { return false; }
};

class Env {
 public:
  virtual ~Env() = default;

  // The process-wide POSIX Env. Never deleted.
  static Env* Default();

  // Errors: NotFound, PermissionDenied, or other I/O errors naming the path.
  virtual Result<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(const std::string& path) = 0;
  // Creates or truncates. Errors: as above.
  virtual Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& path) = 0;
  // As NewWritableFile, for a large file written mostly sequentially (a
  // checkpoint's data file), with its bytes going around the page cache
  // (O_DIRECT) where the file system allows: no kernel copy into fresh cache
  // pages, no writeback storm at fsync, no cache evicting the training job's
  // memory. The same contract as any WritableFile (any sizes, any offsets;
  // the file ends at exactly the bytes written); internally whole aligned
  // blocks go out directly and the unaligned tail of a Sync/Close through the
  // page cache. Where the file system refuses O_DIRECT (at open or at the
  // first write: tmpfs, some FUSE and network file systems) the file is an
  // ordinary one: direct_io() tells which. This default (MemEnv, wrappers
  // that do not override it) returns NewWritableFile(path).
  virtual Result<std::unique_ptr<WritableFile>> NewDirectWritableFile(const std::string& path) {
    return NewWritableFile(path);
  }

  virtual bool FileExists(const std::string& path) = 0;
  virtual bool IsDirectory(const std::string& path) = 0;
  virtual Result<uint64_t> GetFileSize(const std::string& path) = 0;
  // Names (not paths) of the entries in dir, sorted.
  virtual Result<std::vector<std::string>> GetChildren(const std::string& dir) = 0;
  // mkdir -p.
  virtual Status CreateDirs(const std::string& dir) = 0;
  virtual Status RemoveFile(const std::string& path) = 0;
  // Removes an empty folder (rmdir). Errors: FailedPrecondition / I/O errors
  // when it is not empty or cannot be removed.
  virtual Status RemoveDir(const std::string& dir) = 0;
  // Atomic replace of `to` by `from` (POSIX rename); also moves a folder
  // (onto a path that does not exist or is an empty folder).
  virtual Status RenameFile(const std::string& from, const std::string& to) = 0;
  // Swaps two existing paths (folders or files) in one atomic step (Linux
  // renameat2 RENAME_EXCHANGE): afterwards `a` holds what `b` held and `b`
  // what `a` held; a crash leaves either both names as they were or both
  // swapped. Durable once their parent folders are synced.
  // Errors: NotFound when either is missing; Unimplemented where the file
  // system cannot (callers fall back to two renames); other I/O errors
  // naming both paths.
  virtual Status ExchangePaths(const std::string& a, const std::string& b) = 0;
  // fsyncs a directory so renames in it are durable.
  virtual Status SyncDir(const std::string& dir) = 0;
};

// Forwards every call to a target Env; subclass to override a few.
class EnvWrapper : public Env {
 public:
  explicit EnvWrapper(Env* target) : target_(target) {}
  Env* target() const { return target_; }
  Result<std::unique_ptr<RandomAccessFile>> NewRandomAccessFile(const std::string& p) override {
    return target_->NewRandomAccessFile(p);
  }
  Result<std::unique_ptr<WritableFile>> NewWritableFile(const std::string& p) override {
    return target_->NewWritableFile(p);
  }
  Result<std::unique_ptr<WritableFile>> NewDirectWritableFile(const std::string& p) override {
    return target_->NewDirectWritableFile(p);
  }
  bool FileExists(const std::string& p) override { return target_->FileExists(p); }
  bool IsDirectory(const std::string& p) override { return target_->IsDirectory(p); }
  Result<uint64_t> GetFileSize(const std::string& p) override { return target_->GetFileSize(p); }
  Result<std::vector<std::string>> GetChildren(const std::string& d) override {
    return target_->GetChildren(d);
  }
  Status CreateDirs(const std::string& d) override { return target_->CreateDirs(d); }
  Status RemoveFile(const std::string& p) override { return target_->RemoveFile(p); }
  Status RemoveDir(const std::string& d) override { return target_->RemoveDir(d); }
  Status RenameFile(const std::string& f, const std::string& t) override {
    return target_->RenameFile(f, t);
  }
  Status ExchangePaths(const std::string& a, const std::string& b) override { return target_->ExchangePaths(a, b); }
  Status SyncDir(const std::string& d) override { return target_->SyncDir(d); }

 private:
  Env* target_;
};

// An Env held entirely in memory (tests, fuzzing). Thread-safe; the Env must
// outlive the files it opened.
//
// Semantics follow PosixEnv, so code that works on one works on the other:
// - Paths are normalized lexically ("a//b/./c/" is "a/b/c"); "/" and "." (the
//   root of relative paths) always exist. Absolute and relative paths are two
//   separate trees.
// - Directories are explicit: NewWritableFile and RenameFile need the parent
//   directory to exist (NotFound otherwise; InvalidArgument if it is a file),
//   so call CreateDirs first, as on disk. GetChildren lists files and
//   directories, sorted. RemoveDir removes an empty directory; RenameFile
//   moves a directory with everything under it (onto a missing path or an
//   empty directory); ExchangePaths swaps two paths with their subtrees.
// - Open readers see the live content of the file node they opened (an inode):
//   reads are bounded by the size at open (OutOfRange beyond it); if the file
//   was truncated since (NewWritableFile on the same path), a read past the new
//   end is a DataLoss short read. RemoveFile and RenameFile over the path do
//   not affect an open reader. Data() is nullptr.
// - Writes land immediately; Sync and SyncDir only check state. Append writes
//   at the writer's Position() (overwriting bytes a WriteAt put there), as on
//   disk. Use FaultEnv
//   (ckpt/fault_env.h) over a MemEnv to simulate crashes and failures.
// - Error codes and messages match PosixEnv's ("open <path>: No such file or
//   directory", "<path>: read past end at offset ...").
std::unique_ptr<Env> NewMemEnv();

// Writes `path` atomically: the content goes to a temporary sibling
// "<dir>/.<name>.ckptkit-tmp", which is fsynced, renamed over `path`, and the
// directory fsynced. If `fill` fails (or any step does), the temporary is
// removed and `path` is left as it was. With `direct_io` the temporary is
// opened by Env::NewDirectWritableFile (fill's file tells whether it got it).
Status WriteFileAtomically(Env* env, const std::string& path,
                           const std::function<Status(WritableFile*)>& fill, bool direct_io = false);

// Helpers on paths.
std::string JoinPath(const std::string& a, const std::string& b);
std::string Dirname(const std::string& path);
std::string Basename(const std::string& path);

}  // namespace ckpt

#endif  // CKPT_ENV_H_
