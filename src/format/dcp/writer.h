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
//    round-robin over N buckets, then tensor items sorted by `_item_size`,
//    largest first (a stable sort), each into the currently lightest bucket
//    (the first of equals), the bucket's weight growing by `_item_size`.
//    `_item_size` is the WHOLE tensor's byte size (the WriteItem's
//    tensor_data.size is the global size) times the element size, not the
//    chunk's: every chunk of one tensor weighs the same. Bucket i is
//    `__<rank>_<i>.distcp`; an empty bucket is still a (0-byte) file.
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
//    the entry's path tuple. MetadataLayout selects what older torch can
//    unpickle (see there).
//
// Deterministic: the same entries and options give the same bytes (save_id is
// derived from the content, no clock or uuid).
//
// Thread-safety: stateless functions; callbacks run on the calling thread.
// WriteDcpDataFile may run concurrently for different files of one plan (as
// src/checkpoint/dcp_writer.h does): it only reads `entries`, so it is as
// safe as the callbacks are.
#ifndef CKPT_FORMAT_DCP_WRITER_H_
#define CKPT_FORMAT_DCP_WRITER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
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

// Which `.metadata` object graph to write: what a torch release can unpickle.
// Every layout loads in torch 2.13 (tests/interop/test_dcp_write.py); the
// data files are the same for all. Named by the oldest torch each serves.
enum class MetadataLayout {
  // torch >= 2.4 (what 2.13 writes): with `storage_meta` (a StorageMeta) and
  // `version` "1.0.0".
  kTorch2_13,
  // torch >= 2.3: no `storage_meta` and no `version` attribute. StorageMeta
  // was added in torch 2.4 (pytorch PR 124772), so unpickling the default
  // layout in 2.3 fails (AttributeError on the missing class); `version` is
  // harmless to 2.3 but omitted, as 2.3 itself writes neither. torch >= 2.4
  // reads a checkpoint without them (FileSystemReader sets a fresh
  // StorageMeta).
  kTorch2_3,
  // torch >= 2.0: as kTorch2_3, and TensorProperties and its memory-format
  // enum under their pre-2.3 names
  // `torch.distributed._shard.sharded_tensor.metadata.{TensorProperties,
  // MEM_FORMAT_ENCODING}` (DCP got its own copies, `_MEM_FORMAT_ENCODING`,
  // in pytorch PR 116248, first released in 2.3); same 5-tuple state.
  kTorch2_0,
};
inline constexpr int kNumMetadataLayouts = 3;
// "torch2.13", "torch2.3", "torch2.0" (for messages and the CLI).
std::string_view MetadataLayoutName(MetadataLayout layout);
// Inverse of MetadataLayoutName. Errors: InvalidArgument naming the choices.
Result<MetadataLayout> ParseMetadataLayout(std::string_view name);

struct DcpWriteOptions {
  int64_t rank = 0;          // file names __<rank>_<n>.distcp
  int64_t thread_count = 1;  // number of data files (>= 1)
  // StorageMeta.checkpoint_id: nullopt pickles None. Not written by layouts
  // without storage_meta.
  std::optional<std::string> checkpoint_id;
  MetadataLayout metadata_layout = MetadataLayout::kTorch2_13;
  // WriteDcpCheckpoint (src/checkpoint/dcp_writer.h) only: write the data
  // files concurrently, up to thread_count at a time. The callbacks then run
  // on several threads at once and must be thread-safe. The bytes written do
  // not depend on it. The format functions here ignore it.
  bool parallel = true;
  // WriteDcpCheckpoint only: data files around the page cache (O_DIRECT,
  // Env::NewDirectWritableFile) where the file system allows. The bytes
  // written do not depend on it.
  bool direct_io = true;
};

// Largest thread_count accepted (files per rank).
inline constexpr int64_t kMaxThreadCount = 1024;

struct PlannedItem {
  size_t entry = 0;
  int64_t chunk = -1;  // -1 for a bytes entry
  uint64_t size = 0;   // the tensor chunk's bytes (what the callback streams); 0 for bytes
  // torch's `_item_size`: the whole tensor's bytes (numel(size) * element
  // size), the sort key and bucket weight; 0 for bytes.
  uint64_t weight = 0;
};

struct PlannedFile {
  std::string name;                // "__0_1.distcp"
  std::vector<PlannedItem> items;  // in write order (bytes first)
};

// Validates entries and assigns items to files.
// Errors: InvalidArgument (empty or duplicate key, thread_count outside
// [1, kMaxThreadCount], negative rank, a chunk whose rank differs from the
// tensor's or that lies outside it, a negative size, a tensor whose byte size
// overflows 64 bits, a missing callback, a quantized or bits dtype DCP cannot
// plan, chunks that do not tile the tensor exactly once: each names the key).
Result<std::vector<PlannedFile>> PlanDcpWrite(std::span<const EntryToWrite> entries,
                                              const DcpWriteOptions& options);

// Where one item went (input to the .metadata).
struct WrittenItem {
  size_t entry = 0;
  int64_t chunk = -1;
  std::string relative_path;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t xxh3 = 0;  // XXH3_64bits of the item's stored bytes (manifest.h)
};

// Writes one planned file's items to sink (which must start at position 0 of
// the file) and appends where each went to `written`. `digest` (if non-null)
// is updated with each item's ItemDigest (its length and the XXH3 of its
// bytes, so the file's content decides it at XXH3's speed; an FNV over every
// byte held a writer thread to about 1 GB/s); start it at kFnvOffset for each
// file and combine the files' digests in plan order with
// CombineFileDigests for SerializeDcpMetadata, so that files can be written in
// any order or concurrently and give the same save_id.
// Errors: InvalidArgument when a callback streams a different byte count
// than its chunk holds (naming key and chunk offsets); callback and sink
// errors, prefixed with the file, key and chunk.
Status WriteDcpDataFile(std::span<const EntryToWrite> entries, const PlannedFile& file, ByteSink* sink,
                        std::vector<WrittenItem>* written, uint64_t* digest = nullptr);

// The checksum manifest (manifest.h) of `written`: one per set of data files
// of one prefix, written beside them before `.metadata`.
std::string SerializeManifestOf(std::span<const WrittenItem> written);

// The .metadata pickle for entries whose items are all in `written`.
// save_id (kTorch2_13 layout only) is derived from the metadata and
// `content_digest` (CombineFileDigests of the data files).
// Errors: InvalidArgument when an item of an entry is missing from written or
// options.metadata_layout is not a MetadataLayout; pickler errors (Internal).
Result<std::string> SerializeDcpMetadata(std::span<const EntryToWrite> entries,
                                         std::span<const WrittenItem> written,
                                         const DcpWriteOptions& options, uint64_t content_digest);

// FNV-1a 64 over data, continuing from h (start with kFnvOffset).
inline constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
uint64_t Fnv1a64(uint64_t h, std::string_view data);
// Fnv1a64 over an item's length and XXH3, 8 bytes each, little-endian.
uint64_t ItemDigest(uint64_t h, uint64_t length, uint64_t xxh3);

// The content digest of a checkpoint: Fnv1a64 over each file's digest (8
// bytes, little-endian), in plan order.
uint64_t CombineFileDigests(std::span<const uint64_t> file_digests);

}  // namespace ckpt::dcp

#endif  // CKPT_FORMAT_DCP_WRITER_H_
