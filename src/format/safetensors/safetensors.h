// Reading and writing safetensors files and sharded safetensors indexes.
//
// Byte layout (huggingface/safetensors, safetensors/src/tensor.rs):
//
//   [0, 8)          u64 little-endian N: the header length
//   [8, 8+N)        UTF-8 JSON object, padded with spaces so N % 8 == 0 (writer)
//                   {"__metadata__": {"k": "v", ...},            (optional)
//                    "<name>": {"dtype": "F32", "shape": [2, 3],
//                               "data_offsets": [begin, end]}, ...}
//   [8+N, EOF)      data section; [begin, end) are relative to 8+N
//
// ReadHeader validates as strictly as the Rust reference (read_metadata,
// Metadata::validate) and a little stricter where noted: N <= 100,000,000
// (HeaderTooLarge); 8+N <= file size (InvalidHeaderLength); UTF-8
// (InvalidHeader); a JSON object (InvalidHeaderDeserialization); each tensor
// entry has exactly dtype, shape and data_offsets; shape holds non-negative
// integers; sorted by offsets the ranges start at 0, touch, never overlap
// (InvalidOffset); end - begin == numel * bits / 8, overflow-checked
// (TensorInvalidInfo, ValidationOverflow, MisalignedSlice for 4-bit types);
// the last end is the end of the file (MetadataIncompleteBuffer). Stricter than
// the reference: duplicate keys (the reference keeps the last one), unknown
// fields in a tensor entry (the reference ignores them) and non-whitespace
// before the JSON are rejected.
// Every error message starts with the Rust error name, e.g.
//   "model.safetensors: InvalidOffset: tensor 'b': data_offsets [8, 12] ..."
//
// The writer reproduces safetensors.torch.save_file byte for byte: tensors
// sorted by dtype alignment descending (the Rust Dtype enum order), then by
// name; compact JSON with "__metadata__" first and each entry's keys in the
// order dtype, shape, data_offsets; spaces to a multiple of 8. One difference:
// safetensors 0.8.0 writes the metadata map in Rust HashMap order, which
// varies run to run; we write it sorted by key (identical whenever it has at
// most one key).
//
// Thread-safety: all functions are reentrant; a Writer's callbacks run on the
// calling thread.
#ifndef CKPT_FORMAT_SAFETENSORS_SAFETENSORS_H_
#define CKPT_FORMAT_SAFETENSORS_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt::safetensors {

inline constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // MAX_HEADER_SIZE
inline constexpr size_t kMaxJsonDepth = 64;                // serde_json stops at 128

// One tensor as the header describes it.
struct TensorEntry {
  std::string name;
  DType dtype = DType::kFloat32;
  std::string dtype_name;       // as in the file: "F32", "F8_E4M3", "F4", ...
  std::vector<int64_t> shape;   // as in the file; for F4 it counts 4-bit values
  uint64_t begin = 0;           // data_offsets, relative to Header::data_start
  uint64_t end = 0;
  uint64_t nbytes() const { return end - begin; }
};

struct Header {
  // Sorted by data_offsets (the order of the data section); zero-size tensors
  // sharing an offset are ordered by name.
  std::vector<TensorEntry> tensors;
  bool has_metadata = false;                    // "__metadata__" present and not null
  std::map<std::string, std::string> metadata;  // "__metadata__"
  uint64_t header_size = 0;                     // N
  uint64_t data_start = 0;                      // 8 + N

  // nullptr if absent. Linear in the number of tensors.
  const TensorEntry* Find(std::string_view name) const;
};

// Parses and validates the header of a whole safetensors file (src is the
// entire file: the data section must end exactly at src.Size()).
// Errors: DataLoss for every violation listed above, naming the source, the
// Rust error name, the tensor and the offsets; Unimplemented for a dtype
// string we cannot map to a torch dtype (unknown, or F6_E2M3/F6_E3M2);
// ResourceExhausted if the header cannot be allocated; I/O errors from src.
Result<Header> ReadHeader(const ByteSource& src);

// The torch shape of an entry: the file shape, except F4 (float4_e2m1fn_x2,
// two values per byte) whose last dimension is halved, as safetensors.torch
// does. Errors: DataLoss if an F4 entry has no dims or an odd last dim.
Result<std::vector<int64_t>> TorchShape(const TensorEntry& entry);

// ------------------------------------------------------------------ writing

// A tensor to write, described as torch sees it.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;  // torch shape (F4: packed pairs, as torch)
};

// The header bytes and data order that safetensors' prepare() produces.
struct Plan {
  std::string header_bytes;  // u64 N + JSON + padding: the first 8+N bytes of the file
  std::vector<size_t> order; // indices into the specs, in data-section order
  Header header;             // what ReadHeader will return for the file
  uint64_t file_size = 0;    // 8 + N + sum of tensor bytes
};

