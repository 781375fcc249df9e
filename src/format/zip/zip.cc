// ZIP reader and torch.save-compatible writer.
//
// Structure references are to PKWARE APPNOTE.TXT 6.3.x: 4.3.7 local file
// header, 4.3.9 data descriptor, 4.3.12 central directory header, 4.3.14/15
// ZIP64 end of central directory record/locator, 4.3.16 end of central
// directory record, 4.5.3 ZIP64 extended information extra field.
//
// The writer matches miniz 3.0.2 as vendored by PyTorch
// (third_party/miniz-3.0.2/miniz.c: mz_zip_writer_add_mem_ex_v2,
// mz_zip_writer_finalize_archive) driven by caffe2/serialize/inline_container.cc
// (PyTorchStreamWriter::writeRecord, getPadding) with MZ_ZIP_FLAG_WRITE_ZIP64 and
// MINIZ_NO_TIME; verified against bytes written by torch 2.13.
#include "format/zip/zip.h"

#include "util/crc32.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "util/checked_math.h"
#include "util/coding.h"
#include "util/strings.h"

namespace ckpt::zip {
namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kDescriptorSig = 0x08074b50;

constexpr uint64_t kLocalHeaderSize = 30;
constexpr uint64_t kCentralHeaderSize = 46;
constexpr uint64_t kEocdSize = 22;
constexpr uint64_t kZip64EocdSize = 56;
constexpr uint64_t kZip64LocatorSize = 20;
constexpr uint64_t kMaxComment = 0xFFFF;

constexpr uint32_t kU32Max = 0xFFFFFFFFu;
constexpr uint16_t kU16Max = 0xFFFFu;

constexpr uint16_t kFlagEncrypted = 1u << 0;
constexpr uint16_t kFlagDescriptor = 1u << 3;
constexpr uint16_t kFlagStrongEncryption = 1u << 6;
constexpr uint16_t kFlagUtf8 = 1u << 11;

constexpr size_t kChunk = 1u << 20;

uint16_t U16(const char* p) { return DecodeLE<uint16_t>(p); }
uint32_t U32(const char* p) { return DecodeLE<uint32_t>(p); }
uint64_t U64(const char* p) { return DecodeLE<uint64_t>(p); }


std::string EntryLabel(const Entry& e) { return StrCat("record ", Quote(e.name)); }

// Reads [offset, offset+n) of src into buf (resized), mapping errors to DataLoss
// with `what`: a structure that points past the end is a corrupt archive.
Status ReadStruct(const ByteSource& src, uint64_t offset, size_t n, std::string_view what,
                  std::string* buf) {
  if (!RangeInside(offset, n, src.Size())) {
    return DataLossError(StrCat(src.Name(), ": ", what, " at offset ", offset, " (", n,
                                " bytes) lies past the end of the archive (size ",
                                src.Size(), ")"));
  }
  try {
    buf->resize(n);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(src.Name(), ": ", what, ": cannot allocate ", n,
                                         " bytes"));
  }
  return src.ReadAt(offset, n, buf->data());
}

struct EndRecord {
  uint64_t eocd_offset = 0;
  uint64_t end_of_cd_region = 0;  // the first byte after where the CD may lie
  uint64_t entries = 0;
  uint64_t cd_size = 0;
  uint64_t cd_offset = 0;
};

