// Publishing a Megatron-Core torch_dist checkpoint through an Env (internal
// to the checkpoint layer; `convert` with to=torch_dist, in
// src/convert/torch_dist.h, builds what it writes).
//
// What is written (format/megatron/writer.h has the bytes of each piece):
//   <ckpt>/__0_<n>.distcp, .metadata   WriteDcpCheckpoint (one offline rank 0)
//   <ckpt>/common.pt                   core 0.16 layout only
//   <ckpt>/metadata.json               the version's CheckpointingConfig
//   <root>/latest_checkpointed_iteration.txt   only when writing a Megatron-LM
//                                      root (<ckpt> = <root>/iter_<N:07d>)
// For the 0.19 layout the common dict is the bytes entry
// `common_state/shard_0_1`, appended after the other entries as
// dist_checkpointing.save appends its ShardedObject.
//
// Commit order, from megatron-core itself: `save` writes common.pt first
// (save_common), then the DCP files (.metadata last), and metadata.json in
// `metadata_finalize_fn` after every rank finished; its load
// (verify_checkpoint_and_load_strategy / verify_checkpoint) checks
// metadata.json before anything else and treats a folder without it as "not
// a distributed checkpoint": metadata.json is the commit point of the
// folder. Megatron-LM writes the tracker after that (the commit point of the
// root). So:
//  1. plan and validate everything (entries, metadata.json text) before
//     touching disk;
//  2. stage the iteration folder beside it (engine::FolderCommit): common.pt
//     (0.16), the data files and `.metadata` (WriteDcpFiles), then
//     metadata.json, each with WriteFileAtomically (temporary sibling,
//     fsync, rename, directory fsync);
//  3. carry over the folder's other files (not an older checkpoint's), switch
//     the staged folder over in one step, then write the tracker.
// On failure before the switch the staged folder is removed and the
// destination (an older checkpoint in the same iteration folder, and the
// tracker naming it) is as it was; the error names the file. If only the
// tracker fails, the iteration folder is complete and in place and the
// error says so.
//
// Thread-safety: reentrant for different destinations. The entries'
// callbacks (and write_common, for the 0.19 layout, where it is a bytes
// entry) may run concurrently on WriteDcpCheckpoint's writer threads (see
// dcp_writer.h): they must be safe to call concurrently;
// internal_convert::ConvertToTorchDist's are (thread-safe reader reads, a
// mutex around progress).
#ifndef CKPT_CHECKPOINT_TORCH_DIST_WRITER_H_
#define CKPT_CHECKPOINT_TORCH_DIST_WRITER_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/env.h"
#include "ckpt/status.h"
#include "format/dcp/writer.h"
#include "format/megatron/megatron.h"
#include "format/megatron/writer.h"

namespace ckpt::internal_checkpoint {

struct TorchDistWriteOptions {
  megatron::CoreVersion version = megatron::kNewestCoreVersion;
  int64_t thread_count = 1;  // data files, as torch's FileSystemWriter(thread_count)
  bool direct_io = true;     // dcp::DcpWriteOptions::direct_io
  // Set: `dst` is a Megatron-LM root; the checkpoint goes to
  // dst/IterationDirName(*tracker) and the tracker is written last.
  std::optional<megatron::Tracker> tracker;
  // Extra metadata.json keys carried from a source (0.19 only, see
  // megatron::SerializeConfig).
  nlohmann::ordered_json carried_config = nlohmann::ordered_json::object();
};

struct TorchDistWriteReport {
  std::string checkpoint_dir;      // the dist-checkpoint folder
  std::vector<std::string> files;  // paths in publish order (tracker last)
  uint64_t bytes = 0;              // bytes of the .distcp files
  size_t data_files = 0;           // .distcp files
  size_t direct_io_files = 0;      // of those, written around the page cache
};

// Writes `entries` (which must not contain megatron::kCommonStateKey) plus
// the common state that `write_common` streams, already in
// options.version's form (megatron::WriteCommonState).
// Errors: InvalidArgument (an entry named kCommonStateKey, dst or the
// iteration folder exists and is not a folder, carried keys for 0.16, and
// those of dcp::PlanDcpWrite; nothing is written); I/O and callback errors
// naming the file (what was published is removed).
Result<TorchDistWriteReport> WriteTorchDistCheckpoint(Env* env, const std::string& dst,
                                                      std::vector<dcp::EntryToWrite> entries,
                                                      std::function<Status(ByteSink*)> write_common,
                                                      const TorchDistWriteOptions& options);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_TORCH_DIST_WRITER_H_
