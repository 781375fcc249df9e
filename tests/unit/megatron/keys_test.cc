#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "format/megatron/megatron.h"
#include "unit/megatron/megatron_testutil.h"

namespace ckpt::megatron {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::AddBytes;
using testing::AddTensor;
using testing::GptSpec;
using testing::MakeGpt;

TEST(ShardedObjectKey, ParsesRngStateKey) {
  auto k = ParseShardedObjectKey("rng_state/shard_0.1_4.2");
  ASSERT_TRUE(k.has_value());
  EXPECT_EQ(k->key, "rng_state");
  EXPECT_THAT(k->offset, ElementsAre(0, 1));
  EXPECT_THAT(k->shape, ElementsAre(4, 2));
  EXPECT_EQ(ShardedObjectKeyString(*k), "rng_state/shard_0.1_4.2");
}

TEST(ShardedObjectKey, PadsShapeWithMinusOneWhenOneShorterThanOffset) {
  auto k = ParseShardedObjectKey("decoder.layers.mlp._extra_state/shard_3.1_8");
  ASSERT_TRUE(k.has_value());
  EXPECT_THAT(k->offset, ElementsAre(3, 1));
  EXPECT_THAT(k->shape, ElementsAre(8, -1));
}

TEST(ShardedObjectKey, KeepsUnequalRanksOtherwise) {
  // Python pads only when len(shape) + 1 == len(offset).
  auto k = ParseShardedObjectKey("x/shard_1.2.3_4");
  ASSERT_TRUE(k.has_value());
  EXPECT_THAT(k->shape, ElementsAre(4));
}

TEST(ShardedObjectKey, RejectsWhatEmptyFromUniqueKeyRejects) {
  for (const char* s : {"rng_state", "a/b/shard_0_1", "x/shard_0", "x/shard_0_1_2", "x/Shard_0_1",
                        "x/shard__1", "x/shard_0_", "x/shard_0._1", "x/shard_a_1", "x/shard_0_1.x",
                        "x/shard_99999999999999999999_1", "x/"}) {
    EXPECT_FALSE(ParseShardedObjectKey(s).has_value()) << s;
  }
}

TEST(ShardedObjectKey, AcceptsSignedIntsAsPythonIntDoes) {
  auto k = ParseShardedObjectKey("x/shard_-1.+2_3");
  ASSERT_TRUE(k.has_value());
  EXPECT_THAT(k->offset, ElementsAre(-1, 2));
}

TEST(MegatronClassify, ClassifiesTypicalKeys) {
  struct Case {
    const char* key;
    bool bytes;
    KeyKind kind;
  } cases[] = {
      {"embedding.word_embeddings.weight", false, KeyKind::kModel},
      {"decoder.layers.self_attention.linear_qkv.weight", false, KeyKind::kModel},
      {"decoder.layers.3.mlp.experts.experts.1.linear_fc1.weight_w", false, KeyKind::kModel},
      {"optimizer.state.exp_avg.decoder.layers.mlp.linear_fc1.weight", false, KeyKind::kOptimizerState},
      {"optimizer.state.fp32_param.output_layer.weight", false, KeyKind::kOptimizerParam},
      {"optimizer.state.param.embedding.word_embeddings.weight", false, KeyKind::kOptimizerParam},
      {"chained_1.optimizer.state.fp32_param.output_layer.weight", false, KeyKind::kOptimizerParam},
      {"optimizer.distributed.dp_group_idx_0.gbuf_idx_0.dtype_(torch.bfloat16, torch.float32).bucket_idx_0.param",
       false, KeyKind::kOptimizerParam},
      {"optimizer.distributed.dp_group_idx_0.gbuf_idx_0.dtype_(torch.bfloat16, torch.float32).bucket_idx_0.exp_avg",
       false, KeyKind::kOptimizerState},
      {"optimizer.distributed.dp_group_idx_3.optimizer/shard_0_1", true, KeyKind::kOptimizerState},
      {"optimizer.distributed.dp_group_idx_0.param_state/shard_0_1", true, KeyKind::kOptimizerState},
      {"decoder.layers.self_attention.linear_qkv._extra_state/shard_5_32", true, KeyKind::kExtraState},
      {"decoder.layers.mlp.experts.experts.linear_fc1._extra_state/shard_0.3_2.8", true,
       KeyKind::kExtraState},
      {"rng_state/shard_0.1_4.2", true, KeyKind::kRngState},
      {"rerun_state_machine_state/shard_3_8", true, KeyKind::kRerunState},
      {"common_state/shard_0_1", true, KeyKind::kCommonState},
      {"some_object/shard_0_1", true, KeyKind::kShardedObject},
      {"plain_bytes", true, KeyKind::kOther},
      // a tensor named like the common state is still a model tensor
      {"common_state", false, KeyKind::kModel},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(Classify(c.key, c.bytes), c.kind) << c.key << " -> " << KeyKindName(Classify(c.key, c.bytes));
  }
}

TEST(MegatronClassify, KindNamesAreDistinct) {
  std::set<std::string> names;
  for (int i = 0; i < kKeyKindCount; ++i) names.insert(std::string(KeyKindName(static_cast<KeyKind>(i))));
  EXPECT_EQ(names.size(), static_cast<size_t>(kKeyKindCount));
}

TEST(MegatronRanges, CollapsesRuns) {
  EXPECT_EQ(RangesString({0, 1, 2, 3, 6, 8, 9}), "0-3,6,8-9");
  EXPECT_EQ(RangesString({5}), "5");
  EXPECT_EQ(RangesString({}), "");
}

TEST(MegatronDescribeFiles, TellsWhatEachRankFileHolds) {
  GptSpec spec;  // TP=2 PP=2 DP=2, 4 layers
  dcp::Metadata md = MakeGpt(spec);
  std::vector<FileContents> files = DescribeFiles(md);
  ASSERT_EQ(files.size(), 8u);
  // Sorted numerically by rank.
  for (size_t i = 0; i < files.size(); ++i) {
    ASSERT_TRUE(files[i].rank.has_value());
    EXPECT_EQ(*files[i].rank, static_cast<int64_t>(i));
    EXPECT_EQ(*files[i].writer, 0);
  }
  // rank 0 = (tp 0, dp 0, pp 0): embedding, layers 0-1, rng (0,0), rerun 0, optimizer.
  const FileContents& f0 = files[0];
  EXPECT_EQ(f0.file, "__0_0.distcp");
  EXPECT_THAT(f0.groups, ::testing::Contains("embedding"));
  EXPECT_THAT(f0.groups, ::testing::Contains("decoder layers 0-1"));
  EXPECT_THAT(f0.groups, ::testing::Contains("TE extra state 0-1"));
  EXPECT_THAT(f0.groups, ::testing::Contains("rng state [0.0]"));
  EXPECT_THAT(f0.groups, ::testing::Contains("rerun state [0]"));
  EXPECT_THAT(f0.groups, ::testing::Contains("fp32 main params (grad-buffer buckets)"));
  // Canonical group order (module order, then extra state, optimizer, rng, rerun).
  EXPECT_THAT(f0.groups, ElementsAre("embedding", "decoder layers 0-1", "TE extra state 0-1",
                                     "fp32 main params (grad-buffer buckets)",
                                     "optimizer state (grad-buffer buckets, distributed optimizer objects)",
                                     "rng state [0.0]", "rerun state [0]"));
  EXPECT_THAT(f0.text, HasSubstr("__0_0.distcp: rank 0, file 0: 23 items (18 tensor chunks, 5 objects)"));
  EXPECT_FALSE(std::count(f0.groups.begin(), f0.groups.end(), "output_layer"));
  // rank 4 = (tp 0, dp 0, pp 1): layers 2-3, final norm, output layer.
  const FileContents& f4 = files[4];
  EXPECT_THAT(f4.groups, ::testing::Contains("decoder layers 2-3"));
  EXPECT_THAT(f4.groups, ::testing::Contains("decoder.final_layernorm"));
  EXPECT_THAT(f4.groups, ::testing::Contains("output_layer"));
  EXPECT_THAT(f4.groups, ::testing::Contains("rng state [1.0]"));
  // rank 2 = (tp 0, dp 1, pp 0): only DP-sharded optimizer buckets and its rerun state.
  const FileContents& f2 = files[2];
  EXPECT_EQ(f2.items_by_kind.count(KeyKind::kModel), 0u);
  EXPECT_EQ(f2.items_by_kind.at(KeyKind::kOptimizerParam), 1);
  EXPECT_EQ(f2.items_by_kind.at(KeyKind::kOptimizerState), 2);
  EXPECT_EQ(f2.items_by_kind.at(KeyKind::kRerunState), 1);
  EXPECT_EQ(f2.bytes, 3u * 4000 + 50);
  EXPECT_EQ(f2.items, 4);
  EXPECT_EQ(f2.tensor_chunks, 3);
  EXPECT_EQ(f2.bytes_items, 1);
  EXPECT_THAT(f2.text, HasSubstr("(3 tensor chunks, 1 object), 11.8 KiB:"));
}

TEST(MegatronDescribeFiles, SortsNumericallyAndParsesPrefixes) {
  dcp::Metadata md;
  AddBytes(&md, "a/shard_0_1", "__10_0.distcp");
  AddBytes(&md, "b/shard_0_1", "__2_1.distcp");
  AddBytes(&md, "c/shard_0_1", "__2_0.distcp");
  AddBytes(&md, "d/shard_0_1", "weird.bin");
  AddBytes(&md, "optimizer.x/shard_0_1", "optimizer__0_0.distcp");
  std::vector<FileContents> f = DescribeFiles(md);
  ASSERT_EQ(f.size(), 5u);
  EXPECT_EQ(f[0].file, "__2_0.distcp");
  EXPECT_EQ(f[1].file, "__2_1.distcp");
  EXPECT_EQ(f[2].file, "__10_0.distcp");
  EXPECT_EQ(f[3].file, "optimizer__0_0.distcp");
  EXPECT_EQ(f[3].prefix, "optimizer");
  EXPECT_EQ(f[3].rank, 0);
  EXPECT_EQ(f[4].file, "weird.bin");
  EXPECT_FALSE(f[4].rank.has_value());
  EXPECT_THAT(f[0].groups, ElementsAre("c"));
}

TEST(MegatronDescribeFiles, PerLayerKeysAndOptimizerModelSpace) {
  dcp::Metadata md;
  AddTensor(&md, "decoder.layers.7.mlp.linear_fc2.weight", {8, 16}, {{{0, 0}, {8, 16}, "__1_0.distcp"}});
  AddTensor(&md, "decoder.layers.9.mlp.linear_fc2.weight", {8, 16}, {{{0, 0}, {8, 16}, "__1_0.distcp"}});
  AddTensor(&md, "optimizer.state.exp_avg.decoder.layers.mlp.linear_fc2.weight", {4, 8, 16},
            {{{2, 0, 0}, {1, 8, 16}, "__1_0.distcp"}, {{3, 0, 0}, {1, 8, 16}, "__1_0.distcp"}});
  AddTensor(&md, "optimizer.state.exp_avg.embedding.word_embeddings.weight", {128, 8},
            {{{0, 0}, {128, 8}, "__1_0.distcp"}});
  auto f = DescribeFiles(md);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_THAT(f[0].groups, ElementsAre("decoder layers 7,9", "optimizer state (decoder layers 2-3, embedding)"));
}

TEST(MegatronDescribeFiles, ToleratesDanglingIndicesAndHugeChunks) {
  dcp::Metadata md;
  AddTensor(&md, "decoder.layers.x.weight", {INT64_MAX, 2},
            {{{INT64_MAX - 1, 0}, {INT64_MAX, 2}, "__0_0.distcp", UINT64_MAX}});
  AddBytes(&md, "y/shard_0_1", "__0_0.distcp", 10);
  md.entries[0].chunks[0].item = 99;  // dangling
  md.entries[1].item = -5;
  dcp::StorageItem orphan;
  orphan.relative_path = "__0_0.distcp";
  orphan.length = 1;
  orphan.entry = 1234;
  md.items.push_back(orphan);
  auto f = DescribeFiles(md);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ(f[0].bytes, UINT64_MAX);  // saturates
  EXPECT_EQ(f[0].items, 3);
}

}  // namespace
}  // namespace ckpt::megatron
