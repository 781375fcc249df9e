#include "ckpt/byte_source.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "util/strings.h"

namespace ckpt {
Status CheckReadRange(std::string_view name, uint64_t size, uint64_t offset, uint64_t n,
                      std::string_view size_label) {
  if (offset > size || n > size - offset) {
    return OutOfRangeError(StrCat(name, ": read past end at offset ", offset, ": wanted ", n,
                                  " bytes, ", offset > size ? 0 : size - offset, " available (",
                                  size_label, " ", size, ")"));
  }
  return OkStatus();
}

Result<std::string> ReadString(const ByteSource& src, uint64_t offset, size_t n) {
  CKPT_RETURN_IF_ERROR(CheckReadRange(src.Name(), src.Size(), offset, n));
  std::string out;
  try {
    out.resize(n);
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(src.Name(), ": cannot allocate ", n, " bytes"));
  }
  CKPT_RETURN_IF_ERROR(src.ReadAt(offset, n, out.data()));
  return out;
}

Status CopyRange(const ByteSource& src, uint64_t offset, uint64_t n, ByteSink* sink,
                 size_t chunk) {
  CKPT_RETURN_IF_ERROR(CheckReadRange(src.Name(), src.Size(), offset, n));
  if (const char* p = src.Data()) {
    return sink->Append(std::string_view(p + offset, n));
  }
  std::string buf;
  try {
    buf.resize(static_cast<size_t>(std::min<uint64_t>(n, chunk)));
  } catch (const std::bad_alloc&) {
    return ResourceExhaustedError(StrCat(src.Name(), ": cannot allocate a copy buffer"));
  }
  while (n > 0) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(n, buf.size()));
    CKPT_RETURN_IF_ERROR(src.ReadAt(offset, k, buf.data()));
    CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(buf.data(), k)));
    offset += k;
    n -= k;
  }
  return OkStatus();
}

Status StringSource::ReadAt(uint64_t offset, size_t n, void* dst) const {
  CKPT_RETURN_IF_ERROR(CheckReadRange(name_, data_.size(), offset, n));
  if (n) std::memcpy(dst, data_.data() + offset, n);
  return OkStatus();
}

Status SpanSource::ReadAt(uint64_t offset, size_t n, void* dst) const {
  CKPT_RETURN_IF_ERROR(CheckReadRange(name_, size_, offset, n));
  if (n) std::memcpy(dst, data_ + offset, n);
  return OkStatus();
}

SubSource::SubSource(std::shared_ptr<const ByteSource> parent, uint64_t base, uint64_t size)
    : parent_(std::move(parent)), base_(base), size_(size) {
  name_ = StrCat(parent_->Name(), "[", base_, "+", size_, "]");
}

Result<std::unique_ptr<SubSource>> SubSource::Make(std::shared_ptr<const ByteSource> parent,
                                                   uint64_t base, uint64_t size) {
  CKPT_RETURN_IF_ERROR(CheckReadRange(parent->Name(), parent->Size(), base, size));
  return std::unique_ptr<SubSource>(new SubSource(std::move(parent), base, size));
}

Status SubSource::ReadAt(uint64_t offset, size_t n, void* dst) const {
  CKPT_RETURN_IF_ERROR(CheckReadRange(name_, size_, offset, n));
  return parent_->ReadAt(base_ + offset, n, dst);
}

const char* SubSource::Data() const {
  const char* p = parent_->Data();
  return p ? p + base_ : nullptr;
}

}  // namespace ckpt
