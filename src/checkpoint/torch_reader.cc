// CheckpointReader over a torch.save zip archive, and its tree-preserving rewrite.
#include <nlohmann/json.hpp>

#include "checkpoint/readers.h"
#include "checkpoint/torch_rewrite.h"
#include "format/torch/torch_file.h"
#include "format/torch/torch_writer.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

class TorchReader final : public CheckpointReader {
 public:
  explicit TorchReader(std::unique_ptr<torch::TorchFile> file) : file_(std::move(file)) {
    for (const torch::TensorRecord& r : file_->tensors()) {
      const torch::StorageRecord& s = file_->storages()[r.storage];
      TensorInfo t;
      t.key = r.key;
      t.dtype = r.dtype;
      t.shape = r.shape;
      t.nbytes = r.nbytes;
      t.storage = s.key;
      t.stride = r.stride;
      t.storage_offset = r.storage_offset;
      t.data_offset = s.entry ? s.entry->data_offset : 0;
      t.requires_grad = r.requires_grad;
      t.is_parameter = r.is_parameter;
      tensors_.push_back(std::move(t));
    }
    for (const torch::ObjectRecord& o : file_->objects()) {
      objects_.push_back({o.key, o.type, o.repr, o.opaque});
    }
  }

  SourceKind kind() const override { return SourceKind::kTorchFile; }
  std::string_view format() const override { return "torch"; }
  const torch::TorchFile* torch_file() const override { return file_.get(); }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return objects_; }

  nlohmann::json Details() const override {
    nlohmann::json d;
    d["archive"] = file_->archive_name();
    d["version"] = file_->version();
    d["format_version"] = file_->format_version();
    d["storage_alignment"] = file_->storage_alignment();
    d["byteorder"] = file_->big_endian() ? "big" : "little";
    d["storages"] = file_->storages().size();
    nlohmann::json shared = nlohmann::json::array();
    nlohmann::json non_cpu = nlohmann::json::array();
    for (const torch::StorageRecord& s : file_->storages()) {
      if (s.tensors.size() > 1) {
        nlohmann::json keys = nlohmann::json::array();
        for (size_t i : s.tensors) keys.push_back(file_->tensors()[i].key);
        shared.push_back({{"storage", s.key}, {"nbytes", s.nbytes}, {"tensors", keys}});
      }
      if (s.location != "cpu") non_cpu.push_back({{"storage", s.key}, {"location", s.location}});
    }
    if (!shared.empty()) d["shared_storages"] = std::move(shared);
    if (!non_cpu.empty()) d["device_locations"] = std::move(non_cpu);
    nlohmann::json records = nlohmann::json::array();
    for (const zip::Entry& e : file_->zip().entries()) records.push_back(e.name);
    d["records"] = std::move(records);
    return d;
  }

  Status ReadTensor(size_t i, ByteSink* out) const override {
    if (i >= tensors_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
    return file_->ReadTensor(file_->tensors()[i], out);
  }

 private:
  std::unique_ptr<torch::TorchFile> file_;
  std::vector<TensorInfo> tensors_;
  std::vector<ObjectInfo> objects_;
};


}  // namespace

Result<std::unique_ptr<CheckpointReader>> OpenTorch(std::shared_ptr<const ByteSource> file,
                                                    PickleMode mode) {
  CKPT_ASSIGN_OR_RETURN(
      std::unique_ptr<torch::TorchFile> tf,
      torch::TorchFile::Open(std::move(file), mode == PickleMode::kInspect ? pickle::Mode::kInspect
                                                                          : pickle::Mode::kStrict));
  return std::unique_ptr<CheckpointReader>(new TorchReader(std::move(tf)));
}

std::string TorchArchiveName(const std::string& path) {
  std::string archive = Basename(path);
  if (size_t dot = archive.rfind('.'); dot != std::string::npos && dot > 0) archive.resize(dot);
  return archive;
}

Status RewriteTorchFile(const CheckpointReader& reader, const std::string& path, Env* env) {
  const torch::TorchFile* file = reader.torch_file();
  if (file == nullptr) {
    return FailedPreconditionError(StrCat("cannot rewrite a ", reader.format(), " reader as torch.save"));
  }
  torch::TorchWriteOptions options;
  options.archive_name = TorchArchiveName(path);
  options.byteorder = file->big_endian() ? "big" : "little";
  return WriteFileAtomically(env, path, [&](WritableFile* f) { return torch::RewriteTorchFile(*file, f, options); });
}

}  // namespace ckpt::internal_checkpoint
