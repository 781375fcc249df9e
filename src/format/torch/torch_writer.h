// Writing torch.save archives, byte-identical to torch 2.13's torch.save for
// the same objects.
//
// Layout (caffe2/serialize/inline_container.cc, torch/serialization.py _save):
// records in torch's order
//   <archive>/data.pkl, .format_version ("1"), .storage_alignment ("64"),
//   byteorder ("little"), data/0 .. data/N-1, version ("3\n"),
//   .data/serialization_id
// through zip::ZipWriter (stored, FB padding to 64-byte aligned payloads, data
// descriptors, ZIP64 when needed), so the output loads with
// torch.load(weights_only=True), torch.load(mmap=True), with
// calculate_storage_offsets=True and TORCH_SERIALIZATION_DEBUG=1.
//
// .data/serialization_id is computed as PyTorchStreamWriter::writeSerializationId
// does: 20 digits of hash_combine over std::hash<std::string> of the record
// names, iterated in std::unordered_set<std::string> order (libstdc++, same
// insertion order as torch), then 20 digits of hash_combine over each record's
// data-descriptor CRC-32 in write order (empty records have no descriptor;
// a payload that itself begins with the descriptor signature PK\7\b is
// counted too, as ostream_write_func sees it). With that, WriteStateDict and
// RewriteTorchFile reproduce torch.save's bytes exactly, including the id.
// Deterministic: no clock, no randomness.
//
// Streaming: tensor and storage bytes come from callbacks, one at a time, so
// memory stays bounded by the pickle plus the callback's own buffers.
//
// Thread-safety: functions are reentrant; callbacks run on the calling thread.
#ifndef CKPT_FORMAT_TORCH_TORCH_WRITER_H_
#define CKPT_FORMAT_TORCH_TORCH_WRITER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/status.h"
#include "format/torch/torch_file.h"

namespace ckpt::torch {

struct TorchWriteOptions {
  // Folder of every record. torch.save(obj, "dir/model.pt") uses the file's
  // stem ("model"); torch.save to a buffer (and every DCP chunk) uses "archive".
  std::string archive_name = "archive";
  uint64_t storage_alignment = 64;
  // "little" or "big": what the `byteorder` record says. Storage bytes are
  // written as given; only RewriteTorchFile of a big-endian file uses "big".
  std::string byteorder = "little";
};

// One storage record: `write` must stream exactly nbytes.
struct StorageToWrite {
  uint64_t nbytes = 0;
  std::function<Status(ByteSink*)> write;
};

// Writes the records around an already pickled data.pkl whose persistent ids
// name storages "0".."N-1" in order.
// Errors: InvalidArgument for bad options or a callback writing a different
// byte count (naming the storage key); errors from the callbacks and the sink.
Status WriteTorchArchive(std::string_view data_pkl, std::span<const StorageToWrite> storages,
                         ByteSink* sink, const TorchWriteOptions& options = {});

// A tensor for WriteStateDict: a contiguous tensor of `shape`, whose
// row-major little-endian bytes (numel * DTypeSize(dtype) == nbytes) `write`
// streams.
struct TensorToSave {
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;
  std::function<Status(ByteSink*)> write;
  bool requires_grad = false;
};

// A (possibly nested) dict of tensors in insertion order. `ordered` selects
// collections.OrderedDict (as module.state_dict() returns) over a plain dict
// (as safetensors.torch.load_file returns).
class StateDict {
 public:
  explicit StateDict(bool ordered = false) : ordered_(ordered) {}
  StateDict(StateDict&&) = default;
  StateDict& operator=(StateDict&&) = default;

  // Errors: InvalidArgument for a duplicate key, a negative dim, or nbytes !=
  // numel * element size; Unimplemented for a quantized dtype.
  Status AddTensor(std::string key, TensorToSave tensor);
  // Adds a nested dict under key. Errors: InvalidArgument for a duplicate key.
  Result<StateDict*> AddDict(std::string key, bool ordered = false);

  bool ordered() const { return ordered_; }
  size_t size() const { return entries_.size(); }

 private:
  friend class StateDictPickler;
  struct Entry {
    std::string key;
    std::unique_ptr<TensorToSave> tensor;  // exactly one of tensor / dict
    std::unique_ptr<StateDict> dict;
  };
  bool ordered_;
  std::vector<Entry> entries_;
};

// Writes sd as torch.save(sd) would: each tensor gets its own storage
// (_rebuild_tensor_v2 with the legacy storage class, or _rebuild_tensor_v3 with
// UntypedStorage for dtypes without one), keys "0".. in order of appearance.
// Errors: as WriteTorchArchive.
Status WriteStateDict(const StateDict& sd, ByteSink* sink, const TorchWriteOptions& options = {});

// Writes an opened file back out: the same tree (folded values re-spelled,
// opaque objects unchanged), the same storages (shared storages written once,
// renumbered "0".. in order of first appearance, bytes copied as stored), the
// source's byteorder. A file written by torch.save comes back byte for byte
// when options.archive_name is its archive name.
// Errors: FailedPrecondition if a persistent id names no known storage; as
// WriteTorchArchive otherwise.
Status RewriteTorchFile(const TorchFile& in, ByteSink* sink, const TorchWriteOptions& options = {});

// The value of .data/serialization_id for records (name without the archive
// folder, CRC-32, size, first 8 payload bytes) in write order. Exposed for tests.
struct RecordDigest {
  std::string name;
  uint32_t crc32 = 0;
  uint64_t size = 0;
  std::string head;  // up to the first 8 bytes of the payload
};
std::string TorchSerializationId(std::span<const RecordDigest> records);

}  // namespace ckpt::torch

#endif  // CKPT_FORMAT_TORCH_TORCH_WRITER_H_
