#include "format/torch/torch_writer.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <iomanip>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "format/pickle/pickler.h"
#include "format/zip/zip.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::torch {

using pickle::Arena;
using pickle::Kind;
using pickle::Value;

namespace {

// c10/util/hash.h hash_combine.
uint64_t HashCombine(uint64_t seed, uint64_t value) {
  return seed ^ (value + 0x9e3779b9 + (seed << 6u) + (seed >> 2u));
}

constexpr char kDescriptorSig[4] = {'P', 'K', '\x07', '\x08'};

// Forwards a record's bytes to the zip writer, counting them and keeping the
// first bytes for the serialization id (the CRC-32 comes from the zip writer).
class RecordSink final : public ByteSink {
 public:
  explicit RecordSink(zip::ZipWriter* zw) : zw_(zw) {}
  Status Append(std::string_view d) override {
    if (head_.size() < 8) head_.append(d.substr(0, 8 - head_.size()));
    n_ += d.size();
    return zw_->Append(d);
  }
  uint64_t Position() const override { return n_; }
  const std::string& head() const { return head_; }

 private:
  zip::ZipWriter* zw_;
  uint64_t n_ = 0;
  std::string head_;
};

class ArchiveWriter {
 public:
  ArchiveWriter(ByteSink* sink, const TorchWriteOptions& o)
      : zw_(sink, o.storage_alignment), prefix_(o.archive_name + "/") {}

  Status Add(std::string_view name, uint64_t size, const std::function<Status(ByteSink*)>& write) {
    CKPT_RETURN_IF_ERROR(zw_.BeginEntry(prefix_ + std::string(name), size));
    RecordSink rs(&zw_);
    CKPT_RETURN_IF_ERROR(write(&rs));
    if (rs.Position() != size) {
      return InvalidArgumentError(StrCat("torch writer: record ", Quote(prefix_ + std::string(name)),
                                         ": the callback wrote ", rs.Position(), " bytes, expected ",
                                         size));
    }
    CKPT_RETURN_IF_ERROR(zw_.EndEntry());
    records_.push_back({std::string(name), zw_.last_crc32(), size, rs.head()});
    return OkStatus();
  }
  Status AddBytes(std::string_view name, std::string_view data) {
    return Add(name, data.size(), [&](ByteSink* s) { return s->Append(data); });
  }
  Status Finish() {
    CKPT_RETURN_IF_ERROR(AddBytes(".data/serialization_id", TorchSerializationId(records_)));
    return zw_.Finish();
  }

 private:
  zip::ZipWriter zw_;
  std::string prefix_;
  std::vector<RecordDigest> records_;
};

Status CheckOptions(const TorchWriteOptions& o) {
  if (o.archive_name.empty() || o.archive_name.find('/') != std::string::npos) {
    return InvalidArgumentError(StrCat("torch writer: archive name ", Quote(o.archive_name),
                                       " must be non-empty and contain no '/'"));
  }
  if (o.storage_alignment == 0) return InvalidArgumentError("torch writer: storage alignment 0");
  if (o.byteorder != "little" && o.byteorder != "big") {
    return InvalidArgumentError(StrCat("torch writer: byteorder ", Quote(o.byteorder)));
  }
  return OkStatus();
}

}  // namespace

std::string TorchSerializationId(std::span<const RecordDigest> records) {
  std::unordered_set<std::string> names;
  uint64_t crc_hash = 0;
  for (const RecordDigest& r : records) {
    names.insert(r.name);
    if (r.size == 0) continue;  // miniz writes no data descriptor for an empty record
    if (r.size >= 8 && r.head.size() >= 8 && std::memcmp(r.head.data(), kDescriptorSig, 4) == 0) {
      uint32_t v;
      std::memcpy(&v, r.head.data() + 4, 4);
      crc_hash = HashCombine(crc_hash, v);
    }
    crc_hash = HashCombine(crc_hash, r.crc32);
  }
  uint64_t name_hash = 0;
  for (const std::string& n : names) name_hash = HashCombine(name_hash, std::hash<std::string>{}(n));
  std::ostringstream o;
  o << std::setfill('0') << std::setw(20) << name_hash << std::setfill('0') << std::setw(20)
    << crc_hash;
  return o.str();
}

