#include "util/box.h"

#include <gtest/gtest.h>

#include <numeric>
#include <string>

namespace ckpt {
namespace {

// Row-major bytes of `shape` with element size 1: byte k holds k mod 256.
std::string Iota(uint64_t n) {
  std::string s(n, '\0');
  for (uint64_t k = 0; k < n; ++k) s[k] = static_cast<char>(k % 251);
  return s;
}

// Reference: element (i, j, k) of a row-major box, copied by index math.
std::string Extract(const std::string& whole, const Box& src, const Box& region) {
  std::string out;
  const size_t n = src.rank();
  std::vector<int64_t> idx(n, 0);
  if (region.empty()) return out;
  while (true) {
    uint64_t off = 0;
    for (size_t d = 0; d < n; ++d) off = off * src.count[d] + (region.start[d] + idx[d] - src.start[d]);
    out.push_back(whole[off]);
    size_t d = n;
    while (d > 0) {
      --d;
      if (++idx[d] < region.count[d]) break;
      idx[d] = 0;
      if (d == 0) return out;
    }
    if (n == 0) return out;
  }
}

TEST(Box, RegionSinkMatchesIndexMathForEverySubBox) {
  const std::vector<int64_t> shape = {3, 4, 5};
  Box whole = Box::Whole(shape);
  std::string data = Iota(whole.numel());
  for (int64_t a0 = 0; a0 < 3; ++a0)
    for (int64_t c0 = 1; a0 + c0 <= 3; ++c0)
      for (int64_t a1 = 0; a1 < 4; a1 += 2)
        for (int64_t c1 = 1; a1 + c1 <= 4; ++c1)
          for (int64_t a2 = 0; a2 < 5; a2 += 2)
            for (int64_t c2 = 1; a2 + c2 <= 5; c2 += 2) {
              Box region{{a0, a1, a2}, {c0, c1, c2}};
              for (size_t piece : {1, 3, 7, 1000}) {
                StringSink out;
                RegionSink sink(whole, region, 1, &out);
                for (size_t p = 0; p < data.size(); p += piece) {
                  ASSERT_TRUE(sink.Append(std::string_view(data).substr(p, piece)).ok());
                }
                ASSERT_TRUE(sink.Finish().ok());
                EXPECT_EQ(out.str(), Extract(data, whole, region)) << region.ToString() << " piece " << piece;
              }
            }
}

TEST(Box, ScatterSinkPlacesChunkIntoTensor) {
  // A 2x3 chunk at (1, 2) of a 4x6 tensor, element size 2.
  Box tensor{{0, 0}, {4, 6}};
  Box chunk{{1, 2}, {2, 3}};
  std::string chunk_bytes = Iota(2 * 3 * 2);
  std::string buf(4 * 6 * 2, 'x');
  ScatterSink sink(chunk, tensor, 2, buf.data());
  ASSERT_TRUE(sink.Append(chunk_bytes).ok());
  ASSERT_TRUE(sink.Finish().ok());
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) {
      bool in = r >= 1 && r < 3 && c >= 2 && c < 5;
      std::string got = buf.substr((r * 6 + c) * 2, 2);
      if (!in) {
        EXPECT_EQ(got, "xx");
      } else {
        EXPECT_EQ(got, chunk_bytes.substr(((r - 1) * 3 + (c - 2)) * 2, 2));
      }
    }
}

TEST(Box, WholeRowsMergeIntoOneRun) {
  BoxScatter sc(Box{{2, 0, 0}, {3, 4, 5}}, Box{{0, 0, 0}, {8, 4, 5}}, 4);
  ASSERT_TRUE(sc.has_runs());
  EXPECT_EQ(sc.run().src, 0u);
  EXPECT_EQ(sc.run().dst, 2u * 20 * 4);
  EXPECT_EQ(sc.run().len, 3u * 20 * 4);
  sc.Next();
  EXPECT_FALSE(sc.has_runs());
}

TEST(Box, DisjointBoxesHaveNoRuns) {
  BoxScatter sc(Box{{0}, {3}}, Box{{3}, {2}}, 4);
  EXPECT_FALSE(sc.has_runs());
  EXPECT_EQ(sc.total_bytes(), 0u);
}

TEST(Box, ScalarIsOneElement) {
  StringSink out;
  RegionSink sink(Box{}, Box{}, 8, &out);
  ASSERT_TRUE(sink.Append("abcdefgh").ok());
  ASSERT_TRUE(sink.Finish().ok());
  EXPECT_EQ(out.str(), "abcdefgh");
}

TEST(Box, SinksRejectShortAndLongStreams) {
  StringSink out;
  RegionSink sink(Box{{0}, {4}}, Box{{1}, {2}}, 1, &out);
  ASSERT_TRUE(sink.Append("abc").ok());
  EXPECT_EQ(sink.Finish().code(), Code::kDataLoss);
  EXPECT_EQ(sink.Append("de").code(), Code::kDataLoss);
}

TEST(Box, CheckBoxInsideNamesAxis) {
  std::vector<int64_t> shape = {4, 5};
  Status s = CheckBoxInside(Box{{0, 3}, {4, 3}}, shape, "slice");
  EXPECT_EQ(s.code(), Code::kInvalidArgument);
  EXPECT_NE(s.message().find("axis 1"), std::string::npos) << s.ToString();
  EXPECT_TRUE(CheckBoxInside(Box{{0, 3}, {4, 2}}, shape, "slice").ok());
  EXPECT_EQ(CheckBoxInside(Box{{0}, {4}}, shape, "slice").code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace ckpt
