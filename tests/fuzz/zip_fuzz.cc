// libFuzzer target: ZipReader over arbitrary bytes, then every record read
// (ReadEntry with a small cap, CopyEntry, a ReadRange of stored records).
// Seed with tests/golden/zip/*.pt|*.zip and tests/corrupt/zip/*.
#include <cstddef>
#include <cstdint>
#include <memory>

#include "ckpt/byte_source.h"
#include "format/zip/zip.h"

namespace {

// Discards bytes but refuses to take more than a cap, like a full disk.
class CappedSink final : public ckpt::ByteSink {
 public:
  ckpt::Status Append(std::string_view data) override {
    if (data.size() > (64u << 20) - n_) return ckpt::ResourceExhaustedError("cap");
    n_ += data.size();
    return ckpt::OkStatus();
  }
  uint64_t Position() const override { return n_; }

 private:
  uint64_t n_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto src = std::make_shared<ckpt::SpanSource>(data, size, "fuzz.zip");
  auto reader = ckpt::zip::ZipReader::Open(src);
  if (!reader.ok()) return 0;
  for (const ckpt::zip::Entry& e : reader->entries()) {
    if (reader->Find(e.name) == nullptr) __builtin_trap();  // index must find every entry
    auto r = reader->ReadEntry(e, 1u << 20);
    if (r.ok() && r->size() != e.size) __builtin_trap();
    CappedSink sink;
    ckpt::Status s = reader->CopyEntry(e, &sink);
    if (s.ok() && sink.Position() != e.size) __builtin_trap();
    if (e.method == 0 && e.size > 0) {
      char buf[16];
      size_t n = e.size < sizeof(buf) ? static_cast<size_t>(e.size) : sizeof(buf);
      reader->ReadRange(e, e.size - n, n, buf).IgnoreError();
    }
  }
  return 0;
}
