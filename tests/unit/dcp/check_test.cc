// dcp::CheckCoverage (chunks tile their tensor exactly once) and
// dcp::CheckStructure (items, files, byte ranges) on hand-built Metadata.
#include "format/dcp/check.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "util/strings.h"

namespace ckpt::dcp {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

// What the chunks and items made here view (as a Metadata's store would).
MetadataStore& Kept() {
  static MetadataStore store;
  return store;
}

Entry Tensor(std::vector<int64_t> size, std::vector<std::pair<std::vector<int64_t>, std::vector<int64_t>>> chunks) {
  Entry e;
  e.key = "t";
  e.size = std::move(size);
  for (auto& [o, s] : chunks) {
    Chunk c;
    c.offsets = Kept().Keep(o);
    c.sizes = Kept().Keep(s);
    e.chunks.push_back(std::move(c));
  }
  return e;
}

std::vector<Problem> Coverage(const Entry& e) {
  std::vector<Problem> out;
  size_t n = CheckCoverage(e, &out);
  EXPECT_EQ(n, out.size());
  return out;
}

std::string Messages(const std::vector<Problem>& ps) {
  std::string s;
  for (const Problem& p : ps) s += ToString(p) + "\n";
  return s;
}

TEST(DcpCoverage, AcceptsExactTilings) {
  // Even rows; uneven rows (torch.chunk 3,3,1); columns; a 2x2 grid; 3-D.
  EXPECT_THAT(Coverage(Tensor({4, 2}, {{{0, 0}, {2, 2}}, {{2, 0}, {2, 2}}})), IsEmpty());
  EXPECT_THAT(Coverage(Tensor({7, 2}, {{{0, 0}, {3, 2}}, {{3, 0}, {3, 2}}, {{6, 0}, {1, 2}}})), IsEmpty());
  EXPECT_THAT(Coverage(Tensor({2, 5}, {{{0, 0}, {2, 3}}, {{0, 3}, {2, 2}}})), IsEmpty());
  EXPECT_THAT(
      Coverage(Tensor({4, 6}, {{{0, 0}, {2, 3}}, {{0, 3}, {2, 3}}, {{2, 0}, {2, 3}}, {{2, 3}, {2, 3}}})),
      IsEmpty());
  // Irregular 2-D tiling (not a grid): an L of three blocks.
  EXPECT_THAT(Coverage(Tensor({3, 3}, {{{0, 0}, {1, 3}}, {{1, 0}, {2, 1}}, {{1, 1}, {2, 2}}})), IsEmpty());
  EXPECT_THAT(Coverage(Tensor({2, 2, 2}, {{{0, 0, 0}, {1, 2, 2}}, {{1, 0, 0}, {1, 2, 1}}, {{1, 0, 1}, {1, 2, 1}}})),
              IsEmpty());
  // 1-D in one chunk; a scalar.
  EXPECT_THAT(Coverage(Tensor({5}, {{{0}, {5}}})), IsEmpty());
  EXPECT_THAT(Coverage(Tensor({}, {{{}, {}}})), IsEmpty());
}

TEST(DcpCoverage, EmptyChunksAndEmptyTensorsCoverNothingAndAreFine) {
  // 2 rows over 3 ranks: (1, 1, 0), the empty chunk at [2, 0].
  EXPECT_THAT(Coverage(Tensor({2, 4}, {{{0, 0}, {1, 4}}, {{1, 0}, {1, 4}}, {{2, 0}, {0, 4}}})), IsEmpty());
  // An empty tensor needs no chunk at all.
  EXPECT_THAT(Coverage(Tensor({0, 3}, {})), IsEmpty());
  EXPECT_THAT(Coverage(Tensor({0}, {{{0}, {0}}})), IsEmpty());
}

TEST(DcpCoverage, ReplicasAreNotOverlaps) {
  // Replicate(): every rank lists the same whole-tensor chunk.
  EXPECT_THAT(Coverage(Tensor({4}, {{{0}, {4}}, {{0}, {4}}, {{0}, {4}}})), IsEmpty());
  EXPECT_THAT(Coverage(Tensor({4, 2}, {{{0, 0}, {2, 2}}, {{2, 0}, {2, 2}}, {{0, 0}, {2, 2}}})), IsEmpty());
}

TEST(DcpCoverage, NamesTheFirstMissingBox) {
  auto ps = Coverage(Tensor({6, 2}, {{{0, 0}, {2, 2}}, {{4, 0}, {2, 2}}}));
  ASSERT_THAT(ps, SizeIs(1));
  EXPECT_EQ(ps[0].key, "t");
  EXPECT_THAT(ps[0].message, HasSubstr("4 of 12 elements are in no chunk (first: [2:4, 0:2])"));
  // A 2x2 grid with the bottom-right block missing.
  ps = Coverage(Tensor({4, 6}, {{{0, 0}, {2, 3}}, {{0, 3}, {2, 3}}, {{2, 0}, {2, 3}}}));
  ASSERT_THAT(ps, SizeIs(1));
  EXPECT_THAT(ps[0].message, HasSubstr("6 of 24 elements are in no chunk (first: [2:4, 3:6])"));
  // No chunk at all.
  ps = Coverage(Tensor({3}, {}));
  ASSERT_THAT(ps, SizeIs(1));
  EXPECT_THAT(ps[0].message, HasSubstr("3 of 3 elements are in no chunk (first: [0:3])"));
  // Only an empty chunk.
  ps = Coverage(Tensor({3}, {{{1}, {0}}}));
  ASSERT_THAT(ps, SizeIs(1));
  EXPECT_THAT(ps[0].message, HasSubstr("3 of 3"));
  // A scalar without its chunk.
  ps = Coverage(Tensor({}, {}));
  ASSERT_THAT(ps, SizeIs(1));
  EXPECT_THAT(ps[0].message, HasSubstr("the scalar is in no chunk"));
}

TEST(DcpCoverage, ReportsOverlapNamingBothChunks) {
  auto ps = Coverage(Tensor({4, 2}, {{{0, 0}, {3, 2}}, {{2, 0}, {2, 2}}}));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message,
              HasSubstr("chunk at [2, 0] sizes [2, 2] overlaps chunk at [0, 0] sizes [3, 2]"));
  // Overlap and a gap together: both are reported.
  ps = Coverage(Tensor({6}, {{{0}, {3}}, {{1}, {2}}}));
  ASSERT_THAT(ps, SizeIs(2)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("overlaps"));
  EXPECT_THAT(ps[1].message, HasSubstr("3 of 6 elements are in no chunk (first: [3:6])"));
}