// Orders the tensors and serializes the header. metadata nullopt writes no
// "__metadata__" key (save_file(metadata=None)); an empty map writes "{}".
// Errors: InvalidArgument for an empty or duplicate name, "__metadata__" as a
// tensor name, a name or metadata string that is not UTF-8, a negative or
// overflowing shape, a dtype safetensors cannot store (complex128, complex32,
// quantized, bits), or an F4 tensor with no dims.
Result<Plan> PlanFile(std::span<const TensorSpec> specs,
                      const std::optional<std::map<std::string, std::string>>& metadata);

// Streams one tensor's bytes (exactly its numel * element size bytes).
using TensorWriteFn = std::function<Status(ByteSink*)>;

struct WriteEntry {
  TensorSpec spec;
  TensorWriteFn write;
};

// Writes a whole safetensors file to sink: the planned header, then each
// tensor's bytes in data order via its callback.
// Errors: as PlanFile; InvalidArgument naming the tensor if a callback writes
// more or fewer bytes than declared; errors from callbacks and the sink.
Status WriteFile(std::span<const WriteEntry> entries,
                 const std::optional<std::map<std::string, std::string>>& metadata,
                 ByteSink* sink);

// ------------------------------------------------------------ sharded sets

// model.safetensors.index.json / pytorch_model.bin.index.json:
//   {"metadata": {"total_size": N, ...}, "weight_map": {"<tensor>": "<file>", ...}}
struct ShardIndex {
  nlohmann::json metadata = nlohmann::json::object();  // the "metadata" object
  // tensor name -> shard file, sorted by tensor name.
  std::vector<std::pair<std::string, std::string>> weight_map;

  // metadata["total_size"] if it is a non-negative integer.
  std::optional<uint64_t> total_size() const;
  // Distinct shard file names, sorted.
  std::vector<std::string> Files() const;
  // nullptr if the tensor is not in the map.
  const std::string* FileOf(std::string_view tensor) const;
};

// Parses an index. Unknown top-level keys and metadata keys are kept/ignored;
// "weight_map" is required. Every file must be a plain name in the index's
// folder: non-empty, no '/' or '\\', not "." or "..", no NUL (a hostile index
// must not reach outside its folder).
// Errors: DataLoss naming source_name for invalid UTF-8 or JSON, a duplicate
// key anywhere, a missing or non-object weight_map, a non-string or non-plain
// file name.
Result<ShardIndex> ParseIndex(std::string_view json_text, std::string_view source_name);

// Serializes as transformers' save_pretrained does:
// json.dumps(index, indent=2, sort_keys=True) + "\n" (Python's ensure_ascii
// escaping, ", " / ": " separators). Floats in metadata use nlohmann's
// shortest form. Errors: InvalidArgument for invalid UTF-8 in a string.
Result<std::string> SerializeIndex(const ShardIndex& index);

// One tensor for the shard planner.
struct ShardTensor {
  std::string name;
  uint64_t nbytes = 0;
  // Tensors with the same non-negative group share a storage (tied weights,
  // torch shards): they follow the group's first tensor and count once.
  int64_t storage_group = -1;
};

struct ShardPlanOptions {
  uint64_t max_shard_size = 5'000'000'000;  // huggingface_hub default "5GB"
  std::string prefix = "model";             // "pytorch_model" for .bin shards
  std::string extension = ".safetensors";   // ".bin" for torch shards
};

struct ShardPlan {
  // Shards in file-number order: file name and indices into the input, in
  // input order within a shard.
  std::vector<std::pair<std::string, std::vector<size_t>>> shards;
  uint64_t total_size = 0;  // sum of nbytes, shared storages counted once
  // The index for these shards: metadata {"total_size": total_size}.
  ShardIndex Index(std::span<const ShardTensor> tensors) const;
};

// Groups tensors into shards exactly as
// huggingface_hub.split_torch_state_dict_into_shards: walk the tensors in
// order; one larger than max_shard_size gets a shard of its own (appended
// right away, before the shard being filled); otherwise start a new shard when
// adding it would pass max_shard_size. Files are
// "<prefix>-00001-of-0000N<extension>", or "<prefix><extension>" when there is
// a single shard. Errors: InvalidArgument for duplicate names or an empty
// prefix.
Result<ShardPlan> PlanShards(std::span<const ShardTensor> tensors, const ShardPlanOptions& options);

}  // namespace ckpt::safetensors

#endif  // CKPT_FORMAT_SAFETENSORS_SAFETENSORS_H_
