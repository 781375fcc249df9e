// ReadAhead: the bytes a producer appends on its thread reach the sink in
// order and whole; a failure on either side is returned, never a hang.
#include "convert/read_ahead.h"

#include <gtest/gtest.h>

#include <atomic>
#include <string>

namespace ckpt::internal_convert {
namespace {

// Deterministic bytes: byte i of a stream of seed s.
std::string Pattern(uint64_t n, uint32_t seed) {
  std::string s(n, '\0');
  uint32_t x = seed * 2654435761u + 1;
  for (uint64_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    s[i] = static_cast<char>(x >> 24);
  }
  return s;
}

// Appends `data` in pieces of irregular sizes (1 byte to ~3 blocks).
Status AppendInPieces(const std::string& data, ByteSink* sink) {
  size_t at = 0, k = 0;
  const size_t sizes[] = {1, 7, ReadAhead::kBlockBytes - 3, 4096, 3 * ReadAhead::kBlockBytes + 11, 65537};
  while (at < data.size()) {
    const size_t n = std::min(sizes[k++ % 6], data.size() - at);
    CKPT_RETURN_IF_ERROR(sink->Append(std::string_view(data).substr(at, n)));
    at += n;
  }
  return OkStatus();
}

class FailingSink final : public ByteSink {
 public:
  explicit FailingSink(uint64_t fail_at) : fail_at_(fail_at) {}
  Status Append(std::string_view d) override {
    if (pos_ + d.size() > fail_at_) return ResourceExhaustedError("no space left on device");
    pos_ += d.size();
    return OkStatus();
  }
  uint64_t Position() const override { return pos_; }

 private:
  uint64_t fail_at_, pos_ = 0;
};

TEST(ReadAhead, EverySizeArrivesInOrderAndWholeAcrossRuns) {
  ReadAhead ra;
  const uint64_t B = ReadAhead::kBlockBytes;
  uint32_t seed = 1;
  for (uint64_t n : {uint64_t{0}, uint64_t{1}, B - 1, B, B + 1, 3 * B + 5, (ReadAhead::kBlocks + 3) * B + 17}) {
    SCOPED_TRACE(n);
    const std::string want = Pattern(n, seed++);
    StringSink got;
    ASSERT_TRUE(ra.Run([&](ByteSink* s) { return AppendInPieces(want, s); }, &got).ok());
    EXPECT_EQ(got.str().size(), want.size());
    EXPECT_TRUE(got.str() == want);
  }
}

TEST(ReadAhead, ProducerErrorIsReturned) {
  ReadAhead ra;
  const std::string part = Pattern(5 * ReadAhead::kBlockBytes, 9);
  StringSink got;
  Status s = ra.Run(
      [&](ByteSink* out) -> Status {
        CKPT_RETURN_IF_ERROR(AppendInPieces(part, out));
        return DataLossError("chunk 3 of linear_fc1.weight: CRC mismatch");
      },
      &got);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("CRC mismatch"), std::string::npos) << s.ToString();
  // What was produced before the error arrived, in order (the partial block is dropped).
  EXPECT_LE(got.str().size(), part.size());
  EXPECT_TRUE(part.compare(0, got.str().size(), got.str()) == 0);
}

TEST(ReadAhead, SinkErrorStopsTheProducer) {
  ReadAhead ra;
  FailingSink sink(3 * ReadAhead::kBlockBytes + 100);
  std::atomic<int> cancelled_appends{0};
  uint64_t produced = 0;
  Status s = ra.Run(
      [&](ByteSink* out) -> Status {
        // Would produce 1 GiB; must stop soon after the sink fails.
        const std::string piece(64 << 10, 'x');
        for (int i = 0; i < (1 << 14); ++i) {
          Status a = out->Append(piece);
          if (!a.ok()) {
            EXPECT_EQ(a.code(), Code::kCancelled);
            ++cancelled_appends;
            return a;
          }
          produced += piece.size();
        }
        return OkStatus();
      },
      &sink);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kResourceExhausted) << s.ToString();
  EXPECT_EQ(cancelled_appends.load(), 1);
  EXPECT_LE(produced, (ReadAhead::kBlocks + 5) * ReadAhead::kBlockBytes);
  // The object is usable again.
  StringSink ok;
  const std::string want = Pattern(2 * ReadAhead::kBlockBytes + 3, 4);
  ASSERT_TRUE(ra.Run([&](ByteSink* o) { return AppendInPieces(want, o); }, &ok).ok());
  EXPECT_TRUE(ok.str() == want);
}

}  // namespace
}  // namespace ckpt::internal_convert
