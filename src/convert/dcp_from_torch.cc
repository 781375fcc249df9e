// torch.save tree -> DCP entries (flatten_state_dict + default planner rules).
#include "convert/dcp_from_torch.h"

#include <map>
#include <set>
#include <unordered_map>

#include "format/pickle/pickler.h"
#include "format/pickle/value.h"
#include "format/torch/torch_writer.h"
#include "util/strings.h"

namespace ckpt::internal_convert {
namespace {

using pickle::Kind;
using pickle::Value;

class Flattener {
 public:
  Flattener(const torch::TorchFile& file, const CheckpointReader& reader, ChunkDone on_chunk)
      : file_(file), reader_(reader), on_chunk_(std::move(on_chunk)) {
    for (const torch::TensorRecord& r : file.tensors()) tensor_values_.insert(r.value);
  }

  Status Run() {
    const Value* root = file_.root();
    if (root == nullptr || root->kind != Kind::kDict) {
      return FailedPreconditionError(StrCat(file_.name(), ": the root is not a dict"));
    }
    return Visit(root, {}, 0);
  }

  std::vector<dcp::EntryToWrite> Take() { return std::move(entries_); }

 private:
  bool IsTensor(const Value* v) const { return tensor_values_.count(v) > 0; }
  static bool IsMapping(const Value* v) { return v != nullptr && v->kind == Kind::kDict; }

  // _is_terminal.
  bool IsTerminal(const Value* v, size_t depth) const {
    if (IsMapping(v)) return false;
    if (v == nullptr || v->kind != Kind::kList) return true;
    if (depth > pickle::kDefaultMaxDepth) return true;
    for (const Value* e : v->items()) {
      if ((IsMapping(e) || (e != nullptr && e->kind == Kind::kList)) && !IsTerminal(e, depth + 1)) return false;
      if (IsTensor(e)) return false;
    }
    return true;
  }

  static Result<std::string> KeyText(const Value* k) {
    if (k == nullptr) return InvalidArgumentError("null key");
    switch (k->kind) {
      case Kind::kString: return std::string(k->str());
      case Kind::kInt: return std::to_string(k->i);
      case Kind::kBool: return std::string(k->i ? "True" : "False");
      case Kind::kNone: return std::string("None");
      default:
        return UnimplementedError(StrCat("a dict key of type ", pickle::TypeName(k),
                                         " (DCP flattens keys with str(), which ckptkit does not reproduce)"));
    }
  }

  Status Visit(const Value* v, std::vector<dcp::Metadata::PathElem> path, size_t depth) {
    if (depth > pickle::kDefaultMaxDepth) {
      return ResourceExhaustedError(StrCat(file_.name(), ": state dict nested deeper than ",
                                           pickle::kDefaultMaxDepth));
    }
    if (IsMapping(v)) {
      for (const auto& [k, child] : v->dict()) {
        CKPT_ASSIGN_OR_RETURN(std::string ks, KeyText(k), StrCat(file_.name(), ": key in ", Join(path)));
        auto p = path;
        p.push_back({false, std::move(ks), 0});
        CKPT_RETURN_IF_ERROR(Visit(child, std::move(p), depth + 1));
      }
      return OkStatus();
    }
    if (IsTerminal(v, depth)) return Leaf(v, std::move(path));
    // A list that holds tensors or mappings (tuples are always leaves).
    for (size_t i = 0; i < v->items().size(); ++i) {
      auto p = path;
      p.push_back({true, "", static_cast<int64_t>(i)});
      CKPT_RETURN_IF_ERROR(Visit(v->items()[i], std::move(p), depth + 1));
    }
    return OkStatus();
  }

  static std::string Join(const std::vector<dcp::Metadata::PathElem>& path) {
    std::string s;
    for (size_t i = 0; i < path.size(); ++i) {
      if (i) s += '.';
      s += path[i].is_index ? std::to_string(path[i].index) : path[i].key;
    }
    return s;
  }

