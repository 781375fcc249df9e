#include "format/dcp/item.h"

#include <zstd.h>

#include <new>

#include "util/strings.h"

namespace ckpt::dcp {
namespace {

std::string ItemWhere(const ByteSource& file, const StorageItem& item) {
  return StrCat(file.Name(), " @ ", item.offset_in_file, " (item ", Quote(item.fqn),
                item.has_offset ? StrCat(" offsets ", OffsetsString(item.offset)) : std::string(), ", ",
                item.length, " bytes)");
}

// Decodes a zstd stream (one or more frames, as pyzstd writes them) into memory.
Result<std::string> DecodeZstd(const ByteSource& in, uint64_t max_out, const std::string& where) {
  std::unique_ptr<ZSTD_DStream, size_t (*)(ZSTD_DStream*)> ds(ZSTD_createDStream(), ZSTD_freeDStream);
  if (!ds) return ResourceExhaustedError(StrCat(where, ": cannot create a zstd decoder"));
  ZSTD_initDStream(ds.get());
  std::string out;
  std::string buf(std::min<uint64_t>(in.Size(), uint64_t{1} << 20), '\0');
  std::string piece(ZSTD_DStreamOutSize(), '\0');
  uint64_t pos = 0;
  size_t last = 1;
  while (pos < in.Size()) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), in.Size() - pos));
    CKPT_RETURN_IF_ERROR(in.ReadAt(pos, n, buf.data()), where);
    ZSTD_inBuffer ib{buf.data(), n, 0};
    while (ib.pos < ib.size) {
      ZSTD_outBuffer ob{piece.data(), piece.size(), 0};
      last = ZSTD_decompressStream(ds.get(), &ob, &ib);
      if (ZSTD_isError(last)) {
        return DataLossError(StrCat(where, ": corrupt zstd stream at compressed byte ", pos + ib.pos, ": ",
                                    ZSTD_getErrorName(last)));
      }
      if (out.size() + ob.pos > max_out) {
        return ResourceExhaustedError(StrCat(where, ": decodes to more than ", max_out, " bytes"));
      }
      try {
        out.append(piece.data(), ob.pos);
      } catch (const std::bad_alloc&) {
        return ResourceExhaustedError(StrCat(where, ": cannot allocate ", out.size() + ob.pos, " bytes"));
      }
    }
    pos += n;
  }
  // Flush what the decoder still holds (last != 0: the current frame is not done).
  while (last != 0) {
    ZSTD_inBuffer ib{nullptr, 0, 0};
    ZSTD_outBuffer ob{piece.data(), piece.size(), 0};
    size_t r = ZSTD_decompressStream(ds.get(), &ob, &ib);
    if (ZSTD_isError(r)) return DataLossError(StrCat(where, ": corrupt zstd stream: ", ZSTD_getErrorName(r)));
    if (out.size() + ob.pos > max_out) {
      return ResourceExhaustedError(StrCat(where, ": decodes to more than ", max_out, " bytes"));
    }
    out.append(piece.data(), ob.pos);
    if (ob.pos == 0) break;
    last = r;
  }
  if (last != 0) return DataLossError(StrCat(where, ": truncated zstd stream (the last frame does not end)"));
  return out;
}

}  // namespace

std::string OffsetsString(std::span<const int64_t> v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += StrCat(i ? ", " : "", v[i]);
  return s + "]";
}

