// DCP writer: planning (torch's _split_by_size_and_type), data files of
// embedded torch.save archives, and the .metadata pickle.
#include "format/dcp/writer.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "format/dcp/check.h"
#include "format/dcp/item.h"
#include "format/dcp/manifest.h"
#include "format/pickle/pickler.h"
#include "format/pickle/value.h"
#include "format/torch/tree_writer.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::dcp {
namespace {

using pickle::Arena;
using pickle::Kind;
using pickle::Value;

// A sink for one item: positions relative to the item's first byte (the
// embedded zip's offsets are relative to it), bytes hashed (XXH3) on the way.
class ItemSink final : public ByteSink {
 public:
  explicit ItemSink(ByteSink* out) : out_(out), base_(out->Position()) {}
  Status Append(std::string_view data) override {
    xxh3_.Update(data);
    return out_->Append(data);
  }
  uint64_t Position() const override { return out_->Position() - base_; }
  uint64_t xxh3() const { return xxh3_.Digest(); }

 private:
  ByteSink* out_;
  uint64_t base_;
  Xxh3Stream xxh3_;  // the manifest's digest of the item
};

std::optional<uint64_t> BoxBytes(DType dtype, const std::vector<int64_t>& sizes) {
  std::optional<int64_t> numel = CheckedNumel(sizes);
  if (!numel) return std::nullopt;
  return CheckedMul(static_cast<uint64_t>(*numel), static_cast<uint64_t>(DTypeSize(dtype)));
}

std::optional<uint64_t> ChunkBytes(const EntryToWrite& e, const ChunkToWrite& c) { return BoxBytes(e.dtype, c.sizes); }

bool Plannable(DType d) {
  // torch 2.13's planner fails on bits8/bits16; quantized tensors are not DCP items.
  switch (d) {
    case DType::kQInt8:
    case DType::kQUInt8:
    case DType::kQInt32:
    case DType::kQUInt4x2:
    case DType::kQUInt2x4:
    case DType::kBits8:
    case DType::kBits16:
      return false;
    default:
      return true;
  }
}

Status ValidateEntry(const EntryToWrite& e) {
  const std::string where = StrCat("dcp writer: entry ", Quote(e.key));
  if (e.key.empty()) return InvalidArgumentError("dcp writer: an entry has an empty key");
  if (e.type == EntryType::kBytes) {
    if (!e.write_bytes) return InvalidArgumentError(StrCat(where, ": bytes entry without a write callback"));
    return OkStatus();
  }
  if (!Plannable(e.dtype)) {
    return InvalidArgumentError(StrCat(where, ": dtype ", DTypeName(e.dtype), " cannot be saved in DCP"));
  }
  for (int64_t d : e.size) {
    if (d < 0) return InvalidArgumentError(StrCat(where, ": negative dimension in size ", OffsetsString(e.size)));
  }
  if (!BoxBytes(e.dtype, e.size)) return InvalidArgumentError(StrCat(where, ": size overflows"));
  if (e.chunks.empty()) return InvalidArgumentError(StrCat(where, ": tensor without chunks"));
  Entry probe;
  probe.key = e.key;
  probe.dtype = e.dtype;
  probe.size = e.size;
  for (const ChunkToWrite& c : e.chunks) {
    const std::string cw = StrCat(where, ": chunk at ", OffsetsString(c.offsets));
    if (c.offsets.size() != e.size.size() || c.sizes.size() != e.size.size()) {
      return InvalidArgumentError(StrCat(cw, ": rank differs from the tensor's (", e.size.size(), ")"));
    }
    for (size_t d = 0; d < e.size.size(); ++d) {
      if (c.offsets[d] < 0 || c.sizes[d] < 0 || c.offsets[d] > e.size[d] || c.sizes[d] > e.size[d] - c.offsets[d]) {
        return InvalidArgumentError(StrCat(cw, " size ", OffsetsString(c.sizes), ": outside the tensor of size ",
                                           OffsetsString(e.size)));
      }
    }
    if (!ChunkBytes(e, c)) return InvalidArgumentError(StrCat(cw, ": size overflows"));
    if (!c.write) return InvalidArgumentError(StrCat(cw, ": no write callback"));
    probe.chunks.push_back({c.offsets, c.sizes, -1});
  }
  std::vector<Problem> problems;
  if (CheckCoverage(probe, &problems) > 0) {
    return InvalidArgumentError(StrCat(where, ": chunks do not tile the tensor: ", problems[0].message));
  }
  return OkStatus();
}

// --- .metadata object graph -------------------------------------------------

class MetadataBuilder {
 public:
  Value* Global(const char* module, std::string name) {
    return arena_.Global(module, std::move(name));
  }
  // cls() via NEWOBJ, with BUILD of state (nullptr: no BUILD).
  Value* NewObj(const char* module, const char* cls, Value* state) {
    Value* o = arena_.Object(Global(module, cls), arena_.Tuple({}), /*newobj=*/true);
    if (state != nullptr) arena_.SetState(o, state);
    return o;
  }
  Value* Reduce(Value* callable, std::vector<Value*> args) {
    return arena_.Object(callable, arena_.Tuple(args));
  }
  Value* Size(const std::vector<int64_t>& v) {
    std::vector<Value*> items;
    for (int64_t x : v) items.push_back(arena_.Int(x));
    Value* t = arena_.Tuple(items);
    t->torch_size = true;
    return t;
  }
  Value* Str(const std::string& s) { return arena_.String(s); }
  void Set(Value* dict, Value* k, Value* v) { arena_.SetItem(dict, k, v); }
  Arena& arena() { return arena_; }

