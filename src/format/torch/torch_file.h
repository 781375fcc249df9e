// Reading torch.save archives (torch >= 1.6 zip format).
//
// TorchFile::Open reads the zip (zip.h), takes the archive folder from the
// first entry's name (as PyTorchStreamReader does), reads `version` (or
// `.data/version`; 1..kMaxTorchFileVersion accepted), `byteorder` ("little"
// when absent; "big" files are byte-swapped by ReadTensor), `.format_version`
// and `.storage_alignment` when present, and unpickles `data.pkl` with the
// safe unpickler (no code runs in either mode). It then interprets tensor
// rebuild calls:
//   torch._utils._rebuild_tensor_v2(pid, offset, size, stride, requires_grad, hooks[, meta])
//   torch._utils._rebuild_tensor_v3(pid, offset, size, stride, requires_grad, hooks, dtype[, meta])
//   torch._utils._rebuild_tensor(pid, offset, size, stride)
//   torch._utils._rebuild_parameter(tensor, requires_grad, hooks)
//   torch._utils._rebuild_parameter_with_state(tensor, requires_grad, hooks, state)
//   torch._tensor._rebuild_from_type_v2(rebuild_fn, type, args, state)
// where pid is the persistent id ('storage', torch.<X>Storage, key, location,
// numel): numel counts elements of the storage class's dtype (bytes for
// UntypedStorage). Meta, quantized and numpy-device tensors are reported as
// non-tensor objects.
//
// Validation (DataLoss unless noted, each naming the source, the tensor key
// and the record): the persistent id is well formed; the storage class is
// known (Unimplemented otherwise); one key is not used with two storage
// classes; record `<archive>/data/<key>` exists and is exactly numel *
// element-size bytes; sizes and strides are non-negative ints of equal rank,
// storage_offset >= 0, and the tensor's extent (offset + sum((size-1)*stride)
// + 1 elements, when numel > 0; checked math) fits in the storage.
//
// Keys: tensors and other leaves are named by their path through dicts,
// lists and tuples joined with '.' (as HF/safetensors conversion expects:
// {"model": {"a": t}} -> "model.a"; list and tuple indices "0", "1"; int dict
// keys in decimal; the root itself is ""). A tensor reachable by two paths
// (tied weights) is listed under both keys, sharing one storage. Non-tensor
// objects (kObject) are leaves; tensors inside an object's BUILD state dict or
// its set items are still found ("args.some_tensor"). Empty containers are
// leaves. Cycles are cut; traversal depth and the number of leaves are capped.
//
// Legacy formats: a pre-1.6 torch.save stream (pickled magic number
// 0x1950a86a20f9469cfc6c) and the older tar format are detected and refused
// with Unimplemented ("legacy ... format; re-save it with torch >= 1.6");
// TorchScript archives (constants.pkl / code/) open like any archive with a
// data.pkl.
//
// Thread-safety: a TorchFile is immutable after Open; ReadTensor and
// ReadStorage may be called concurrently. Pointers into the Value tree and the
// records live as long as the TorchFile.
#ifndef CKPT_FORMAT_TORCH_TORCH_FILE_H_
#define CKPT_FORMAT_TORCH_TORCH_FILE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/status.h"
#include "format/pickle/unpickler.h"
#include "format/pickle/value.h"
#include "format/zip/zip.h"

namespace ckpt::torch {

// caffe2/serialize/versions.h kMaxSupportedFileFormatVersion (0xA in 2.x).
inline constexpr uint64_t kMaxTorchFileVersion = 10;
// ReadTensor hands the sink pieces of at most this many bytes.
inline constexpr size_t kReadChunkBytes = size_t{16} << 20;
// data.pkl larger than this is refused (ResourceExhausted).
inline constexpr uint64_t kMaxDataPklBytes = uint64_t{4} << 30;
// Traversal caps for flattening the tree.
inline constexpr size_t kMaxKeyDepth = 256;
// Nodes visited when flattening data.pkl into keys (shared containers count
// once per path): ResourceExhausted beyond it.
inline constexpr uint64_t kMaxFlattenSteps = uint64_t{1} << 23;

struct TorchOpenOptions {
  pickle::Mode mode = pickle::Mode::kStrict;
  // Limits for data.pkl (its `mode` is replaced by `mode` above).
  pickle::UnpickleOptions unpickle = {};
};

struct StorageRecord {
  std::string key;            // "0", as in the persistent id and data/<key>
  std::string storage_class;  // "FloatStorage", "UntypedStorage", ...
  DType dtype = DType::kUInt8;  // element type of the storage (kUInt8 for UntypedStorage)
  uint64_t numel = 0;         // from the persistent id, in elements of dtype
  uint64_t nbytes = 0;        // numel * DTypeSize(dtype) == zip record size
  std::string location;       // "cpu", "cuda:0", ...
  std::string entry_name;     // "archive/data/0"
  const zip::Entry* entry = nullptr;
  std::vector<size_t> tensors;  // indices into TorchFile::tensors() viewing it
};

struct TensorRecord {
  std::string key;              // flattened path, e.g. "model.layers.0.weight"
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<int64_t> stride;  // in elements
  int64_t storage_offset = 0;   // in elements of dtype
  size_t storage = 0;           // index into TorchFile::storages()
  bool requires_grad = false;
  bool is_parameter = false;    // wrapped in nn.Parameter
  int64_t numel = 0;
  uint64_t nbytes = 0;          // numel * DTypeSize(dtype): the contiguous form
  bool contiguous = false;      // row-major dense view (ReadTensor streams it directly)
  const pickle::Value* value = nullptr;  // the rebuild call in the tree
};

// A non-tensor leaf of the tree.
struct ObjectRecord {
  std::string key;
  std::string type;   // pickle::TypeName: "int", "argparse.Namespace", ...
  std::string repr;   // pickle::Repr, short and safe
  bool opaque = false;  // built from a global not on the allowlist (inspect mode)
  const pickle::Value* value = nullptr;
};

class TorchFile {
 public:
  // Errors: DataLoss (not a zip, missing data.pkl or version, corrupt pickle,
  // invalid tensors/storages, each naming the record or tensor and offset);
  // Unimplemented (legacy format, unknown version or storage class, a global
  // not allowed in strict mode); ResourceExhausted (limits); source I/O errors.
  static Result<std::unique_ptr<TorchFile>> Open(std::shared_ptr<const ByteSource> src,
                                                 const TorchOpenOptions& options);
  static Result<std::unique_ptr<TorchFile>> Open(std::shared_ptr<const ByteSource> src,
                                                 pickle::Mode mode = pickle::Mode::kStrict);