Result<EndRecord> FindEndRecord(const ByteSource& src) {
  const uint64_t size = src.Size();
  if (size < kEocdSize) {
    return DataLossError(StrCat(src.Name(), ": not a zip archive: ", size,
                                " bytes is shorter than an end-of-central-directory record (22)"));
  }
  const uint64_t tail_len = std::min<uint64_t>(size, kEocdSize + kMaxComment);
  const uint64_t tail_start = size - tail_len;
  std::string tail;
  CKPT_RETURN_IF_ERROR(ReadStruct(src, tail_start, tail_len, "archive tail", &tail));
  // APPNOTE 4.3.16: the EOCD is last, followed only by its comment. Search
  // backwards so the record closest to the end wins.
  int64_t found = -1;
  for (int64_t i = static_cast<int64_t>(tail_len - kEocdSize); i >= 0; --i) {
    const char* p = tail.data() + i;
    if (U32(p) != kEocdSig) continue;
    uint64_t comment = U16(p + 20);
    if (static_cast<uint64_t>(i) + kEocdSize + comment <= tail_len) {
      found = i;
      break;
    }
  }
  if (found < 0) {
    return DataLossError(StrCat(src.Name(),
                                ": not a zip archive: no end-of-central-directory record "
                                "(PK\\5\\6) in the last ",
                                tail_len, " bytes"));
  }
  const char* p = tail.data() + found;
  EndRecord r;
  r.eocd_offset = tail_start + static_cast<uint64_t>(found);
  r.end_of_cd_region = r.eocd_offset;
  uint16_t disk = U16(p + 4), cd_disk = U16(p + 6);
  uint64_t entries_disk = U16(p + 8);
  r.entries = U16(p + 10);
  r.cd_size = U32(p + 12);
  r.cd_offset = U32(p + 16);

  // ZIP64 locator immediately precedes the EOCD (APPNOTE 4.3.15).
  if (r.eocd_offset >= kZip64LocatorSize) {
    std::string loc;
    CKPT_RETURN_IF_ERROR(ReadStruct(src, r.eocd_offset - kZip64LocatorSize, kZip64LocatorSize,
                                    "ZIP64 end-of-central-directory locator", &loc));
    if (U32(loc.data()) == kZip64LocatorSig) {
      const uint64_t loc_offset = r.eocd_offset - kZip64LocatorSize;
      uint32_t z64_disk = U32(loc.data() + 4);
      uint64_t z64_offset = U64(loc.data() + 8);
      uint32_t total_disks = U32(loc.data() + 16);
      if (z64_disk != 0 || total_disks > 1) {
        return UnimplementedError(StrCat(src.Name(), ": ZIP64 locator at offset ", loc_offset,
                                         ": multi-disk archive (", total_disks,
                                         " disks) is not supported"));
      }
      if (z64_offset > loc_offset || loc_offset - z64_offset < kZip64EocdSize) {
        return DataLossError(StrCat(src.Name(), ": ZIP64 locator at offset ", loc_offset,
                                    ": ZIP64 end-of-central-directory offset ", z64_offset,
                                    " does not leave room for the 56-byte record before the locator"));
      }
      std::string z;
      CKPT_RETURN_IF_ERROR(ReadStruct(src, z64_offset, kZip64EocdSize,
                                      "ZIP64 end-of-central-directory record", &z));
      if (U32(z.data()) != kZip64EocdSig) {
        return DataLossError(StrCat(src.Name(), ": ZIP64 end-of-central-directory record at offset ",
                                    z64_offset, ": bad signature 0x", fmt::format("{:08x}", U32(z.data())),
                                    ", expected 0x06064b50"));
      }
      disk = 0;
      cd_disk = 0;
      uint32_t z_disk = U32(z.data() + 16), z_cd_disk = U32(z.data() + 20);
      if (z_disk != 0 || z_cd_disk != 0) {
        return UnimplementedError(StrCat(src.Name(), ": ZIP64 end-of-central-directory record at offset ",
                                         z64_offset, ": multi-disk archive is not supported"));
      }
      entries_disk = U64(z.data() + 24);
      r.entries = U64(z.data() + 32);
      r.cd_size = U64(z.data() + 40);
      r.cd_offset = U64(z.data() + 48);
      r.end_of_cd_region = z64_offset;
    }
  }
  if (disk != 0 || cd_disk != 0 || entries_disk != r.entries) {
    return UnimplementedError(StrCat(src.Name(), ": end-of-central-directory record at offset ",
                                     r.eocd_offset, ": multi-disk archive (disk ", disk,
                                     ", central directory disk ", cd_disk, ", ", entries_disk,
                                     " of ", r.entries, " entries on this disk) is not supported"));
  }
  if (r.cd_offset > r.end_of_cd_region || r.cd_size > r.end_of_cd_region - r.cd_offset) {
    return DataLossError(StrCat(src.Name(), ": central directory at offset ", r.cd_offset, " (",
                                r.cd_size, " bytes) does not fit before the end records at offset ",
                                r.end_of_cd_region));
  }
  if (r.entries > kMaxEntries) {
    return ResourceExhaustedError(StrCat(src.Name(), ": central directory claims ", r.entries,
                                         " entries; the limit is ", kMaxEntries));
  }
  auto min_cd = CheckedMul(r.entries, kCentralHeaderSize);
  if (!min_cd || *min_cd > r.cd_size) {
    return DataLossError(StrCat(src.Name(), ": central directory claims ", r.entries,
                                " entries but is only ", r.cd_size, " bytes (at least ",
                                kCentralHeaderSize, " per entry)"));
  }
  return r;
}

