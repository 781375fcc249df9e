// PyTorch Distributed Checkpoint (DCP) `.metadata`: the model of a DCP folder.
//
// A DCP folder (torch.distributed.checkpoint FileSystemWriter, Megatron-Core
// torch_dist) holds `.metadata`, a pickle of
// torch.distributed.checkpoint.metadata.Metadata, and data files
// `__<rank>_<n>.distcp`. ParseMetadata unpickles it with the safe unpickler
// (nothing is imported or run; unknown globals become opaque records and are
// listed, not fatal) and turns the object graph into plain structs:
//
//   state_dict_metadata: key -> TensorStorageMetadata(properties, size, chunks)
//                             | BytesStorageMetadata()
//   storage_data:        MetadataIndex(fqn, offset, index)
//                          -> _StorageInfo(relative_path, offset, length[, transform_descriptors])
//   storage_meta, version, planner_data and any extra attributes (Megatron's
//   all_local_plans, MCoreMetadata.mcore_data) are kept or listed.
//
// Accepted writers: torch 2.3 .. 2.13 (TensorProperties from
// torch.distributed.checkpoint.metadata or the older
// torch.distributed._shard.sharded_tensor.metadata; its pickled state is the
// 5-tuple (dtype, layout, requires_grad, memory_format, pin_memory) or a dict;
// dataclass state as a dict or a (None, slots) pair), Megatron-Core 0.5 ..
// 0.19 (MCoreMetadata subclass). See docs/format.md.
//
// ParseMetadata checks the structure it needs (types, ranks, non-negative
// sizes, a dtype it knows) and links every chunk and bytes entry to its
// storage item. It does NOT check that chunks tile their tensor or that items
// fit their files: that is CheckStructure (check.h), so that a damaged
// checkpoint can still be inspected.
//
// Thread-safety: Metadata is a value whose copies share one store (above):
// reading from several threads is safe, Keep is not.
#ifndef CKPT_FORMAT_DCP_METADATA_H_
#define CKPT_FORMAT_DCP_METADATA_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt::dcp {

inline constexpr char kMetadataFileName[] = ".metadata";
inline constexpr char kDataFileSuffix[] = ".distcp";
// `.metadata` larger than this is refused (ResourceExhausted).
inline constexpr uint64_t kMaxMetadataBytes = uint64_t{4} << 30;

// The numbers and names a Metadata's chunks and items view: one monotonic
// arena, released when the last Metadata sharing it goes (copies of a
// Metadata share it, so their views stay valid). Not thread-safe for Keep.
class MetadataStore {
 public:
  MetadataStore() = default;
  MetadataStore(const MetadataStore&) = delete;
  MetadataStore& operator=(const MetadataStore&) = delete;

  // A copy of `v` / `s` that lives as long as the store.
  std::span<const int64_t> Keep(std::span<const int64_t> v);
  std::span<const int64_t> Keep(std::initializer_list<int64_t> v) { return Keep(std::span(v.begin(), v.size())); }
  std::string_view Keep(std::string_view s);
  std::span<const std::string> Keep(std::vector<std::string> list);
  // n ints to fill, living as long as the store (for parsers).
  std::span<int64_t> NewInts(size_t n);

 private:
  // Bump allocation in blocks of one size (a geometric arena's last block
  // would leave up to half of a million chunks' numbers unused); a request
  // over a quarter block gets a block of its own.
  static constexpr size_t kBlock = size_t{256} << 10;
  void* Allocate(size_t n, size_t align);
  std::vector<std::unique_ptr<std::byte[]>> blocks_;  // the last one is being filled
  size_t used_ = kBlock;                              // of blocks_.back()
  std::deque<std::vector<std::string>> lists_;
};

// One chunk of a tensor. offsets and sizes view its Metadata's store (or, in a
// Chunk made by hand, storage its maker keeps alive).
struct Chunk {
  std::span<const int64_t> offsets;  // element offsets in the global tensor
  std::span<const int64_t> sizes;
  int64_t item = -1;  // index into Metadata::items, -1 when storage_data has none
};

enum class EntryType { kTensor, kBytes };

