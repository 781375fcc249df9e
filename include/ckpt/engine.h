// The save engine: the one path by which bytes reach files (src/engine/).
//
// This part is the publish protocol for a folder of files (a DCP or
// torch_dist iteration folder, a sharded safetensors folder, a legacy
// iteration folder): the new content is built in a staging folder beside the
// destination and switched over in one step, so that a destination that
// already holds a checkpoint stays intact, and loadable, until the new one is
// complete. Single files keep WriteFileAtomically (ckpt/env.h), the same
// protocol for one file.
//
//   FolderCommit::Begin(env, "ckpt/iter_0000010")
//     - cleans up what killed runs left beside it (staging folders whose
//       process is gone; an old folder a two-step switch set aside, put back
//       when the destination is missing);
//     - creates "ckpt/.iter_0000010.ckptkit-new-<pid>-<n>" (hidden: readers
//       that list the parent skip dot names, and ckptkit's do).
//   write every file into staging(), each synced (WriteFileAtomically does);
//   Commit()
//     - syncs the staging folder (its entries are durable);
//     - no destination yet: renames staging to it; else exchanges the two
//       in one atomic step (renameat2 RENAME_EXCHANGE) and removes the old
//       content, now under the staging name. Where the file system cannot
//       exchange, two renames: destination -> ".<name>.ckptkit-old-<pid>-<n>",
//       staging -> destination (a crash between them leaves the old folder
//       aside, which the next Begin puts back);
//     - syncs the parent folder.
//   Abort() (or the destructor without Commit) removes the staging folder.
//
// A crash at any point leaves the destination as it was or as the new
// content, never a mix; the next Begin on the same destination removes the
// leftovers. Commit points inside the folder (.metadata, metadata.json) need
// no ordering of their own any more, but writers still write them last.
//
// Thread-safety: a FolderCommit is used by one thread at a time; files in its
// staging folder may be written concurrently (as Env allows). Two
// FolderCommits on the same destination at once are not supported (the later
// Commit wins; neither removes the other's staging folder while its process
// lives: leftovers are judged by the process id in their name, on this
// machine, so writers on other machines of a shared file system must not
// target the same destination).
#ifndef CKPT_ENGINE_H_
#define CKPT_ENGINE_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::engine {

class FolderCommit {
 public:
  // Errors: InvalidArgument when `dst` is a file or has no name (""/"/");
  // I/O errors creating the staging folder or cleaning leftovers (naming them).
  static Result<std::unique_ptr<FolderCommit>> Begin(Env* env, const std::string& dst);

  // A FolderCommit over a staging folder that other processes filled too:
  // the ranks of a distributed save each write their files into
  // SharedStagingPath(dst), a name every rank derives without talking, and
  // the one that publishes (DCP's coordinator, once every rank reported its
  // files written and synced) adopts it here. No leftovers are cleaned (a
  // shared staging folder is reused by the next save to `dst`, which prunes
  // what it did not write: PruneFolder). Abort() removes it.
  // Errors: InvalidArgument when `dst` names no folder or `staging` is not
  // an existing folder.
  static Result<std::unique_ptr<FolderCommit>> Adopt(Env* env, const std::string& dst, const std::string& staging);

  FolderCommit(const FolderCommit&) = delete;
  FolderCommit& operator=(const FolderCommit&) = delete;
  ~FolderCommit();  // Abort() unless committed

  const std::string& destination() const { return dst_; }
  const std::string& staging() const { return staging_; }

  // Copies into the staging folder what the destination holds besides the
  // checkpoint, so that those files (a model folder's tokenizer files, a
  // README) survive the switch: every top-level entry of the destination for
  // which `replaced(name)` is false (files and folders, recursively), except
  // names already in the staging folder and ckptkit's own temporaries
  // (".*.ckptkit-tmp"). `replaced` names what the new content replaces (the
  // old checkpoint's files: they must not survive). Call it after writing,
  // before Commit. Errors: FailedPrecondition when the entries to copy exceed
  // `max_bytes` (naming the destination: copying gigabytes is not what a
  // save should do silently); I/O errors naming the file.
  Status CarryOver(const std::function<bool(std::string_view name)>& replaced, uint64_t max_bytes = 256ull << 20);

  // Publishes the staging folder's content as the destination (see above).
  // Errors: FailedPrecondition after Commit or Abort; I/O errors naming the
  // step. On an error before the switch the destination is untouched and the
  // staging folder removed; after it ("published, but not durable": the
  // parent folder sync failed) the new content is in place.
  Status Commit();

  // Removes the staging folder and everything in it. Idempotent.
  void Abort();

 private:
  FolderCommit(Env* env, std::string dst, std::string staging) : env_(env), dst_(std::move(dst)), staging_(std::move(staging)) {}

  Env* env_;
  std::string dst_;
  std::string staging_;
  bool done_ = false;
};