// APPNOTE 4.5.3: the ZIP64 extra holds, in this order, only the fields whose
// 32/16-bit central value is the sentinel.
Status ParseZip64Extra(const ByteSource& src, uint64_t entry_offset, uint64_t index,
                       std::string_view name, std::string_view extra, bool need_size,
                       bool need_comp, bool need_offset, bool need_disk, Entry* e,
                       uint32_t* disk) {
  auto where = [&] {
    return StrCat(src.Name(), ": central directory entry ", index, " (", Quote(name),
                  ") at offset ", entry_offset);
  };
  size_t pos = 0;
  bool seen = false;
  while (pos < extra.size()) {
    if (extra.size() - pos < 4) {
      return DataLossError(StrCat(where(), ": truncated extra field block at byte ", pos,
                                  " of ", extra.size()));
    }
    uint16_t id = U16(extra.data() + pos);
    uint16_t len = U16(extra.data() + pos + 2);
    pos += 4;
    if (len > extra.size() - pos) {
      return DataLossError(StrCat(where(), ": extra field block 0x", fmt::format("{:04x}", id),
                                  " claims ", len, " bytes, ", extra.size() - pos, " remain"));
    }
    if (id == 0x0001 && !seen) {
      seen = true;
      std::string_view f = extra.substr(pos, len);
      size_t q = 0;
      auto take64 = [&](uint64_t* out, std::string_view field) -> Status {
        if (f.size() - q < 8) {
          return DataLossError(StrCat(where(), ": ZIP64 extra field lacks the ", field,
                                      " (", f.size(), " bytes)"));
        }
        *out = U64(f.data() + q);
        q += 8;
        return OkStatus();
      };
      if (need_size) CKPT_RETURN_IF_ERROR(take64(&e->size, "uncompressed size"));
      if (need_comp) CKPT_RETURN_IF_ERROR(take64(&e->compressed_size, "compressed size"));
      if (need_offset) CKPT_RETURN_IF_ERROR(take64(&e->header_offset, "local header offset"));
      if (need_disk) {
        if (f.size() - q < 4) {
          return DataLossError(StrCat(where(), ": ZIP64 extra field lacks the disk number"));
        }
        *disk = U32(f.data() + q);
      }
    }
    pos += len;
  }
  if (!seen && (need_size || need_comp || need_offset || need_disk)) {
    return DataLossError(StrCat(where(),
                                ": 32-bit field holds 0xFFFFFFFF but there is no ZIP64 extra field"));
  }
  return OkStatus();
}

// Inflates e's raw deflate stream, handing out chunks of at most kChunk bytes.
// Fails unless it inflates to exactly e.size bytes.
template <typename Fn>
Status Inflate(const ByteSource& src, const Entry& e, Fn&& out) {
  z_stream zs{};
  if (inflateInit2(&zs, -MAX_WBITS) != Z_OK) {
    return InternalError(StrCat(src.Name(), ": ", EntryLabel(e), ": inflateInit2 failed"));
  }
  struct Closer {
    z_stream* z;
    ~Closer() { inflateEnd(z); }
  } closer{&zs};
  std::string in, obuf;
  try {
    in.resize(std::min<uint64_t>(kChunk, std::max<uint64_t>(e.compressed_size, 1)));
    obuf.resize(kChunk);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(src.Name(), ": ", EntryLabel(e), ": out of memory"));
  }
  uint64_t read = 0, produced = 0;
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    if (zs.avail_in == 0 && read < e.compressed_size) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(in.size(), e.compressed_size - read));
      CKPT_RETURN_IF_ERROR(src.ReadAt(e.data_offset + read, n, in.data()),
                           StrCat(EntryLabel(e), ": reading deflated data"));
      read += n;
      zs.next_in = reinterpret_cast<Bytef*>(in.data());
      zs.avail_in = static_cast<uInt>(n);
    }
    zs.next_out = reinterpret_cast<Bytef*>(obuf.data());
    zs.avail_out = static_cast<uInt>(obuf.size());
    const bool no_more_input = zs.avail_in == 0 && read >= e.compressed_size;
    rc = inflate(&zs, no_more_input ? Z_FINISH : Z_NO_FLUSH);
    size_t got = obuf.size() - zs.avail_out;
    if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got > 0)) {
      return DataLossError(StrCat(src.Name(), ": ", EntryLabel(e), ": bad deflate stream (",
                                  zs.msg ? zs.msg : "truncated", ") after ", produced,
                                  " inflated bytes"));
    }
    if (got > e.size - produced) {
      return DataLossError(StrCat(src.Name(), ": ", EntryLabel(e),
                                  ": inflates past its declared size of ", e.size, " bytes"));
    }
    if (got > 0) {
      CKPT_RETURN_IF_ERROR(out(std::string_view(obuf.data(), got)));
      produced += got;
    } else if (rc != Z_STREAM_END && no_more_input) {
      return DataLossError(StrCat(src.Name(), ": ", EntryLabel(e),
                                  ": deflate stream ends early after ", produced, " of ", e.size,
                                  " bytes"));
    }
  }
  if (produced != e.size) {
    return DataLossError(StrCat(src.Name(), ": ", EntryLabel(e), ": inflated to ", produced,
                                " bytes, the central directory says ", e.size));
  }
  return OkStatus();
}

Status CheckCrc(const ByteSource& src, const Entry& e, uint32_t crc) {
  if (crc != e.crc32) {
    return DataLossError(StrCat(src.Name(), ": ", EntryLabel(e), ": CRC-32 mismatch: computed 0x",
                                fmt::format("{:08x}", crc), ", central directory says 0x",
                                fmt::format("{:08x}", e.crc32)));
  }
  return OkStatus();
}

}  // namespace

