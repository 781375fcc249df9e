// CheckpointReader over one .safetensors file.
#include <nlohmann/json.hpp>

#include "checkpoint/readers.h"
#include "format/safetensors/safetensors.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

class SafetensorsReader final : public CheckpointReader {
 public:
  SafetensorsReader(std::shared_ptr<const ByteSource> file, safetensors::Header header,
                    std::vector<TensorInfo> tensors)
      : file_(std::move(file)), header_(std::move(header)), tensors_(std::move(tensors)) {}

  SourceKind kind() const override { return SourceKind::kSafetensors; }
  std::string_view format() const override { return "safetensors"; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return objects_; }

  nlohmann::json Details() const override {
    nlohmann::json d;
    d["header_bytes"] = header_.header_size;
    d["data_start"] = header_.data_start;
    d["file_bytes"] = file_->Size();
    if (header_.has_metadata) d["metadata"] = header_.metadata;
    return d;
  }

  Status ReadTensor(size_t i, ByteSink* out) const override {
    if (i >= tensors_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
    const TensorInfo& t = tensors_[i];
    return CopyRange(*file_, t.data_offset, t.nbytes, out)
        .WithContext(StrCat(file_->Name(), ": tensor '", t.key, "'"));
  }

 private:
  std::shared_ptr<const ByteSource> file_;
  safetensors::Header header_;
  std::vector<TensorInfo> tensors_;
  std::vector<ObjectInfo> objects_;
};

}  // namespace

Result<std::unique_ptr<CheckpointReader>> OpenSafetensors(std::shared_ptr<const ByteSource> file) {
  CKPT_ASSIGN_OR_RETURN(safetensors::Header header, safetensors::ReadHeader(*file));
  std::vector<TensorInfo> tensors;
  tensors.reserve(header.tensors.size());
  for (const safetensors::TensorEntry& e : header.tensors) {
    TensorInfo t;
    t.key = e.name;
    t.dtype = e.dtype;
    CKPT_ASSIGN_OR_RETURN(t.shape, safetensors::TorchShape(e), StrCat(file->Name(), ": tensor '", e.name, "'"));
    t.nbytes = e.nbytes();
    t.data_offset = header.data_start + e.begin;
    tensors.push_back(std::move(t));
  }
  return std::unique_ptr<CheckpointReader>(
      new SafetensorsReader(std::move(file), std::move(header), std::move(tensors)));
}

}  // namespace ckpt::internal_checkpoint
