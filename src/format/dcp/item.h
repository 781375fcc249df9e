// Reading the storage items of a DCP data file (`__<rank>_<n>.distcp`).
//
// Every item is the byte range [offset, offset+length) of its file named by
// `.metadata`'s storage_data. With the default TORCH_SAVE serialization a
// tensor chunk is a complete torch.save zip archive of one contiguous tensor
// (zip offsets relative to the item's first byte), and a bytes entry is
// torch.save(obj) of the value (Megatron ShardedObjects: torch.save([data])).
// Items written through extensions name a transform chain, applied on read
// in list order; torch 2.13 ships "stream.zstd/1" (a zstd stream), which is
// decoded here; anything else is Unimplemented.
//
// Reading an item touches only its byte range. Thread-safety: stateless
// functions; the returned objects are immutable.
#ifndef CKPT_FORMAT_DCP_ITEM_H_
#define CKPT_FORMAT_DCP_ITEM_H_

#include <memory>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"
#include "format/dcp/metadata.h"
#include "format/torch/torch_file.h"

namespace ckpt::dcp {

// Items whose decoded form is larger than this are refused (ResourceExhausted).
inline constexpr uint64_t kMaxDecodedItemBytes = uint64_t{64} << 30;

// The item's bytes after its transforms: a window onto `file` when there are
// none, else a decoded copy in memory (at most `max_decoded` bytes).
// Errors: OutOfRange when the range is outside the file (naming the file,
// offset, length and file size); Unimplemented for an unknown transform;
// DataLoss for a corrupt zstd stream; ResourceExhausted beyond max_decoded.
Result<std::shared_ptr<const ByteSource>> OpenItemBytes(std::shared_ptr<const ByteSource> file,
                                                        const StorageItem& item,
                                                        uint64_t max_decoded = kMaxDecodedItemBytes);

// A tensor chunk opened as its embedded torch.save archive.
struct ChunkArchive {
  std::unique_ptr<torch::TorchFile> archive;
  const torch::TensorRecord* tensor = nullptr;  // the archive's single tensor
};

// Opens chunk `c` of tensor entry `e`, stored as `item` in `file`, and checks
// that the archive holds exactly one tensor whose dtype is the entry's and
// whose shape is the chunk's sizes.
// Errors: DataLoss (not a torch.save archive, wrong content), each naming the
// file, the key, the chunk offsets and the item's byte offset; as OpenItemBytes.
Result<ChunkArchive> OpenChunk(std::shared_ptr<const ByteSource> file, const Entry& e, const Chunk& c,
                               const StorageItem& item);

// Opens a bytes entry's payload as a torch.save archive (objects shown
// safely; `mode` as for TorchFile). Errors: as OpenChunk.
Result<std::unique_ptr<torch::TorchFile>> OpenBytesItem(std::shared_ptr<const ByteSource> file,
                                                        const StorageItem& item, pickle::Mode mode);

// "[0, 128]" for error messages.
std::string OffsetsString(std::span<const int64_t> v);

}  // namespace ckpt::dcp

#endif  // CKPT_FORMAT_DCP_ITEM_H_
