// Opening any checkpoint path through one interface.
//
// OpenCheckpoint sniffs the path (a torch.save zip `.pt`/`.bin`, a
// `.safetensors` file, a sharded `*.safetensors.index.json` or
// `pytorch_model.bin.index.json`, a folder holding one of those, a DCP /
// torch_dist folder, or a Megatron-LM legacy iteration folder of mp_rank_*
// folders; a Megatron root is followed through its tracker file) and returns
// a CheckpointReader that lists the tensors and streams each one as
// contiguous, row-major, little-endian bytes. Reading metadata never reads
// tensor data; reading one tensor touches only its bytes.
//
// Code that treats sources differently asks the reader what it is (kind())
// and for the view it needs (dcp_view(), torch_file(), legacy_view()), never casts it or
// compares format() strings: format() is a display name.
//
// Thread-safety: a CheckpointReader is immutable after opening; ReadTensor may
// be called concurrently.
#ifndef CKPT_CHECKPOINT_H_
#define CKPT_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt {

// The typed views a reader may offer (see CheckpointReader::dcp_view and
// torch_file, legacy_view). Their definitions are internal to the library
// (src/checkpoint/dcp_reader.h, src/format/torch/torch_file.h,
// src/checkpoint/legacy_reader.h): outside it
// they are opaque.
namespace internal_checkpoint {
class DcpReader;
class LegacyReader;
}  // namespace internal_checkpoint
namespace torch {
class TorchFile;
}  // namespace torch

// What a reader reads: the key on which code that handles sources
// differently dispatches (Convert keeps a DCP source's chunk layout and a
// torch.save file's object tree).
enum class SourceKind {
  kTorchFile,    // one torch.save zip archive (format() "torch"); torch_file() is set
  kSafetensors,  // one .safetensors file
  kSharded,      // a *.index.json set of safetensors or torch.save shards
  kDcp,          // a torch.distributed.checkpoint folder; dcp_view() is set
  kTorchDist,    // a Megatron-Core torch_dist folder (DCP + metadata.json, common state); dcp_view() is set
  kLegacy,       // a Megatron-LM legacy (--ckpt-format torch) iteration folder of mp_rank_* folders
                 // (format() "megatron-legacy"); legacy_view() is set
};

// How the unpickler treats globals that are not on the allowlist.
enum class PickleMode {
  kStrict,   // reject with an error naming the global and the byte offset
  kInspect,  // keep as an opaque record (module, name, args) that can be shown
};

struct OpenOptions {
  Env* env = nullptr;  // nullptr: Env::Default()
  PickleMode pickle_mode = PickleMode::kStrict;
};

// One stored piece of a tensor (a DCP chunk): the box [offsets, offsets+sizes)
// of the global tensor and where its bytes are. offsets, sizes and file view
// storage of the reader that made it (a checkpoint of a million chunks lists a
// million of these): valid while that reader lives.
struct ChunkInfo {
  std::span<const int64_t> offsets;
  std::span<const int64_t> sizes;
  std::string_view file;  // file name relative to the checkpoint folder
  uint64_t offset = 0;    // byte range of the stored item in `file`
  uint64_t length = 0;
};

// One tensor as a reader exposes it.
struct TensorInfo {
  std::string key;  // flattened name: nested containers joined by '.'
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  uint64_t nbytes = 0;  // numel * DTypeSize: what ReadTensor produces

  // Where the bytes are, as the source format describes them (for inspect).
  std::string file;           // file holding the data (sharded formats), else ""
  std::string storage;        // torch: storage key ("0", "1", ...); safetensors: ""
  std::vector<int64_t> stride;  // torch: element strides; else empty (contiguous)
  int64_t storage_offset = 0;   // torch: in elements
  uint64_t data_offset = 0;     // byte offset of the first element's storage in `file`
  bool requires_grad = false;
  bool is_parameter = false;
  // DCP / torch_dist: the stored chunks (global shape = `shape`). Empty for
  // single-file formats, where the tensor is one piece. They view the reader's
  // storage: a copy of a TensorInfo is valid while the reader that made it lives.
  std::vector<ChunkInfo> chunks;
};

// A non-tensor leaf (int, string, Namespace, opaque object, ...), shown safely.
struct ObjectInfo {
  std::string key;
  std::string type;  // "int", "str", "argparse.Namespace", "opaque os.system", ...
  std::string repr;  // a short, safe rendering
  bool opaque = false;  // its global is not on the allowlist
};

class CheckpointReader {
 public:
  virtual ~CheckpointReader() = default;

  // What this reader reads; fixed for its lifetime.
  virtual SourceKind kind() const = 0;
  // A name to show: "torch", "safetensors", "safetensors-sharded",
  // "torch-sharded", "dcp", "megatron-torch_dist", "megatron-legacy". Dispatch on kind().
  virtual std::string_view format() const = 0;
  virtual const std::vector<TensorInfo>& tensors() const = 0;
  virtual const std::vector<ObjectInfo>& objects() const = 0;
  // Format details for `inspect --json` (safetensors __metadata__, shared
  // storages, torch archive records, ...). Never holds tensor data.
  virtual nlohmann::json Details() const = 0;

  // Streams tensor i's nbytes bytes (contiguous, row-major, little-endian)
  // to out in bounded pieces. Errors name the file, the tensor key and the offset.
  virtual Status ReadTensor(size_t i, ByteSink* out) const = 0;

  // Streams the box [start, start+count) of tensor i (row-major within the
  // box, little-endian; start.size() == count.size() == rank). The default
  // filters ReadTensor's stream, so memory stays bounded; readers of chunked
  // formats override it to read only the chunks that overlap the box.
  // Errors: InvalidArgument if the box is not inside the tensor; as ReadTensor.
  virtual Status ReadTensorRegion(size_t i, std::span<const int64_t> start,
                                  std::span<const int64_t> count, ByteSink* out) const;

  // Index of key in tensors(); NotFound otherwise.
  Result<size_t> Find(std::string_view key) const;

  // Typed views, for code inside the library. Each is non-null exactly for
  // the kinds named; it points into this reader (same lifetime, same
  // thread-safety) and never transfers ownership.
  //
  // kDcp, kTorchDist: the DCP folder behind the reader (its .metadata
  // entries and chunks, data files, bytes items), which is this reader.
  virtual const internal_checkpoint::DcpReader* dcp_view() const { return nullptr; }
  // kTorchFile: the torch.save archive with its whole object tree
  // (non-tensor objects, opaque records, shared storages, views).
  virtual const torch::TorchFile* torch_file() const { return nullptr; }
  // kLegacy: the rank grid, per-rank torch.save files (opened on demand),
  // parsed distrib_optim.pt buffers and rank 0's common state.
  virtual const internal_checkpoint::LegacyReader* legacy_view() const { return nullptr; }
};

Result<std::unique_ptr<CheckpointReader>> OpenCheckpoint(const std::string& path,
                                                         const OpenOptions& options = {});

}  // namespace ckpt

#endif  // CKPT_CHECKPOINT_H_