Status WriteTorchArchive(std::string_view data_pkl, std::span<const StorageToWrite> storages,
                         ByteSink* sink, const TorchWriteOptions& options) {
  CKPT_RETURN_IF_ERROR(CheckOptions(options));
  ArchiveWriter w(sink, options);
  CKPT_RETURN_IF_ERROR(w.AddBytes("data.pkl", data_pkl));
  CKPT_RETURN_IF_ERROR(w.AddBytes(".format_version", "1"));
  CKPT_RETURN_IF_ERROR(w.AddBytes(".storage_alignment", std::to_string(options.storage_alignment)));
  CKPT_RETURN_IF_ERROR(w.AddBytes("byteorder", options.byteorder));
  for (size_t i = 0; i < storages.size(); ++i) {
    if (!storages[i].write) {
      return InvalidArgumentError(StrCat("torch writer: storage ", i, " has no write callback"));
    }
    CKPT_RETURN_IF_ERROR(w.Add(StrCat("data/", i), storages[i].nbytes, storages[i].write));
  }
  CKPT_RETURN_IF_ERROR(w.AddBytes("version", "3\n"));
  return w.Finish();
}

// ---------------------------------------------------------------------------
// State dicts.

Status StateDict::AddTensor(std::string key, TensorToSave tensor) {
  for (const Entry& e : entries_) {
    if (e.key == key) return InvalidArgumentError(StrCat("state dict: duplicate key ", Quote(key)));
  }
  const DType d = tensor.dtype;
  if (d == DType::kQInt8 || d == DType::kQUInt8 || d == DType::kQInt32 || d == DType::kQUInt4x2 ||
      d == DType::kQUInt2x4) {
    return UnimplementedError(StrCat("state dict: tensor ", Quote(key), ": quantized dtype ",
                                     DTypeName(tensor.dtype), " cannot be written"));
  }
  auto numel = CheckedNumel(tensor.shape);
  std::optional<uint64_t> nbytes;
  if (numel) nbytes = CheckedMul(static_cast<uint64_t>(*numel), DTypeSize(tensor.dtype));
  if (!nbytes || *nbytes != tensor.nbytes) {
    return InvalidArgumentError(StrCat("state dict: tensor ", Quote(key), ": nbytes ", tensor.nbytes,
                                       " does not match its shape and dtype ",
                                       DTypeName(tensor.dtype)));
  }
  entries_.push_back({std::move(key), std::make_unique<TensorToSave>(std::move(tensor)), nullptr});
  return OkStatus();
}

Result<StateDict*> StateDict::AddDict(std::string key, bool ordered) {
  for (const Entry& e : entries_) {
    if (e.key == key) return InvalidArgumentError(StrCat("state dict: duplicate key ", Quote(key)));
  }
  entries_.push_back({std::move(key), nullptr, std::make_unique<StateDict>(ordered)});
  return entries_.back().dict.get();
}

// Builds the Value tree torch.save would pickle for a StateDict.
class StateDictPickler {
 public:
  Value* Build(const StateDict& sd) {
    Value* d = arena_.Dict();
    d->ordered = sd.ordered_;
    for (const StateDict::Entry& e : sd.entries_) {
      Value* v = e.tensor ? Tensor(*e.tensor) : Build(*e.dict);
      arena_.SetItem(d, arena_.String(e.key), v);
    }
    return d;
  }
  std::vector<StorageToWrite> storages;