TEST(DcpCoverage, ReportsChunksOutsideTheTensor) {
  auto ps = Coverage(Tensor({4}, {{{0}, {2}}, {{2}, {3}}}));
  ASSERT_FALSE(ps.empty());
  EXPECT_THAT(ps[0].message, HasSubstr("chunk at [2] sizes [3] lies outside the tensor's shape [4]"));
  // The chunk outside is not counted: the rest is a gap.
  EXPECT_THAT(Messages(ps), HasSubstr("2 of 4 elements are in no chunk (first: [2:4])"));
  // Negative offsets and overflowing ends.
  ps = Coverage(Tensor({4}, {{{-1}, {5}}, {{0}, {4}}}));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("lies outside"));
  ps = Coverage(Tensor({4}, {{{INT64_MAX}, {INT64_MAX}}, {{0}, {4}}}));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("lies outside"));
  // Rank mismatch (CheckCoverage does not trust its input).
  ps = Coverage(Tensor({4}, {{{0, 0}, {4, 1}}, {{0}, {4}}}));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("lies outside"));
}

TEST(DcpCoverage, ReportsOverflowingGlobalShape) {
  auto ps = Coverage(Tensor({INT64_MAX, 4}, {}));
  ASSERT_THAT(ps, SizeIs(1));
  EXPECT_THAT(ps[0].message, HasSubstr("overflows"));
}

// 2-D staircase: row i is split at column i, so n x n distinct cells; with
// n = 2100 that is more than 4M grid cells (the volume-count fallback) and
// more than 4096 chunks (no pairwise overlap check).
Entry Staircase2D(int64_t n, bool drop_one) {
  Entry e;
  e.key = "big";
  e.size = {n, n};
  for (int64_t i = 0; i < n; ++i) {
    if (i > 0) e.chunks.push_back(Chunk{Kept().Keep({i, 0}), Kept().Keep({1, i}), -1});
    if (!(drop_one && i == n / 2)) e.chunks.push_back(Chunk{Kept().Keep({i, i}), Kept().Keep({1, n - i}), -1});
  }
  return e;
}

