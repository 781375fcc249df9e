// The parameters of a model chunk and the distributed optimizer's buffers,
// checked against the REAL megatron-core: tests/golden/model_layout/
// ddp_layouts.json is DistributedDataParallel's own param_index_map and
// buckets for tiny GPTModels of every family (make_ddp_layouts.py). The
// multi-rank layouts (DP, TP, PP, VPP, EP) are checked against
// tests/golden/legacy/ by the legacy reader's tests.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <string>

#include <nlohmann/json.hpp>

#include "ckpt/model.h"
#include "testing/testutil.h"
#include "util/strings.h"

namespace ckpt::model {
namespace {

using nlohmann::json;

ModelConfig ConfigFrom(const json& j) {
  ModelConfig c;
  c.num_layers = j.at("num_layers");
  c.hidden_size = j.at("hidden_size");
  c.ffn_hidden_size = j.at("ffn_hidden_size");
  c.num_attention_heads = j.at("num_attention_heads");
  c.num_query_groups = j.at("num_query_groups");
  c.kv_channels = j.at("kv_channels");
  c.padded_vocab_size = j.at("padded_vocab_size");
  c.max_position_embeddings = j.at("max_position_embeddings");
  c.norm = j.at("norm") == "LayerNorm" ? Norm::kLayerNorm : Norm::kRMSNorm;
  c.activation = j.at("swiglu").get<bool>() ? Activation::kSwiGLU : Activation::kGelu;
  c.add_bias_linear = j.at("add_bias_linear");
  c.add_qkv_bias = j.at("add_qkv_bias");
  c.qk_layernorm = j.at("qk_layernorm");
  c.positions = j.at("learned_positions").get<bool>() ? Positions::kLearned : Positions::kRope;
  c.tied_embeddings = j.at("tied_embeddings");
  c.num_experts = j.at("num_experts");
  c.moe_ffn_hidden_size = j.at("moe_ffn_hidden_size");
  return c;
}

TEST(ChunkParameters, MatchRealDdpLayouts) {
  const std::string text = testing::ReadSourceFile("tests/golden/model_layout/ddp_layouts.json");
  ASSERT_FALSE(text.empty());
  const json golden = json::parse(text);
  ASSERT_GE(golden.at("cases").size(), 8u);
  for (const json& cs : golden.at("cases")) {
    SCOPED_TRACE(cs.at("name").get<std::string>());
    const ModelConfig c = ConfigFrom(cs.at("config"));
    const ParallelLayout l;  // TP1 PP1 DP1
    Result<std::vector<ChunkParam>> params = ChunkParameters(c, l, LayerSpec::kLocal, {});
    ASSERT_TRUE(params.ok()) << params.status().ToString();
    // named_parameters(): names, order, shapes, expert / shared flags.
    const json& np = cs.at("named_parameters");
    ASSERT_EQ(params->size(), np.size());
    for (size_t i = 0; i < np.size(); ++i) {
      EXPECT_EQ((*params)[i].module_name, np[i][0].get<std::string>()) << i;
      EXPECT_EQ((*params)[i].shape, np[i][1].get<std::vector<int64_t>>()) << np[i][0];
      EXPECT_EQ(!(*params)[i].expert, np[i][2].get<bool>()) << np[i][0];
      EXPECT_EQ((*params)[i].shared_embedding, np[i][3].get<bool>()) << np[i][0];
    }
    // The buffers: one dense (EP = 1 keeps experts dense).
    const DType dtype = cs.at("params_dtype") == "bfloat16" ? DType::kBFloat16 : DType::kFloat32;
    BufferOptions o;
    if (!cs.at("bucket_size").is_null()) o.bucket_size = cs.at("bucket_size").get<int64_t>();
    Result<std::vector<ParamBuffer>> dense = BuildBuffers(*params, 0, false, dtype, o);
    Result<std::vector<ParamBuffer>> expert = BuildBuffers(*params, 0, true, dtype, o);
    ASSERT_TRUE(dense.ok() && expert.ok());
    EXPECT_TRUE(expert->empty());
    const json& bufs = cs.at("buffers");
    ASSERT_EQ(dense->size(), bufs.size());
    for (size_t b = 0; b < bufs.size(); ++b) {
      const ParamBuffer& mine = (*dense)[b];
      const json& real = bufs[b];
      EXPECT_EQ(DTypePairName(mine.param_dtype, mine.grad_dtype),
                StrCat("(", real.at("param_dtype").get<std::string>(), ", ", real.at("grad_dtype").get<std::string>(),
                       ")"));
      EXPECT_EQ(mine.numel, real.at("numel").get<int64_t>());
      EXPECT_EQ(mine.numel_unpadded, real.at("numel_unpadded").get<int64_t>());
      ASSERT_EQ(mine.buckets.size(), real.at("buckets").size());
      for (size_t k = 0; k < mine.buckets.size(); ++k) {
        const auto kb = real.at("buckets")[k].get<std::vector<int64_t>>();
        EXPECT_EQ(mine.buckets[k].offset, kb[0]) << "bucket " << k;
        EXPECT_EQ(mine.buckets[k].numel, kb[1]) << "bucket " << k;
        EXPECT_EQ(mine.buckets[k].numel_unpadded, kb[2]) << "bucket " << k;
      }
      std::map<std::string, std::vector<int64_t>> real_index;
      for (const json& p : real.at("params")) {
        real_index[p[0].get<std::string>()] = {p[1].get<int64_t>(), p[2].get<int64_t>(), p[3].get<int64_t>()};
      }
      ASSERT_EQ(mine.params.size(), real_index.size());
      for (const BufferParam& p : mine.params) {
        const std::string& name = (*params)[p.param].module_name;
        ASSERT_TRUE(real_index.count(name)) << name;
        EXPECT_EQ((std::vector<int64_t>{p.start, p.end, p.bucket}), real_index[name]) << name;
      }
    }
  }
}

ModelConfig TinyLlama() {
  ModelConfig c;
  c.num_layers = 4;
  c.hidden_size = 64;
  c.ffn_hidden_size = 128;
  c.num_attention_heads = 8;
  c.num_query_groups = 2;
  c.kv_channels = 8;
  c.padded_vocab_size = 256;
  c.max_position_embeddings = 64;
  c.tied_embeddings = false;
  return c;
}

TEST(ChunkParameters, PipelineStagesHoldTheirLayersWithLocalNumbers) {
  ModelConfig c = TinyLlama();
  ParallelLayout l;
  l.pp = 2;
  l.vpp = 2;
  // Chunk k = stage * pp + rank holds one layer each: rank 1, stage 1 -> layer 3, the last chunk.
  Result<std::vector<ChunkParam>> p = ChunkParameters(c, l, LayerSpec::kLocal, {.pp_rank = 1, .vp_stage = 1});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_EQ(p->front().module_name, "decoder.layers.0.input_layernorm.weight");
  EXPECT_EQ(p->front().global_name, "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight");
  EXPECT_EQ(p->back().module_name, "output_layer.weight");
  // rank 1 stage 0 -> layer 1: no embedding, no final norm, no output layer.
  p = ChunkParameters(c, l, LayerSpec::kLocal, {.pp_rank = 1, .vp_stage = 0});
  ASSERT_TRUE(p.ok());
  for (const ChunkParam& q : *p) {
    EXPECT_EQ(q.module_name.rfind("decoder.layers.0.", 0), 0u) << q.module_name;
    EXPECT_EQ(q.global_name.rfind("decoder.layers.1.", 0), 0u) << q.global_name;
  }
}

TEST(ChunkParameters, TiedEmbeddingAcrossStagesIsSharedAndOwnBucket) {
  ModelConfig c = TinyLlama();
  c.tied_embeddings = true;
  ParallelLayout l;
  l.pp = 2;
  Result<std::vector<ChunkParam>> first = ChunkParameters(c, l, LayerSpec::kLocal, {.pp_rank = 0});
  Result<std::vector<ChunkParam>> last = ChunkParameters(c, l, LayerSpec::kLocal, {.pp_rank = 1});
  ASSERT_TRUE(first.ok() && last.ok());
  EXPECT_TRUE(first->front().shared_embedding);
  EXPECT_EQ(last->back().module_name, "output_layer.weight");
  EXPECT_TRUE(last->back().shared_embedding);
  // Layout runs in reverse: the output layer comes first and closes its
  // own bucket; the embedding (last in the layout) first closes the open one.
  BufferOptions o;
  o.dp = 2;
  Result<std::vector<ParamBuffer>> b = BuildBuffers(*last, 0, false, DType::kFloat32, o);
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->front().buckets.size(), 2u);
  EXPECT_EQ(b->front().buckets[0].numel_unpadded, 256 * 64);
  b = BuildBuffers(*first, 0, false, DType::kFloat32, o);
  ASSERT_TRUE(b.ok());
  ASSERT_EQ(b->front().buckets.size(), 2u);
  EXPECT_EQ(b->front().buckets[1].numel_unpadded, 256 * 64);
  EXPECT_EQ(b->front().params.back().start, b->front().buckets[1].offset);
}

TEST(ChunkParameters, TensorParallelShardsAndRanges) {
  ModelConfig c = TinyLlama();
  ParallelLayout l;
  l.tp = 2;
  Result<std::vector<ChunkParam>> p = ChunkParameters(c, l, LayerSpec::kLocal, {.tp_rank = 1});
  ASSERT_TRUE(p.ok());
  std::map<std::string, const ChunkParam*> by;
  for (const ChunkParam& q : *p) by[q.module_name] = &q;
  const ChunkParam& qkv = *by.at("decoder.layers.0.self_attention.linear_qkv.weight");
  EXPECT_EQ(qkv.shape, (std::vector<int64_t>{(8 + 4) * 8 / 2, 64}));
  EXPECT_EQ(ShardRanges(qkv).front().begin, 48);
  const ChunkParam& proj = *by.at("decoder.layers.0.self_attention.linear_proj.weight");
  EXPECT_EQ(proj.shape, (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(ShardRanges(proj).front().dim, 1);
  const ChunkParam& fc1 = *by.at("decoder.layers.0.mlp.linear_fc1.weight");
  EXPECT_EQ(fc1.split, TpSplit::kGatedRows);
  const std::vector<ShardRange> r = ShardRanges(fc1);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].begin, 64);   // gate rows 64..127 of 256
  EXPECT_EQ(r[1].begin, 192);  // up rows 192..255
  EXPECT_EQ(by.at("decoder.layers.0.input_layernorm.weight")->split, TpSplit::kNone);
}

TEST(ChunkParameters, ExpertsLeaveDenseBuffersOnlyWithExpertParallelism) {
  ModelConfig c = TinyLlama();
  c.num_experts = 4;
  c.moe_ffn_hidden_size = 96;
  ParallelLayout l;
  l.ep = 2;
  l.dp = 2;
  Result<std::vector<ChunkParam>> p = ChunkParameters(c, l, LayerSpec::kLocal, {.ep_rank = 1});
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  int experts = 0;
  for (const ChunkParam& q : *p) {
    if (q.module_name.find("local_experts") != std::string::npos) {
      ++experts;
      EXPECT_TRUE(q.expert);
    }
  }
  EXPECT_EQ(experts, 4 * 2 * 2);  // 4 layers x 2 local experts x (fc1, fc2)
  bool found = false;
  for (const ChunkParam& q : *p) {
    if (q.module_name == "decoder.layers.2.mlp.experts.local_experts.1.linear_fc2.weight") {
      EXPECT_EQ(q.global_name, "decoder.layers.2.mlp.experts.experts.3.linear_fc2.weight");
      found = true;
    }
  }
  EXPECT_TRUE(found);
  BufferOptions o;
  o.dp = 1;  // expert DP = tp*dp / (ep*etp) = 1
  Result<std::vector<ParamBuffer>> e = BuildBuffers(*p, 0, true, DType::kBFloat16, o);
  ASSERT_TRUE(e.ok());
  ASSERT_EQ(e->size(), 1u);
  EXPECT_EQ(e->front().params.size(), 16u);
  EXPECT_EQ(DTypePairName(e->front().param_dtype, e->front().grad_dtype), "(torch.bfloat16, torch.float32)");
}

TEST(ParamBuffer, WorldOffsetStripsBucketEndPaddingAndRankRangesSplitEvenly) {
  ModelConfig c = TinyLlama();
  Result<std::vector<ChunkParam>> p = ChunkParameters(c, ParallelLayout{}, LayerSpec::kLocal, {});
  ASSERT_TRUE(p.ok());
  BufferOptions o;
  o.dp = 3;
  o.bucket_size = 6000;
  Result<std::vector<ParamBuffer>> b = BuildBuffers(*p, 0, false, DType::kFloat32, o);
  ASSERT_TRUE(b.ok());
  const ParamBuffer& buf = b->front();
  int64_t stripped = 0;
  int64_t bucket = 0;
  for (const BufferParam& q : buf.params) {
    while (bucket < q.bucket) {
      stripped += buf.buckets[bucket].numel - buf.buckets[bucket].numel_unpadded;
      ++bucket;
    }
    EXPECT_EQ(buf.WorldOffset(q), q.start - stripped);
  }
  for (size_t k = 0; k < buf.buckets.size(); ++k) {
    EXPECT_EQ(buf.buckets[k].numel % std::lcm<int64_t>(3, 128), 0);
    EXPECT_EQ(buf.RankRange(k, 0).first, buf.buckets[k].offset);
    EXPECT_EQ(buf.RankRange(k, 2).second, buf.buckets[k].offset + buf.buckets[k].numel);
  }
}

TEST(ChunkParameters, ErrorsNameTheSize) {
  ModelConfig c = TinyLlama();
  ParallelLayout l;
  l.tp = 3;
  Result<std::vector<ChunkParam>> p = ChunkParameters(c, l, LayerSpec::kLocal, {});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("does not split over 3"), std::string::npos) << p.status().ToString();
  l.tp = 1;
  p = ChunkParameters(c, l, LayerSpec::kLocal, {.pp_rank = 1});
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("outside the layout"), std::string::npos) << p.status().ToString();
  EXPECT_FALSE(ParseLayerSpec("fancy").ok());
  EXPECT_EQ(*ParseLayerSpec("transformer_engine"), LayerSpec::kTransformerEngine);
}

}  // namespace
}  // namespace ckpt::model
