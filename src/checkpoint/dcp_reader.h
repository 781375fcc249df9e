// CheckpointReader over a PyTorch DCP folder (FileSystemWriter layout) and,
// when `metadata.json` is present, a Megatron-Core torch_dist iteration
// folder (internal to the checkpoint layer).
//
// Open reads `.metadata`, lists the data files with their sizes, runs
// dcp::CheckStructure (so a damaged checkpoint still opens and shows its
// problems) and, for small bytes entries, decodes their embedded archives in
// inspect mode so objects() can show them. Tensor reads assemble the global
// tensor from its chunks, reading only the chunks a region touches; a tensor
// whose chunks do not tile it exactly is refused (DataLoss), never returned
// with holes.
//
// Thread-safety: immutable after Open except an internal, mutex-guarded cache
// of open data files; all reads may run concurrently.
#ifndef CKPT_CHECKPOINT_DCP_READER_H_
#define CKPT_CHECKPOINT_DCP_READER_H_

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "format/dcp/check.h"
#include "format/dcp/item.h"
#include "format/dcp/metadata.h"

namespace ckpt::internal_checkpoint {

// Total payload of bytes entries that Open decodes for objects(); beyond it
// objects() shows their sizes only.
inline constexpr uint64_t kMaxDecodedObjectBytes = uint64_t{64} << 20;

class DcpReader : public CheckpointReader {
 public:
  // Errors: NotFound (no .metadata; DataLoss instead when data files exist
  // without it: an unfinished save); as dcp::ParseMetadata; I/O errors.
  static Result<std::unique_ptr<DcpReader>> Open(const std::string& folder, const OpenOptions& options);

  SourceKind kind() const override { return kind_; }
  std::string_view format() const override {
    return kind_ == SourceKind::kTorchDist ? "megatron-torch_dist" : "dcp";
  }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return objects_; }
  nlohmann::json Details() const override;
  Status ReadTensor(size_t i, ByteSink* out) const override;
  Status ReadTensorRegion(size_t i, std::span<const int64_t> start, std::span<const int64_t> count,
                          ByteSink* out) const override;
  const DcpReader* dcp_view() const override { return this; }

  const std::string& folder() const { return folder_; }
  const dcp::Metadata& metadata() const { return md_; }
  // Data files present in the folder (*.distcp), name -> size.
  const dcp::FileSizes& data_files() const { return files_; }
  // The folder's other entries besides `.metadata` (the checksum manifests among them).
  const std::vector<std::string>& other_files() const { return other_files_; }
  // Structural problems found at open (coverage, missing files, ranges).
  const std::vector<dcp::Problem>& problems() const { return problems_; }
  // Entry index of tensors()[i].
  int64_t entry_of(size_t i) const { return tensor_entry_[i]; }

  Result<std::shared_ptr<const ByteSource>> DataFile(const std::string& name) const;
  // Opens entry's bytes item (a torch.save archive).
  Result<std::unique_ptr<torch::TorchFile>> OpenBytes(const dcp::Entry& e, pickle::Mode mode) const;
  // Opens chunk c of tensor entry e (checks dtype and shape of the archive).
  Result<dcp::ChunkArchive> OpenChunk(const dcp::Entry& e, const dcp::Chunk& c) const;

  // The Megatron layer (AttachMegatron) marks the reader kTorchDist and adds
  // extra details merged into Details() (its summary).
  void set_kind(SourceKind k) { kind_ = k; }
  nlohmann::json& extra_details() { return extra_; }
  std::vector<ObjectInfo>& mutable_objects() { return objects_; }

 private:
  DcpReader() = default;
  Status Init(const std::string& folder, const OpenOptions& options);
  // Problems that make tensor i unreadable (coverage, missing items), "" if none.
  std::string Unreadable(const dcp::Entry& e) const;

  Env* env_ = nullptr;
  SourceKind kind_ = SourceKind::kDcp;
  std::string folder_;
  dcp::Metadata md_;
  dcp::FileSizes files_;
  std::vector<std::string> other_files_;
  std::vector<dcp::Problem> problems_;
  std::map<std::string, std::string, std::less<>> unreadable_;  // key -> first problem
  std::vector<TensorInfo> tensors_;
  std::vector<int64_t> tensor_entry_;
  std::vector<ObjectInfo> objects_;
  nlohmann::json extra_ = nlohmann::json::object();
  mutable std::mutex mu_;
  mutable std::map<std::string, std::shared_ptr<const ByteSource>> open_files_;
};

// Megatron-LM root: a folder with latest_checkpointed_iteration.txt.
bool IsMegatronRoot(Env* env, const std::string& path);
// The iteration folder the tracker names, and its iteration (none for
// "release"). Errors: DataLoss (bad tracker, or the folder it names is
// missing); I/O errors.
struct MegatronIteration {
  std::string dir;
  std::optional<int64_t> iteration;
};
Result<MegatronIteration> ResolveMegatronRoot(Env* env, const std::string& root);
// Adds the Megatron layer (metadata.json, common state, summary) to a DCP
// reader of an iteration folder. Problems in metadata.json or the common
// state are recorded in Details(), not fatal. Errors: Unimplemented for a
// backend ckptkit cannot read (zarr); I/O errors.
Status AttachMegatron(DcpReader* r, Env* env, std::optional<int64_t> tracker_iteration);

}  // namespace ckpt::internal_checkpoint

#endif  // CKPT_CHECKPOINT_DCP_READER_H_
