// The model summary (model::SummarizeModel): args, the shapes that fill and
// cross-check them, the family guess; on hand-built metadata and on the real
// megatron-core goldens. (Moved from tests/unit/megatron/summary_test.cc and
// golden_test.cc with the code.)
#include "model/summary.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "ckpt/byte_source.h"
#include "format/dcp/item.h"
#include "format/torch/torch_file.h"
#include "unit/megatron/megatron_testutil.h"

namespace ckpt::model {
namespace {

using ::testing::ElementsAre;
using megatron::ExtractCommonState;
using megatron::testing::AddBytes;
using megatron::testing::AddTensor;
using megatron::testing::CommonArgs;
using megatron::testing::GptSpec;
using megatron::testing::MakeCommon;
using megatron::testing::MakeGpt;
using megatron::testing::Namespace;
using megatron::testing::Set;
using pickle::Arena;

TEST(ModelSummary, ArgsAndShapesAgreeForALlamaLikeGpt) {
  Arena a;
  auto c = ExtractCommonState(MakeCommon(a, CommonArgs{}), "common.pt");
  ASSERT_TRUE(c.ok());
  ModelSummary m = SummarizeModel(&*c, MakeGpt(GptSpec{}));
  const ShapeFacts& g = m.from_shapes;
  EXPECT_EQ(g.num_layers, 4);
  EXPECT_EQ(g.hidden_size, 8);
  EXPECT_EQ(g.padded_vocab_size, 128);
  EXPECT_EQ(g.ffn_hidden_size, 16);
  EXPECT_EQ(g.swiglu, true);
  EXPECT_EQ(g.layernorm_bias, false);
  EXPECT_EQ(g.untied_output_layer, true);
  EXPECT_EQ(g.learned_position_embeddings, false);
  EXPECT_TRUE(m.mismatches.empty()) << ::testing::PrintToString(m.mismatches);
  EXPECT_EQ(m.family, "Llama-like");
  EXPECT_EQ(m.family_reason, "swiglu + RMSNorm + rope");
  EXPECT_EQ(m.params_dtype, "bfloat16");
  EXPECT_EQ(m.vocab_source, "args.padded_vocab_size");
  EXPECT_THAT(ToText(m), ElementsAre("model: Llama-like (swiglu + RMSNorm + rope)",
                                     "  layers=4 hidden=8 ffn=16 heads=4 query_groups=2 kv_channels=2 "
                                     "padded_vocab=128 max_pos=4096 seq_len=2048 untied output dtype=bfloat16"));
  nlohmann::json j = ToJson(m);
  EXPECT_EQ(j["family"], "Llama-like");
  EXPECT_EQ(j["num_layers"], 4);
  EXPECT_EQ(j["vocab_source"], "args.padded_vocab_size");
  EXPECT_FALSE(j.contains("num_experts"));
  nlohmann::json gj = ToJson(g);
  EXPECT_EQ(gj["hidden_size"], 8);
  EXPECT_EQ(gj["swiglu"], true);
  EXPECT_FALSE(gj.contains("num_experts"));
}

TEST(ModelSummary, FlagsArgsThatDisagreeWithTheShapes) {
  Arena a;
  CommonArgs args;
  args.layers = 6;
  args.hidden = 16;
  args.vocab = 256;
  args.ffn = 32;
  auto c = ExtractCommonState(MakeCommon(a, args), "common.pt");
  ASSERT_TRUE(c.ok());
  ModelSummary m = SummarizeModel(&*c, MakeGpt(GptSpec{}));
  EXPECT_THAT(m.mismatches, ElementsAre("num_layers: args 6, chunk grid 4 (decoder.layers)",
                                        "hidden_size: args 16, chunk grid 8 (embedding)",
                                        "padded_vocab_size: args 256, chunk grid 128 (embedding rows)",
                                        "ffn_hidden_size: args 32, chunk grid 16 (mlp.linear_fc2)"));
  EXPECT_EQ(m.num_layers, 6);  // args win; the shapes only fill gaps
}

TEST(ModelSummary, WithoutCommonStateUsesTheShapesOnly) {
  GptSpec spec;
  spec.tp = 4;
  spec.pp = 1;
  spec.dp = 1;
  spec.rmsnorm = false;
  spec.swiglu = false;
  spec.stacked = false;
  spec.tied = true;
  spec.optimizer = false;
  ModelSummary m = SummarizeModel(nullptr, MakeGpt(spec));
  EXPECT_EQ(m.num_layers, 4);
  EXPECT_EQ(m.padded_vocab_size, 128);
  EXPECT_EQ(m.vocab_source, "embedding shape");
  EXPECT_EQ(m.swiglu, false);
  EXPECT_EQ(m.normalization, "LayerNorm");
  EXPECT_EQ(m.untie_embeddings_and_output_weights, false);
  EXPECT_EQ(m.params_dtype, "bfloat16");
  EXPECT_TRUE(m.mismatches.empty());
  EXPECT_EQ(m.family, "GPT");
  EXPECT_EQ(m.family_reason, "LayerNorm (from keys) + no learned position embeddings");
  EXPECT_THAT(ToText(m), ElementsAre("model: GPT (LayerNorm (from keys) + no learned position embeddings)",
                                     "  layers=4 hidden=8 ffn=16 padded_vocab=128 (from embedding) "
                                     "tied embeddings dtype=bfloat16"));
}

TEST(ModelSummary, MoeExperts) {
  GptSpec spec;
  spec.experts = 8;
  spec.etp = 2;
  spec.optimizer = false;
  Arena a;
  CommonArgs args;
  args.experts = 8;
  auto c = ExtractCommonState(MakeCommon(a, args), "common.pt");
  ASSERT_TRUE(c.ok());
  ModelSummary m = SummarizeModel(&*c, MakeGpt(spec));
  EXPECT_EQ(m.from_shapes.num_experts, 8);
  EXPECT_EQ(m.from_shapes.swiglu, true);  // from the experts' fc1 / fc2
  EXPECT_EQ(m.num_experts, 8);
  EXPECT_EQ(m.family, "Mixtral-like (MoE)");
  EXPECT_TRUE(m.mismatches.empty()) << ::testing::PrintToString(m.mismatches);

  Arena b;
  CommonArgs args2;
  args2.experts = 16;
  auto c2 = ExtractCommonState(MakeCommon(b, args2), "common.pt");
  ASSERT_TRUE(c2.ok());
  spec.etp = 1;
  ModelSummary m2 = SummarizeModel(&*c2, MakeGpt(spec));
  EXPECT_THAT(m2.mismatches, ElementsAre("num_experts: args 16, chunk grid 8 (expert axis)"));
}

TEST(ModelSummary, UnknownFamilyWithoutModelArgsOrKeys) {
  Arena a;
  pickle::Value* f = a.Dict();
  Set(a, f, "num_layers", a.Int(8));
  pickle::Value* root = a.Dict();
  Set(a, root, "args", Namespace(a, f));
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  ModelSummary m = SummarizeModel(&*c, dcp::Metadata{});
  EXPECT_EQ(m.num_layers, 8);
  EXPECT_EQ(m.family, "unknown");
  EXPECT_THAT(ToText(m), ElementsAre("model: unknown", "  layers=8"));
}

TEST(ModelSummary, GptStyleFamily) {
  Arena a;
  CommonArgs args;
  args.swiglu = false;
  args.norm = "LayerNorm";
  args.pos = "learned_absolute";
  auto c = ExtractCommonState(MakeCommon(a, args), "common.pt");
  ASSERT_TRUE(c.ok());
  GptSpec spec;
  spec.swiglu = false;
  spec.rmsnorm = false;
  ModelSummary m = SummarizeModel(&*c, MakeGpt(spec));
  EXPECT_EQ(m.family, "GPT (GPT-2/3 style)");
  EXPECT_EQ(m.family_reason, "LayerNorm + learned_absolute");
}

TEST(ModelSummary, JsonOfInvalidUtf8StringsDumpsWithoutThrowing) {
  Arena a;
  pickle::Value* f = a.Dict();
  Set(a, f, "normalization", a.String("RMS\xff\xc0\x80Norm"));
  pickle::Value* root = a.Dict();
  Set(a, root, "args", Namespace(a, f));
  auto c = ExtractCommonState(root, "common.pt");
  ASSERT_TRUE(c.ok());
  ModelSummary m = SummarizeModel(&*c, dcp::Metadata{});
  std::string dumped;
  ASSERT_NO_THROW(dumped = ToJson(m).dump());
  EXPECT_NE(dumped.find("RMS\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBDNorm"), std::string::npos) << dumped;
}

TEST(ModelSummary, HostileShapesDoNotOverflow) {
  dcp::Metadata md;
  AddTensor(&md, "decoder.layers.mlp.linear_fc1.weight", {INT64_MAX, INT64_MAX, 1},
            {{{INT64_MAX, 0}, {1}, "__0_0.distcp"}});
  AddTensor(&md, "decoder.layers.mlp.linear_fc2.weight", {INT64_MAX, 1, INT64_MAX},
            {{{0, 0, 0}, {1, 1, INT64_MAX}, "__0_0.distcp"}});
  AddTensor(&md, "decoder.layers.99999999999999999.x", {4}, {});
  AddBytes(&md, "rng_state/shard_0_-3.-3", "__0_0.distcp");
  ModelSummary m = SummarizeModel(nullptr, md);
  EXPECT_EQ(m.from_shapes.swiglu, false);
  EXPECT_EQ(m.from_shapes.num_layers, INT64_MAX);
  EXPECT_FALSE(ToText(m).empty());
}

// The real megatron-core goldens (tests/golden/megatron/<name>/, made by
// make_golden.py): the model facts in <name>.expected.json.
namespace fs = std::filesystem;

const fs::path kRoot = fs::path(CKPT_SOURCE_DIR) / "tests/golden/megatron";

std::string ReadAll(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Goldens() {
  std::vector<std::string> out;
  if (!fs::exists(kRoot)) return out;
  for (const auto& e : fs::directory_iterator(kRoot)) {
    std::string n = e.path().filename().string();
    if (e.is_directory() && fs::exists(kRoot / (n + ".expected.json"))) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

class ModelSummaryGolden : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelSummaryGolden, ReportsTheModelMegatronCoreWrote) {
  const std::string name = GetParam();
  nlohmann::json exp = nlohmann::json::parse(ReadAll(kRoot / (name + ".expected.json")));
  fs::path dir = kRoot / name / exp["iter_dir"].get<std::string>();
  StringSource md_src(ReadAll(dir / ".metadata"), (dir / ".metadata").string());
  auto md = dcp::ParseMetadata(md_src);
  ASSERT_TRUE(md.ok()) << md.status().ToString();
  // Common state: common.pt (<= 0.18) or common_state/shard_0_1 (>= 0.19).
  std::unique_ptr<torch::TorchFile> common_file;
  if (fs::exists(dir / megatron::kCommonFileName)) {
    auto src = std::make_shared<StringSource>(ReadAll(dir / megatron::kCommonFileName),
                                              (dir / megatron::kCommonFileName).string());
    auto tf = torch::TorchFile::Open(src, pickle::Mode::kInspect);
    ASSERT_TRUE(tf.ok()) << tf.status().ToString();
    common_file = std::move(*tf);
  } else {
    int64_t ei = md->FindEntry(megatron::kCommonStateKey);
    ASSERT_GE(ei, 0) << "no common.pt and no " << megatron::kCommonStateKey;
    const dcp::StorageItem& item = md->items.at(md->entries[ei].item);
    auto file = std::make_shared<StringSource>(ReadAll(dir / item.relative_path), std::string(item.relative_path));
    auto tf = dcp::OpenBytesItem(file, item, pickle::Mode::kInspect);
    ASSERT_TRUE(tf.ok()) << tf.status().ToString();
    common_file = std::move(*tf);
  }
  auto common = ExtractCommonState(common_file->root(), common_file->name());
  ASSERT_TRUE(common.ok()) << common.status().ToString();

  ModelSummary m = SummarizeModel(&*common, *md);
  const ShapeFacts& g = m.from_shapes;
  if (exp.contains("model")) {  // the real GPTModel golden records its model config
    const auto& want = exp["model"];
    EXPECT_EQ(m.num_layers, want["num_layers"].get<int64_t>());
    EXPECT_EQ(m.hidden_size, want["hidden"].get<int64_t>());
    EXPECT_EQ(m.ffn_hidden_size, want["ffn"].get<int64_t>());
    EXPECT_EQ(m.num_attention_heads, want["heads"].get<int64_t>());
    EXPECT_EQ(m.num_query_groups, want["groups"].get<int64_t>());
    EXPECT_EQ(g.hidden_size, want["hidden"].get<int64_t>());
    EXPECT_EQ(g.ffn_hidden_size, want["ffn"].get<int64_t>());
  }
  const auto& keys = exp["keys"];
  if (keys.contains("decoder.layers.mlp.experts.experts.linear_fc2.weight")) {
    const auto& fc2 = keys["decoder.layers.mlp.experts.experts.linear_fc2.weight"];
    EXPECT_EQ(g.num_experts, fc2["global_shape"][1].get<int64_t>());
  }
  if (keys.contains("decoder.layers.self_attention.linear_qkv.weight")) {
    EXPECT_EQ(g.num_layers,
              keys["decoder.layers.self_attention.linear_qkv.weight"]["global_shape"][0].get<int64_t>());
  }
  EXPECT_EQ(g.padded_vocab_size, keys["embedding.word_embeddings.weight"]["global_shape"][0].get<int64_t>());
  EXPECT_TRUE(m.mismatches.empty()) << ::testing::PrintToString(m.mismatches);
  EXPECT_NE(m.family, "unknown");
}

INSTANTIATE_TEST_SUITE_P(Goldens, ModelSummaryGolden, ::testing::ValuesIn(Goldens()),
                         [](const auto& info) { return info.param; });
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(ModelSummaryGolden);

}  // namespace
}  // namespace ckpt::model
