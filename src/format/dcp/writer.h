// Writing a PyTorch Distributed Checkpoint (DCP) as one offline process:
// the `.distcp` data files and the `.metadata` pickle, as torch 2.13's
// FileSystemWriter(single_file_per_rank=True) writes them for rank 0.
//
// Pure format code: data files go to a ByteSink, `.metadata` to a string;
// src/checkpoint/dcp_writer.h publishes them through an Env.
//
// What torch does and this code reproduces (filesystem.py, default_planner.py):
//  - Plan: items in entry order (a bytes entry is one item, a tensor one item
//    per chunk). With thread_count == 1 every item goes to `__<rank>_0.distcp`
//    in that order; with N > 1, `_split_by_size_and_type`: bytes items
//    round-robin over N buckets, then tensor items sorted by byte size,
//    largest first (a stable sort), each into the currently lightest bucket
//    (the first of equals). Bucket i is `__<rank>_<i>.distcp`; an empty bucket
//    is still a (0-byte) file.
//  - A file holds its bytes items first, then its tensor items, each in
//    bucket order, back to back.
//  - A tensor chunk is `torch.save(chunk)` of a fresh contiguous tensor
//    (archive name "archive", requires_grad False): byte-identical to what
//    torch writes for a contiguous chunk. A bytes item is streamed as given
//    (the caller supplies torch.save(obj)'s archive).
//  - `.metadata`: Metadata(state_dict_metadata, planner_data, storage_data,
//    storage_meta, version "1.0.0") pickled with protocol 2 (torch uses the
//    default protocol 4; `pickle.load` accepts both). Classes and state shapes
//    as docs/format.md §8.2: NEWOBJ + BUILD dict, TensorProperties 5-tuple
//    with _get_layout('torch.strided') and _MEM_FORMAT_ENCODING(0), chunk
//    MetadataIndex {fqn, index, offset}, bytes MetadataIndex {fqn, index:
//    None}, storage_data in write order (file by file), planner_data fqn ->
//    the entry's path tuple.
//
// Deterministic: the same entries and options give the same bytes (save_id is
// derived from the content, no clock or uuid).
//
// Thread-safety: stateless functions; callbacks run on the calling thread.
#ifndef CKPT_FORMAT_DCP_WRITER_H_
#define CKPT_FORMAT_DCP_WRITER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/status.h"
#include "format/dcp/metadata.h"

namespace ckpt::dcp {

// One stored piece of a tensor: the box [offsets, offsets+sizes) of the
// global tensor; `write` streams its row-major little-endian bytes
// (numel(sizes) * element size).
struct ChunkToWrite {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
  std::function<Status(ByteSink*)> write;
};

// A state-dict entry to write: a tensor (dtype, global size, chunks) or a
// bytes entry (`write_bytes` streams the item exactly as it is to be stored:
// torch.save(obj) of the value, as DCP's planner serializes non-tensors).
struct EntryToWrite {
  std::string key;  // the flattened FQN
  EntryType type = EntryType::kTensor;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> size;
  std::vector<ChunkToWrite> chunks;
  std::function<Status(ByteSink*)> write_bytes;
  // planner_data path; empty means (key,).
  std::vector<Metadata::PathElem> path;
};

struct DcpWriteOptions {
  int64_t rank = 0;          // file names __<rank>_<n>.distcp
  int64_t thread_count = 1;  // number of data files (>= 1)
  // StorageMeta.checkpoint_id: nullopt pickles None.
  std::optional<std::string> checkpoint_id;
};

// Largest thread_count accepted (files per rank).
inline constexpr int64_t kMaxThreadCount = 1024;

struct PlannedItem {
  size_t entry = 0;
  int64_t chunk = -1;  // -1 for a bytes entry
  uint64_t size = 0;   // tensor chunk bytes (torch's _item_size); 0 for bytes
};

struct PlannedFile {
  std::string name;                // "__0_1.distcp"
  std::vector<PlannedItem> items;  // in write order (bytes first)
};

// Validates entries and assigns items to files.
// Errors: InvalidArgument (empty or duplicate key, thread_count outside
// [1, kMaxThreadCount], negative rank, a chunk whose rank differs from the
// tensor's or that lies outside it, a negative size, a missing callback, a
// quantized or bits dtype DCP cannot plan, chunks that do not tile the tensor
// exactly once: each names the key).
Result<std::vector<PlannedFile>> PlanDcpWrite(std::span<const EntryToWrite> entries,
                                              const DcpWriteOptions& options);

// Where one item went (input to the .metadata).
struct WrittenItem {
  size_t entry = 0;
  int64_t chunk = -1;
  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
};

// Writes one planned file's items to sink (which must start at position 0 of
// the file) and appends where each went to `written`. `digest` (if non-null)
// is updated with a 64-bit hash of the bytes written, for save_id.
// Errors: InvalidArgument when a callback streams a different byte count
// than its chunk holds (naming key and chunk offsets); callback and sink
// errors, prefixed with the file, key and chunk.
Status WriteDcpDataFile(std::span<const EntryToWrite> entries, const PlannedFile& file, ByteSink* sink,
                        std::vector<WrittenItem>* written, uint64_t* digest = nullptr);

// The .metadata pickle for entries whose items are all in `written`.
// `save_id` nullopt: derived from the metadata and `content_digest`.
// Errors: InvalidArgument when an item of an entry is missing from written;
// pickler errors (Internal).
Result<std::string> SerializeDcpMetadata(std::span<const EntryToWrite> entries,
                                         std::span<const WrittenItem> written,
                                         const DcpWriteOptions& options, uint64_t content_digest);

// FNV-1a 64 over data, continuing from h (start with kFnvOffset).
inline constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
uint64_t Fnv1a64(uint64_t h, std::string_view data);

}  // namespace ckpt::dcp

#endif  // CKPT_FORMAT_DCP_WRITER_H_
