// Reading DCP checkpoints written by real torch 2.13 (tests/golden/dcp, made
// by make_golden.py): keys, dtypes, shapes, chunk placement and the assembled
// bytes of every tensor and of every slice match what torch itself loads.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "checkpoint/dcp_reader.h"
#include "ckpt/checkpoint.h"
#include "format/dcp/writer.h"
#include "unit/checkpoint/checkpoint_testutil.h"
#include "util/box.h"
#include "util/sha256.h"

using ::testing::ElementsAreArray;

namespace ckpt {
namespace {

using ::ckpt::testing::ReadSourceFile;
using ::ckpt::testing::SourcePath;

nlohmann::json Sidecar(const std::string& name) {
  std::string text = ReadSourceFile("tests/golden/dcp/" + name + ".json");
  EXPECT_FALSE(text.empty()) << name;
  return nlohmann::json::parse(text, nullptr, false);
}

class GoldenDcpRead : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenDcpRead, EveryTensorMatchesTorch) {
  const std::string name = GetParam();
  nlohmann::json m = Sidecar(name);
  ASSERT_TRUE(m.is_object());
  auto r = OpenCheckpoint(SourcePath("tests/golden/dcp/" + name));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const CheckpointReader& reader = **r;
  EXPECT_EQ(reader.format(), "dcp");
  EXPECT_EQ(reader.Details()["problems"].size(), 0u) << reader.Details()["problems"].dump();

  std::set<std::string> ours, theirs;
  for (const TensorInfo& t : reader.tensors()) ours.insert(t.key);
  for (auto& [k, v] : m["tensors"].items()) theirs.insert(k);
  EXPECT_EQ(ours, theirs);

