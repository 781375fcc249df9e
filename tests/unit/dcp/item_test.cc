// dcp::OpenItemBytes (byte ranges, the zstd transform) and dcp::OpenChunk on
// items written by real torch (tests/golden/dcp).
#include "format/dcp/item.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <zstd.h>

#include <memory>
#include <string>

#include "testing/testutil.h"

namespace ckpt::dcp {
namespace {

using ::ckpt::testing::ReadSourceFile;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

std::string ReadAll(const ByteSource& s) {
  std::string out(s.Size(), '\0');
  EXPECT_TRUE(s.ReadAt(0, out.size(), out.data()).ok());
  return out;
}

std::string Zstd(const std::string& in, int level = 3) {
  std::string out(ZSTD_compressBound(in.size()), '\0');
  size_t n = ZSTD_compress(out.data(), out.size(), in.data(), in.size(), level);
  EXPECT_FALSE(ZSTD_isError(n));
  out.resize(n);
  return out;
}

std::string Pattern(size_t n) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131) ^ (i >> 7));
  return s;
}

StorageItem Item(uint64_t off, uint64_t len, bool zstd) {
  StorageItem it;
  it.fqn = "x";
  it.relative_path = "__0_0.distcp";
  it.offset_in_file = off;
  it.length = len;
  static const std::vector<std::string> kZstd = {"stream.zstd/1"};
  if (zstd) it.transforms = kZstd;
  return it;
}

TEST(DcpItem, PlainItemIsAWindowOntoItsRange) {
  auto file = std::make_shared<StringSource>("0123456789", "__0_0.distcp");
  auto b = OpenItemBytes(file, Item(2, 5, false));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(ReadAll(**b), "23456");
  b = OpenItemBytes(file, Item(10, 0, false));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->Size(), 0u);
}

TEST(DcpItem, RangePastEndIsOutOfRangeNamingFileAndOffset) {
  auto file = std::make_shared<StringSource>("0123456789", "dir/__0_0.distcp");
  for (auto [off, len] : {std::pair<uint64_t, uint64_t>{8, 5}, {11, 0}, {UINT64_MAX, 2}, {1, UINT64_MAX}}) {
    auto b = OpenItemBytes(file, Item(off, len, false));
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), Code::kOutOfRange);
    EXPECT_THAT(b.status().message(), HasSubstr("dir/__0_0.distcp @ " + std::to_string(off)));
    EXPECT_THAT(b.status().message(), HasSubstr("only 10 bytes"));
  }
}

// Decoded sizes around the decoder's output buffer size (a full output
// buffer at the end of the input must not read as a truncated frame), and
// several frames in one item.
TEST(DcpItem, ZstdDecodesAnySize) {
  const size_t out = ZSTD_DStreamOutSize();
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, out - 1, out, out + 1, 2 * out, 3 * out + 7}) {
    SCOPED_TRACE(n);
    std::string plain = Pattern(n);
    for (int level : {1, 19}) {
      std::string z = Zstd(plain, level);
      auto file = std::make_shared<StringSource>("hdr" + z + "tail", "f.distcp");
      auto b = OpenItemBytes(file, Item(3, z.size(), true));
      ASSERT_TRUE(b.ok()) << b.status().ToString();
      EXPECT_EQ(ReadAll(**b), plain);
    }
  }
  std::string two = Zstd("hello ") + Zstd("world");
  auto b = OpenItemBytes(std::make_shared<StringSource>(two, "f.distcp"), Item(0, two.size(), true));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(ReadAll(**b), "hello world");
}

TEST(DcpItem, CorruptOrTruncatedZstdIsDataLoss) {
  std::string z = Zstd(Pattern(5000));
  std::string bad = z;
  bad[0] ^= 0x55;  // magic number
  auto b = OpenItemBytes(std::make_shared<StringSource>(bad, "f.distcp"), Item(0, bad.size(), true));
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kDataLoss);
  EXPECT_THAT(b.status().message(), HasSubstr("corrupt zstd stream"));
  EXPECT_THAT(b.status().message(), HasSubstr("f.distcp @ 0"));
  for (size_t cut : {size_t{0}, size_t{4}, z.size() / 2, z.size() - 1}) {
    auto t = OpenItemBytes(std::make_shared<StringSource>(z.substr(0, cut), "f.distcp"), Item(0, cut, true));
    ASSERT_FALSE(t.ok()) << cut;
    EXPECT_EQ(t.status().code(), Code::kDataLoss) << cut << ": " << t.status().ToString();
  }
}