 private:
  Arena arena_;
};

constexpr char kMd[] = "torch.distributed.checkpoint.metadata";
constexpr char kShardMd[] = "torch.distributed._shard.sharded_tensor.metadata";

}  // namespace

uint64_t Fnv1a64(uint64_t h, std::string_view data) {
  for (unsigned char c : data) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

uint64_t ItemDigest(uint64_t h, uint64_t length, uint64_t xxh3) {
  char le[16];
  for (int i = 0; i < 8; ++i) {
    le[i] = static_cast<char>(length >> (8 * i));
    le[8 + i] = static_cast<char>(xxh3 >> (8 * i));
  }
  return Fnv1a64(h, std::string_view(le, sizeof(le)));
}

uint64_t CombineFileDigests(std::span<const uint64_t> file_digests) {
  uint64_t h = kFnvOffset;
  for (uint64_t d : file_digests) {
    char le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<char>((d >> (8 * i)) & 0xff);
    h = Fnv1a64(h, std::string_view(le, sizeof(le)));
  }
  return h;
}

std::string_view MetadataLayoutName(MetadataLayout layout) {
  static_assert(kNumMetadataLayouts == 3, "name every layout");
  switch (layout) {
    case MetadataLayout::kTorch2_13: return "torch2.13";
    case MetadataLayout::kTorch2_3: return "torch2.3";
    case MetadataLayout::kTorch2_0: return "torch2.0";
  }
  return "unknown";
}

Result<MetadataLayout> ParseMetadataLayout(std::string_view name) {
  for (MetadataLayout l : {MetadataLayout::kTorch2_13, MetadataLayout::kTorch2_3, MetadataLayout::kTorch2_0}) {
    if (name == MetadataLayoutName(l)) return l;
  }
  return InvalidArgumentError(
      StrCat("unknown .metadata layout ", Quote(std::string(name)), " (expected torch2.13, torch2.3 or torch2.0)"));
}

Result<std::vector<PlannedFile>> PlanDcpWrite(std::span<const EntryToWrite> entries,
                                              const DcpWriteOptions& options) {
  if (options.thread_count < 1 || options.thread_count > kMaxThreadCount) {
    return InvalidArgumentError(
        StrCat("dcp writer: thread_count ", options.thread_count, " is outside [1, ", kMaxThreadCount, "]"));
  }
  if (options.rank < 0) return InvalidArgumentError(StrCat("dcp writer: negative rank ", options.rank));
  std::set<std::string_view> keys;
  std::vector<PlannedItem> items;  // plan order
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryToWrite& e = entries[i];
    CKPT_RETURN_IF_ERROR(ValidateEntry(e));
    if (!keys.insert(e.key).second) {
      return InvalidArgumentError(StrCat("dcp writer: duplicate key ", Quote(e.key)));
    }
    if (e.type == EntryType::kBytes) {
      items.push_back({i, -1, 0});
    } else {
      // filesystem.py _item_size: the WriteItem's tensor_data.size is the
      // global size, so every chunk weighs as much as the whole tensor.
      const uint64_t weight = *BoxBytes(e.dtype, e.size);
      for (size_t c = 0; c < e.chunks.size(); ++c) {
        items.push_back({i, static_cast<int64_t>(c), *ChunkBytes(e, e.chunks[c]), weight});
      }
    }
  }
  const size_t bins = static_cast<size_t>(options.thread_count);
  std::vector<std::vector<PlannedItem>> buckets(bins);
  auto is_bytes = [](const PlannedItem& it) { return it.chunk < 0; };
  if (bins == 1) {
    buckets[0] = items;
  } else {
    std::vector<PlannedItem> bytes_w, tensor_w;
    for (const PlannedItem& it : items) (is_bytes(it) ? bytes_w : tensor_w).push_back(it);
    // _split_by_size_and_type: list.sort(key=_item_size, reverse=True) is
    // stable; min(enumerate(bucket_sizes)) picks the first lightest bucket.
    std::stable_sort(tensor_w.begin(), tensor_w.end(),
                     [](const PlannedItem& a, const PlannedItem& b) { return a.weight > b.weight; });
    for (size_t i = 0; i < bytes_w.size(); ++i) buckets[i % bins].push_back(bytes_w[i]);
    // Python ints do not overflow: 128-bit sums of 64-bit weights cannot either.
    std::vector<unsigned __int128> load(bins, 0);
    for (const PlannedItem& it : tensor_w) {
      size_t idx = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      buckets[idx].push_back(it);
      load[idx] += it.weight;
    }
  }
  std::vector<PlannedFile> files(bins);
  for (size_t b = 0; b < bins; ++b) {
    files[b].name = StrCat("__", options.rank, "_", b, kDataFileSuffix);
    // _write_files_from_queue: bytes items first, then tensors, each in bucket order.
    for (const PlannedItem& it : buckets[b]) if (is_bytes(it)) files[b].items.push_back(it);
    for (const PlannedItem& it : buckets[b]) if (!is_bytes(it)) files[b].items.push_back(it);
  }
  return files;
}

