// Publishing a DCP checkpoint folder through an Env (internal to the
// checkpoint layer; Convert --to dcp uses it).
//
// Order of operations, so that a folder with `.metadata` is always complete:
//  1. plan and validate everything (dcp::PlanDcpWrite) before touching disk;
//  2. create the folder and remove an old `.metadata` (the commit point of a
//     previous checkpoint there: its data files are about to be replaced);
//  3. write each `__<rank>_<n>.distcp` with WriteFileAtomically (temporary
//     sibling, fsync, rename, directory fsync);
//  4. write `.metadata` the same way, last.
// On failure the data files this call published are removed and no
// `.metadata` is left; the error names the file.
//
// Thread-safety: reentrant for different folders; callbacks run on the
// calling thread.
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
  std::vector<std::string> files;  // paths written, `.metadata` last
  uint64_t items = 0;
  uint64_t bytes = 0;  // total bytes of the data files
};

// Errors: as dcp::PlanDcpWrite (nothing written); InvalidArgument if `dir`
// exists and is not a folder; I/O errors naming the file; callback errors
// naming the file, key and chunk.
Result<DcpWriteReport> WriteDcpCheckpoint(Env* env, const std::string& dir,
                                          std::span<const dcp::EntryToWrite> entries,
                                          const dcp::DcpWriteOptions& options);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_DCP_WRITER_H_
