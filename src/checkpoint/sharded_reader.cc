// CheckpointReader over a sharded set: an index json (transformers layout)
// naming shard files in its folder, each a .safetensors or torch.save file.
#include <map>
#include <nlohmann/json.hpp>

#include "checkpoint/readers.h"
#include "format/safetensors/safetensors.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

class ShardedReader final : public CheckpointReader {
 public:
  SourceKind kind() const override { return SourceKind::kSharded; }
  std::string_view format() const override { return format_; }
  const std::vector<TensorInfo>& tensors() const override { return tensors_; }
  const std::vector<ObjectInfo>& objects() const override { return objects_; }
  nlohmann::json Details() const override { return details_; }

  Status ReadTensor(size_t i, ByteSink* out) const override {
    if (i >= where_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
    auto [shard, j] = where_[i];
    return shards_[shard]->ReadTensor(j, out);
  }

  std::string format_;
  std::vector<std::unique_ptr<CheckpointReader>> shards_;
  std::vector<std::pair<size_t, size_t>> where_;  // tensor -> (shard, index in shard)
  std::vector<TensorInfo> tensors_;
  std::vector<ObjectInfo> objects_;
  nlohmann::json details_;
};

}  // namespace

Result<std::unique_ptr<CheckpointReader>> OpenSharded(const std::string& index_path,
                                                      const OpenOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env->NewRandomAccessFile(index_path));
  if (f->Size() > (uint64_t{256} << 20)) {
    return DataLossError(StrCat(index_path, ": index is ", f->Size(), " bytes, over the 256 MiB cap"));
  }
  CKPT_ASSIGN_OR_RETURN(std::string text, ReadString(*f, 0, f->Size()));
  CKPT_ASSIGN_OR_RETURN(safetensors::ShardIndex index, safetensors::ParseIndex(text, index_path));

  auto reader = std::make_unique<ShardedReader>();
  const std::string dir = Dirname(index_path);
  std::map<std::string, size_t> shard_of_file;
  std::vector<std::string> files = index.Files();
  for (const std::string& file : files) {
    // OpenFile opens a *.index.json name as a sharded set: an index naming
    // itself (or another index) would recurse without end.
    if (file.size() >= 11 && file.compare(file.size() - 11, 11, ".index.json") == 0) {
      return DataLossError(StrCat(index_path, ": weight_map names shard ", Quote(file),
                                  ", which is an index, not a shard file"));
    }
    auto shard = OpenFile(JoinPath(dir, file), options);
    if (!shard.ok()) {
      Status s = shard.status().WithContext(StrCat(index_path, ": shard ", file));
      // A shard in no format we know is a corrupt set, not a bad request.
      if (s.code() == Code::kInvalidArgument) s = Status(Code::kDataLoss, s.message());
      return s;
    }
    shard_of_file[file] = reader->shards_.size();
    reader->shards_.push_back(std::move(*shard));
  }
  bool torch_shards = false;
  // Tensors in shard order, then in each shard's own order; only indexed ones.
  std::map<std::string, const std::string*> indexed;
  for (const auto& [name, file] : index.weight_map) indexed[name] = &file;
  nlohmann::json unindexed = nlohmann::json::array();
  size_t found = 0;
  for (size_t s = 0; s < reader->shards_.size(); ++s) {
    const CheckpointReader& shard = *reader->shards_[s];
    if (shard.kind() != SourceKind::kSafetensors) torch_shards = true;
    for (size_t j = 0; j < shard.tensors().size(); ++j) {
      TensorInfo t = shard.tensors()[j];
      auto it = indexed.find(t.key);
      if (it == indexed.end() || *it->second != files[s]) {
        unindexed.push_back({{"key", t.key}, {"file", files[s]}});
        continue;
      }
      t.file = files[s];
      reader->where_.emplace_back(s, j);
      reader->tensors_.push_back(std::move(t));
      ++found;
    }
    for (ObjectInfo o : shard.objects()) {
      o.key = files[s] + ":" + o.key;
      reader->objects_.push_back(std::move(o));
    }
  }
  if (found != index.weight_map.size()) {
    for (const auto& [name, file] : index.weight_map) {
      const CheckpointReader& shard = *reader->shards_[shard_of_file[file]];
      if (!shard.Find(name).ok()) {
        return DataLossError(StrCat(index_path, ": weight_map names tensor '", name, "' in ", file,
                                    ", which does not hold it"));
      }
    }
  }
  reader->format_ = torch_shards ? "torch-sharded" : "safetensors-sharded";
  reader->details_["index"] = Basename(index_path);
  reader->details_["shards"] = files;
  reader->details_["metadata"] = index.metadata;
  if (!unindexed.empty()) reader->details_["unindexed_tensors"] = std::move(unindexed);
  return std::unique_ptr<CheckpointReader>(std::move(reader));
}

}  // namespace ckpt::internal_checkpoint
