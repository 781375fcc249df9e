#include "convert/dcp_to_torch.h"

#include <unordered_map>

#include "checkpoint/torch_rewrite.h"
#include "format/pickle/unpickler.h"
#include "format/torch/tree_writer.h"
#include "util/strings.h"

namespace ckpt::internal_convert {
namespace {

using pickle::Kind;
using pickle::Value;

// The string objects of .metadata's planner_data paths and
// state_dict_metadata keys. torch's loader sets these very objects as dict
// keys, and .metadata's pickle memo tells which of them are one object (the
// writer's state dict keys), so torch.save memo-GETs a repeated one. Best
// effort: an empty Identity just loses that sharing.
struct Identity {
  std::unique_ptr<pickle::Arena> arena;
  std::unordered_map<std::string, const Value*> planner_path;  // fqn -> tuple
  std::unordered_map<std::string, const Value*> sdm_key;       // fqn -> key str
};

const Value* StateAttr(const Value* obj, std::string_view name) {
  if (obj == nullptr || obj->kind != Kind::kObject || obj->state() == nullptr) return nullptr;
  const Value* st = obj->state();
  if (st->kind == Kind::kDict) return st->Get(name);
  if (st->kind == Kind::kTuple && st->items().size() == 2) {  // (dict or None, slots)
    for (const Value* d : st->items()) {
      if (d && d->kind == Kind::kDict) {
        if (const Value* v = d->Get(name)) return v;
      }
    }
  }
  return nullptr;
}

Identity LoadIdentity(Env* env, const std::string& folder) {
  Identity id;
  auto file = env->NewRandomAccessFile(JoinPath(folder, ".metadata"));
  if (!file.ok()) return id;
  pickle::UnpickleOptions opts;
  opts.mode = pickle::Mode::kInspect;
  auto u = pickle::Unpickle(**file, 0, opts);
  if (!u.ok()) return id;
  id.arena = std::move(u->arena);
  if (const Value* pd = StateAttr(u->root, "planner_data"); pd && pd->kind == Kind::kDict) {
    for (const auto& [k, v] : pd->dict()) {
      if (k && v && k->kind == Kind::kString && (v->kind == Kind::kTuple || v->kind == Kind::kList)) {
        id.planner_path.emplace(k->str(), v);
      }
    }
  }
  if (const Value* sdm = StateAttr(u->root, "state_dict_metadata"); sdm && sdm->kind == Kind::kDict) {
    for (const auto& [k, v] : sdm->dict()) {
      if (k && k->kind == Kind::kString) id.sdm_key.emplace(k->str(), k);
    }
  }
  return id;
}

// _traverse.set_element over the writer's Value graph.
class NestedBuilder {
 public:
  explicit NestedBuilder(torch::TorchTreeWriter* w) : w_(w), root_(w->arena().Dict()) {}
  Value* root() const { return root_; }

  // A dict key / path element: the .metadata object when known (one output
  // object per .metadata object), else a fresh str.
  Value* Key(const Value* meta, const std::string& s) {
    if (meta == nullptr) return w_->Str(s);
    auto it = keys_.find(meta);
    if (it == keys_.end()) it = keys_.emplace(meta, w_->Str(s)).first;
    return it->second;
  }

  Status Set(const std::string& fqn, std::span<Value* const> path, Value* value) {
    if (path.empty()) return DataLossError(StrCat("planner_data path of ", Quote(fqn), " is empty"));
    Value* cur = root_;
    for (size_t i = 1; i <= path.size(); ++i) {
      Value* key = path[i - 1];
      const bool last = i == path.size();
      Value* def = nullptr;
      if (!last) def = path[i]->kind == Kind::kString ? w_->arena().Dict() : w_->arena().List({});
      Value* next = nullptr;
      if (cur->kind == Kind::kDict) {
        std::string k = DictKey(key);
        auto& idx = index_[cur];
        auto it = idx.find(k);
        if (it != idx.end()) {
          if (last) {
            w_->arena().MutablePairs(cur)[it->second].second = value;  // keeps the first key object
            return OkStatus();
          }
          next = cur->dict()[it->second].second;
        } else {
          idx.emplace(std::move(k), cur->dict().size());
          w_->arena().SetItem(cur, key, last ? value : def);
          if (last) return OkStatus();
          next = def;
        }
      } else {  // a list
        if (key->kind != Kind::kInt) {
          return DataLossError(StrCat("planner_data path of ", Quote(fqn), ": element ", i - 1, " (",
                                      Quote(key->str()), ") indexes a list with a str"));
        }
        if (key->i < 0 || key->i >= kMaxDcpListIndex) {
          return DataLossError(StrCat("planner_data path of ", Quote(fqn), ": list index ", key->i,
                                      " is out of range [0, ", kMaxDcpListIndex, ")"));
        }
        const size_t at = static_cast<size_t>(key->i);
        while (cur->items().size() <= at) w_->arena().Append(cur, w_->arena().None());
        if (last) {
          w_->arena().MutableItems(cur)[at] = value;
          return OkStatus();
        }
        if (cur->items()[at]->kind == Kind::kNone) w_->arena().MutableItems(cur)[at] = def;
        next = cur->items()[at];
      }
      if (next->kind != Kind::kDict && next->kind != Kind::kList) {
        return DataLossError(StrCat("planner_data path of ", Quote(fqn), " goes through element ", i - 1,
                                    ", which holds a ", pickle::TypeName(next), ", not a dict or list"));
      }
      cur = next;
    }
    return OkStatus();
  }