Status WriteDcpDataFile(std::span<const EntryToWrite> entries, const PlannedFile& file, ByteSink* sink,
                        std::vector<WrittenItem>* written, uint64_t* digest) {
  for (const PlannedItem& it : file.items) {
    if (it.entry >= entries.size()) return InternalError("dcp writer: plan names an unknown entry");
    const EntryToWrite& e = entries[it.entry];
    WrittenItem w;
    w.entry = it.entry;
    w.chunk = it.chunk;
    w.relative_path = file.name;
    w.offset = sink->Position();
    ItemSink item_sink(sink);
    if (it.chunk < 0) {
      const std::string where = StrCat(file.name, " @ ", w.offset, ": bytes entry ", Quote(e.key));
      CKPT_RETURN_IF_ERROR(e.write_bytes(&item_sink), where);
    } else {
      const ChunkToWrite& c = e.chunks[static_cast<size_t>(it.chunk)];
      const std::string where =
          StrCat(file.name, " @ ", w.offset, ": tensor ", Quote(e.key), " chunk at ", OffsetsString(c.offsets));
      torch::TorchTreeWriter tw;
      torch::TensorToSave t;
      t.dtype = e.dtype;
      t.shape = c.sizes;
      t.nbytes = it.size;
      t.write = c.write;
      CKPT_ASSIGN_OR_RETURN(Value * root, tw.NewTensor(t), where);
      torch::TorchWriteOptions wo;
      wo.archive_name = "archive";  // torch.save to a stream
      CKPT_RETURN_IF_ERROR(tw.Write(root, &item_sink, wo), where);
    }
    w.length = item_sink.Position();
    w.xxh3 = item_sink.xxh3();
    if (digest != nullptr) *digest = ItemDigest(*digest, w.length, w.xxh3);
    written->push_back(std::move(w));
  }
  return OkStatus();
}