// 3-D: slab i (of s) is split at i+1 in dims 1 and 2 into three chunks, so
// s x (s+1) x (s+1) cells (over 4M for s = 162) from only 3s chunks, which the
// fallback still checks pairwise for overlaps.
Entry Staircase3D(int64_t s, bool drop_one, bool overlap) {
  Entry e;
  e.key = "big3";
  e.size = {s, s + 1, s + 1};
  for (int64_t i = 0; i < s; ++i) {
    const int64_t b = i + 1;
    e.chunks.push_back(Chunk{Kept().Keep({i, 0, 0}), Kept().Keep({1, b, s + 1}), -1});
    e.chunks.push_back(Chunk{Kept().Keep({i, b, 0}), Kept().Keep({1, s + 1 - b, b}), -1});
    if (!(drop_one && i == s / 2)) e.chunks.push_back(Chunk{Kept().Keep({i, b, b}), Kept().Keep({1, s + 1 - b, s + 1 - b}), -1});
  }
  if (overlap) e.chunks.push_back(Chunk{Kept().Keep({0, 0, 0}), Kept().Keep({2, 2, 2}), -1});
  return e;
}

TEST(DcpCoverage, FallbackAboveFourMillionCellsCountsVolumes) {
  const int64_t s = 162;
  const uint64_t numel = s * (s + 1) * (s + 1);
  ASSERT_GT(numel, uint64_t{1} << 22);
  EXPECT_THAT(Coverage(Staircase3D(s, false, false)), IsEmpty());
  auto ps = Coverage(Staircase3D(s, true, false));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  const uint64_t dropped = (s + 1 - (s / 2 + 1)) * (s + 1 - (s / 2 + 1));
  EXPECT_THAT(ps[0].message, HasSubstr(StrCat("chunks hold ", numel - dropped, " elements but the tensor has ",
                                                     numel)));
  ps = Coverage(Staircase3D(s, false, true));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("chunk at [0, 0, 0] sizes [1, 1, 163] overlaps chunk at [0, 0, 0] sizes "
                                       "[2, 2, 2]"));
  // More chunks than the pairwise limit: volumes only.
  EXPECT_THAT(Coverage(Staircase2D(2100, false)), IsEmpty());
  ps = Coverage(Staircase2D(2100, true));
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("chunks hold 4408950 elements but the tensor has 4410000"));
}

// Many nested, overlapping chunks under the grid limit must not cost
// chunks x cells (a hostile .metadata could otherwise stall `inspect`).
TEST(DcpCoverage, NestedOverlapsStayFast) {
  Entry e;
  e.key = "nested";
  const int64_t n = 1500;
  e.size = {n, n};
  for (int64_t i = 1; i <= n; ++i) e.chunks.push_back(Chunk{Kept().Keep({0, 0}), Kept().Keep({i, i}), -1});
  auto t0 = std::chrono::steady_clock::now();
  auto ps = Coverage(e);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(ps.empty());
  EXPECT_THAT(ps[0].message, HasSubstr("overlaps"));
  EXPECT_LT(secs, 5.0);  // generous: ~1e9 cell visits before the fix, a few million after
}

// ---------------------------------------------------------------- structure

Metadata TwoChunkMetadata() {
  Metadata md;
  Entry w = Tensor({4, 2}, {{{0, 0}, {2, 2}}, {{2, 0}, {2, 2}}});
  w.key = "w";
  w.chunks[0].item = 0;
  w.chunks[1].item = 1;
  Entry b;
  b.key = "step";
  b.type = EntryType::kBytes;
  b.item = 2;
  md.entries = {w, b};
  auto item = [](std::string fqn, std::string file, uint64_t off, uint64_t len, int64_t entry) {
    StorageItem it;
    it.fqn = Kept().Keep(fqn);
    it.relative_path = Kept().Keep(file);
    it.offset_in_file = off;
    it.length = len;
    it.entry = entry;
    return it;
  };
  md.items = {item("w", "__0_0.distcp", 0, 100, 0), item("w", "__1_0.distcp", 0, 100, 0),
              item("step", "__0_0.distcp", 100, 50, 1)};
  return md;
}

const dcp::FileSizes kFiles = {{"__0_0.distcp", 150}, {"__1_0.distcp", 100}};

TEST(DcpStructure, ValidCheckpointHasNoProblems) {
  EXPECT_THAT(CheckStructure(TwoChunkMetadata(), kFiles), IsEmpty());
  // Extra, unreferenced files (empty writer buckets) are fine.
  auto files = kFiles;
  files["__0_1.distcp"] = 0;
  EXPECT_THAT(CheckStructure(TwoChunkMetadata(), files), IsEmpty());
}

TEST(DcpStructure, ReportsMissingFileWithItemCount) {
  auto files = kFiles;
  files.erase("__1_0.distcp");
  auto ps = CheckStructure(TwoChunkMetadata(), files);
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_EQ(ps[0].file, "__1_0.distcp");
  EXPECT_THAT(ps[0].message, HasSubstr("data file is missing (1 item of .metadata live in it: 'w')"));
}