// "<parent>/.<name>.ckptkit-shared" for dst "<parent>/<name>": where the
// processes of one distributed save stage a folder (see Adopt). Begin does not
// treat it as a leftover (a save of other processes may be filling it).
// Errors: InvalidArgument when `dst` names no folder.
Result<std::string> SharedStagingPath(const std::string& dst);

// Removes every top-level entry of folder `dir` for which keep(name) is
// false (files and folders; leftovers of an earlier save into the same
// staging folder). Errors: I/O errors naming the entry.
Status PruneFolder(Env* env, const std::string& dir, const std::function<bool(std::string_view name)>& keep);

// A set of files written concurrently into one folder, each atomically
// (WriteFileAtomically: temporary name, fsync, rename, folder fsync): the
// data files of a checkpoint. The one writer of the CLI's DCP output and of
// the Python plug-ins.
struct FileToWrite {
  std::string name;  // a file name in the folder (no '/')
  // Appends the file's bytes, in order. Once another file of the set has
  // failed, Append returns Cancelled: the callback should pass that on.
  std::function<Status(ByteSink* out)> fill;
};

struct WriteFilesOptions {
  // Files written at once, one writer thread each (the calling thread is one
  // of them); 1 writes them one after another on the calling thread. Plain
  // threads: the tasks block on I/O, which a CPU-sized pool would serialize.
  int64_t threads = 1;
  // Each file through Env::NewDirectWritableFile (O_DIRECT where the file
  // system allows; WrittenFiles says where it did).
  bool direct_io = false;
};

struct WrittenFiles {
  std::vector<uint64_t> sizes;  // per file, in order
  size_t direct_io_files = 0;   // how many were written around the page cache
};

// Writes `files` into the existing folder `dir`; returns each file's size,
// in order, and how many went around the page cache. Errors name the file under `report_dir` (the path the caller
// publishes the folder as; `dir` when empty): the first failure in order that
// is not a cancellation (once a file fails, files not started are skipped and
// files being written stop at their next append; every thread is joined), or
// InvalidArgument for a name with '/' or a name given twice. On failure every
// file this call placed in `dir` is removed again.
// Thread-safety: the callbacks of different files run concurrently (those of
// one file never overlap): they must be safe to run so.
Result<WrittenFiles> WriteFiles(Env* env, const std::string& dir, std::span<const FileToWrite> files,
                                const WriteFilesOptions& options, const std::string& report_dir = "");

// Host memory that saves stage their tensors into before writing: one arena
// of `capacity` bytes, mapped once and reused by every save (its pages stay
// resident after the first, so staging is a memcpy into warm memory, not
// page faults into fresh allocations), split into page-aligned regions.
// Bounded: a save whose regions do not fit waits until earlier saves release
// theirs (backpressure), so staging memory never grows past the capacity.
//
// Thread-safety: all methods are thread-safe. Regions keep the pool alive.
class StagingPool : public std::enable_shared_from_this<StagingPool> {
 public:
  static constexpr uint64_t kAlignment = 4096;

  // A region of the arena, released (returned to the pool) on destruction.
  class Region {
   public:
    Region(const Region&) = delete;
    Region& operator=(const Region&) = delete;
    ~Region();
    uint8_t* data() const { return data_; }
    uint64_t size() const { return size_; }

   private:
    friend class StagingPool;
    Region(std::shared_ptr<StagingPool> pool, uint64_t offset, uint64_t size, uint64_t reserved);
    std::shared_ptr<StagingPool> pool_;
    uint64_t offset_, size_, reserved_;
    uint8_t* data_;
  };

  // Errors: InvalidArgument for capacity 0; ResourceExhausted when the arena
  // cannot be mapped.
  static Result<std::shared_ptr<StagingPool>> Create(uint64_t capacity);
  ~StagingPool();

  // What `sizes` occupy in a pool (each rounded up to kAlignment; an empty
  // region takes none).
  static uint64_t Footprint(std::span<const uint64_t> sizes);

  // One region per size, all or none: waits while they do not fit (regions of
  // earlier saves still in use), up to `timeout`. Errors: InvalidArgument when
  // they could never fit (Footprint > capacity); ResourceExhausted after
  // `timeout` (naming what is still held).
  Result<std::vector<std::unique_ptr<Region>>> Acquire(std::span<const uint64_t> sizes,
                                                       std::chrono::milliseconds timeout);

  uint64_t capacity() const { return capacity_; }
  uint64_t in_use() const;  // bytes of regions held now
  uint64_t peak() const;    // most bytes held at once since Create

 private:
  struct State;  // the free list and counters, under a mutex (staging_pool.cc)
  StagingPool(uint8_t* base, uint64_t capacity);
  void Release(uint64_t offset, uint64_t reserved);

  uint8_t* const base_;
  const uint64_t capacity_;
  std::unique_ptr<State> state_;
};

// Removes `path` and, for a folder, everything under it (rm -r). A missing
// path is OK. Errors: the first I/O error, naming the path.
Status RemoveTree(Env* env, const std::string& path);

}  // namespace ckpt::engine

#endif  // CKPT_ENGINE_H_
