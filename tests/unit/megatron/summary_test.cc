#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "format/megatron/megatron.h"
#include "unit/megatron/megatron_testutil.h"

namespace ckpt::megatron {
namespace {

using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using pickle::Arena;
using pickle::Kind;
using pickle::Value;
using testing::CommonArgs;
using testing::GptSpec;
using testing::MakeCommon;
using testing::MakeGpt;
using testing::Namespace;
using testing::Set;

TEST(MegatronCommonState, ExtractsKnownFields) {
  Arena a;
  Value* root = MakeCommon(a, CommonArgs{});
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_FALSE(c->unwrapped_list);
  EXPECT_EQ(c->iteration, 100);
  EXPECT_EQ(c->checkpoint_version, 3.0);
  EXPECT_EQ(c->num_floating_point_operations_so_far, 123456.0);
  EXPECT_EQ(c->args_type, "argparse.Namespace");
  EXPECT_EQ(ArgInt(*c, "tensor_model_parallel_size"), 2);
  EXPECT_EQ(ArgInt(*c, "expert_tensor_parallel_size"), std::nullopt);  // None
  EXPECT_EQ(ArgInt(*c, "no_such_arg"), std::nullopt);
  EXPECT_EQ(ArgBool(*c, "sequence_parallel"), true);
  EXPECT_EQ(ArgString(*c, "normalization"), "RMSNorm");
  EXPECT_EQ(ArgString(*c, "params_dtype"), "torch.bfloat16");
  EXPECT_EQ(c->distrib_optim_sharding_type, "dp_reshardable");
  EXPECT_EQ(c->singleton_local_shards, false);
  EXPECT_EQ(c->chained_optim_avoid_prefix, true);
  EXPECT_FALSE(c->distrib_optim_fully_reshardable_mem_efficient.has_value());
  EXPECT_THAT(c->param_state_sharding_types, ElementsAre("dp_reshardable"));
  ASSERT_NE(c->opt_param_scheduler, nullptr);
  EXPECT_EQ(c->opt_param_scheduler->Get("num_steps")->i, 800);
  EXPECT_TRUE(c->has_rerun_state_machine);
  EXPECT_FALSE(c->has_rng_state);
  EXPECT_FALSE(c->has_model);
  ASSERT_GE(c->top_level.size(), 3u);
  EXPECT_EQ(c->top_level[0].key, "args");
  EXPECT_EQ(c->top_level[0].type, "argparse.Namespace");
  EXPECT_EQ(c->top_level[1].type, "float");
  EXPECT_TRUE(c->warnings.empty());
}

TEST(MegatronCommonState, UnwrapsTheOneElementListOfCommonStateShard) {
  Arena a;
  Value* list = a.List({MakeCommon(a, CommonArgs{})});
  auto c = ExtractCommonState(list, "common_state/shard_0_1");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(c->unwrapped_list);
  EXPECT_EQ(c->iteration, 100);
}

TEST(MegatronCommonState, RejectsListsThatAreNotOneDict) {
  Arena a;
  for (Value* bad : {a.List({}), a.List({MakeCommon(a, CommonArgs{}), MakeCommon(a, CommonArgs{})}),
                     a.List({a.Int(1)}), a.List({nullptr}), a.Int(3), a.String("x")}) {
    auto c = ExtractCommonState(bad, "__0_0.distcp");
    ASSERT_FALSE(c.ok()) << pickle::Repr(bad);
    EXPECT_EQ(c.status().code(), Code::kDataLoss);
    EXPECT_THAT(c.status().message(), HasSubstr("__0_0.distcp"));
  }
  EXPECT_FALSE(ExtractCommonState(nullptr, "x").ok());
}

TEST(MegatronCommonState, WronglyTypedFieldsWarnInsteadOfFailing) {
  Arena a;
  Value* root = a.Dict();
  Set(a, root, "iteration", a.String("100"));
  Set(a, root, "checkpoint_version", a.None());
  Set(a, root, "content_metadata", a.Int(1));
  Set(a, root, "args", a.Int(5));
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->iteration.has_value());
  EXPECT_FALSE(c->checkpoint_version.has_value());
  EXPECT_EQ(c->warnings.size(), 4u);
  EXPECT_TRUE(c->args_fields.empty());
}

TEST(MegatronCommonState, ReadsArgsFromDictOrSlotStateAndChainedOptimizers) {
  Arena a;
  Value* root = a.Dict();
  Value* fields = a.Dict();
  Set(a, fields, "num_layers", a.Int(12));
  Value* ns = Namespace(a, a.Tuple({fields, a.None()}));
  Set(a, root, "args", ns);
  Value* opt = a.Dict();
  Value* o0 = a.Dict();
  Set(a, o0, "param_state_sharding_type", a.String("fully_reshardable"));
  Value* o1 = a.Dict();
  Set(a, o1, "param_state_sharding_type", a.String("dp_reshardable"));
  a.SetItem(opt, a.Int(0), o0);
  a.SetItem(opt, a.Int(1), o1);
  Set(a, root, "optimizer", opt);
  Set(a, root, "model0", a.Dict());
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(ArgInt(*c, "num_layers"), 12);
  EXPECT_THAT(c->param_state_sharding_types, ElementsAre("fully_reshardable", "dp_reshardable"));
  EXPECT_TRUE(c->has_model);
  EXPECT_EQ(c->top_level[1].key, "optimizer");
}

TEST(MegatronSummary, ArgsAndChunkGridAgreeForTp2Pp2Dp2) {
  Arena a;
  auto c = ExtractCommonState(MakeCommon(a, CommonArgs{}), "common.pt");
  ASSERT_TRUE(c.ok());
  dcp::Metadata md = MakeGpt(GptSpec{});
  Summary s = Summarize(&*c, md);
  EXPECT_EQ(s.from_args.tp, 2);
  EXPECT_EQ(s.from_args.pp, 2);
  EXPECT_EQ(s.from_args.dp, 2);
  EXPECT_EQ(s.from_args.world_size, 8);
  EXPECT_EQ(s.from_chunks.tp, 2);
  EXPECT_EQ(s.from_chunks.tp_key, "decoder.layers.self_attention.linear_qkv.weight");
  EXPECT_EQ(s.from_chunks.pp, 2);
  EXPECT_EQ(s.from_chunks.rng_tp, 2);
  EXPECT_EQ(s.from_chunks.world_size, 8);
  EXPECT_TRUE(s.from_chunks.stacked_layers);
  EXPECT_FALSE(s.layout_mismatch) << ::testing::PrintToString(s.mismatches);
  EXPECT_TRUE(s.optimizer.present);
  EXPECT_EQ(s.optimizer.type, "adam");
  EXPECT_EQ(s.optimizer.sharding_type, "dp_reshardable");
  EXPECT_EQ(s.optimizer.sharding_type_source, "content_metadata");
  EXPECT_EQ(s.optimizer.param_keys, 4);   // 4 model-parallel ranks x bucket .param
  EXPECT_EQ(s.optimizer.state_keys, 12);  // exp_avg, exp_avg_sq, optimizer object
  EXPECT_EQ(s.keys_by_kind.at(KeyKind::kRngState), 4);
  EXPECT_EQ(s.keys_by_kind.at(KeyKind::kRerunState), 8);
  EXPECT_THAT(LayoutText(s),
              ElementsAre("iteration: 100 (checkpoint_version 3)",
                          "parallel layout: TP=2 PP=2 DP=2 SP (world 8) — from args; chunk grid agrees"));
  EXPECT_THAT(ContentsText(s), ElementsAre("optimizer: adam, distributed, sharding dp_reshardable "
                                           "(content_metadata), 16 keys (4 fp32 main params)",
                                           HasSubstr("keys: model ")));
  nlohmann::json j = ToJson(s);
  EXPECT_EQ(j["layout_from_args"]["dp"], 2);
  EXPECT_EQ(j["layout_from_chunks"]["tp"], 2);
  EXPECT_EQ(j["layout_mismatch"], false);
  EXPECT_FALSE(j.contains("model"));  // the model layer's (model::ToJson)
  EXPECT_FALSE(j["layout_from_chunks"].contains("hidden_size"));
  EXPECT_EQ(j["optimizer"]["sharding_type"], "dp_reshardable");
  EXPECT_FALSE(j["layout_from_args"].contains("vpp"));
}

TEST(MegatronSummary, FlagsArgsThatDisagreeWithTheChunkGrid) {
  Arena a;
  CommonArgs args;
  args.tp = 4;
  args.world = 16;
  args.layers = 6;
  auto c = ExtractCommonState(MakeCommon(a, args), "common.pt");
  ASSERT_TRUE(c.ok());
  Summary s = Summarize(&*c, MakeGpt(GptSpec{}));
  EXPECT_TRUE(s.layout_mismatch);
  EXPECT_THAT(s.mismatches,
              Contains("TP: args 4, chunk grid 2 (decoder.layers.self_attention.linear_qkv.weight)"));
  EXPECT_THAT(s.mismatches, Contains("TP: args 4, chunk grid 2 (rng_state shape)"));
  EXPECT_THAT(s.mismatches, Contains("world size: args 16, chunk grid 8 (rerun_state_machine_state shape)"));
  EXPECT_EQ(s.mismatches.size(), 3u) << "num_layers 6 vs 4 is the model layer's";
  auto text = LayoutText(s);
  EXPECT_THAT(text[1], HasSubstr("chunk grid DISAGREES"));
  EXPECT_THAT(text, Contains("  mismatch: TP: args 4, chunk grid 2 (rng_state shape)"));
}

TEST(MegatronSummary, WithoutCommonStateUsesTheGridOnly) {
  GptSpec spec;
  spec.tp = 4;
  spec.pp = 1;
  spec.dp = 1;
  spec.rmsnorm = false;
  spec.swiglu = false;
  spec.stacked = false;
  spec.tied = true;
  spec.optimizer = false;
  Summary s = Summarize(nullptr, MakeGpt(spec));
  EXPECT_FALSE(s.has_common);
  EXPECT_EQ(s.from_chunks.tp, 4);
  EXPECT_EQ(s.from_chunks.tp_key, "decoder.layers.0.self_attention.linear_qkv.weight");
  EXPECT_TRUE(s.from_chunks.per_layer_keys);
  EXPECT_FALSE(s.from_chunks.stacked_layers);
  EXPECT_FALSE(s.optimizer.present);
  EXPECT_FALSE(s.layout_mismatch);
  EXPECT_THAT(LayoutText(s), ElementsAre("parallel layout: TP=4 PP=1 world 4 — from the chunk grid (no args)"));
  EXPECT_THAT(ContentsText(s), Contains("optimizer: none"));
}

TEST(MegatronSummary, ExpertTensorParallelFromExpertFc2Chunks) {
  GptSpec spec;
  spec.experts = 8;
  spec.etp = 2;
  spec.optimizer = false;
  Arena a;
  CommonArgs args;
  args.experts = 8;
  auto c = ExtractCommonState(MakeCommon(a, args), "common.pt");
  ASSERT_TRUE(c.ok());
  Summary s = Summarize(&*c, MakeGpt(spec));
  EXPECT_EQ(s.from_chunks.etp, 2);
  EXPECT_FALSE(s.layout_mismatch) << ::testing::PrintToString(s.mismatches);  // ETP None -> TP=2

  Arena b;
  CommonArgs args2;
  args2.experts = 16;
  auto c2 = ExtractCommonState(MakeCommon(b, args2), "common.pt");
  ASSERT_TRUE(c2.ok());
  spec.etp = 1;
  Summary s2 = Summarize(&*c2, MakeGpt(spec));
  EXPECT_THAT(s2.mismatches, ElementsAre("ETP: args 2, chunk grid 1 (expert linear_fc2 chunks)"));
}

TEST(MegatronSummary, InfersOptimizerShardingFromFullyParallelSaveWithoutContentMetadata) {
  Arena a;
  CommonArgs args;
  args.with_content_metadata = false;
  Value* root = MakeCommon(a, args);
  // core < 0.13: no content_metadata and no param_state_sharding_type.
  for (auto& [k, v] : a.MutablePairs(root)) {
    if (k->str() == "optimizer") v = a.Dict();
  }
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  GptSpec spec;
  spec.optimizer = false;
  Summary s = Summarize(&*c, MakeGpt(spec));
  EXPECT_EQ(s.optimizer.sharding_type, "fully_sharded_model_space");
  EXPECT_EQ(s.optimizer.sharding_type_source, "inferred from args.ckpt_fully_parallel_save");
}

TEST(MegatronSummary, VppFromLayersPerVirtualStage) {
  Arena a;
  Value* f = a.Dict();
  Set(a, f, "pipeline_model_parallel_size", a.Int(2));
  Set(a, f, "tensor_model_parallel_size", a.Int(1));
  Set(a, f, "num_layers", a.Int(8));
  Set(a, f, "num_layers_per_virtual_pipeline_stage", a.Int(2));
  Set(a, f, "world_size", a.Int(6));
  Value* root = a.Dict();
  Set(a, root, "args", Namespace(a, f));
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  Summary s = Summarize(&*c, dcp::Metadata{});
  EXPECT_EQ(s.from_args.vpp, 2);
  EXPECT_EQ(s.from_args.dp, 3);  // 6 / (1 * 2 * 1)
}

TEST(MegatronSummary, ShardingTypeFromKeyNames) {
  Arena a;
  CommonArgs args;
  args.swiglu = false;
  args.norm = "LayerNorm";
  args.pos = "learned_absolute";
  args.distributed = false;
  args.with_content_metadata = false;
  Value* root = MakeCommon(a, args);
  for (auto& [k, v] : a.MutablePairs(root)) {
    if (k->str() == "optimizer") v = a.Dict();
  }
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  GptSpec spec;
  spec.swiglu = false;
  spec.rmsnorm = false;
  dcp::Metadata md = MakeGpt(spec);
  Summary s = Summarize(&*c, md);
  EXPECT_EQ(s.optimizer.sharding_type, "dp_reshardable");
  EXPECT_EQ(s.optimizer.sharding_type_source, "inferred from key names");
}

}  // namespace
}  // namespace ckpt::megatron