uint64_t TorchZipPadding(uint64_t cursor, uint64_t name_len, uint64_t size, uint64_t alignment) {
  if (alignment == 0) return 0;
  // inline_container.cc getPadding: local header + name + the FB block header,
  // plus the ZIP64 extra miniz puts before the user extra.
  uint64_t start = cursor + kLocalHeaderSize + name_len + 4;
  if (size >= kU32Max || cursor >= kU32Max) {
    start += 4;
    if (size >= kU32Max) start += 16;
    if (cursor >= kU32Max) start += 8;
  }
  uint64_t mod = start % alignment;
  return mod == 0 ? 0 : alignment - mod;
}

// ---------------------------------------------------------------- ZipReader

Result<ZipReader> ZipReader::Open(std::shared_ptr<const ByteSource> src) {
  if (!src) return InvalidArgumentError("ZipReader::Open: null source");
  const ByteSource& s = *src;
  CKPT_ASSIGN_OR_RETURN(EndRecord end, FindEndRecord(s));

  std::string cd;
  CKPT_RETURN_IF_ERROR(ReadStruct(s, end.cd_offset, end.cd_size, "central directory", &cd));

  ZipReader reader;
  reader.src_ = std::move(src);
  try {
    reader.entries_.reserve(end.entries);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(s.Name(), ": cannot allocate ", end.entries, " entries"));
  }
  uint64_t pos = 0;
  for (uint64_t i = 0; i < end.entries; ++i) {
    const uint64_t at = end.cd_offset + pos;
    if (cd.size() - pos < kCentralHeaderSize) {
      return DataLossError(StrCat(s.Name(), ": central directory entry ", i, " at offset ", at,
                                  ": truncated (", cd.size() - pos, " bytes left of ",
                                  kCentralHeaderSize, ")"));
    }
    const char* p = cd.data() + pos;
    if (U32(p) != kCentralSig) {
      return DataLossError(StrCat(s.Name(), ": central directory entry ", i, " at offset ", at,
                                  ": bad signature 0x", fmt::format("{:08x}", U32(p)),
                                  ", expected 0x02014b50"));
    }
    uint16_t flags = U16(p + 8);
    Entry e;
    e.method = U16(p + 10);
    e.crc32 = U32(p + 16);
    e.compressed_size = U32(p + 20);
    e.size = U32(p + 24);
    uint64_t name_len = U16(p + 28), extra_len = U16(p + 30), comment_len = U16(p + 32);
    uint32_t disk = U16(p + 34);
    e.header_offset = U32(p + 42);
    uint64_t total = kCentralHeaderSize + name_len + extra_len + comment_len;
    if (cd.size() - pos < total) {
      return DataLossError(StrCat(s.Name(), ": central directory entry ", i, " at offset ", at,
                                  ": name/extra/comment (", total - kCentralHeaderSize,
                                  " bytes) run past the central directory end"));
    }
    if (name_len == 0 || name_len > kMaxNameBytes) {
      return DataLossError(StrCat(s.Name(), ": central directory entry ", i, " at offset ", at,
                                  ": name length ", name_len, " outside [1, ", kMaxNameBytes, "]"));
    }
    e.name.assign(p + kCentralHeaderSize, name_len);
    std::string_view extra(p + kCentralHeaderSize + name_len, extra_len);
    CKPT_RETURN_IF_ERROR(ParseZip64Extra(s, at, i, e.name, extra, e.size == kU32Max,
                                         e.compressed_size == kU32Max, e.header_offset == kU32Max,
                                         disk == kU16Max, &e, &disk));
    auto where = [&] {
      return StrCat(s.Name(), ": central directory entry ", i, " (", Quote(e.name),
                    ") at offset ", at);
    };
    if (flags & (kFlagEncrypted | kFlagStrongEncryption)) {
      return UnimplementedError(StrCat(where(), ": encrypted records are not supported (flags 0x",
                                       fmt::format("{:04x}", flags), ")"));
    }
    if (disk != 0) {
      return UnimplementedError(StrCat(where(), ": starts on disk ", disk,
                                       "; multi-disk archives are not supported"));
    }
    if (e.method != 0 && e.method != 8) {
      return UnimplementedError(StrCat(where(), ": compression method ", e.method,
                                       " is not supported (only 0 stored and 8 deflate)"));
    }
    if (e.method == 0 && e.compressed_size != e.size) {
      return DataLossError(StrCat(where(), ": stored record has compressed size ",
                                  e.compressed_size, " != size ", e.size));
    }
    reader.entries_.push_back(std::move(e));
    pos += total;
  }

  // Local headers: sizes and CRC come from the central directory (torch's local
  // headers hold zeros and a data descriptor); the payload starts after the
  // local header's own name and extra lengths (PyTorchStreamReader::getRecordOffset).
  std::string lh;
  for (size_t i = 0; i < reader.entries_.size(); ++i) {
    Entry& e = reader.entries_[i];
    auto where = [&] {
      return StrCat(s.Name(), ": local header of ", Quote(e.name), " at offset ", e.header_offset);
    };
    if (!RangeInside(e.header_offset, kLocalHeaderSize, end.cd_offset)) {
      return DataLossError(StrCat(where(), ": lies past the start of the central directory (",
                                  end.cd_offset, ")"));
    }
    CKPT_RETURN_IF_ERROR(ReadStruct(s, e.header_offset, kLocalHeaderSize, "local header", &lh));
    if (U32(lh.data()) != kLocalSig) {
      return DataLossError(StrCat(where(), ": bad signature 0x", fmt::format("{:08x}", U32(lh.data())),
                                  ", expected 0x04034b50"));
    }
    if (U16(lh.data() + 6) & (kFlagEncrypted | kFlagStrongEncryption)) {
      return UnimplementedError(StrCat(where(), ": encrypted records are not supported"));
    }
    uint64_t n = U16(lh.data() + 26), m = U16(lh.data() + 28);
    if (n != e.name.size()) {
      return DataLossError(StrCat(where(), ": name length ", n,
                                  " differs from the central directory's ", e.name.size()));
    }
    e.data_offset = e.header_offset + kLocalHeaderSize + n + m;
    if (!RangeInside(e.data_offset, e.compressed_size, end.cd_offset)) {
      return DataLossError(StrCat(where(), ": payload at offset ", e.data_offset, " (",
                                  e.compressed_size,
                                  " bytes) runs past the start of the central directory (",
                                  end.cd_offset, ")"));
    }
    std::string local_name;
    CKPT_RETURN_IF_ERROR(
        ReadStruct(s, e.header_offset + kLocalHeaderSize, n, "local header name", &local_name));
    if (local_name != e.name) {
      return DataLossError(StrCat(where(), ": name ", Quote(local_name),
                                  " differs from the central directory's"));
    }
  }

  // Overlap: each record's [header, payload end) must end before the next one starts.
  std::vector<uint32_t> order(reader.entries_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<uint32_t>(i);
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return reader.entries_[a].header_offset < reader.entries_[b].header_offset;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    const Entry& prev = reader.entries_[order[k - 1]];
    const Entry& cur = reader.entries_[order[k]];
    uint64_t prev_end = prev.data_offset + prev.compressed_size;
    if (cur.header_offset < prev_end) {
      return DataLossError(StrCat(s.Name(), ": records ", Quote(prev.name), " [",
                                  prev.header_offset, ", ", prev_end, ") and ", Quote(cur.name),
                                  " (local header at ", cur.header_offset, ") overlap"));
    }
  }

  // Duplicate names: the index for Find doubles as the check.
  std::sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return reader.entries_[a].name < reader.entries_[b].name;
  });
  for (size_t k = 1; k < order.size(); ++k) {
    if (reader.entries_[order[k - 1]].name == reader.entries_[order[k]].name) {
      return DataLossError(StrCat(s.Name(), ": duplicate record name ",
                                  Quote(reader.entries_[order[k]].name), " (central directory entries ",
                                  std::min(order[k - 1], order[k]), " and ",
                                  std::max(order[k - 1], order[k]), ")"));
    }
  }
  reader.by_name_ = std::move(order);
  return reader;
}

