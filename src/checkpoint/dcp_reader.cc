#include "checkpoint/dcp_reader.h"

#include <algorithm>
#include <new>
#include <set>
#include <unordered_set>

#include "checkpoint/readers.h"
#include "format/dcp/manifest.h"

#include "util/box.h"
#include "util/by_address.h"
#include "util/strings.h"

namespace ckpt::internal_checkpoint {
namespace {

constexpr size_t kEmitPiece = size_t{16} << 20;
// Details() lists at most this many keys per data file.
constexpr size_t kMaxKeysPerFile = 12;

Box ChunkBox(const dcp::Chunk& c) { return MakeBox(c.offsets, c.sizes); }

}  // namespace

Result<std::unique_ptr<DcpReader>> DcpReader::Open(const std::string& folder, const OpenOptions& options) {
  std::unique_ptr<DcpReader> r(new DcpReader());
  CKPT_RETURN_IF_ERROR(r->Init(folder, options));
  return r;
}

Status DcpReader::Init(const std::string& folder, const OpenOptions& options) {
  env_ = options.env ? options.env : Env::Default();
  folder_ = folder;
  CKPT_ASSIGN_OR_RETURN(std::vector<std::string> children, env_->GetChildren(folder));
  for (const std::string& c : children) {
    std::string p = JoinPath(folder, c);
    if (internal_checkpoint::EndsWith(c, dcp::kDataFileSuffix) && !env_->IsDirectory(p)) {
      CKPT_ASSIGN_OR_RETURN(uint64_t size, env_->GetFileSize(p));
      files_[c] = size;
    } else if (c != dcp::kMetadataFileName) {
      other_files_.push_back(c);
    }
  }
  const std::string md_path = JoinPath(folder, dcp::kMetadataFileName);
  if (!env_->FileExists(md_path)) {
    if (!files_.empty()) {
      return DataLossError(StrCat(folder, ": ", files_.size(),
                                  " .distcp data files but no .metadata: the save did not finish (DCP writes "
                                  ".metadata last, as its commit point)"));
    }
    return NotFoundError(StrCat(folder, ": no .metadata (not a PyTorch DCP checkpoint folder)"));
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> mf, env_->NewRandomAccessFile(md_path));
  CKPT_ASSIGN_OR_RETURN(md_, dcp::ParseMetadata(*mf));
  problems_ = dcp::CheckStructure(md_, files_);
  for (const dcp::Problem& p : problems_) {
    if (!p.key.empty() && !unreadable_.count(p.key)) unreadable_[p.key] = dcp::ToString(p);
  }
  // A missing or truncated file makes every entry with an item in it unreadable.
  // Names are interned (equal names share their bytes): each item's file is
  // found once per distinct name address (the items of one tensor alternate
  // files), and items come in runs of one key, so a key with the previous
  // bad item's bytes is not looked up again.
  ByAddress<const uint64_t*> sizes;  // nullptr: missing
  auto size_of = [&](std::string_view name) -> const uint64_t* {
    auto f = files_.find(name);
    return f == files_.end() ? nullptr : &f->second;
  };
  std::string_view bad_fqn;
  for (const dcp::StorageItem& it : md_.items) {
    const uint64_t* size = sizes.Get(it.relative_path, size_of);
    bool bad = size == nullptr || it.offset_in_file > *size || it.length > *size - it.offset_in_file;
    if (bad && !SameBytes(it.fqn, bad_fqn)) {
      if (!unreadable_.contains(it.fqn)) {
        unreadable_[std::string(it.fqn)] = StrCat(it.relative_path, size == nullptr ? " is missing" : " is truncated");
      }
      bad_fqn = it.fqn;
    }
  }

  uint64_t object_budget = kMaxDecodedObjectBytes;
  for (size_t ei = 0; ei < md_.entries.size(); ++ei) {
    const dcp::Entry& e = md_.entries[ei];
    if (e.type == dcp::EntryType::kTensor) {
      TensorInfo t;
      t.key = e.key;
      t.dtype = e.dtype;
      t.shape = e.size;
      uint64_t n = static_cast<uint64_t>(DTypeSize(e.dtype));
      bool overflow = false;
      for (int64_t s : e.size) {
        if (s != 0 && n > UINT64_MAX / static_cast<uint64_t>(s)) overflow = true;
        n *= static_cast<uint64_t>(s);
      }
      if (overflow) {
        return DataLossError(StrCat(md_path, ": tensor ", Quote(e.key), " shape ", dcp::OffsetsString(e.size),
                                    " overflows"));
      }
      t.nbytes = n;
      t.requires_grad = e.requires_grad;
      t.chunks.reserve(e.chunks.size());
      for (const dcp::Chunk& c : e.chunks) {
        ChunkInfo ci;
        ci.offsets = c.offsets;
        ci.sizes = c.sizes;
        if (c.item >= 0) {
          const dcp::StorageItem& it = md_.items[c.item];
          ci.file = it.relative_path;
          ci.offset = it.offset_in_file;
          ci.length = it.length;
        }
        t.chunks.push_back(std::move(ci));
      }
      if (t.chunks.size() == 1) {
        t.file = t.chunks[0].file;
        t.data_offset = t.chunks[0].offset;
      }
      tensors_.push_back(std::move(t));
      tensor_entry_.push_back(static_cast<int64_t>(ei));
      continue;
    }
    ObjectInfo o;
    o.key = e.key;
    o.type = "bytes";
    const dcp::StorageItem* it = e.item >= 0 ? &md_.items[e.item] : nullptr;
    o.repr = it ? StrCat("<", it->length, " bytes in ", it->relative_path, ">") : "<no data>";
    if (it && !unreadable_.count(e.key) && it->length <= object_budget) {
      object_budget -= it->length;
      auto archive = OpenBytes(e, pickle::Mode::kInspect);
      if (archive.ok()) {
        const pickle::Value* root = (*archive)->root();
        // Megatron ShardedObjects are saved as torch.save([data]).
        if (e.key.find("/shard_") != std::string::npos && root && root->kind == pickle::Kind::kList &&
            root->items().size() == 1) {
          root = root->items()[0];
        }
        o.type = pickle::TypeName(root);
        o.repr = pickle::Repr(root);
        for (const torch::ObjectRecord& rec : (*archive)->objects()) o.opaque = o.opaque || rec.opaque;
      } else {
        dcp::Problem p;
        p.key = e.key;
        p.file = it->relative_path;
        p.has_offset = true;
        p.offset = it->offset_in_file;
        p.message = archive.status().message();
        problems_.push_back(p);
        o.repr = StrCat("<unreadable: ", archive.status().message(), ">");
      }
    }
    objects_.push_back(std::move(o));
  }
  return OkStatus();
}

nlohmann::json DcpReader::Details() const {
  nlohmann::json d;
  d["metadata_class"] = md_.class_name;
  d["pickle_protocol"] = md_.pickle_protocol;
  if (md_.version) d["dcp_version"] = *md_.version;
  if (md_.storage_meta) {
    d["storage_meta"] = {{"checkpoint_id", md_.storage_meta->checkpoint_id},
                         {"save_id", md_.storage_meta->save_id},
                         {"load_id", md_.storage_meta->load_id},
                         {"modules", md_.storage_meta->modules}};
  }
  if (!md_.extra_attributes.empty()) d["extra_attributes"] = md_.extra_attributes;
  if (!md_.opaque_globals.empty()) d["opaque_globals"] = md_.opaque_globals;
  if (!md_.nd_reformulated_shapes.empty()) d["nd_reformulated_shapes"] = md_.nd_reformulated_shapes;
  // Per data file: rank, writer, bytes, items. Files .metadata names that are
  // not in the folder are listed too (no bytes, "missing"), so that the
  // pictures and scripts see every file.
  struct FileStats {
    uint64_t bytes = 0;
    bool missing = false;
    int64_t items = 0, tensor_chunks = 0, bytes_items = 0;
    uint64_t item_bytes = 0;
    std::vector<int64_t> entries;         // of its items, a run of one counted once
    std::vector<std::string_view> keys;  // of items without an entry, into md_'s items
  };
  std::map<std::string_view, FileStats> per_file;
  for (const auto& [name, size] : files_) per_file[name].bytes = size;
  ByAddress<FileStats*> stats_of;  // map nodes do not move
  for (const dcp::StorageItem& it : md_.items) {
    FileStats* last = stats_of.Get(it.relative_path, [&](std::string_view name) {
      auto [f, fresh] = per_file.try_emplace(name);
      if (fresh) f->second.missing = true;
      return &f->second;
    });
    ++last->items;
    bool is_bytes = it.entry >= 0 && md_.entries[it.entry].type == dcp::EntryType::kBytes;
    ++(is_bytes ? last->bytes_items : last->tensor_chunks);
    last->item_bytes += it.length;
    // The entry of its key (an item no chunk took may still name an entry).
    const int64_t e = it.entry >= 0 ? it.entry : md_.FindEntry(it.fqn);
    if (e >= 0) {
      if (last->entries.empty() || last->entries.back() != e) last->entries.push_back(e);
    } else if (last->keys.empty() || last->keys.back() != it.fqn) {
      last->keys.push_back(it.fqn);
    }
  }
  nlohmann::json files = nlohmann::json::array();
  std::set<int64_t> ranks;
  std::vector<size_t> mark(md_.entries.size(), SIZE_MAX);
  size_t file_no = 0;
  for (auto& [name, f] : per_file) {
    int64_t rank = -1, writer = -1;
    if (dcp::ParseDataFileName(name, &rank, &writer)) ranks.insert(rank);
    // The distinct keys (entries marked with the file's number: a file of a
    // million chunks holds thousands of keys), then the first few in order.
    std::vector<std::string_view>& ks = f.keys;
    std::sort(ks.begin(), ks.end());
    ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
    for (int64_t e : f.entries) {
      if (mark[static_cast<size_t>(e)] != file_no) {
        mark[static_cast<size_t>(e)] = file_no;
        ks.push_back(md_.entries[static_cast<size_t>(e)].key);
      }
    }
    ++file_no;
    const size_t key_count = ks.size();
    const size_t first = std::min(ks.size(), kMaxKeysPerFile);
    std::partial_sort(ks.begin(), ks.begin() + static_cast<std::ptrdiff_t>(first), ks.end());
    nlohmann::json j = {{"name", name},           {"rank", rank},   {"writer", writer},
                        {"bytes", f.bytes},       {"items", f.items}, {"tensor_chunks", f.tensor_chunks},
                        {"bytes_items", f.bytes_items}, {"key_count", key_count}, {"item_bytes", f.item_bytes}};
    if (f.missing) j["missing"] = true;
    ks.resize(first);
    j["keys"] = ks;
    if (extra_.contains("file_descriptions") && extra_["file_descriptions"].contains(name)) {
      j["description"] = extra_["file_descriptions"][std::string(name)];
    }
    files.push_back(std::move(j));
  }
  d["ranks"] = ranks.size();
  d["files"] = std::move(files);
  // ckptkit's checksum manifests beside the data files (format/dcp/manifest.h).
  nlohmann::json manifests = nlohmann::json::array();
  for (const std::string& name : other_files_) {
    if (dcp::IsManifestFileName(name)) manifests.push_back(name);
  }
  if (!manifests.empty()) d["checksum_manifests"] = std::move(manifests);
  nlohmann::json probs = nlohmann::json::array();
  for (const dcp::Problem& p : problems_) {
    nlohmann::json j = {{"message", p.message}};
    if (!p.key.empty()) j["key"] = p.key;
    if (!p.file.empty()) j["file"] = p.file;
    if (p.has_offset) j["offset"] = p.offset;
    probs.push_back(std::move(j));
  }
  if (extra_.contains("megatron_problems")) {
    for (const auto& p : extra_["megatron_problems"]) probs.push_back(p);
  }
  d["problems"] = std::move(probs);
  d["other_files"] = other_files_;
  for (auto& [k, v] : extra_.items()) {
    if (k != "file_descriptions" && k != "megatron_problems") d[k] = v;
  }
  return d;
}

Result<std::shared_ptr<const ByteSource>> DcpReader::DataFile(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = open_files_.find(name);
  if (it != open_files_.end()) return it->second;
  if (name.find('/') != std::string::npos || name == ".." || name.empty()) {
    return DataLossError(StrCat(folder_, ": .metadata names data file ", Quote(name),
                                ", which is not a plain file name in the checkpoint folder"));
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<RandomAccessFile> f, env_->NewRandomAccessFile(JoinPath(folder_, name)));
  std::shared_ptr<const ByteSource> src(std::move(f));
  open_files_[name] = src;
  return src;
}

Result<std::unique_ptr<torch::TorchFile>> DcpReader::OpenBytes(const dcp::Entry& e, pickle::Mode mode) const {
  if (e.item < 0) return DataLossError(StrCat(folder_, ": ", Quote(e.key), " has no storage item"));
  const dcp::StorageItem& it = md_.items[e.item];
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, DataFile(std::string(it.relative_path)));
  return dcp::OpenBytesItem(file, it, mode);
}

