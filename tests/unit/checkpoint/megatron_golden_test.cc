// Reading Megatron-Core torch_dist checkpoints written by real megatron-core
// 0.16.1 and 0.19.2 (tests/golden/megatron, make_golden.py), opened at the
// Megatron-LM root (tracker file followed to the iteration folder): every key,
// dtype, global shape, chunk count and assembled tensor matches what
// megatron's own dist_checkpointing.load returned.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/verify.h"
#include "unit/checkpoint/checkpoint_testutil.h"
#include "util/sha256.h"

namespace ckpt {
namespace {

using ::ckpt::testing::ReadSourceFile;
using ::ckpt::testing::SourcePath;
using ::testing::HasSubstr;

class GoldenMegatronRead : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenMegatronRead, EveryKeyMatchesMegatronLoad) {
  const std::string name = GetParam();
  nlohmann::json m = nlohmann::json::parse(ReadSourceFile("tests/golden/megatron/" + name + ".expected.json"),
                                           nullptr, false);
  ASSERT_TRUE(m.is_object());
  auto r = OpenCheckpoint(SourcePath("tests/golden/megatron/" + name), {nullptr, PickleMode::kInspect});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const CheckpointReader& reader = **r;
  EXPECT_EQ(reader.format(), "megatron-torch_dist");
  nlohmann::json d = reader.Details();
  EXPECT_EQ(d["iteration"].get<int64_t>(), m["iteration"].get<int64_t>());
  EXPECT_EQ(d["problems"].size(), 0u) << d["problems"].dump();
  const auto& sum = d["megatron"]["summary"];
  EXPECT_FALSE(sum.is_null());

  std::set<std::string> objects;
  for (const ObjectInfo& o : reader.objects()) objects.insert(o.key);
  size_t tensors = 0;
  for (auto& [key, want] : m["keys"].items()) {
    SCOPED_TRACE(name + ": " + key);
    if (want["kind"] == "ShardedObject") {
      // Shown as an object (0.19's common_state is unpacked into its leaves).
      if (key != "common_state/shard_0_1") {
        EXPECT_TRUE(objects.count(key)) << key;
      }
      continue;
    }
    ++tensors;
    auto idx = reader.Find(key);
    ASSERT_TRUE(idx.ok()) << idx.status().ToString();
    const TensorInfo& t = reader.tensors()[*idx];
    EXPECT_EQ(DTypeName(t.dtype), want["dtype"].get<std::string>());
    EXPECT_EQ(t.shape, want["global_shape"].get<std::vector<int64_t>>());
    EXPECT_EQ(t.chunks.size(), want["chunks"].get<size_t>());
    Sha256Sink sink;
    ASSERT_TRUE(reader.ReadTensor(*idx, &sink).ok());
    EXPECT_EQ(sink.HexDigest(), want["sha256"].get<std::string>());
  }
  EXPECT_EQ(reader.tensors().size(), tensors);
  // The common state's args are shown without running anything.
  bool has_args = false;
  for (const ObjectInfo& o : reader.objects()) {
    if (o.key.find(":args") != std::string::npos && o.type == "argparse.Namespace") has_args = true;
  }
  EXPECT_TRUE(has_args);
}

TEST_P(GoldenMegatronRead, VerifiesCleanDeep) {
  VerifyOptions o;
  o.deep = true;
  auto r = Verify(SourcePath("tests/golden/megatron/" + GetParam()), o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(r->ok()) << (r->problems.empty() ? "" : ToString(r->problems[0]));
  EXPECT_EQ(r->format, "megatron-torch_dist");
}

INSTANTIATE_TEST_SUITE_P(All, GoldenMegatronRead,
                         ::testing::Values("mc016_handbuilt", "mc016_handbuilt_dpresh", "mc016_gpt_tp2pp2dp2",
                                           "mc019_handbuilt"));

TEST(MegatronRoot, TrackerNamingAMissingIterationIsDataLoss) {
  auto env = NewMemEnv();
  ASSERT_TRUE(env->CreateDirs("/meg").ok());
  ASSERT_TRUE(::ckpt::testing::WriteWhole(env.get(), "/meg/latest_checkpointed_iteration.txt", "1000").ok());
  auto r = OpenCheckpoint("/meg", {env.get()});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kDataLoss) << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("iter_0001000"));
}

TEST(MegatronRoot, SampleOpensAtRootAndIterationFolderAlike) {
  auto root = OpenCheckpoint(SourcePath("examples/torch_dist"));
  auto iter = OpenCheckpoint(SourcePath("examples/torch_dist/iter_0000010"));
  ASSERT_TRUE(root.ok()) << root.status().ToString();
  ASSERT_TRUE(iter.ok()) << iter.status().ToString();
  EXPECT_EQ((*root)->tensors().size(), (*iter)->tensors().size());
  EXPECT_EQ((*root)->Details()["iteration"], 10);
  EXPECT_EQ((*iter)->Details()["iteration"], 10);  // from the common state
}

}  // namespace
}  // namespace ckpt