const Entry* ZipReader::Find(std::string_view name) const {
  auto it = std::lower_bound(by_name_.begin(), by_name_.end(), name,
                             [&](uint32_t i, std::string_view n) { return entries_[i].name < n; });
  if (it == by_name_.end() || entries_[*it].name != name) return nullptr;
  return &entries_[*it];
}

Result<std::string> ZipReader::ReadEntry(const Entry& e, uint64_t max_bytes) const {
  const ByteSource& s = *src_;
  if (e.size > max_bytes) {
    return ResourceExhaustedError(StrCat(s.Name(), ": ", EntryLabel(e), ": size ", e.size,
                                         " exceeds the limit of ", max_bytes, " bytes"));
  }
  std::string out;
  if (e.method == 0) {
    CKPT_ASSIGN_OR_RETURN(out, ReadString(s, e.data_offset, static_cast<size_t>(e.size)),
                          EntryLabel(e));
  } else if (e.method == 8) {
    // Deflate expands at most ~1032:1 (RFC 1951 stored-length limits), so a
    // declared size beyond that is a lie; check before reserving for it.
    if (e.size / kMaxDeflateRatio > e.compressed_size + 1) {
      return DataLossError(StrCat(s.Name(), ": ", EntryLabel(e), ": declared size ", e.size,
                                  " bytes cannot come from ", e.compressed_size,
                                  " deflated bytes (more than ", kMaxDeflateRatio, ":1)"));
    }
    try {
      out.reserve(static_cast<size_t>(e.size));
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(StrCat(s.Name(), ": ", EntryLabel(e), ": cannot allocate ",
                                           e.size, " bytes"));
    }
    CKPT_RETURN_IF_ERROR(Inflate(s, e, [&](std::string_view chunk) {
      out.append(chunk);
      return OkStatus();
    }));
  } else {
    return UnimplementedError(StrCat(s.Name(), ": ", EntryLabel(e), ": compression method ",
                                     e.method, " is not supported"));
  }
  CKPT_RETURN_IF_ERROR(CheckCrc(s, e, Crc32(0, out.data(), out.size())));
  return out;
}