 private:
  static std::string DictKey(const Value* k) {
    return k->kind == Kind::kString ? StrCat("s", k->str()) : StrCat("i", k->i);
  }
  torch::TorchTreeWriter* w_;
  Value* root_;
  std::unordered_map<const Value*, Value*> keys_;
  std::unordered_map<const Value*, std::unordered_map<std::string, size_t>> index_;
};

}  // namespace

Result<DcpToTorchReport> WriteDcpAsTorchSave(const internal_checkpoint::DcpReader& reader, const std::string& path,
                                             const DcpToTorchOptions& options) {
  Env* env = options.env ? options.env : Env::Default();
  const dcp::Metadata& md = reader.metadata();
  const std::string& folder = reader.folder();
  Identity id = LoadIdentity(env, folder);

  std::unordered_map<int64_t, size_t> tensor_of_entry;
  for (size_t i = 0; i < reader.tensors().size(); ++i) tensor_of_entry[reader.entry_of(i)] = i;
  uint64_t total = 0;
  for (const dcp::Entry& e : md.entries) {
    if (e.type != dcp::EntryType::kTensor) continue;
    uint64_t n = static_cast<uint64_t>(DTypeSize(e.dtype));
    for (int64_t d : e.size) n *= static_cast<uint64_t>(std::max<int64_t>(d, 0));
    total += n;
  }

  torch::TorchTreeWriter w;
  NestedBuilder nb(&w);
  DcpToTorchReport report;
  uint64_t done = 0;
  // One archive open at a time while storages stream (they come out entry by entry).
  struct Cache {
    int64_t entry = -1;
    std::shared_ptr<const torch::TorchFile> file;
  };
  auto cache = std::make_shared<Cache>();

  for (size_t ei = 0; ei < md.entries.size(); ++ei) {
    const dcp::Entry& e = md.entries[ei];
    const std::string where = StrCat(folder, ": ", Quote(e.key));
    Value* value = nullptr;
    if (e.type == dcp::EntryType::kTensor) {
      auto t = tensor_of_entry.find(static_cast<int64_t>(ei));
      if (t == tensor_of_entry.end()) return DataLossError(StrCat(where, ": tensor entry has no readable tensor"));
      const size_t ti = t->second;
      torch::TensorToSave ts;
      ts.dtype = e.dtype;
      ts.shape = e.size;
      ts.nbytes = reader.tensors()[ti].nbytes;
      ts.write = [&reader, &options, &done, total, ti, where](ByteSink* sink) -> Status {
        CKPT_RETURN_IF_ERROR(reader.ReadTensor(ti, sink), where);
        done += reader.tensors()[ti].nbytes;
        if (options.progress) options.progress(done, total);
        return OkStatus();
      };
      CKPT_ASSIGN_OR_RETURN(value, w.NewTensor(ts), where);
      ++report.tensors;
      report.bytes += ts.nbytes;
    } else {
      CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> f, reader.OpenBytes(e, options.mode), where);
      const pickle::Mode mode = options.mode;
      const int64_t entry = static_cast<int64_t>(ei);
      auto reopen = [&reader, cache, entry, mode]() -> Result<std::shared_ptr<const torch::TorchFile>> {
        if (cache->entry != entry) {
          cache->file.reset();
          cache->entry = -1;
          CKPT_ASSIGN_OR_RETURN(std::unique_ptr<torch::TorchFile> g,
                                reader.OpenBytes(reader.metadata().entries[entry], mode));
          cache->file = std::move(g);
          cache->entry = entry;
        }
        return cache->file;
      };
      CKPT_ASSIGN_OR_RETURN(value, w.Import(*f, reopen), where);
      ++report.objects;
    }
    // The nesting path: planner_data[key] (with the .metadata objects) or the flat key.
    std::vector<Value*> path;
    auto pp = md.planner_paths.find(e.key);
    if (pp != md.planner_paths.end()) {
      auto ip = id.planner_path.find(e.key);
      const Value* tuple = ip == id.planner_path.end() ? nullptr : ip->second;
      if (tuple && tuple->items().size() != pp->second.size()) tuple = nullptr;
      for (size_t k = 0; k < pp->second.size(); ++k) {
        const dcp::Metadata::PathElem& pe = pp->second[k];
        if (pe.is_index) {
          path.push_back(w.arena().Int(pe.index));
        } else {
          const Value* meta = tuple ? tuple->items()[k] : nullptr;
          if (meta && (meta->kind != Kind::kString || meta->str() != pe.key)) meta = nullptr;
          path.push_back(nb.Key(meta, pe.key));
        }
      }
    } else {
      auto ik = id.sdm_key.find(e.key);
      path.push_back(nb.Key(ik == id.sdm_key.end() ? nullptr : ik->second, e.key));
    }
    CKPT_RETURN_IF_ERROR(nb.Set(e.key, path, value), folder);
  }
  report.storages = w.storage_count();

  torch::TorchWriteOptions wo;
  wo.archive_name = internal_checkpoint::TorchArchiveName(path);
  CKPT_RETURN_IF_ERROR(WriteFileAtomically(env, path, [&](WritableFile* f) { return w.Write(nb.root(), f, wo); }));
  return report;
}

}  // namespace ckpt::internal_convert
