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
#include <unordered_set>
#include <vector>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"

namespace ckpt::zip {

inline constexpr uint64_t kMaxEntries = 1u << 24;        // 16M records
inline constexpr uint64_t kMaxNameBytes = 4096;
inline constexpr uint64_t kMaxInflatedBytes = 1ull << 40;  // cap for a deflated record
inline constexpr uint64_t kMaxDeflateRatio = 1032;         // deflate's best possible ratio

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

  // Streams a record's (inflated) bytes to sink in chunks, verifying the CRC-32
  // at the end. Errors: DataLoss on CRC mismatch, a bad deflate stream or an
  // inflated size other than e.size; ResourceExhausted if a deflated record
  // claims more than kMaxInflatedBytes; sink errors.
  Status CopyEntry(const Entry& e, ByteSink* sink) const;

  const ByteSource& source() const { return *src_; }
  const std::shared_ptr<const ByteSource>& shared_source() const { return src_; }

 private:
  std::shared_ptr<const ByteSource> src_;
  std::vector<Entry> entries_;
  // Indices of entries_ sorted by name, for Find (private, added).
  std::vector<uint32_t> by_name_;
};

// Writes an archive in torch.save's exact layout to a sink whose Position()
// is the archive's offset 0 at construction (payload alignment is relative to it).
// Byte-identical to torch 2.13's PyTorchStreamWriter (miniz with
// MZ_ZIP_FLAG_WRITE_ZIP64): version fields 0, flags 0x0808 (0x0800 and no data
// descriptor for an empty record), zero times, FB/'Z' padding, 16- or 24-byte
// data descriptors, ZIP64 extras only where an offset or size reaches
// 0xFFFFFFFF, and always a ZIP64 end record + locator before the classic one.
// After a sink error the archive is incomplete; discard it.
class ZipWriter {
 public:
  explicit ZipWriter(ByteSink* sink, uint64_t alignment = 64);

  // Starts a stored record; its bytes follow via Append. Only one record is
  // open at a time. Errors: from the sink; InvalidArgument for an empty or
  // over-long name or a duplicate, or a zero alignment; FailedPrecondition if
  // a record is open or Finish was called.
  // The size is not known yet, so the record must stay below 0xFFFFFFFF bytes
  // (Append fails with InvalidArgument past that): torch writes a ZIP64 extra
  // field into the local header of such records, which needs the size up
  // front. Use the sized overload for records that may be that large.
  // The local header is held back until the first non-empty Append (or
  // EndEntry), because torch writes flags 0x0800 and no data descriptor for an
  // empty record; Position() counts it already.
  Status BeginEntry(std::string_view name);
  // As above, with the record's exact size declared; any size works (ZIP64
  // local extra as torch writes it). EndEntry fails with InvalidArgument if the
  // appended bytes differ from `size`.
  Status BeginEntry(std::string_view name, uint64_t size);
  Status Append(std::string_view data);
  // Writes the data descriptor (CRC-32, sizes; ZIP64 form when needed).
  // An empty record gets none (torch/miniz: bit 3 is only set when size > 0).
  Status EndEntry();
  // The CRC-32 of the record most recently closed by EndEntry (0 if none), so
  // callers need not compute it a second time.
  uint32_t last_crc32() const { return written_.empty() ? 0 : written_.back().crc32; }

  // BeginEntry(name, data.size()) + Append + EndEntry.
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
  Status BeginImpl(std::string_view name, bool sized, uint64_t size);
  Status FlushLocalHeader(bool empty);
  ByteSink* sink_;
  uint64_t base_;
  uint64_t alignment_;
  bool open_ = false;
  bool finished_ = false;
  Written current_{};
  std::vector<Written> written_;
  // Added for the implementation (private; the public contract is unchanged).
  bool sized_ = false;            // current record declared its size
  uint64_t declared_size_ = 0;    // the declared size when sized_
  std::string pending_header_;    // local header held back (unsized records)
  std::unordered_set<std::string> names_;  // names of written_, for duplicates
};

// The padding torch inserts in the FB extra field for a record of `size` bytes
// whose local header starts at `cursor` (inline_container.cc detail::getPadding):
// the count of 'Z' bytes, excluding the 4-byte FB block header. Counts the
// ZIP64 local extra (4 + 16 if size >= 0xFFFFFFFF, + 8 if cursor >= 0xFFFFFFFF).
// alignment 0 yields 0.
uint64_t TorchZipPadding(uint64_t cursor, uint64_t name_len, uint64_t size, uint64_t alignment);

}  // namespace ckpt::zip

#endif  // CKPT_FORMAT_ZIP_ZIP_H_