Status ZipReader::ReadRange(const Entry& e, uint64_t offset, size_t n, void* dst) const {
  if (e.method != 0) {
    return FailedPreconditionError(StrCat(src_->Name(), ": ", EntryLabel(e),
                                          ": byte ranges need a stored record, this one uses method ",
                                          e.method));
  }
  if (!RangeInside(offset, n, e.size)) {
    return OutOfRangeError(StrCat(src_->Name(), ": ", EntryLabel(e), ": range at offset ", offset,
                                  " (", n, " bytes) is outside the record's ", e.size, " bytes"));
  }
  return src_->ReadAt(e.data_offset + offset, n, dst);
}

Status ZipReader::CopyEntry(const Entry& e, ByteSink* sink) const {
  const ByteSource& s = *src_;
  uint32_t crc = 0;
  if (e.method == 0) {
    std::string buf;
    try {
      buf.resize(static_cast<size_t>(std::min<uint64_t>(e.size, kChunk)));
    } catch (const std::bad_alloc&) {
      return ResourceExhaustedError(StrCat(s.Name(), ": ", EntryLabel(e), ": out of memory"));
    }
    for (uint64_t done = 0; done < e.size;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), e.size - done));
      CKPT_RETURN_IF_ERROR(s.ReadAt(e.data_offset + done, n, buf.data()), EntryLabel(e));
      crc = Crc32(crc, buf.data(), n);
      CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(buf.data(), n)));
      done += n;
    }
  } else if (e.method == 8) {
    if (e.size > kMaxInflatedBytes) {
      return ResourceExhaustedError(StrCat(s.Name(), ": ", EntryLabel(e), ": inflated size ",
                                           e.size, " exceeds the limit of ", kMaxInflatedBytes));
    }
    CKPT_RETURN_IF_ERROR(Inflate(s, e, [&](std::string_view chunk) {
      crc = Crc32(crc, chunk.data(), chunk.size());
      return sink->Append(chunk);
    }));
  } else {
    return UnimplementedError(StrCat(s.Name(), ": ", EntryLabel(e), ": compression method ",
                                     e.method, " is not supported"));
  }
  return CheckCrc(s, e, crc);
}

// ---------------------------------------------------------------- ZipWriter

ZipWriter::ZipWriter(ByteSink* sink, uint64_t alignment)
    : sink_(sink), base_(sink->Position()), alignment_(alignment) {}

uint64_t ZipWriter::Position() const {
  return sink_->Position() - base_ + pending_header_.size();
}

Status ZipWriter::BeginEntry(std::string_view name) { return BeginImpl(name, false, 0); }

Status ZipWriter::BeginEntry(std::string_view name, uint64_t size) {
  return BeginImpl(name, true, size);
}