  for (auto& [key, want] : m["tensors"].items()) {
    SCOPED_TRACE(name + ": " + key);
    auto idx = reader.Find(key);
    ASSERT_TRUE(idx.ok());
    const TensorInfo& t = reader.tensors()[*idx];
    EXPECT_EQ(DTypeName(t.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>());
    ASSERT_EQ(t.chunks.size(), want["chunks"].size());
    for (size_t c = 0; c < t.chunks.size(); ++c) {
      // Chunks are listed in .metadata order, which is torch's.
      const auto& wc = want["chunks"][c];
      EXPECT_THAT(t.chunks[c].offsets, ElementsAreArray(wc["offsets"].get<std::vector<int64_t>>()));
      EXPECT_THAT(t.chunks[c].sizes, ElementsAreArray(wc["sizes"].get<std::vector<int64_t>>()));
      EXPECT_EQ(t.chunks[c].file, wc["file"].get<std::string>());
      EXPECT_EQ(t.chunks[c].offset, wc["offset"].get<uint64_t>());
      EXPECT_EQ(t.chunks[c].length, wc["length"].get<uint64_t>());
    }
    Sha256Sink sink;
    ASSERT_TRUE(reader.ReadTensor(*idx, &sink).ok());
    EXPECT_EQ(sink.Position(), t.nbytes);
    EXPECT_EQ(sink.HexDigest(), want["sha256"].get<std::string>());
  }
  std::set<std::string> objs, want_objs;
  for (const ObjectInfo& o : reader.objects()) {
    objs.insert(o.key);
    if (m["bytes"].contains(o.key)) {
      // Python's type(v).__name__ ("BytesIO") is the last part of ours ("_io.BytesIO").
      EXPECT_THAT(o.type, ::testing::EndsWith(m["bytes"][o.key]["type"].get<std::string>())) << o.key;
    }
  }
  for (auto& [k, v] : m["bytes"].items()) want_objs.insert(k);
  EXPECT_EQ(objs, want_objs);
}

// Every region of every tensor, read through the chunk-aware path, equals the
// same region cut from the whole tensor.
TEST_P(GoldenDcpRead, RegionsEqualSlicesOfTheWholeTensor) {
  auto r = OpenCheckpoint(SourcePath("tests/golden/dcp/" + GetParam()));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const CheckpointReader& reader = **r;
  for (size_t i = 0; i < reader.tensors().size(); ++i) {
    const TensorInfo& t = reader.tensors()[i];
    if (t.shape.empty() || t.nbytes == 0) continue;
    StringSink whole;
    ASSERT_TRUE(reader.ReadTensor(i, &whole).ok());
    // A few regions: a middle band on axis 0, the last column, the whole.
    std::vector<Box> regions;
    Box b = Box::Whole(t.shape);
    regions.push_back(b);
    if (t.shape[0] > 2) {
      Box band = b;
      band.start[0] = 1;
      band.count[0] = t.shape[0] - 2;
      regions.push_back(band);
    }
    if (t.shape.size() >= 2 && t.shape.back() > 1) {
      Box col = b;
      col.start.back() = t.shape.back() - 1;
      col.count.back() = 1;
      regions.push_back(col);
    }
    for (const Box& region : regions) {
      SCOPED_TRACE(t.key + " " + region.ToString());
      StringSink got, want;
      ASSERT_TRUE(reader.ReadTensorRegion(i, region.start, region.count, &got).ok());
      RegionSink cut(Box::Whole(t.shape), region, DTypeSize(t.dtype), &want);
      ASSERT_TRUE(cut.Append(whole.str()).ok());
      EXPECT_EQ(got.str(), want.str());
    }
  }
}

// Details' files: per file the distinct keys of its items (key_count) and the
// first twelve of them in order, against the items of .metadata.
TEST(DcpDetails, FilesListTheirDistinctKeys) {
  size_t cut = 0;  // files with more than twelve keys
  for (const char* rel : {"tests/golden/dcp/ws4_per_item", "tests/golden/dcp/ws3_uneven",
                          "tests/golden/megatron/mc016_gpt_tp2pp2dp2/iter_0000010"}) {
    SCOPED_TRACE(rel);
    auto r = OpenCheckpoint(SourcePath(rel));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const internal_checkpoint::DcpReader* d = (*r)->dcp_view();
    ASSERT_NE(d, nullptr);
    std::map<std::string, std::set<std::string>> want;
    for (const dcp::StorageItem& it : d->metadata().items) want[std::string(it.relative_path)].insert(std::string(it.fqn));
    const nlohmann::json files = (*r)->Details()["files"];
    ASSERT_EQ(files.size(), want.size());
    for (const auto& f : files) {
      const std::set<std::string>& w = want[f["name"].get<std::string>()];
      EXPECT_EQ(f["key_count"], w.size()) << f["name"];
      std::vector<std::string> first(w.begin(), std::next(w.begin(), static_cast<long>(std::min<size_t>(12, w.size()))));
      EXPECT_EQ(f["keys"].get<std::vector<std::string>>(), first) << f["name"];
      EXPECT_FALSE(f.contains("missing"));
      cut += w.size() > 12 ? 1 : 0;
    }
  }
  EXPECT_GT(cut, 0u);
}

// Items of one key need not be one run in a file: "a", "b", "a" is two keys.
TEST(DcpDetails, KeysOfInterleavedItemsCountOnce) {
  std::vector<dcp::EntryToWrite> e(2);
  e[0].key = "a";
  e[0].size = {4};
  e[0].chunks = {{{0}, {2}, nullptr}, {{2}, {2}, nullptr}};
  e[1].key = "b";
  e[1].size = {2};
  e[1].chunks = {{{0}, {2}, nullptr}};
  std::vector<dcp::WrittenItem> items = {
      {0, 0, "__0_0.distcp", 0, 10}, {1, 0, "__0_0.distcp", 10, 10}, {0, 1, "__0_0.distcp", 20, 10}};
  Result<std::string> md = dcp::SerializeDcpMetadata(e, items, {}, 0);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  std::unique_ptr<Env> env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/c").ok());
  ASSERT_TRUE(::ckpt::testing::WriteWhole(env.get(), "/c/.metadata", *md).ok());
  ASSERT_TRUE(::ckpt::testing::WriteWhole(env.get(), "/c/__0_0.distcp", std::string(30, '\0')).ok());
  auto r = OpenCheckpoint("/c", {env.get(), PickleMode::kInspect});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const nlohmann::json details = (*r)->Details();
  ASSERT_EQ(details["files"].size(), 1u);
  EXPECT_EQ(details["files"][0]["items"], 3);
  EXPECT_EQ(details["files"][0]["key_count"], 2);
  EXPECT_EQ(details["files"][0]["keys"], nlohmann::json::array({"a", "b"}));
}

// A data file .metadata names that the folder lacks is listed, missing.
TEST(DcpDetails, MissingFileIsListed) {
  std::unique_ptr<Env> env = NewMemEnv();
  testing_ckpt::CopyDcpGolden(env.get(), "ws3_uneven", "/c");
  ASSERT_TRUE(env->RemoveFile("/c/__1_0.distcp").ok());
  auto r = OpenCheckpoint("/c", {env.get(), PickleMode::kInspect});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const nlohmann::json details = (*r)->Details();
  std::vector<std::pair<std::string, bool>> got;
  for (const auto& f : details["files"]) {
    got.emplace_back(f["name"], f.value("missing", false));
    if (f.value("missing", false)) {
      EXPECT_EQ(f["bytes"], 0);
      EXPECT_EQ(f["rank"], 1);
      EXPECT_GT(f["tensor_chunks"].get<int64_t>(), 0);
    }
  }
  EXPECT_EQ(got, (std::vector<std::pair<std::string, bool>>{
                     {"__0_0.distcp", false}, {"__1_0.distcp", true}, {"__2_0.distcp", false}}));
}

INSTANTIATE_TEST_SUITE_P(All, GoldenDcpRead,
                         ::testing::Values("ws1_plain", "ws1_threads3_empty", "ws2_threads2", "ws3_uneven",
                                           "ws4_per_item", "ws2_zstd", "all_dtypes"));

}  // namespace
}  // namespace ckpt