namespace ckpt::megatron {
namespace {

TEST(MegatronSummary, JsonOfInvalidUtf8StringsDumpsWithoutThrowing) {
  pickle::Arena a;
  pickle::Value* f = a.Dict();
  testing::Set(a, f, "optimizer", a.String("\xed\xa0\x80"));  // surrogate
  pickle::Value* root = a.Dict();
  testing::Set(a, root, "args", testing::Namespace(a, f));
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  dcp::Metadata md;
  testing::AddTensor(&md, "decoder.layers.self_attention.linear_qkv.weight\xfe", {2, 4, 4},
                     {{{0, 0, 0}, {1, 4, 4}, "__0_0.distcp"}});
  Summary s = Summarize(&*c, md);
  std::string dumped;
  ASSERT_NO_THROW(dumped = ToJson(s).dump());
  EXPECT_NE(dumped.find("\"type\":\"\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\""), std::string::npos) << dumped;
}

}  // namespace
}  // namespace ckpt::megatron

namespace ckpt::megatron {
namespace {

TEST(MegatronSummary, HostileShapesDoNotOverflow) {
  dcp::Metadata md;
  testing::AddTensor(&md, "decoder.layers.mlp.linear_fc1.weight", {INT64_MAX, INT64_MAX, 1},
                     {{{INT64_MAX, 0}, {1}, "__0_0.distcp"}});
  testing::AddTensor(&md, "decoder.layers.mlp.linear_fc2.weight", {INT64_MAX, 1, INT64_MAX},
                     {{{0, 0, 0}, {1, 1, INT64_MAX}, "__0_0.distcp"}});
  testing::AddTensor(&md, "decoder.layers.99999999999999999.x", {4}, {});
  testing::AddBytes(&md, "rng_state/shard_0_-3.-3", "__0_0.distcp");
  testing::AddBytes(&md, "rerun_state_machine_state/shard_0_0", "__0_0.distcp");
  Summary s = Summarize(nullptr, md);
  EXPECT_FALSE(s.from_chunks.pp.has_value());
  EXPECT_FALSE(s.from_chunks.world_size.has_value());
  EXPECT_TRUE(s.from_chunks.stacked_layers);
  EXPECT_FALSE(DescribeFiles(md).empty());
  EXPECT_FALSE(LayoutText(s).empty());
  EXPECT_FALSE(ContentsText(s).empty());
}

}  // namespace
}  // namespace ckpt::megatron