Status ZipWriter::BeginImpl(std::string_view name, bool sized, uint64_t size) {
  if (finished_) return FailedPreconditionError("zip writer: BeginEntry after Finish");
  if (open_) {
    return FailedPreconditionError(StrCat("zip writer: BeginEntry(", Quote(name), ") while record ",
                                          Quote(current_.name), " is open"));
  }
  if (alignment_ == 0) return InvalidArgumentError("zip writer: alignment must be positive");
  if (name.empty() || name.size() > kMaxNameBytes) {
    return InvalidArgumentError(StrCat("zip writer: record name ", Quote(name), " has length ",
                                       name.size(), ", outside [1, ", kMaxNameBytes, "]"));
  }
  if (names_.count(std::string(name))) {
    return InvalidArgumentError(StrCat("zip writer: duplicate record name ", Quote(name)));
  }
  const uint64_t cursor = Position();
  const uint64_t assumed_size = sized ? size : 0;
  const uint64_t padding = TorchZipPadding(cursor, name.size(), assumed_size, alignment_);
  const bool zip64_size = assumed_size >= kU32Max;
  const bool zip64_offset = cursor >= kU32Max;
  const uint64_t zip64_len = (zip64_size || zip64_offset) ? 4 + (zip64_size ? 16 : 0) +
                                                                (zip64_offset ? 8 : 0)
                                                          : 0;
  if (zip64_len + 4 + padding > kU16Max) {
    return InvalidArgumentError(StrCat("zip writer: record ", Quote(name), ": padding of ", padding,
                                       " bytes for alignment ", alignment_,
                                       " does not fit a 16-bit extra field length"));
  }
  // mz_zip_writer_create_local_dir_header: version needed 0 (stored), times 0
  // (MINIZ_NO_TIME), CRC and sizes 0 (data descriptor follows). Flags are
  // patched in FlushLocalHeader once we know whether the record is empty.
  std::string h;
  h.reserve(kLocalHeaderSize + name.size() + zip64_len + 4 + padding);
  PutLE<uint32_t>(&h, kLocalSig);
  PutLE<uint16_t>(&h, 0);  // version needed
  PutLE<uint16_t>(&h, kFlagDescriptor | kFlagUtf8);
  PutLE<uint16_t>(&h, 0);  // method: stored
  PutLE<uint16_t>(&h, 0);  // time
  PutLE<uint16_t>(&h, 0);  // date
  PutLE<uint32_t>(&h, 0);  // crc
  PutLE<uint32_t>(&h, 0);  // compressed size
  PutLE<uint32_t>(&h, 0);  // uncompressed size
  PutLE<uint16_t>(&h, static_cast<uint16_t>(name.size()));
  PutLE<uint16_t>(&h, static_cast<uint16_t>(zip64_len + 4 + padding));
  h.append(name);
  if (zip64_len) {
    // mz_zip_writer_create_zip64_extra_data before the payload: miniz passes
    // its comp_size variable, still 0 at that point, as the compressed size.
    PutLE<uint16_t>(&h, 0x0001);
    PutLE<uint16_t>(&h, static_cast<uint16_t>(zip64_len - 4));
    if (zip64_size) {
      PutLE<uint64_t>(&h, size);
      PutLE<uint64_t>(&h, 0);
    }
    if (zip64_offset) PutLE<uint64_t>(&h, cursor);
  }
  h.append("FB");
  PutLE<uint16_t>(&h, static_cast<uint16_t>(padding));
  h.append(padding, 'Z');

  current_ = Written{std::string(name), cursor, 0, 0};
  sized_ = sized;
  declared_size_ = size;
  pending_header_ = std::move(h);
  open_ = true;
  if (sized) return FlushLocalHeader(size == 0);
  return OkStatus();
}

Status ZipWriter::FlushLocalHeader(bool empty) {
  if (pending_header_.empty()) return OkStatus();
  if (empty) {
    // mz_zip_writer_add_mem_ex_v2 sets bit 3 only when buf_size != 0.
    uint16_t flags = kFlagUtf8;
    std::memcpy(pending_header_.data() + 6, &flags, 2);
  }
  std::string h = std::move(pending_header_);
  pending_header_.clear();
  return sink_->Append(h);
}

Status ZipWriter::Append(std::string_view data) {
  if (!open_) return FailedPreconditionError("zip writer: Append with no open record");
  if (data.empty()) return OkStatus();
  if (sized_) {
    if (data.size() > declared_size_ - current_.size) {
      return InvalidArgumentError(StrCat("zip writer: record ", Quote(current_.name), ": ",
                                         current_.size + data.size(),
                                         " bytes appended, more than the declared ",
                                         declared_size_));
    }
  } else if (current_.size + data.size() >= kU32Max) {
    return InvalidArgumentError(StrCat("zip writer: record ", Quote(current_.name),
                                       " reaches 0xFFFFFFFF bytes; declare its size with "
                                       "BeginEntry(name, size) so the ZIP64 local extra can be written"));
  }
  CKPT_RETURN_IF_ERROR(FlushLocalHeader(false));
  CKPT_RETURN_IF_ERROR(sink_->Append(data));
  current_.crc32 = Crc32(current_.crc32, data.data(), data.size());
  current_.size += data.size();
  return OkStatus();
}

Status ZipWriter::EndEntry() {
  if (!open_) return FailedPreconditionError("zip writer: EndEntry with no open record");
  if (sized_ && current_.size != declared_size_) {
    return InvalidArgumentError(StrCat("zip writer: record ", Quote(current_.name), ": ",
                                       current_.size, " bytes appended, declared ",
                                       declared_size_));
  }
  CKPT_RETURN_IF_ERROR(FlushLocalHeader(current_.size == 0));
  if (current_.size > 0) {
    // Data descriptor: the 24-byte ZIP64 form whenever the local header carried
    // a ZIP64 extra (size or offset >= 0xFFFFFFFF).
    std::string d;
    PutLE<uint32_t>(&d, kDescriptorSig);
    PutLE<uint32_t>(&d, current_.crc32);
    if (current_.size >= kU32Max || current_.header_offset >= kU32Max) {
      PutLE<uint64_t>(&d, current_.size);
      PutLE<uint64_t>(&d, current_.size);
    } else {
      PutLE<uint32_t>(&d, static_cast<uint32_t>(current_.size));
      PutLE<uint32_t>(&d, static_cast<uint32_t>(current_.size));
    }
    CKPT_RETURN_IF_ERROR(sink_->Append(d));
  }
  names_.insert(current_.name);
  written_.push_back(std::move(current_));
  current_ = Written{};
  open_ = false;
  return OkStatus();
}