struct Entry {
  std::string key;  // the flattened FQN, e.g. "model.layers.0.weight" or "rng_state/shard_0_1"
  EntryType type = EntryType::kTensor;
  // Tensor entries.
  DType dtype = DType::kFloat32;
  std::string layout = "strided";
  bool requires_grad = false;
  int memory_format = 0;  // _MEM_FORMAT_ENCODING: 0 contiguous, 1 channels_last, 2 preserve
  bool pin_memory = false;
  std::vector<int64_t> size;  // global shape
  std::vector<Chunk> chunks;
  // Bytes entries: index into Metadata::items, -1 when storage_data has none.
  int64_t item = -1;
};

// One entry of storage_data: MetadataIndex -> _StorageInfo. The views (fqn,
// offset, relative_path, transforms) point into its Metadata's store, or, in
// an item made by hand, into storage its maker keeps alive. A million-chunk
// checkpoint holds a million of these: no member owns heap memory.
struct StorageItem {
  std::string_view fqn;
  std::span<const int64_t> offset;  // MetadataIndex.offset (the chunk's offsets) when has_offset
  std::optional<int64_t> index;
  // _StorageInfo
  std::string_view relative_path;
  uint64_t offset_in_file = 0;
  uint64_t length = 0;
  std::span<const std::string> transforms;  // transform_descriptors, e.g. "stream.zstd/1"
  int64_t entry = -1;  // index into Metadata::entries it belongs to, -1 if none
  bool has_offset = false;  // bytes items have no offset
};

struct StorageMeta {
  std::string checkpoint_id;  // str or pathlib path, as text; "" when None
  std::string save_id;
  std::string load_id;
  std::vector<std::string> modules;
};

struct Metadata {
  // What entries' chunks and items view (see MetadataStore).
  std::shared_ptr<MetadataStore> store = std::make_shared<MetadataStore>();
  std::span<const int64_t> Keep(std::span<const int64_t> v) { return store->Keep(v); }
  std::span<const int64_t> Keep(std::initializer_list<int64_t> v) { return store->Keep(v); }
  std::string_view Keep(std::string_view s) { return store->Keep(s); }

  std::string class_name;  // "torch.distributed.checkpoint.metadata.Metadata", ...
  uint64_t pickle_protocol = 0;
  std::vector<Entry> entries;   // in .metadata order
  std::vector<StorageItem> items;  // storage_data, in .metadata order
  std::optional<std::string> version;
  std::optional<StorageMeta> storage_meta;
  bool has_planner_data = false;
  // planner_data of the default planner: fqn -> the original nesting path
  // (dict keys as str, list indices as int), as dcp_to_torch_save rebuilds it.
  // Empty when planner_data is absent or of another shape.
  struct PathElem {
    bool is_index = false;
    std::string key;
    int64_t index = 0;
  };
  std::map<std::string, std::vector<PathElem>, std::less<>> planner_paths;
  // Attributes beyond the known ones (e.g. Megatron's "all_local_plans").
  std::vector<std::string> extra_attributes;
  // MCoreMetadata.mcore_data[key]["nd_reformulated_orig_global_shape"].
  std::map<std::string, std::vector<int64_t>> nd_reformulated_shapes;
  // Globals not on the allowlist met while unpickling ("module.name").
  std::vector<std::string> opaque_globals;

  // Index of key in entries, or -1.
  int64_t FindEntry(std::string_view key) const;
  std::map<std::string, int64_t, std::less<>> entry_index;  // filled by ParseMetadata
};

// Errors: DataLoss (not a pickle, a Metadata of the wrong shape: each names
// the source, the key and what was expected); Unimplemented (a tensor dtype
// ckptkit does not know); ResourceExhausted (limits); source I/O errors.
Result<Metadata> ParseMetadata(const ByteSource& src);

namespace internal_dcp {
// ParseMetadata with every object read by the unpickler's VM, none flat
// (pickle::UnpickleOptions::read_flat = false): the same result by contract;
// the dcp_metadata fuzz target and the tests compare the two.
Result<Metadata> ParseMetadataThroughTheVm(const ByteSource& src);
// Every field of md as text, one line per entry, chunk and item (for tests
// that compare two Metadata).
std::string DebugString(const Metadata& md);
}  // namespace internal_dcp

// "__3_1.distcp" -> rank 3, file 1. False for other names.
bool ParseDataFileName(std::string_view name, int64_t* rank, int64_t* file);

}  // namespace ckpt::dcp

#endif  // CKPT_FORMAT_DCP_METADATA_H_
