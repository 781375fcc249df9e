#include "ckpt/status.h"

#include <gtest/gtest.h>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"

namespace ckpt {
namespace {

Result<int> Half(int x) {
  if (x % 2) return InvalidArgumentError("odd");
  return x / 2;
}

Result<int> Quarter(int x) {
  CKPT_ASSIGN_OR_RETURN(int h, Half(x), "first half");
  CKPT_ASSIGN_OR_RETURN(int q, Half(h), "second half");
  return q;
}

TEST(Status, ContextPrefixesOutermostFirst) {
  Result<int> r = Quarter(6);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "second half: odd");
  EXPECT_EQ(r.status().ToString(), "invalid argument: second half: odd");
  EXPECT_EQ(*Quarter(8), 2);
}

TEST(Status, OkStaysOkUnderContext) {
  EXPECT_TRUE(OkStatus().WithContext("x").ok());
}

TEST(ByteSource, ReadPastEndNamesOffsetAndSizes) {
  StringSource src("abcdef", "f.bin");
  char buf[4];
  Status s = src.ReadAt(4, 4, buf);
  EXPECT_EQ(s.code(), Code::kOutOfRange);
  EXPECT_EQ(s.message(), "f.bin: read past end at offset 4: wanted 4 bytes, 2 available (size 6)");
  ASSERT_TRUE(src.ReadAt(2, 4, buf).ok());
  EXPECT_EQ(std::string(buf, 4), "cdef");
}

TEST(ByteSource, SubSourceIsAWindow) {
  auto parent = std::make_shared<StringSource>("0123456789", "p");
  auto sub = SubSource::Make(parent, 3, 4);
  ASSERT_TRUE(sub.ok());
  char buf[4];
  ASSERT_TRUE((*sub)->ReadAt(0, 4, buf).ok());
  EXPECT_EQ(std::string(buf, 4), "3456");
  EXPECT_EQ((*sub)->ReadAt(1, 4, buf).code(), Code::kOutOfRange);
  EXPECT_FALSE(SubSource::Make(parent, 8, 4).ok());
}

TEST(DType, NamesRoundTripForEveryDType) {
  for (int i = 0; i < kNumDTypes; ++i) {
    DType d = static_cast<DType>(i);
    EXPECT_EQ(DTypeFromName(DTypeName(d)), d) << DTypeName(d);
    if (!DTypeSafetensorsName(d).empty()) {
      EXPECT_EQ(DTypeFromSafetensorsName(DTypeSafetensorsName(d)), d);
    }
    if (!DTypeLegacyStorage(d).empty()) {
      EXPECT_EQ(DTypeFromLegacyStorage(DTypeLegacyStorage(d)), d);
    }
  }
  EXPECT_EQ(DTypeSize(DType::kBFloat16), 2);
  EXPECT_EQ(DTypeFromSafetensorsName("F8_E4M3"), DType::kFloat8_e4m3fn);
  EXPECT_FALSE(DTypeFromName("float33").has_value());
}

}  // namespace
}  // namespace ckpt
