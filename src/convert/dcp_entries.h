// DCP entries to write, built from a source checkpoint (internal to the
// convert layer; Convert with to=dcp and to=torch_dist share them).
//
// Each chunk callback streams its box from the source reader and then calls
// `on_chunk` with the bytes it streamed. WriteDcpCheckpoint runs callbacks of
// different files on different threads: `on_chunk` must be thread-safe
// (ChunkProgress is). The reader must outlive the entries.
#ifndef CKPT_CONVERT_DCP_ENTRIES_H_
#define CKPT_CONVERT_DCP_ENTRIES_H_

#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "checkpoint/dcp_reader.h"
#include "ckpt/checkpoint.h"
#include "convert/dcp_from_torch.h"
#include "format/dcp/writer.h"

namespace ckpt::internal_convert {

// Bytes done out of a total, reported to a ConvertOptions-style callback;
// Add may be called from several threads (calls are serialized).
class ChunkProgress {
 public:
  explicit ChunkProgress(std::function<void(uint64_t, uint64_t)> report) : report_(std::move(report)) {}
  void set_total(uint64_t total) { total_ = total; }
  uint64_t total() const { return total_; }
  void Add(uint64_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    done_ += n;
    if (report_) report_(done_, total_);
  }
  ChunkDone AsCallback() {
    return [this](uint64_t n) { Add(n); };
  }

 private:
  std::function<void(uint64_t, uint64_t)> report_;
  std::mutex mu_;
  uint64_t total_ = 0;
  uint64_t done_ = 0;
};

// A DCP / torch_dist source's entries as stored: chunk layout, bytes items
// (their stored torch.save archives, copied), planner paths. The entry named
// `skip_key` (if non-empty) is left out.
// Errors: DataLoss naming `src` and the key when a bytes entry has no storage
// item or a tensor entry is not readable.
Result<std::vector<dcp::EntryToWrite>> DcpSourceEntries(const internal_checkpoint::DcpReader& d, const std::string& src,
                                                        const ChunkDone& on_chunk, std::string_view skip_key = {});

// One entry per tensor of `reader` (those in `subset`, in its order, or all),
// one whole chunk each, the reader's flat keys.
// Errors: DataLoss naming `src` when two tensors flatten to the same key.
Result<std::vector<dcp::EntryToWrite>> FlatTensorEntries(const CheckpointReader& reader, const std::string& src,
                                                         const ChunkDone& on_chunk,
                                                         const std::vector<size_t>* subset = nullptr);

// A bytes entry holding a Megatron ShardedObject whose data is None, as
// dist_checkpointing saves one: torch.save([None]) (the linear layers'
// `_extra_state` without FP8 metadata).
dcp::EntryToWrite NoneObjectEntry(const std::string& key);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_DCP_ENTRIES_H_
