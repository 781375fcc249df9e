// Source checkpoints as DCP entries to write.
#include "convert/dcp_entries.h"

#include <map>
#include <memory>
#include <set>

#include "format/dcp/item.h"
#include "format/torch/tree_writer.h"
#include "util/strings.h"

namespace ckpt::internal_convert {

Result<std::vector<dcp::EntryToWrite>> DcpSourceEntries(const internal_checkpoint::DcpReader& d,
                                                        const std::string& src,
                                                        const ChunkDone& on_chunk, std::string_view skip_key) {
  const dcp::Metadata& md = d.metadata();
  const std::vector<TensorInfo>& tensors = d.tensors();
  std::map<int64_t, size_t> tensor_of_entry;
  for (size_t i = 0; i < tensors.size(); ++i) tensor_of_entry[d.entry_of(i)] = i;
  std::vector<dcp::EntryToWrite> entries;
  for (size_t ei = 0; ei < md.entries.size(); ++ei) {
    const dcp::Entry& e = md.entries[ei];
    if (!skip_key.empty() && e.key == skip_key) continue;
    dcp::EntryToWrite w;
    w.key = e.key;
    w.type = e.type;
    if (auto it = md.planner_paths.find(e.key); it != md.planner_paths.end()) w.path = it->second;
    if (e.type == dcp::EntryType::kBytes) {
      if (e.item < 0 || static_cast<size_t>(e.item) >= md.items.size()) {
        return DataLossError(StrCat(src, ": bytes entry ", Quote(e.key), " has no storage item"));
      }
      const dcp::StorageItem item = md.items[static_cast<size_t>(e.item)];
      w.write_bytes = [&d, item](ByteSink* sink) -> Status {
        CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> file, d.DataFile(std::string(item.relative_path)));
        CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> bytes, dcp::OpenItemBytes(file, item));
        return CopyRange(*bytes, 0, bytes->Size(), sink);
      };
      entries.push_back(std::move(w));
      continue;
    }
    auto ti = tensor_of_entry.find(static_cast<int64_t>(ei));
    if (ti == tensor_of_entry.end()) return DataLossError(StrCat(src, ": tensor ", Quote(e.key), " is not readable"));
    const size_t i = ti->second;
    const TensorInfo& t = tensors[i];
    w.dtype = t.dtype;
    w.size = t.shape;
    for (const dcp::Chunk& c : e.chunks) {
      uint64_t nb = DTypeSize(t.dtype);
      for (int64_t s : c.sizes) nb *= static_cast<uint64_t>(s);
      auto read = [&d, on_chunk, i, offsets = c.offsets, sizes = c.sizes, nb](ByteSink* sink) -> Status {
        CKPT_RETURN_IF_ERROR(d.ReadTensorRegion(i, offsets, sizes, sink));
        if (on_chunk) on_chunk(nb);
        return OkStatus();
      };
      w.chunks.push_back({{c.offsets.begin(), c.offsets.end()}, {c.sizes.begin(), c.sizes.end()}, std::move(read)});
    }
    entries.push_back(std::move(w));
  }
  return entries;
}

Result<std::vector<dcp::EntryToWrite>> FlatTensorEntries(const CheckpointReader& reader, const std::string& src,
                                                         const ChunkDone& on_chunk,
                                                         const std::vector<size_t>* subset) {
  const std::vector<TensorInfo>& tensors = reader.tensors();
  std::vector<size_t> all;
  if (subset == nullptr) {
    all.resize(tensors.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = i;
    subset = &all;
  }
  std::set<std::string> seen;
  std::vector<dcp::EntryToWrite> entries;
  for (size_t i : *subset) {
    const TensorInfo& t = tensors[i];
    if (!seen.insert(t.key).second) {
      return DataLossError(StrCat(src, ": two tensors flatten to the same key ", Quote(t.key)));
    }
    dcp::EntryToWrite w;
    w.key = t.key;
    w.dtype = t.dtype;
    w.size = t.shape;
    const uint64_t nb = t.nbytes;
    w.chunks.push_back({std::vector<int64_t>(t.shape.size(), 0), t.shape,
                        [&reader, on_chunk, i, nb](ByteSink* sink) -> Status {
                          CKPT_RETURN_IF_ERROR(reader.ReadTensor(i, sink));
                          if (on_chunk) on_chunk(nb);
                          return OkStatus();
                        }});
    entries.push_back(std::move(w));
  }
  return entries;
}

dcp::EntryToWrite NoneObjectEntry(const std::string& key) {
  dcp::EntryToWrite e;
  e.key = key;
  e.type = dcp::EntryType::kBytes;
  e.write_bytes = [](ByteSink* sink) -> Status {
    torch::TorchTreeWriter w;
    torch::TorchWriteOptions o;
    o.archive_name = "archive";
    return w.Write(w.arena().List({w.arena().None()}), sink, o);
  };
  return e;
}

}  // namespace ckpt::internal_convert