Result<std::shared_ptr<const ByteSource>> OpenItemBytes(std::shared_ptr<const ByteSource> file,
                                                        const StorageItem& item, uint64_t max_decoded) {
  const std::string where = ItemWhere(*file, item);
  if (item.offset_in_file > file->Size() || item.length > file->Size() - item.offset_in_file) {
    return OutOfRangeError(StrCat(where, ": the item ends at byte ", item.offset_in_file + item.length,
                                  " but the file has only ", file->Size(), " bytes (truncated file?)"));
  }
  CKPT_ASSIGN_OR_RETURN(std::unique_ptr<SubSource> sub, SubSource::Make(file, item.offset_in_file, item.length));
  std::shared_ptr<const ByteSource> cur(std::move(sub));
  for (const std::string& desc : item.transforms) {
    std::string_view name = std::string_view(desc).substr(0, desc.find('/'));
    std::string_view version =
        desc.find('/') == std::string::npos ? std::string_view() : std::string_view(desc).substr(desc.find('/') + 1);
    if (name == "stream.zstd") {
      // torch's ZStandard.from_descriptor accepts any version whose major is 1 ("1", "1.2").
      if (version.substr(0, version.find('.')) != "1") {
        return UnimplementedError(StrCat(where, ": zstd transform version ", Quote(version),
                                         " (only version 1 is known)"));
      }
      CKPT_ASSIGN_OR_RETURN(std::string decoded, DecodeZstd(*cur, max_decoded, where));
      cur = std::make_shared<StringSource>(std::move(decoded), StrCat(where, " [zstd-decoded]"));
    } else {
      return UnimplementedError(StrCat(where, ": unknown transform ", Quote(desc),
                                       " (ckptkit decodes \"stream.zstd/1\", the one torch ships)"));
    }
  }
  return cur;
}

Result<ChunkArchive> OpenChunk(std::shared_ptr<const ByteSource> file, const Entry& e, const Chunk& c,
                               const StorageItem& item) {
  const std::string where = StrCat(ItemWhere(*file, item), ": chunk ", OffsetsString(c.offsets), " of ",
                                   Quote(e.key));
  // A tensor chunk decodes to its data plus a small archive around it.
  uint64_t nbytes = static_cast<uint64_t>(DTypeSize(e.dtype));
  for (int64_t s : c.sizes) nbytes *= static_cast<uint64_t>(s);
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> bytes,
                        OpenItemBytes(file, item, std::min(kMaxDecodedItemBytes, nbytes + (uint64_t{64} << 20))));
  ChunkArchive out;
  auto opened = torch::TorchFile::Open(bytes, pickle::Mode::kStrict);
  if (!opened.ok()) {
    return Status(opened.status().code() == Code::kUnimplemented ? Code::kUnimplemented : Code::kDataLoss,
                  StrCat(where, ": not a valid embedded torch.save archive: ", opened.status().message()));
  }
  out.archive = std::move(*opened);
  const auto& ts = out.archive->tensors();
  if (ts.size() != 1 || !ts[0].key.empty()) {
    return DataLossError(StrCat(where, ": the embedded archive should hold exactly one tensor at its root, found ",
                                ts.size(), ts.size() == 1 ? StrCat(" at ", Quote(ts[0].key)) : std::string()));
  }
  out.tensor = &ts[0];
  if (out.tensor->dtype != e.dtype) {
    return DataLossError(StrCat(where, ": the embedded tensor is ", DTypeName(out.tensor->dtype),
                                " but .metadata says ", DTypeName(e.dtype)));
  }
  if (!std::ranges::equal(out.tensor->shape, c.sizes)) {
    return DataLossError(StrCat(where, ": the embedded tensor has shape ", OffsetsString(out.tensor->shape),
                                " but the chunk's sizes are ", OffsetsString(c.sizes)));
  }
  return out;
}

Result<std::unique_ptr<torch::TorchFile>> OpenBytesItem(std::shared_ptr<const ByteSource> file,
                                                        const StorageItem& item, pickle::Mode mode) {
  const std::string where = ItemWhere(*file, item);
  CKPT_ASSIGN_OR_RETURN(std::shared_ptr<const ByteSource> bytes, OpenItemBytes(file, item));
  auto opened = torch::TorchFile::Open(bytes, mode);
  if (!opened.ok()) {
    return Status(opened.status().code() == Code::kUnimplemented ? Code::kUnimplemented : Code::kDataLoss,
                  StrCat(where, ": not a valid embedded torch.save archive: ", opened.status().message()));
  }
  return std::move(*opened);
}

}  // namespace ckpt::dcp
