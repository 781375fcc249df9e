// Publishing a DCP checkpoint folder through an Env (internal to the
// checkpoint layer; Convert --to dcp uses it).
//
// Order of operations, so that a folder with `.metadata` is always complete:
//  1. plan and validate everything (dcp::PlanDcpWrite) before touching disk;
//  2. create the folder and remove an old `.metadata` (the commit point of a
//     previous checkpoint there: its data files are about to be replaced);
//  3. write each `__<rank>_<n>.distcp` with WriteFileAtomically (temporary
//     sibling, fsync, rename, directory fsync). With options.parallel (the
//     default) and more than one file, the files are written concurrently,
//     one task per file on up to thread_count threads (the calling thread is
//     one of them), as torch's
//     FileSystemWriter runs thread_count writer threads; otherwise one after
//     another on the calling thread;
//  4. write `.metadata` the same way, last, once every data file is in place.
// On failure the data files this call published are removed and no
// `.metadata` is left: once a file fails, files not yet started are skipped
// and files being written stop at their next append (Cancelled), every
// thread is joined, then the published ones are removed. The error returned
// is the first failure in plan order that was not such a cancellation; it
// names the file.
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
};

// Errors: as dcp::PlanDcpWrite (nothing written); InvalidArgument if `dir`
// exists and is not a folder; I/O errors naming the file; callback errors
// naming the file, key and chunk. If a writer thread cannot be started, the
// threads that did start and the calling thread write every file.
Result<DcpWriteReport> WriteDcpCheckpoint(Env* env, const std::string& dir,
                                          std::span<const dcp::EntryToWrite> entries,
                                          const dcp::DcpWriteOptions& options);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_DCP_WRITER_H_
