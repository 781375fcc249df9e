// Reading and writing ZIP archives as torch.save lays them out.
//
// torch.save writes (via miniz, caffe2/serialize/inline_container.cc) stored
// (method 0) records, each local header followed by a private "FB" extra field
// of 'Z' padding so every payload starts at a multiple of the alignment (64),
// general-purpose flag 0x0808 (data descriptor + UTF-8), a data descriptor
// after each payload, ZIP64 fields when an offset or size reaches 0xFFFFFFFF,
// and a central directory. ZipWriter reproduces that layout byte for byte;
// ZipReader accepts it and any other conforming stored archive (method 8,
// deflate, is read too, for files recompressed by other tools).
//
// Offsets are relative to the start of the ByteSource / ByteSink, so an archive
// embedded in a larger file (a DCP chunk) is read through a SubSource.
//
// Validation before allocation: the end-of-central-directory record is searched
// only in the last 64 KiB + 22 bytes; the entry count and central-directory
// size are checked against the source size; each entry's local header and
// payload must lie inside the source; names are capped (limits below).
//
// Thread-safety: a ZipReader is immutable after Open; its methods are safe to
// call concurrently. A ZipWriter is used by one thread.
#ifndef CKPT_FORMAT_ZIP_ZIP_H_
#define CKPT_FORMAT_ZIP_ZIP_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"

namespace ckpt::zip {

inline constexpr uint64_t kMaxEntries = 1u << 24;        // 16M records
inline constexpr uint64_t kMaxNameBytes = 4096;
inline constexpr uint64_t kMaxInflatedBytes = 1ull << 40;  // cap for a deflated record

struct Entry {
  std::string name;          // full name, e.g. "archive/data/0"
  uint64_t header_offset = 0;  // local file header
  uint64_t data_offset = 0;    // first payload byte (from the local header's lengths)
  uint64_t compressed_size = 0;
  uint64_t size = 0;           // uncompressed
  uint32_t crc32 = 0;
  uint16_t method = 0;         // 0 stored, 8 deflate
};

class ZipReader {
 public:
  // Parses the central directory and every local header.
  // Errors: DataLoss naming the source, the structure (EOCD, ZIP64 locator,
  // central directory entry N, local header of 'name') and the offset;
  // Unimplemented for encryption, multi-disk archives or methods other than 0/8.
  static Result<ZipReader> Open(std::shared_ptr<const ByteSource> src);

  const std::vector<Entry>& entries() const { return entries_; }
  // nullptr if absent.
  const Entry* Find(std::string_view name) const;

  // Reads the whole (inflated) record and checks its CRC-32.
  // Errors: ResourceExhausted if size > max_bytes; DataLoss on CRC mismatch or
  // a bad deflate stream, naming the record.
  Result<std::string> ReadEntry(const Entry& e, uint64_t max_bytes = 1ull << 30) const;

  // Reads n bytes at `offset` inside a stored record, without CRC check.
  // Errors: OutOfRange if outside the record; FailedPrecondition if not stored.
  Status ReadRange(const Entry& e, uint64_t offset, size_t n, void* dst) const;

  // Streams a stored record's bytes to sink in chunks, verifying the CRC-32 at the end.
  Status CopyEntry(const Entry& e, ByteSink* sink) const;

  const ByteSource& source() const { return *src_; }
  const std::shared_ptr<const ByteSource>& shared_source() const { return src_; }

 private:
  std::shared_ptr<const ByteSource> src_;
  std::vector<Entry> entries_;
};

// Writes an archive in torch.save's exact layout to a sink whose Position()
// is the archive's offset 0 at construction (payload alignment is relative to it).
class ZipWriter {
 public:
  explicit ZipWriter(ByteSink* sink, uint64_t alignment = 64);

  // Starts a stored record; its bytes follow via Append. Only one record is
  // open at a time. Errors: from the sink; InvalidArgument for an empty or
  // over-long name or a duplicate.
  Status BeginEntry(std::string_view name);
  Status Append(std::string_view data);
  // Writes the data descriptor (CRC-32, sizes; ZIP64 form when needed).
  Status EndEntry();

  // BeginEntry + Append + EndEntry.
  Status AddEntry(std::string_view name, std::string_view data);

  // Writes the central directory and end records (ZIP64 ones when needed).
  // No call is valid after Finish.
  Status Finish();

  // Bytes written so far, relative to the archive start.
  uint64_t Position() const;

 private:
  struct Written {
    std::string name;
    uint64_t header_offset;
    uint64_t size;
    uint32_t crc32;
  };
  ByteSink* sink_;
  uint64_t base_;
  uint64_t alignment_;
  bool open_ = false;
  bool finished_ = false;
  Written current_{};
  std::vector<Written> written_;
};

// The padding torch inserts in the FB extra field for a record of `size` bytes
// whose local header starts at `cursor` (inline_container.cc detail::getPadding).
uint64_t TorchZipPadding(uint64_t cursor, uint64_t name_len, uint64_t size, uint64_t alignment);

}  // namespace ckpt::zip

#endif  // CKPT_FORMAT_ZIP_ZIP_H_