TEST(DcpItem, ZstdOverTheLimitIsResourceExhausted) {
  std::string z = Zstd(std::string(100000, 'a'));
  auto b = OpenItemBytes(std::make_shared<StringSource>(z, "f.distcp"), Item(0, z.size(), true), 4096);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kResourceExhausted);
}

TEST(DcpItem, UnknownTransformIsUnimplemented) {
  auto file = std::make_shared<StringSource>("abc", "f.distcp");
  StorageItem it = Item(0, 3, false);
  const std::vector<std::string> lz4 = {"stream.lz4/1"};
  it.transforms = lz4;
  auto b = OpenItemBytes(file, it);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), Code::kUnimplemented);
  EXPECT_THAT(b.status().message(), HasSubstr("stream.lz4/1"));
  for (const char* desc : {"stream.zstd/2", "stream.zstd/2.1", "stream.zstd/", "stream.zstd", "stream.zstd/10"}) {
    const std::vector<std::string> one = {desc};
    it.transforms = one;
    b = OpenItemBytes(file, it);
    ASSERT_FALSE(b.ok()) << desc;
    EXPECT_EQ(b.status().code(), Code::kUnimplemented) << desc;
  }
}

// torch (ZStandard.from_descriptor) accepts any 1.x version of the zstd transform.
TEST(DcpItem, ZstdMinorVersionsAreAccepted) {
  std::string z = Zstd("payload");
  auto file = std::make_shared<StringSource>(z, "f.distcp");
  for (const char* desc : {"stream.zstd/1", "stream.zstd/1.0", "stream.zstd/1.7"}) {
    StorageItem it = Item(0, z.size(), false);
    const std::vector<std::string> one = {desc};
    it.transforms = one;
    auto b = OpenItemBytes(file, it);
    ASSERT_TRUE(b.ok()) << desc << ": " << b.status().ToString();
    EXPECT_EQ(ReadAll(**b), "payload");
  }
}

// The golden zstd checkpoint: every chunk opens as a one-tensor archive with
// the entry's dtype and the chunk's shape.
TEST(DcpItem, OpensGoldenZstdChunks) {
  std::string mdb = ReadSourceFile("tests/golden/dcp/ws2_zstd/.metadata");
  ASSERT_FALSE(mdb.empty());
  StringSource msrc(mdb, "ws2_zstd/.metadata");
  auto md = ParseMetadata(msrc);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  size_t opened = 0;
  for (const Entry& e : md->entries) {
    if (e.type != EntryType::kTensor) continue;
    for (const Chunk& c : e.chunks) {
      const StorageItem& it = md->items[c.item];
      ASSERT_EQ(std::vector<std::string>(it.transforms.begin(), it.transforms.end()),
                std::vector<std::string>{"stream.zstd/1"});
      auto file = std::make_shared<StringSource>(ReadSourceFile("tests/golden/dcp/ws2_zstd/" + std::string(it.relative_path)),
                                                 std::string(it.relative_path));
      auto a = OpenChunk(file, e, c, it);
      ASSERT_TRUE(a.ok()) << a.status().ToString();
      EXPECT_THAT(c.sizes, ElementsAreArray(a->tensor->shape));
      // The same chunk claimed with another dtype or shape is refused.
      Entry wrong = e;
      wrong.dtype = e.dtype == DType::kFloat32 ? DType::kInt32 : DType::kFloat32;
      auto w = OpenChunk(file, wrong, c, it);
      ASSERT_FALSE(w.ok());
      EXPECT_EQ(w.status().code(), Code::kDataLoss);
      EXPECT_THAT(w.status().message(), HasSubstr(it.relative_path));
      ++opened;
    }
  }
  EXPECT_GE(opened, 3u);
}

}  // namespace
}  // namespace ckpt::dcp