Status ZipWriter::AddEntry(std::string_view name, std::string_view data) {
  CKPT_RETURN_IF_ERROR(BeginEntry(name, data.size()));
  CKPT_RETURN_IF_ERROR(Append(data));
  return EndEntry();
}

Status ZipWriter::Finish() {
  if (finished_) return FailedPreconditionError("zip writer: Finish called twice");
  if (open_) {
    return FailedPreconditionError(StrCat("zip writer: Finish while record ", Quote(current_.name),
                                          " is open"));
  }
  const uint64_t cd_offset = written_.empty() ? 0 : Position();
  std::string out;
  for (const Written& w : written_) {
    const bool z_size = w.size >= kU32Max, z_off = w.header_offset >= kU32Max;
    const uint16_t extra_len =
        (z_size || z_off) ? static_cast<uint16_t>(4 + (z_size ? 16 : 0) + (z_off ? 8 : 0)) : 0;
    PutLE<uint32_t>(&out, kCentralSig);
    PutLE<uint16_t>(&out, 0);  // version made by
    PutLE<uint16_t>(&out, 0);  // version needed
    PutLE<uint16_t>(&out, w.size ? (kFlagDescriptor | kFlagUtf8) : kFlagUtf8);
    PutLE<uint16_t>(&out, 0);  // method
    PutLE<uint16_t>(&out, 0);  // time
    PutLE<uint16_t>(&out, 0);  // date
    PutLE<uint32_t>(&out, w.crc32);
    PutLE<uint32_t>(&out, static_cast<uint32_t>(std::min<uint64_t>(w.size, kU32Max)));
    PutLE<uint32_t>(&out, static_cast<uint32_t>(std::min<uint64_t>(w.size, kU32Max)));
    PutLE<uint16_t>(&out, static_cast<uint16_t>(w.name.size()));
    PutLE<uint16_t>(&out, extra_len);
    PutLE<uint16_t>(&out, 0);  // comment length
    PutLE<uint16_t>(&out, 0);  // disk start
    PutLE<uint16_t>(&out, 0);  // internal attributes
    PutLE<uint32_t>(&out, 0);  // external attributes
    PutLE<uint32_t>(&out, static_cast<uint32_t>(std::min<uint64_t>(w.header_offset, kU32Max)));
    out.append(w.name);
    if (extra_len) {
      PutLE<uint16_t>(&out, 0x0001);
      PutLE<uint16_t>(&out, static_cast<uint16_t>(extra_len - 4));
      if (z_size) {
        PutLE<uint64_t>(&out, w.size);
        PutLE<uint64_t>(&out, w.size);
      }
      if (z_off) PutLE<uint64_t>(&out, w.header_offset);
    }
  }
  const uint64_t cd_size = out.size();
  const uint64_t z64_offset = Position() + cd_size;
  const uint64_t n = written_.size();
  // mz_zip_writer_finalize_archive with m_zip64 set (MZ_ZIP_FLAG_WRITE_ZIP64):
  // the ZIP64 record and locator are always written.
  PutLE<uint32_t>(&out, kZip64EocdSig);
  PutLE<uint64_t>(&out, kZip64EocdSize - 12);
  PutLE<uint16_t>(&out, 0x031E);  // version made by: Unix, 3.0
  PutLE<uint16_t>(&out, 0x002D);  // version needed: 4.5
  PutLE<uint32_t>(&out, 0);
  PutLE<uint32_t>(&out, 0);
  PutLE<uint64_t>(&out, n);
  PutLE<uint64_t>(&out, n);
  PutLE<uint64_t>(&out, cd_size);
  PutLE<uint64_t>(&out, cd_offset);
  PutLE<uint32_t>(&out, kZip64LocatorSig);
  PutLE<uint32_t>(&out, 0);
  PutLE<uint64_t>(&out, z64_offset);
  PutLE<uint32_t>(&out, 1);
  PutLE<uint32_t>(&out, kEocdSig);
  PutLE<uint16_t>(&out, 0);
  PutLE<uint16_t>(&out, 0);
  PutLE<uint16_t>(&out, static_cast<uint16_t>(std::min<uint64_t>(n, kU16Max)));
  PutLE<uint16_t>(&out, static_cast<uint16_t>(std::min<uint64_t>(n, kU16Max)));
  PutLE<uint32_t>(&out, static_cast<uint32_t>(std::min<uint64_t>(cd_size, kU32Max)));
  PutLE<uint32_t>(&out, static_cast<uint32_t>(std::min<uint64_t>(cd_offset, kU32Max)));
  PutLE<uint16_t>(&out, 0);  // comment length
  CKPT_RETURN_IF_ERROR(sink_->Append(out));
  finished_ = true;
  return OkStatus();
}

}  // namespace ckpt::zip