  Status Leaf(const Value* v, std::vector<dcp::Metadata::PathElem> path) {
    dcp::EntryToWrite e;
    e.key = Join(path);
    if (!keys_.insert(e.key).second) {
      return DataLossError(StrCat(file_.name(), ": two state dict entries flatten to the key ", Quote(e.key)));
    }
    e.path = std::move(path);
    if (IsTensor(v)) {
      // The reader's tensor of this key (tied weights: one value, several keys).
      Result<size_t> idx = reader_.Find(e.key);
      if (!idx.ok()) {
        return DataLossError(StrCat(file_.name(), ": tensor ", Quote(e.key), " is not listed by the reader"));
      }
      const TensorInfo& t = reader_.tensors()[*idx];
      e.type = dcp::EntryType::kTensor;
      e.dtype = t.dtype;
      e.size = t.shape;
      const size_t i = *idx;
      const uint64_t nbytes = t.nbytes;
      const CheckpointReader* reader = &reader_;
      ChunkDone done = on_chunk_;
      e.chunks.push_back({std::vector<int64_t>(t.shape.size(), 0), t.shape,
                          [reader, i, nbytes, done](ByteSink* sink) -> Status {
                            CKPT_RETURN_IF_ERROR(reader->ReadTensor(i, sink));
                            if (done) done(nbytes);
                            return OkStatus();
                          }});
    } else {
      e.type = dcp::EntryType::kBytes;
      const torch::TorchFile* file = &file_;
      e.write_bytes = [file, v](ByteSink* sink) { return WriteObjectArchive(*file, v, sink); };
    }
    entries_.push_back(std::move(e));
    return OkStatus();
  }

  // torch.save(value): the subtree pickled as the root, its storages
  // renumbered in order of first appearance and copied as stored.
  static Status WriteObjectArchive(const torch::TorchFile& file, const Value* v, ByteSink* sink) {
    pickle::Arena arena;
    std::vector<const torch::StorageRecord*> order;
    std::map<std::string, Value*> key_of;  // original key -> new key string
    pickle::PickleOptions po;
    po.persistent_id = [&](const Value& pid) -> Result<const Value*> {
      if (pid.kind != Kind::kTuple || pid.items().size() < 5 || pid.items()[2] == nullptr ||
          pid.items()[2]->kind != Kind::kString) {
        return FailedPreconditionError("a persistent id that is not a storage reference");
      }
      const std::string key(pid.items()[2]->str());
      Value*& nk = key_of[key];
      if (nk == nullptr) {
        const torch::StorageRecord* s = file.FindStorage(key);
        if (s == nullptr) return FailedPreconditionError(StrCat("persistent id names no storage ", Quote(key)));
        if (file.big_endian()) {
          return UnimplementedError("an object holding tensors of a big-endian archive");
        }
        nk = arena.String(std::to_string(order.size()));
        order.push_back(s);
      }
      std::vector<Value*> items(pid.items().begin(), pid.items().end());
      items[2] = nk;
      return static_cast<const Value*>(arena.Tuple(std::move(items)));
    };
    CKPT_ASSIGN_OR_RETURN(std::string pkl, pickle::PickleToString(v, po), "pickling the object");
    std::vector<torch::StorageToWrite> storages;
    for (const torch::StorageRecord* s : order) {
      storages.push_back({s->nbytes, [&file, s](ByteSink* out) { return file.ReadStorage(*s, out); }});
    }
    return torch::WriteTorchArchive(pkl, storages, sink);
  }

  const torch::TorchFile& file_;
  const CheckpointReader& reader_;
  ChunkDone on_chunk_;
  std::set<const Value*> tensor_values_;
  std::set<std::string> keys_;
  std::vector<dcp::EntryToWrite> entries_;
};

}  // namespace

Result<std::vector<dcp::EntryToWrite>> TorchStateDictToDcpEntries(const torch::TorchFile& file,
                                                                  const CheckpointReader& reader,
                                                                  ChunkDone on_chunk) {
  Flattener f(file, reader, std::move(on_chunk));
  CKPT_RETURN_IF_ERROR(f.Run());
  return f.Take();
}

}  // namespace ckpt::internal_convert
