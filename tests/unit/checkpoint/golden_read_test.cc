// Reading every golden file written by real torch / safetensors / transformers
// through OpenCheckpoint: metadata and streamed bytes match their manifests.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "ckpt/checkpoint.h"
#include "unit/checkpoint/checkpoint_testutil.h"

namespace ckpt {
namespace {

using ::ckpt::testing::CrcSink;
using ::ckpt::testing::ReadSourceFile;
using ::ckpt::testing::ReadWhole;
using ::ckpt::testing::SourcePath;
using ::ckpt::testing::WriteWhole;
using ::ckpt::testing_ckpt::CopyIntoEnv;
using ::testing::HasSubstr;

nlohmann::json Manifest(const std::string& rel) {
  std::string text = ReadSourceFile(rel);
  EXPECT_FALSE(text.empty()) << rel;
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// --------------------------------------------------------------- torch

class GoldenTorchRead : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTorchRead, EveryTensorMatchesTorchManifest) {
  const std::string name = GetParam();
  nlohmann::json m = Manifest("tests/golden/torch/" + name + ".json");
  ASSERT_TRUE(m.is_object());
  OpenOptions o;
  o.pickle_mode = name == "hostile" ? PickleMode::kInspect : PickleMode::kStrict;
  auto r = OpenCheckpoint(SourcePath("tests/golden/torch/" + name + ".pt"), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const CheckpointReader& reader = **r;
  EXPECT_EQ(reader.format(), "torch");

  std::set<std::string> ours, theirs;
  for (const TensorInfo& t : reader.tensors()) ours.insert(t.key);
  for (auto& [k, v] : m["tensors"].items()) theirs.insert(k);
  EXPECT_EQ(ours, theirs);

  for (auto& [key, want] : m["tensors"].items()) {
    SCOPED_TRACE(name + ": tensor " + key);
    auto idx = reader.Find(key);
    ASSERT_TRUE(idx.ok()) << idx.status().ToString();
    const TensorInfo& t = reader.tensors()[*idx];
    EXPECT_EQ(DTypeName(t.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, want["shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.stride, want["stride"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.storage_offset, want["storage_offset"].get<int64_t>());
    EXPECT_EQ(t.nbytes, want["nbytes"].get<uint64_t>());
    EXPECT_EQ(t.is_parameter, want["is_parameter"].get<bool>());
    EXPECT_EQ(t.requires_grad, want["requires_grad"].get<bool>());
    CrcSink sink;
    Status s = reader.ReadTensor(*idx, &sink);
    ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(sink.Position(), want["nbytes"].get<uint64_t>());
    EXPECT_EQ(sink.crc(), want["crc32"].get<uint32_t>());
  }

  std::set<std::string> leaves_ours, leaves_theirs;
  for (const ObjectInfo& obj : reader.objects()) leaves_ours.insert(obj.key);
  for (auto& [k, v] : m["leaves"].items()) leaves_theirs.insert(k);
  EXPECT_EQ(leaves_ours, leaves_theirs);
}

INSTANTIATE_TEST_SUITE_P(AllGoldenTorchFiles, GoldenTorchRead,
                         ::testing::ValuesIn(testing_ckpt::GoldenTorchNames()),
                         [](const auto& info) { return info.param; });

TEST(GoldenTorchRead, SampleCheckpointHasBf16WeightsAndNamespace) {
  auto r = OpenCheckpoint(SourcePath("examples/sample.pt"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  // {"model": state_dict, ...}: nested keys are joined with '.'.
  auto idx = (*r)->Find("model.model.embed_tokens.weight");
  ASSERT_TRUE(idx.ok()) << idx.status().ToString();
  const TensorInfo& t = (*r)->tensors()[*idx];
  EXPECT_EQ(t.dtype, DType::kBFloat16);
  EXPECT_EQ(t.shape, (std::vector<int64_t>{256, 64}));
  EXPECT_EQ(t.nbytes, 256u * 64 * 2);
  bool saw_args = false;
  for (const ObjectInfo& o : (*r)->objects()) {
    if (o.key == "args") {
      saw_args = true;
      EXPECT_EQ(o.type, "argparse.Namespace");
      EXPECT_FALSE(o.opaque);
      EXPECT_THAT(o.repr, HasSubstr("hidden_size=64"));
    }
  }
  EXPECT_TRUE(saw_args);
}

// --------------------------------------------------------------- safetensors

// Expected torch shape of a safetensors entry: F4 shapes count 4-bit values,
// torch's float4_e2m1fn_x2 packs two per element.
std::vector<int64_t> TorchShapeOf(const nlohmann::json& e) {
  std::vector<int64_t> shape = e["shape"].get<std::vector<int64_t>>();
  if (e["dtype"] == "F4" && !shape.empty()) shape.back() /= 2;
  return shape;
}

void CheckAgainstSafetensorsManifest(const CheckpointReader& reader, const nlohmann::json& files,
                                     bool sharded) {
  std::set<std::string> ours, theirs;
  for (const TensorInfo& t : reader.tensors()) ours.insert(t.key);
  for (auto& [file, fm] : files.items()) {
    for (auto& [k, v] : fm["tensors"].items()) theirs.insert(k);
  }
  EXPECT_EQ(ours, theirs);
  for (auto& [file, fm] : files.items()) {
    for (auto& [key, want] : fm["tensors"].items()) {
      SCOPED_TRACE(file + ": tensor " + key);
      auto idx = reader.Find(key);
      ASSERT_TRUE(idx.ok()) << idx.status().ToString();
      const TensorInfo& t = reader.tensors()[*idx];
      EXPECT_EQ(DTypeSafetensorsName(t.dtype), want["dtype"].get<std::string>());
      EXPECT_EQ(t.shape, TorchShapeOf(want));
      const uint64_t begin = want["data_offsets"][0].get<uint64_t>();
      const uint64_t nbytes = want["data_offsets"][1].get<uint64_t>() - begin;
      EXPECT_EQ(t.nbytes, nbytes);
      EXPECT_EQ(t.data_offset, 8 + fm["header_size"].get<uint64_t>() + begin);
      EXPECT_EQ(t.file, sharded ? file : "");
      CrcSink sink;
      Status s = reader.ReadTensor(*idx, &sink);
      ASSERT_TRUE(s.ok()) << s.ToString();
      EXPECT_EQ(sink.Position(), nbytes);
      EXPECT_EQ(sink.crc(), want["crc32"].get<uint32_t>());
    }
  }
}

TEST(GoldenSafetensorsRead, EveryFileEveryTensorMatchesManifest) {
  nlohmann::json m = Manifest("tests/golden/safetensors/manifest.json");
  ASSERT_TRUE(m.is_object());
  ASSERT_GE(m["files"].size(), 5u);
  for (auto& [file, fm] : m["files"].items()) {
    SCOPED_TRACE(file);
    auto r = OpenCheckpoint(SourcePath("tests/golden/safetensors/" + file));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ((*r)->format(), "safetensors");
    nlohmann::json one = {{file, fm}};
    CheckAgainstSafetensorsManifest(**r, one, /*sharded=*/false);
    nlohmann::json d = (*r)->Details();
    EXPECT_EQ(d["file_bytes"], fm["file_size"]);
    if (fm["metadata"].is_null()) {
      EXPECT_FALSE(d.contains("metadata")) << d.dump();
    } else {
      EXPECT_EQ(d["metadata"], fm["metadata"]);
    }
  }
}

TEST(GoldenShardedRead, TransformersShardedSetMatchesManifest) {
  nlohmann::json m = Manifest("tests/golden/safetensors/manifest.json");
  ASSERT_TRUE(m.is_object());
  const nlohmann::json& files = m["sharded"]["files"];
  ASSERT_EQ(files.size(), 2u);
  for (const std::string& path :
       {SourcePath("tests/golden/safetensors/sharded"),
        SourcePath("tests/golden/safetensors/sharded/model.safetensors.index.json")}) {
    SCOPED_TRACE(path);
    auto r = OpenCheckpoint(path);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ((*r)->format(), "safetensors-sharded");
    EXPECT_EQ((*r)->tensors().size(), 21u);
    CheckAgainstSafetensorsManifest(**r, files, /*sharded=*/true);
    nlohmann::json d = (*r)->Details();
    EXPECT_EQ(d["metadata"]["total_size"], 26944);
    EXPECT_FALSE(d.contains("unindexed_tensors"));
  }
}

// A copy of the golden sharded set in a MemEnv with a replaced index.
class ShardedIndexAttack : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* f : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
      CopyIntoEnv(env_.get(), std::string("tests/golden/safetensors/sharded/") + f,
                  std::string("/hf/") + f);
    }
    index_ = Manifest("tests/golden/safetensors/sharded/model.safetensors.index.json");
    ASSERT_TRUE(index_.is_object());
  }
  Result<std::unique_ptr<CheckpointReader>> OpenWith(const nlohmann::json& index) {
    Status s = WriteWhole(env_.get(), "/hf/model.safetensors.index.json", index.dump(2));
    EXPECT_TRUE(s.ok()) << s.ToString();
    return OpenCheckpoint("/hf", {env_.get()});
  }

  std::unique_ptr<Env> env_ = NewMemEnv();
  nlohmann::json index_;
};

TEST_F(ShardedIndexAttack, UnmodifiedIndexOpens) {
  auto r = OpenWith(index_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->tensors().size(), 21u);
}

TEST_F(ShardedIndexAttack, TensorMissingFromItsShardIsDataLoss) {
  index_["weight_map"]["model.ghost.weight"] = "model-00001-of-00002.safetensors";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("model.ghost.weight"));
  EXPECT_THAT(r.status().message(), HasSubstr("model-00001-of-00002.safetensors"));
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors.index.json"));
}

TEST_F(ShardedIndexAttack, TensorIndexedInTheWrongShardIsDataLoss) {
  // lm_head.weight lives in shard 2.
  index_["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("lm_head.weight"));
  EXPECT_THAT(r.status().message(), HasSubstr("model-00001-of-00002.safetensors"));
}

TEST_F(ShardedIndexAttack, ParentDirectoryShardIsDataLoss) {
  CopyIntoEnv(env_.get(), "tests/golden/safetensors/multi_meta.safetensors", "/x.safetensors");
  index_["weight_map"]["lm_head.weight"] = "../x.safetensors";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("../x.safetensors"));
}

TEST_F(ShardedIndexAttack, AbsoluteShardPathIsDataLoss) {
  index_["weight_map"]["lm_head.weight"] = "/hf/model-00002-of-00002.safetensors";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
}

TEST_F(ShardedIndexAttack, MissingShardFileIsNotFoundNamingTheShard) {
  index_["weight_map"]["lm_head.weight"] = "model-00003-of-00003.safetensors";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("model-00003-of-00003.safetensors"));
}

// An index naming itself (or another index) as a shard must not recurse.
TEST_F(ShardedIndexAttack, IndexNamingAnIndexAsShardIsDataLoss) {
  index_["weight_map"]["lm_head.weight"] = "model.safetensors.index.json";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors.index.json"));

  nlohmann::json other = index_;
  other["weight_map"]["lm_head.weight"] = "pytorch_model.bin.index.json";
  Status s = WriteWhole(env_.get(), "/hf/pytorch_model.bin.index.json",
                        R"({"weight_map": {"x": "model.safetensors.index.json"}})");
  ASSERT_TRUE(s.ok());
  r = OpenWith(other);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
}

// A shard that is not a checkpoint file (here: JSON text) is corrupt data.
TEST_F(ShardedIndexAttack, ShardThatIsNotACheckpointIsDataLoss) {
  ASSERT_TRUE(WriteWhole(env_.get(), "/hf/notes.bin", "just text").ok());
  index_["weight_map"]["lm_head.weight"] = "notes.bin";
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("notes.bin"));
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors.index.json"));
}

TEST_F(ShardedIndexAttack, IndexWithoutWeightMapIsDataLoss) {
  index_.erase("weight_map");
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
}

TEST_F(ShardedIndexAttack, IndexThatIsNotJsonIsDataLoss) {
  ASSERT_TRUE(WriteWhole(env_.get(), "/hf/model.safetensors.index.json", "{\"weight_map\": ").ok());
  auto r = OpenCheckpoint("/hf", {env_.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("model.safetensors.index.json"));
}

TEST_F(ShardedIndexAttack, UnindexedTensorIsHiddenAndListed) {
  index_["weight_map"].erase("model.norm.weight");
  auto r = OpenWith(index_);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->tensors().size(), 20u);
  EXPECT_FALSE((*r)->Find("model.norm.weight").ok());
  nlohmann::json d = (*r)->Details();
  ASSERT_TRUE(d.contains("unindexed_tensors"));
  ASSERT_EQ(d["unindexed_tensors"].size(), 1u);
  EXPECT_EQ(d["unindexed_tensors"][0]["key"], "model.norm.weight");
  EXPECT_EQ(d["unindexed_tensors"][0]["file"], "model-00002-of-00002.safetensors");
}

TEST_F(ShardedIndexAttack, TruncatedShardFailsOpenNamingTheShard) {
  auto bytes = ReadWhole(env_.get(), "/hf/model-00002-of-00002.safetensors");
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(WriteWhole(env_.get(), "/hf/model-00002-of-00002.safetensors",
                         bytes->substr(0, bytes->size() - 100))
                  .ok());
  auto r = OpenWith(index_);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("model-00002-of-00002.safetensors"));
}

}  // namespace
}  // namespace ckpt
