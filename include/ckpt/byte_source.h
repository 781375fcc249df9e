// ByteSource and ByteSink: the only I/O that format code sees.
//
// Format parsers (pickle, zip, torch, safetensors, ...) take a ByteSource and
// write to a ByteSink; they never see paths, Env or threads, so a fuzzer or a
// unit test can drive them from memory.
//
// Thread-safety: ByteSource::ReadAt is safe to call concurrently. A ByteSink is
// used by one thread at a time.
#ifndef CKPT_BYTE_SOURCE_H_
#define CKPT_BYTE_SOURCE_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "ckpt/status.h"

namespace ckpt {

// A read-only, random-access run of bytes of known size.
class ByteSource {
 public:
  virtual ~ByteSource() = default;

  // Total size in bytes.
  virtual uint64_t Size() const = 0;

  // Reads exactly n bytes at offset into dst.
  // Errors: OutOfRange if [offset, offset+n) is not inside [0, Size()) (the
  // message names the source, offset, wanted and available bytes); DataLoss on a
  // short read; I/O errors from the underlying file.
  virtual Status ReadAt(uint64_t offset, size_t n, void* dst) const = 0;

  // A name for error messages: the file path, or "<memory>".
  virtual std::string_view Name() const = 0;

  // If the whole source is resident in memory (a buffer or a mapping), its
  // bytes; else nullptr. Lets parsers avoid copies. Valid while *this lives.
  virtual const char* Data() const { return nullptr; }
};

// OK if [offset, offset+n) lies inside a source of `size` bytes named `name`;
// else OutOfRange "<name>: read past end at offset O: wanted N bytes, A
// available (<size_label> S)". Every ByteSource::ReadAt checks with this.
Status CheckReadRange(std::string_view name, uint64_t size, uint64_t offset, uint64_t n,
                      std::string_view size_label = "size");

// Reads [offset, offset+n) of src into a string (helper for small records).
// Errors as ByteSource::ReadAt; ResourceExhausted if n cannot be allocated.
Result<std::string> ReadString(const ByteSource& src, uint64_t offset, size_t n);

// A ByteSource over bytes it owns.
class StringSource final : public ByteSource {
 public:
  explicit StringSource(std::string data, std::string name = "<memory>")
      : data_(std::move(data)), name_(std::move(name)) {}
  uint64_t Size() const override { return data_.size(); }
  Status ReadAt(uint64_t offset, size_t n, void* dst) const override;
  std::string_view Name() const override { return name_; }
  const char* Data() const override { return data_.data(); }

 private:
  std::string data_;
  std::string name_;
};

// A ByteSource over memory it does not own. REQUIRES: the memory outlives it.
class SpanSource final : public ByteSource {
 public:
  SpanSource(const void* data, size_t size, std::string name = "<memory>")
      : data_(static_cast<const char*>(data)), size_(size), name_(std::move(name)) {}
  uint64_t Size() const override { return size_; }
  Status ReadAt(uint64_t offset, size_t n, void* dst) const override;
  std::string_view Name() const override { return name_; }
  const char* Data() const override { return data_; }

 private:
  const char* data_;
  size_t size_;
  std::string name_;
};

// A window [base, base+size) of another source, addressed from 0. Used for
// archives embedded in larger files (DCP chunks). Errors name the parent and
// the absolute offset.
class SubSource final : public ByteSource {
 public:
  // Errors: OutOfRange if the window is not inside parent.
  static Result<std::unique_ptr<SubSource>> Make(std::shared_ptr<const ByteSource> parent,
                                                 uint64_t base, uint64_t size);
  uint64_t Size() const override { return size_; }
  Status ReadAt(uint64_t offset, size_t n, void* dst) const override;
  std::string_view Name() const override { return name_; }
  const char* Data() const override;

 private:
  SubSource(std::shared_ptr<const ByteSource> parent, uint64_t base, uint64_t size);
  std::shared_ptr<const ByteSource> parent_;
  uint64_t base_;
  uint64_t size_;
  std::string name_;
};

// An append-only destination of bytes.
class ByteSink {
 public:
  virtual ~ByteSink() = default;
  // Appends all of data. Errors: I/O errors (ResourceExhausted for no space).
  virtual Status Append(std::string_view data) = 0;
  // Bytes appended so far.
  virtual uint64_t Position() const = 0;
};

// Copies [offset, offset+n) of src to sink in pieces of at most chunk bytes
// (directly from src.Data() when the source is resident).
// Errors: as ByteSource::ReadAt and ByteSink::Append.
Status CopyRange(const ByteSource& src, uint64_t offset, uint64_t n, ByteSink* sink,
                 size_t chunk = size_t{8} << 20);

// A ByteSink into a std::string.
class StringSink final : public ByteSink {
 public:
  Status Append(std::string_view data) override {
    buf_.append(data);
    return OkStatus();
  }
  uint64_t Position() const override { return buf_.size(); }
  const std::string& str() const { return buf_; }
  std::string Release() { return std::move(buf_); }

 private:
  std::string buf_;
};

// Counts bytes and discards them (for sizing a layout before writing it).
class CountingSink final : public ByteSink {
 public:
  Status Append(std::string_view data) override {
    n_ += data.size();
    return OkStatus();
  }
  uint64_t Position() const override { return n_; }

 private:
  uint64_t n_ = 0;
};

}  // namespace ckpt

#endif  // CKPT_BYTE_SOURCE_H_