  std::string_view name() const { return zip_.source().Name(); }
  const std::string& archive_name() const { return archive_name_; }
  const zip::ZipReader& zip() const { return zip_; }
  uint64_t version() const { return version_; }
  // 0 when the record is absent (files before torch 2.7).
  uint64_t format_version() const { return format_version_; }
  // 64 when the record is absent.
  uint64_t storage_alignment() const { return storage_alignment_; }
  bool has_byteorder_record() const { return has_byteorder_; }
  bool big_endian() const { return big_endian_; }

  const pickle::Value* root() const { return root_; }
  const std::vector<TensorRecord>& tensors() const { return tensors_; }
  const std::vector<StorageRecord>& storages() const { return storages_; }
  const std::vector<ObjectRecord>& objects() const { return objects_; }
  // The first tensor with this key, or nullptr.
  const TensorRecord* FindTensor(std::string_view key) const;
  // The storage with this persistent-id key, or nullptr.
  const StorageRecord* FindStorage(std::string_view key) const;

  // Streams the tensor's bytes in contiguous row-major order, little-endian,
  // in pieces of at most chunk_bytes. Contiguous tensors stream straight from
  // the storage record; strided views (transposes, steps, stride-0 expands)
  // are gathered from one read of the tensor's extent (memory bounded by the
  // storage size). REQUIRES: t is one of tensors().
  // Errors: source I/O errors and zip errors with the tensor key as context;
  // ResourceExhausted if the extent cannot be allocated.
  Status ReadTensor(const TensorRecord& t, ByteSink* sink,
                    size_t chunk_bytes = kReadChunkBytes) const;

  // Streams elements [first, first + count) of `t` in row-major order:
  // for a contiguous tensor in a stored (uncompressed) little-endian record,
  // ranged reads of just those bytes (the record's CRC-32 is not checked: it
  // covers the whole record, which ReadTensor / ReadStorage verify);
  // otherwise ReadTensor's stream, filtered. REQUIRES: t is one of tensors().
  // Errors: InvalidArgument when the range is outside the tensor; as ReadTensor.
  Status ReadTensorElements(const TensorRecord& t, uint64_t first, uint64_t count, ByteSink* sink) const;

  // Streams a storage record's raw bytes as stored (file byte order) in the
  // zip layer's bounded pieces, verifying its CRC-32 at the end.
  // Errors: DataLoss on a CRC mismatch (naming the record); as ReadTensor.
  Status ReadStorage(const StorageRecord& s, ByteSink* sink) const;

 private:
  friend class TorchFileBuilder;
  explicit TorchFile(zip::ZipReader zip) : zip_(std::move(zip)) {}

  zip::ZipReader zip_;
  std::string archive_name_;
  uint64_t version_ = 0;
  uint64_t format_version_ = 0;
  uint64_t storage_alignment_ = 64;
  bool has_byteorder_ = false;
  bool big_endian_ = false;
  std::unique_ptr<pickle::Arena> arena_;
  const pickle::Value* root_ = nullptr;
  std::vector<TensorRecord> tensors_;
  std::vector<StorageRecord> storages_;
  std::vector<ObjectRecord> objects_;
  std::unordered_map<std::string, size_t> storage_index_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

// Tells a torch.save zip, a legacy torch.save stream, a legacy tar and
// anything else apart from the first bytes (for sniffers).
enum class TorchFormat { kZip, kLegacyPickle, kLegacyTar, kTorchScriptV1, kUnknown };
TorchFormat DetectTorchFormat(const ByteSource& src);

}  // namespace ckpt::torch

#endif  // CKPT_FORMAT_TORCH_TORCH_FILE_H_
