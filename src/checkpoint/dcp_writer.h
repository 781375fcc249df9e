// Publishing a DCP checkpoint folder through an Env (internal to the
// checkpoint layer; Convert --to dcp uses it).
//
// Order of operations, so that a folder with `.metadata` is always complete
// and a checkpoint already at the destination stays intact until the new one
// is:
//  1. plan and validate everything (dcp::PlanDcpWrite) before touching disk;
//  2. stage the folder beside the destination (engine::FolderCommit);
//  3. write each `__<rank>_<n>.distcp` into it (engine::WriteFiles: WriteFileAtomically
//     (temporary sibling, fsync, rename, directory fsync). With
//     options.parallel (the default) and more than one file, the files are
//     written concurrently, one task per file on up to thread_count threads
//     (the calling thread is one of them), as torch's FileSystemWriter runs
//     thread_count writer threads; otherwise one after another on the
//     calling thread;
//  4. write the checksum manifest (format/dcp/manifest.h: XXH3 of every
//     item, "ckptkit-manifest__0_.json"), then `.metadata`, the same way,
//     last, once every data file is in place;
//  5. carry over what the destination holds besides a checkpoint (files
//     other than `.metadata` and `*.distcp`: FolderCommit::CarryOver), then
//     switch the staged folder over in one step (FolderCommit::Commit); stale
//     files of an older checkpoint there do not survive.
// On failure the staged folder is removed and the destination is as it was:
// once a file fails, files not yet started are skipped and files being
// written stop at their next append (Cancelled), every thread is joined. The
// error returned is the first failure in plan order that was not such a
// cancellation; it names the file (at its final path).
//
// Deterministic: the bytes of every file, `.metadata` included, do not depend
// on parallel or on thread timing (storage_data is in plan order, and the
// content digest behind save_id combines per-file digests in plan order).
//
// Thread-safety: reentrant for different folders. With options.parallel the
// callbacks of `entries` run concurrently on writer threads (at most one
// thread per data file at a time, so the callbacks of one file never overlap
// each other): they must be safe to call concurrently. Reading a source
// through CheckpointReader::ReadTensor / ReadTensorRegion is (see
// ckpt/checkpoint.h; DcpReader's open-file cache is mutex-guarded, TorchFile,
// the safetensors and sharded readers are immutable after open and read with
// pread); shared counters the callbacks update (progress) are the caller's to
// guard. Without options.parallel every callback runs on the calling thread.
#ifndef CKPT_CHECKPOINT_DCP_WRITER_H_
#define CKPT_CHECKPOINT_DCP_WRITER_H_

#include <span>
#include <string_view>
#include <string>
#include <vector>

#include "ckpt/env.h"
#include "ckpt/status.h"
#include "format/dcp/writer.h"

namespace ckpt::internal_checkpoint {

struct DcpWriteReport {
  std::vector<std::string> files;  // paths written (data files in plan order), `.metadata` last
  uint64_t items = 0;
  uint64_t bytes = 0;  // total bytes of the data files
  size_t data_files = 0;       // `.distcp` files written
  size_t direct_io_files = 0;  // of those, written around the page cache
};

// Errors: as dcp::PlanDcpWrite (nothing written); InvalidArgument if `dir`
// exists and is not a folder; I/O errors naming the file; callback errors
// naming the file, key and chunk. If a writer thread cannot be started, the
// threads that did start and the calling thread write every file.
Result<DcpWriteReport> WriteDcpCheckpoint(Env* env, const std::string& dir,
                                          std::span<const dcp::EntryToWrite> entries,
                                          const dcp::DcpWriteOptions& options);

// Steps 3-4 alone, into `dir`, a folder of its own that the caller publishes
// (a FolderCommit's staging folder holding other files of the checkpoint);
// reported paths and errors name `report_dir` instead of `dir`. On failure
// the files this call published in `dir` are removed.
Result<DcpWriteReport> WriteDcpFiles(Env* env, const std::string& dir, const std::string& report_dir,
                                     std::span<const dcp::EntryToWrite> entries,
                                     const dcp::DcpWriteOptions& options);

// Step 3 and the manifests of step 4 for a plan made elsewhere (the Python
// plug-ins plan as torch does; WriteDcpFiles with dcp::PlanDcpWrite): the
// planned data files written into `dir` (engine::WriteFiles, `threads` at
// once; with `direct_io` around the page cache where the file system
// allows), then one checksum manifest per data file prefix. Errors name files
// under `report_dir`; on failure every file of the call is removed.
struct DcpDataFiles {
  std::vector<std::vector<dcp::WrittenItem>> items;  // per planned file, in its order
  std::vector<uint64_t> sizes;                       // per planned file
  std::vector<uint64_t> digests;                     // per planned file (dcp::CombineFileDigests)
  std::vector<std::string> manifests;                // manifest file names written
  size_t direct_io_files = 0;                        // data files written around the page cache
};
Result<DcpDataFiles> WriteDcpDataFiles(Env* env, const std::string& dir, const std::string& report_dir,
                                       std::span<const dcp::EntryToWrite> entries,
                                       std::span<const dcp::PlannedFile> plan, int64_t threads,
                                       bool direct_io);
// Removes what WriteDcpDataFiles wrote (for a failure after it).
void RemoveDcpDataFiles(Env* env, const std::string& dir, std::span<const dcp::PlannedFile> plan,
                        const DcpDataFiles& written);

// `.metadata`, `*.distcp` and the checksum manifests (format/dcp/manifest.h).
bool IsDcpFileName(std::string_view name);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_DCP_WRITER_H_