 private:
  Value* Tensor(const TensorToSave& t) {
    const std::string_view legacy = DTypeLegacyStorage(t.dtype);
    const uint64_t es = static_cast<uint64_t>(DTypeSize(t.dtype));
    Value* pid_tuple = arena_.Tuple({
        Shared(&storage_tag_, "storage"),
        legacy.empty() ? arena_.Global("torch.storage", "UntypedStorage")
                       : arena_.Global("torch", std::string(legacy)),
        arena_.String(std::to_string(storages.size())),
        Shared(&cpu_, "cpu"),
        arena_.Int(static_cast<int64_t>(legacy.empty() ? t.nbytes : t.nbytes / es)),
    });
    storages.push_back({t.nbytes, t.write});
    Value* pid = arena_.New(Kind::kPersistentId);
    arena_.Append(pid, pid_tuple);
    std::vector<Value*> size, stride;
    int64_t s = 1;
    for (size_t i = t.shape.size(); i-- > 0;) {
      stride.push_back(arena_.Int(s));
      s *= std::max<int64_t>(t.shape[i], 1);  // torch's contiguous strides skip 0-size dims
    }
    std::reverse(stride.begin(), stride.end());
    for (int64_t d : t.shape) size.push_back(arena_.Int(d));
    Value* hooks = arena_.Dict();
    hooks->ordered = true;
    std::vector<Value*> args = {pid, arena_.Int(0), arena_.Tuple(std::move(size)),
                                arena_.Tuple(std::move(stride)), arena_.Bool(t.requires_grad), hooks};
    if (legacy.empty()) args.push_back(arena_.Global("torch", std::string(DTypeName(t.dtype))));
    Value* o = arena_.New(Kind::kObject);
    arena_.SetCallable(o, arena_.Global("torch._utils", legacy.empty() ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2"));
    arena_.SetArgs(o, arena_.Tuple(std::move(args)));
    return o;
  }
  // Constants torch.save pickles as one object ("storage", "cpu"): memoized once.
  Value* Shared(Value** slot, const char* s) {
    if (*slot == nullptr) *slot = arena_.String(s);
    return *slot;
  }

  Arena arena_;
  Value* storage_tag_ = nullptr;
  Value* cpu_ = nullptr;
};

Status WriteStateDict(const StateDict& sd, ByteSink* sink, const TorchWriteOptions& options) {
  CKPT_RETURN_IF_ERROR(CheckOptions(options));
  StateDictPickler p;
  Value* root = p.Build(sd);
  CKPT_ASSIGN_OR_RETURN(std::string pkl, pickle::PickleToString(root), "torch writer: data.pkl");
  return WriteTorchArchive(pkl, p.storages, sink, options);
}

// ---------------------------------------------------------------------------
// Rewriting an opened file.

Status RewriteTorchFile(const TorchFile& in, ByteSink* sink, const TorchWriteOptions& options_in) {
  TorchWriteOptions options = options_in;
  options.byteorder = in.big_endian() ? "big" : "little";
  CKPT_RETURN_IF_ERROR(CheckOptions(options));
  Arena scratch;
  Value* storage_tag = scratch.String("storage");
  std::unordered_map<std::string, Value*> literal_locations;  // torch's constant tags
  std::unordered_map<std::string, Value*> new_keys;          // old key -> new key string
  std::vector<const StorageRecord*> order;
  pickle::PickleOptions po;
  po.persistent_id = [&](const Value& pid) -> Result<const Value*> {
    std::span<Value* const> pid_items;
    if (pid.kind == Kind::kTuple || pid.kind == Kind::kList) pid_items = pid.items();
    const std::span<Value* const>* items = pid.kind == Kind::kTuple || pid.kind == Kind::kList ? &pid_items : nullptr;
    if (items == nullptr || items->size() < 5 || (*items)[2]->kind != Kind::kString) {
      return FailedPreconditionError(StrCat(in.name(), ": persistent id ", pickle::Repr(&pid, 80),
                                            " is not a storage reference"));
    }
    const std::string old_key((*items)[2]->str());
    const StorageRecord* s = in.FindStorage(old_key);
    if (s == nullptr) {
      return FailedPreconditionError(StrCat(in.name(), ": persistent id names storage ",
                                            Quote(old_key), ", which no tensor uses"));
    }
    auto it = new_keys.find(old_key);
    if (it == new_keys.end()) {
      it = new_keys.emplace(old_key, scratch.String(std::to_string(order.size()))).first;
      order.push_back(s);
    }
    // torch's location tags for cpu/mps/meta are constants (one memoized
    // string); "cuda:0" and the like are built per call.
    Value* loc;
    if (s->location.find(':') == std::string::npos) {
      Value*& slot = literal_locations[s->location];
      if (slot == nullptr) slot = scratch.String(s->location);
      loc = slot;
    } else {
      loc = scratch.String(s->location);
    }
    std::vector<Value*> fresh = {storage_tag, (*items)[1], it->second, loc, (*items)[4]};
    for (size_t i = 5; i < items->size(); ++i) fresh.push_back((*items)[i]);
    return static_cast<const Value*>(scratch.Tuple(std::move(fresh)));
  };
  CKPT_ASSIGN_OR_RETURN(std::string pkl, pickle::PickleToString(in.root(), po),
                        StrCat(in.name(), ": re-pickling data.pkl"));
  std::vector<StorageToWrite> storages;
  for (const StorageRecord* s : order) {
    storages.push_back({s->nbytes, [&in, s](ByteSink* out) { return in.ReadStorage(*s, out); }});
  }
  return WriteTorchArchive(pkl, storages, sink, options);
}

}  // namespace ckpt::torch