std::string SerializeManifestOf(std::span<const WrittenItem> written) {
  std::vector<ManifestItem> items;
  items.reserve(written.size());
  for (const WrittenItem& w : written) items.push_back({w.relative_path, w.offset, w.length, w.xxh3});
  return SerializeManifest(items);
}

Result<std::string> SerializeDcpMetadata(std::span<const EntryToWrite> entries,
                                         std::span<const WrittenItem> written,
                                         const DcpWriteOptions& options, uint64_t content_digest) {
  // Which item holds what: (entry, chunk) -> written index.
  std::map<std::pair<size_t, int64_t>, size_t> where;
  for (size_t i = 0; i < written.size(); ++i) where[{written[i].entry, written[i].chunk}] = i;
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryToWrite& e = entries[i];
    const size_t n = e.type == EntryType::kBytes ? 1 : e.chunks.size();
    for (size_t c = 0; c < n; ++c) {
      const int64_t ci = e.type == EntryType::kBytes ? -1 : static_cast<int64_t>(c);
      if (!where.count({i, ci})) {
        return InvalidArgumentError(StrCat("dcp writer: entry ", Quote(e.key), " item ", ci, " was not written"));
      }
    }
  }

  const MetadataLayout layout = options.metadata_layout;
  if (static_cast<int>(layout) < 0 || static_cast<int>(layout) >= kNumMetadataLayouts) {
    return InvalidArgumentError(StrCat("dcp writer: unknown .metadata layout ", static_cast<int>(layout)));
  }
  // Before torch 2.3 DCP used ShardedTensor's TensorProperties and enum.
  const bool shard_props = layout == MetadataLayout::kTorch2_0;
  const char* props_module = shard_props ? kShardMd : kMd;
  MetadataBuilder b;
  Arena& a = b.arena();
  // The torch module's layout/memory-format constants, shared by all properties.
  Value* get_layout = b.Global("torch.serialization", "_get_layout");
  Value* mem_format = b.Global(props_module, shard_props ? "MEM_FORMAT_ENCODING" : "_MEM_FORMAT_ENCODING");

  Value* sd_md = a.Dict();
  std::vector<Value*> key_str(entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryToWrite& e = entries[i];
    key_str[i] = b.Str(e.key);
    if (e.type == EntryType::kBytes) {
      b.Set(sd_md, key_str[i], b.NewObj(kMd, "BytesStorageMetadata", nullptr));
      continue;
    }
    Value* props_state = a.Tuple({b.Global("torch", std::string(DTypeName(e.dtype))),
                                  b.Reduce(get_layout, {b.Str("torch.strided")}), a.Bool(false),
                                  b.Reduce(mem_format, {a.Int(0)}), a.Bool(false)});
    Value* chunks = a.List({});
    for (const ChunkToWrite& c : e.chunks) {
      Value* st = a.Dict();
      b.Set(st, b.Str("offsets"), b.Size(c.offsets));
      b.Set(st, b.Str("sizes"), b.Size(c.sizes));
      a.Append(chunks, b.NewObj(kMd, "ChunkStorageMetadata", st));
    }
    Value* st = a.Dict();
    b.Set(st, b.Str("properties"), b.NewObj(props_module, "TensorProperties", props_state));
    b.Set(st, b.Str("size"), b.Size(e.size));
    b.Set(st, b.Str("chunks"), chunks);
    b.Set(sd_md, key_str[i], b.NewObj(kMd, "TensorStorageMetadata", st));
  }

  // Path elements are the state dict's own key objects in torch's process:
  // one str per distinct text, and a one-element path shares the flattened
  // key (str.join of one item returns it), so the memo shares them the same way.
  Value* planner = a.Dict();
  std::map<std::string, Value*, std::less<>> path_strs;
  for (size_t i = 0; i < entries.size(); ++i) {
    const EntryToWrite& e = entries[i];
    std::vector<Value*> path;
    if (e.path.empty() || (e.path.size() == 1 && !e.path[0].is_index && e.path[0].key == e.key)) {
      path.push_back(key_str[i]);
    } else {
      for (const Metadata::PathElem& p : e.path) {
        if (p.is_index) {
          path.push_back(a.Int(p.index));
          continue;
        }
        Value*& s = path_strs[p.key];
        if (s == nullptr) s = b.Str(p.key);
        path.push_back(s);
      }
    }
    b.Set(planner, key_str[i], a.Tuple(std::move(path)));
  }

  Value* storage = a.Dict();
  for (const WrittenItem& w : written) {
    const EntryToWrite& e = entries[w.entry];
    Value* idx = a.Dict();
    b.Set(idx, b.Str("fqn"), key_str[w.entry]);
    if (w.chunk < 0) {
      b.Set(idx, b.Str("index"), a.None());
    } else {
      b.Set(idx, b.Str("index"), a.Int(w.chunk));
      b.Set(idx, b.Str("offset"), b.Size(e.chunks[static_cast<size_t>(w.chunk)].offsets));
    }
    Value* info = a.Dict();
    b.Set(info, b.Str("relative_path"), b.Str(w.relative_path));
    b.Set(info, b.Str("offset"), a.Int(static_cast<int64_t>(w.offset)));
    b.Set(info, b.Str("length"), a.Int(static_cast<int64_t>(w.length)));
    b.Set(storage, b.NewObj(kMd, "MetadataIndex", idx),
                         b.NewObj("torch.distributed.checkpoint.filesystem", "_StorageInfo", info));
  }

  Value* md_state = a.Dict();
  b.Set(md_state, b.Str("state_dict_metadata"), sd_md);
  b.Set(md_state, b.Str("planner_data"), planner);
  b.Set(md_state, b.Str("storage_data"), storage);
  Value* root = b.NewObj(kMd, "Metadata", md_state);
  if (layout != MetadataLayout::kTorch2_13) {
    // torch < 2.4 has no StorageMeta class (and writes no version).
    CKPT_ASSIGN_OR_RETURN(std::string out, pickle::PickleToString(root), "dcp writer: .metadata");
    return out;
  }

  // save_id: a hash of everything but storage_meta, plus the data bytes.
  CKPT_ASSIGN_OR_RETURN(std::string core, pickle::PickleToString(root), "dcp writer: .metadata");
  const uint64_t h1 = Fnv1a64(Fnv1a64(kFnvOffset, core), std::string_view(
                                  reinterpret_cast<const char*>(&content_digest), sizeof(content_digest)));
  const uint64_t h2 = Fnv1a64(h1 ^ 0x9e3779b97f4a7c15ull, core);
  const std::string hex = fmt::format("{:016x}{:016x}", h1, h2);
  const std::string save_id = fmt::format("{}-{}-{}-{}-{}", hex.substr(0, 8), hex.substr(8, 4), hex.substr(12, 4),
                                          hex.substr(16, 4), hex.substr(20, 12));

  Value* sm = a.Dict();
  b.Set(sm, b.Str("checkpoint_id"), options.checkpoint_id ? b.Str(*options.checkpoint_id) : a.None());
  b.Set(sm, b.Str("save_id"), b.Str(save_id));
  b.Set(sm, b.Str("load_id"), a.None());
  b.Set(sm, b.Str("modules"), a.List({}));
  b.Set(md_state, b.Str("storage_meta"), b.NewObj(kMd, "StorageMeta", sm));
  b.Set(md_state, b.Str("version"), b.Str("1.0.0"));
  CKPT_ASSIGN_OR_RETURN(std::string out, pickle::PickleToString(root), "dcp writer: .metadata");
  return out;
}

}  // namespace ckpt::dcp