Result<dcp::ChunkArchive> DcpReader::OpenChunk(const dcp::Entry& e, const dcp::Chunk& c) const {
  if (c.item < 0) {
    return DataLossError(StrCat(folder_, ": ", Quote(e.key), " chunk at ", dcp::OffsetsString(c.offsets),
                                " has no storage item in .metadata"));
  }
  const dcp::StorageItem& it = md_.items[c.item];
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, DataFile(std::string(it.relative_path)));
  return dcp::OpenChunk(file, e, c, it);
}

std::string DcpReader::Unreadable(const dcp::Entry& e) const {
  auto it = unreadable_.find(e.key);
  return it == unreadable_.end() ? std::string() : it->second;
}

Status DcpReader::ReadTensor(size_t i, ByteSink* out) const {
  if (i >= tensors_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
  Box whole = Box::Whole(tensors_[i].shape);
  return ReadTensorRegion(i, whole.start, whole.count, out);
}

Status DcpReader::ReadTensorRegion(size_t i, std::span<const int64_t> start, std::span<const int64_t> count,
                                   ByteSink* out) const {
  if (i >= tensors_.size()) return OutOfRangeError(StrCat("tensor index ", i, " out of range"));
  const dcp::Entry& e = md_.entries[tensor_entry_[i]];
  Box region{{start.begin(), start.end()}, {count.begin(), count.end()}};
  CKPT_RETURN_IF_ERROR(CheckBoxInside(region, e.size, StrCat("region of ", Quote(e.key))));
  if (std::string why = Unreadable(e); !why.empty()) {
    return DataLossError(StrCat(folder_, ": cannot assemble ", Quote(e.key), ": ", why));
  }
  const uint64_t es = static_cast<uint64_t>(DTypeSize(e.dtype));
  if (region.empty()) return OkStatus();
  // Chunks that meet the region, one per distinct box (replicas read once).
  std::vector<const dcp::Chunk*> parts;
  for (const dcp::Chunk& c : e.chunks) {
    if (e.size.empty() || Overlaps(ChunkBox(c), region)) {
      bool dup = std::any_of(parts.begin(), parts.end(), [&](const dcp::Chunk* p) {
        return std::ranges::equal(p->offsets, c.offsets) && std::ranges::equal(p->sizes, c.sizes);
      });
      if (!dup) parts.push_back(&c);
    }
  }
  auto stream_chunk = [&](const dcp::Chunk& c, ByteSink* sink) -> Status {
    CKPT_ASSIGN_OR_RETURN(dcp::ChunkArchive a, OpenChunk(e, c));
    return a.archive->ReadTensor(*a.tensor, sink).WithContext(StrCat(folder_, ": ", Quote(e.key)));
  };
  // Streaming path: every part spans the region's full extent on all axes but
  // the first, so parts sorted by their first offset emit the region in order.
  bool slabs = true;
  for (const dcp::Chunk* c : parts) {
    Box is = Intersect(ChunkBox(*c), region);
    for (size_t d = 1; d < region.rank(); ++d) slabs = slabs && is.count[d] == region.count[d];
  }
  if (slabs) {
    if (region.rank() > 0) {
      std::sort(parts.begin(), parts.end(),
                [](const dcp::Chunk* a, const dcp::Chunk* b) { return a->offsets[0] < b->offsets[0]; });
    }
    for (const dcp::Chunk* c : parts) {
      RegionSink sink(ChunkBox(*c), region, es, out);
      CKPT_RETURN_IF_ERROR(stream_chunk(*c, &sink));
      CKPT_RETURN_IF_ERROR(sink.Finish().WithContext(StrCat(Quote(e.key), " chunk ", dcp::OffsetsString(c->offsets))));
    }
    return OkStatus();
  }
  // General path: assemble the region in memory, then emit it.
  const uint64_t nbytes = region.numel() * es;
  std::unique_ptr<char[]> buf;
  try {
    buf.reset(new char[nbytes]);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat("cannot allocate ", nbytes, " bytes to assemble ", Quote(e.key)));
  }
  for (const dcp::Chunk* c : parts) {
    ScatterSink sink(ChunkBox(*c), region, es, buf.get());
    CKPT_RETURN_IF_ERROR(stream_chunk(*c, &sink));
    CKPT_RETURN_IF_ERROR(sink.Finish().WithContext(StrCat(Quote(e.key), " chunk ", dcp::OffsetsString(c->offsets))));
  }
  for (uint64_t p = 0; p < nbytes; p += kEmitPiece) {
    CKPT_RETURN_IF_ERROR(out->Append(std::string_view(buf.get() + p, std::min<uint64_t>(kEmitPiece, nbytes - p))));
  }
  return OkStatus();
}

}  // namespace ckpt::internal_checkpoint