TEST(DcpStructure, ReportsTruncatedItemWithOffset) {
  auto files = kFiles;
  files["__0_0.distcp"] = 120;
  auto ps = CheckStructure(TwoChunkMetadata(), files);
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_EQ(ps[0].key, "step");
  EXPECT_EQ(ps[0].file, "__0_0.distcp");
  EXPECT_TRUE(ps[0].has_offset);
  EXPECT_EQ(ps[0].offset, 100u);
  EXPECT_THAT(ps[0].message, HasSubstr("item of 50 bytes ends at 150 but the file has 120 bytes (truncated)"));
  EXPECT_EQ(ToString(ps[0]), "__0_0.distcp @ 100: 'step': item of 50 bytes ends at 150 but the file has 120 "
                             "bytes (truncated)");
  // An offset past the end and a huge length do not wrap.
  Metadata md = TwoChunkMetadata();
  md.items[2].offset_in_file = UINT64_MAX - 10;
  md.items[2].length = 20;
  ps = CheckStructure(md, kFiles);
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_THAT(ps[0].message, HasSubstr("truncated"));
}

TEST(DcpStructure, ReportsOverlappingItemsInOneFile) {
  Metadata md = TwoChunkMetadata();
  md.items[2].offset_in_file = 60;
  auto ps = CheckStructure(md, {{"__0_0.distcp", 150}, {"__1_0.distcp", 100}});
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_EQ(ps[0].key, "step");
  EXPECT_EQ(ps[0].offset, 60u);
  EXPECT_THAT(ps[0].message, HasSubstr("item overlaps the item of 'w' at 0 (100 bytes)"));
}

// One large item spanning two later ones: both are overlaps, not only the
// adjacent pair.
TEST(DcpStructure, ReportsEveryItemInsideALargeOne) {
  Metadata md = TwoChunkMetadata();
  md.items[0].length = 150;  // covers [0, 150): step at 100 overlaps
  md.items[1].relative_path = "__0_0.distcp";
  md.items[1].offset_in_file = 20;
  md.items[1].length = 10;  // [20, 30) inside item 0
  auto ps = CheckStructure(md, {{"__0_0.distcp", 150}});
  ASSERT_THAT(ps, SizeIs(2)) << Messages(ps);
  EXPECT_EQ(ps[0].offset, 20u);
  EXPECT_EQ(ps[1].offset, 100u);
  EXPECT_THAT(ps[1].message, HasSubstr("overlaps the item of 'w' at 0 (150 bytes)"));
}

TEST(DcpStructure, ZeroLengthItemsNeverOverlap) {
  Metadata md = TwoChunkMetadata();
  md.items[2].offset_in_file = 50;
  md.items[2].length = 0;
  EXPECT_THAT(CheckStructure(md, kFiles), IsEmpty());
}

TEST(DcpStructure, ReportsOrphanItem) {
  Metadata md = TwoChunkMetadata();
  StorageItem orphan;
  orphan.fqn = "ghost";
  orphan.relative_path = "__1_0.distcp";
  orphan.offset_in_file = 100;
  orphan.length = 0;
  md.items.push_back(orphan);
  auto ps = CheckStructure(md, kFiles);
  ASSERT_THAT(ps, SizeIs(1)) << Messages(ps);
  EXPECT_EQ(ps[0].key, "ghost");
  EXPECT_THAT(ps[0].message, HasSubstr("belongs to no entry of state_dict_metadata"));
}

TEST(DcpStructure, ReportsChunkAndBytesEntryWithoutItem) {
  Metadata md = TwoChunkMetadata();
  md.entries[0].chunks[1].item = -1;
  md.items[1].entry = -1;  // now an orphan, too
  md.entries[1].item = -1;
  md.items[2].entry = -1;
  auto ps = CheckStructure(md, kFiles);
  std::string all = Messages(ps);
  EXPECT_THAT(all, HasSubstr("'w': chunk at [2, 0] sizes [2, 2] has no storage_data item"));
  EXPECT_THAT(all, HasSubstr("'step': bytes entry has no storage_data item"));
  EXPECT_THAT(ps, SizeIs(4)) << all;
}

TEST(DcpStructure, IncludesCoverageProblems) {
  Metadata md = TwoChunkMetadata();
  md.entries[0].chunks.pop_back();
  md.items[1].entry = -1;
  auto ps = CheckStructure(md, kFiles);
  std::string all = Messages(ps);
  EXPECT_THAT(all, HasSubstr("'w': 4 of 8 elements are in no chunk (first: [2:4, 0:2])"));
  EXPECT_THAT(all, HasSubstr("'w': storage item belongs to no entry"));
}

}  // namespace
}  // namespace ckpt::dcp
