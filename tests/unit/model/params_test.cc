// The parameters of a model chunk and the distributed optimizer's buffers,
// checked against the REAL megatron-core: tests/golden/model_layout/
// ddp_layouts.json is DistributedDataParallel's own param_index_map and
// buckets for tiny GPTModels of every family (make_ddp_layouts.py). The
// multi-rank layouts (DP, TP, PP, VPP, EP) are checked against
// tests/golden/legacy/ by the legacy reader's tests and, layout by layout,
// against every tests/golden/legacy/*/layout.json (the real multi-rank DDP +
// DistributedOptimizer, dumped by tests/interop/megatron_optim.py) here.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <deque>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/model.h"
#include "format/megatron/megatron.h"
#include "format/pickle/value.h"
#include "model/args.h"
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
  // Sizes from hostile args are bounded before any per-rank loop.
  ParallelLayout huge;
  huge.tp = int64_t{1} << 21;
  EXPECT_FALSE(huge.Validate().ok());
  huge.tp = int64_t{1} << 20;
  huge.dp = int64_t{1} << 20;
  EXPECT_NE(huge.Validate().message().find("larger than 2^24"), std::string::npos);
  EXPECT_FALSE(LegacyRanks(huge).ok());
  EXPECT_EQ(*ParseLayerSpec("transformer_engine"), LayerSpec::kTransformerEngine);
}


// ---------------------------------------------------------------------------
// The real multi-rank goldens: tests/golden/legacy/<name>/layout.json is
// megatron_optim.dump_layout of one training run (megatron-core 0.16.1 or
// 0.19.2, CPU/gloo): per global rank its coordinates, its legacy folder, per
// model chunk named_parameters() and every DDP buffer (param_index_map,
// buckets), and per sub-optimizer of the ChainedOptimizer its
// data_parallel_group_idx, DP group, gbuf order and this DP rank's ranges.
// Everything expected below comes from those dumps; the inputs are the spec
// they record.

struct GoldenSetup {
  ModelConfig config;
  ParallelLayout layout;
  DistOptSettings settings;
};

int64_t IntOr(const json& j, int64_t dflt) { return j.is_null() ? dflt : j.get<int64_t>(); }

// megatron_optim.OptimSpec.describe() -> what the model layer takes. The
// fixed parts of megatron_optim.build_chunks / _ddp_config: the local layer
// spec (get_gpt_layer_local_spec), grad_reduce_in_fp32=True, no padding for
// NCCL bus bandwidth, one optimizer instance; the fixture's MoE runs pass
// expert_tensor_parallel_size = spec["etp"] (1), dense ones None (= tp).
GoldenSetup SetupFromSpec(const json& spec) {
  const json& f = spec.at("family_spec");
  GoldenSetup g;
  ModelConfig& c = g.config;
  c.num_layers = f.at("num_layers");
  c.hidden_size = f.at("hidden");
  c.ffn_hidden_size = f.at("ffn");
  c.num_attention_heads = f.at("heads");
  c.num_query_groups = f.at("groups");
  c.kv_channels = IntOr(f.at("kv_channels"), c.hidden_size / c.num_attention_heads);
  c.make_vocab_size_divisible_by = f.at("divisor");
  c.vocab_size = f.at("vocab").get<int64_t>();
  c.padded_vocab_size = c.PaddedVocab(*c.vocab_size, spec.at("tp").get<int64_t>());
  c.max_position_embeddings = f.at("max_positions");
  c.norm = f.at("normalization") == "LayerNorm" ? Norm::kLayerNorm : Norm::kRMSNorm;
  c.norm_epsilon = f.at("norm_epsilon");
  c.activation = f.at("swiglu").get<bool>()       ? Activation::kSwiGLU
                 : f.at("openai_gelu").get<bool>() ? Activation::kGeluTanh
                                                   : Activation::kGelu;
  c.add_bias_linear = f.at("add_bias_linear");
  c.add_qkv_bias = f.at("add_qkv_bias");
  c.qk_layernorm = f.at("qk_layernorm");
  c.positions = f.at("position_embedding_type") == "learned_absolute" ? Positions::kLearned : Positions::kRope;
  c.rotary_base = f.at("rotary_base");
  c.tied_embeddings = f.at("tied");
  c.num_experts = IntOr(f.at("num_experts"), 0);
  c.moe_router_topk = f.at("topk");
  c.moe_ffn_hidden_size = IntOr(f.at("moe_ffn"), 0);
  c.moe_router_pre_softmax = f.at("moe_router_pre_softmax");
  c.params_dtype = spec.at("bf16").get<bool>() ? DType::kBFloat16 : DType::kFloat32;
  ParallelLayout& l = g.layout;
  l.tp = spec.at("tp");
  l.pp = spec.at("pp");
  l.vpp = IntOr(spec.at("vpp"), 1);
  l.dp = spec.at("dp");
  l.ep = c.moe() ? spec.at("ep").get<int64_t>() : 1;
  l.etp = spec.at("etp");
  DistOptSettings& s = g.settings;
  s.spec = LayerSpec::kLocal;
  s.params_dtype = c.params_dtype;
  s.overlap_grad_reduce = spec.at("overlap_grad_reduce");
  if (!spec.at("bucket_size").is_null()) s.ddp_bucket_size = spec.at("bucket_size").get<int64_t>();
  s.grad_reduce_in_fp32 = true;
  return g;
}

std::vector<std::string> GoldenLayoutNames() {
  std::vector<std::string> out;
  const std::filesystem::path root = testing::SourcePath("tests/golden/legacy");
  for (const auto& e : std::filesystem::directory_iterator(root)) {
    if (e.is_directory() && std::filesystem::exists(e.path() / "layout.json")) out.push_back(e.path().filename());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<int64_t> JsonOptInt(const json& j) {
  if (j.is_null()) return std::nullopt;
  return j.get<int64_t>();
}

// The torch_dist key of a parameter (the stacked key of TorchDistCandidates).
std::string StoredKey(const ChunkParam& p) { return TorchDistCandidates(p.global_name).front().key; }

// The global offset a ShardedTensor of `p` has: the stacked key's leading
// index (layer[, expert]), then this TP rank's offset in the split dim.
std::vector<int64_t> GlobalOffset(const ChunkParam& p) {
  std::vector<int64_t> off = TorchDistCandidates(p.global_name).front().index;
  const ShardRange r = ShardRanges(p).front();
  for (size_t d = 0; d < p.global_shape.size(); ++d) {
    off.push_back(p.split != TpSplit::kNone && static_cast<int>(d) == r.dim ? r.begin : 0);
  }
  return off;
}

void CheckChunkParams(const std::vector<ChunkParam>& mine, const json& real, DType dtype) {
  ASSERT_EQ(mine.size(), real.size());
  for (size_t i = 0; i < real.size(); ++i) {
    const json& r = real[i];
    const ChunkParam& p = mine[i];
    const std::string name = r.at("name");
    EXPECT_EQ(p.module_name, name) << "named_parameters()[" << i << "]";
    EXPECT_EQ(r.at("ddp_name").get<std::string>(), (dtype == DType::kBFloat16 ? "module." : "") + name)
        << "Float16Module wraps bf16 chunks only";
    EXPECT_EQ(p.shape, r.at("shape").get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(p.numel(), r.at("numel").get<int64_t>()) << name;
    EXPECT_EQ(DTypeName(dtype), r.at("dtype").get<std::string>()) << name;
    EXPECT_EQ(!p.expert, r.at("allreduce").get<bool>()) << name;
    EXPECT_EQ(p.shared_embedding, r.at("shared_embedding").get<bool>()) << name;
    EXPECT_EQ(StoredKey(p), r.at("key").get<std::string>()) << name << " (" << p.global_name << ")";
  }
}

void CheckBuffer(const ParamBuffer& b, const std::vector<ChunkParam>& params, const json& real,
                 std::optional<int64_t> bucket_size) {
  EXPECT_EQ(DTypeName(b.param_dtype), real.at("param_dtype").get<std::string>());
  EXPECT_EQ(DTypeName(b.grad_dtype), real.at("grad_dtype").get<std::string>());
  EXPECT_EQ(b.dp, real.at("dp_size").get<int64_t>());
  EXPECT_EQ(bucket_size, JsonOptInt(real.at("bucket_size")));
  EXPECT_EQ(b.numel, real.at("numel").get<int64_t>());
  EXPECT_EQ(b.numel_unpadded, real.at("numel_unpadded").get<int64_t>());
  const json& bks = real.at("buckets");
  ASSERT_EQ(b.buckets.size(), bks.size());
  for (size_t k = 0; k < bks.size(); ++k) {
    const BufferBucket& m = b.buckets[k];
    EXPECT_EQ(m.offset, bks[k].at("offset").get<int64_t>()) << "bucket " << k;
    EXPECT_EQ(m.numel, bks[k].at("numel").get<int64_t>()) << "bucket " << k;
    EXPECT_EQ(m.numel_unpadded, bks[k].at("numel_unpadded").get<int64_t>()) << "bucket " << k;
    EXPECT_EQ((std::vector<int64_t>{m.offset, m.offset + m.numel}),
              bks[k].at("bucket_indices").get<std::vector<int64_t>>())
        << "bucket " << k;
  }
  // param_index_map in insertion order (the layout order).
  const json& pi = real.at("params_in_index_order");
  ASSERT_EQ(b.params.size(), pi.size());
  for (size_t k = 0; k < pi.size(); ++k) {
    const BufferParam& q = b.params[k];
    const ChunkParam& p = params[q.param];
    const json& r = pi[k];
    const std::string name = r.at("name");
    EXPECT_EQ(p.module_name, name) << "param_index_map entry " << k;
    EXPECT_EQ((std::vector<int64_t>{q.start, q.end, q.bucket}),
              (std::vector<int64_t>{r.at("start"), r.at("end"), r.at("bucket_id")}))
        << name;
    EXPECT_EQ(p.numel(), r.at("numel").get<int64_t>()) << name;
    EXPECT_EQ(p.shape, r.at("shape").get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(StoredKey(p), r.at("key").get<std::string>()) << name;
    // SwiGLU fc1 is a ShardedTensorFactory (no single global offset).
    EXPECT_EQ(p.split == TpSplit::kGatedRows, r.at("swiglu_factory").get<bool>()) << name;
    if (p.split != TpSplit::kGatedRows) {
      EXPECT_EQ(GlobalOffset(p), r.at("global_offset").get<std::vector<int64_t>>()) << name << " " << p.global_name;
    } else {
      EXPECT_TRUE(r.at("global_offset").is_null()) << name;
    }
  }
}

// This DP rank's param ranges (DistributedOptimizer._build_model_gbuf_range):
// for each bucket, the rank's even share RankRange intersected with each
// parameter, as (name -> bucket, chunk, gbuf_world, gbuf_world_in_bucket,
// gbuf_local, param).
using RangeMap = std::map<std::string, std::vector<int64_t>>;

RangeMap ExpectedRanges(const ParamBuffer& b, const std::vector<ChunkParam>& params, int64_t dp_rank) {
  RangeMap out;
  for (const BufferParam& q : b.params) {
    const auto [lo, hi] = b.RankRange(q.bucket, dp_rank);
    const int64_t s = std::max(q.start, lo);
    const int64_t e = std::min(q.end, hi);
    if (e <= s) continue;
    const int64_t off = b.buckets[q.bucket].offset;
    out[params[q.param].module_name] = {q.bucket, b.chunk, s,         e,         s - off,
                                        e - off,  s - lo,  e - lo,    s - q.start, e - q.start};
  }
  return out;
}

RangeMap RealRanges(const json& ranges) {
  RangeMap out;
  for (const json& r : ranges) {
    std::vector<int64_t> v{r.at("bucket"), r.at("chunk")};
    for (const char* k : {"gbuf_world", "gbuf_world_in_bucket", "gbuf_local", "param"}) {
      const auto x = r.at(k).get<std::vector<int64_t>>();
      v.insert(v.end(), x.begin(), x.end());
    }
    EXPECT_TRUE(out.emplace(r.at("name").get<std::string>(), v).second) << r.at("name");
  }
  return out;
}

std::string FolderName(const ParallelLayout& l, int64_t tp_rank, int64_t pp_rank, int64_t ep_rank) {
  std::string s = fmt::format("mp_rank_{:02d}", tp_rank);
  if (l.pp > 1) s += fmt::format("_{:03d}", pp_rank);
  if (l.ep > 1) s += fmt::format("_{:03d}", ep_rank);
  return s;
}

// megatron-core 0.6.0's own DDP buffers (tests/golden/legacy/mc006_llama_dp2, made by
// make_golden_mc006.py): parameters packed without alignment, buckets padded to a multiple of
// DP, and its fixed bucket size rule; the same tiny llama as mc016_llama_dp2.
TEST(BuildRankOptimizer, MatchesCore06PackedBuffers) {
  const json expected =
      json::parse(testing::ReadRequiredSourceFile("tests/golden/legacy/mc006_llama_dp2/expected.json"));
  const json spec = json::parse(testing::ReadRequiredSourceFile("tests/golden/legacy/mc016_llama_dp2/layout.json"))
                        .at("spec");
  GoldenSetup g = SetupFromSpec(spec);
  g.settings.packing = BufferPacking::kPacked;
  g.settings.ddp_bucket_size = expected.at("bucket_size").get<int64_t>();
  ASSERT_EQ(g.layout.dp, expected.at("dp").get<int64_t>());
  Result<RankOptimizer> r = BuildRankOptimizer(g.config, g.layout, g.settings, ChunkCoords{});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const json& buffers = expected.at("ddp_buffers");
  ASSERT_EQ(r->dense.size(), buffers.size());
  const ParamBuffer& b = r->dense[0];
  EXPECT_EQ(b.numel, buffers[0].at("numel").get<int64_t>());
  ASSERT_EQ(b.buckets.size(), buffers[0].at("buckets").size());
  for (size_t k = 0; k < b.buckets.size(); ++k) {
    EXPECT_EQ(b.buckets[k].offset, buffers[0]["buckets"][k][0].get<int64_t>()) << k;
    EXPECT_EQ(b.buckets[k].offset + b.buckets[k].numel, buffers[0]["buckets"][k][1].get<int64_t>()) << k;
    EXPECT_EQ(b.buckets[k].numel_unpadded, buffers[0]["buckets_numel_unpadded"][k].get<int64_t>()) << k;
  }
  const json& where = buffers[0].at("params");
  ASSERT_EQ(b.params.size(), where.size());
  for (const BufferParam& p : b.params) {
    const std::string& name = r->chunks[0][p.param].module_name;
    ASSERT_TRUE(where.contains(name)) << name;
    EXPECT_EQ(p.start, where[name][0].get<int64_t>()) << name;
    EXPECT_EQ(p.end, where[name][1].get<int64_t>()) << name;
    EXPECT_EQ(p.bucket, where[name][2].get<int64_t>()) << name;
  }
  // The same model at core >= 0.8's packing is laid out otherwise (64-aligned, lcm(DP, 128)).
  g.settings.packing = BufferPacking::kAligned;
  Result<RankOptimizer> aligned = BuildRankOptimizer(g.config, g.layout, g.settings, ChunkCoords{});
  ASSERT_TRUE(aligned.ok());
  EXPECT_NE(aligned->dense[0].numel, b.numel);
}

TEST(BuildRankOptimizer, MatchesRealMultiRankLayouts) {
  const std::vector<std::string> names = GoldenLayoutNames();
  ASSERT_GE(names.size(), 6u);
  bool saw_expert = false;
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const json golden = json::parse(testing::ReadRequiredSourceFile(StrCat("tests/golden/legacy/", name, "/layout.json")));
    const GoldenSetup g = SetupFromSpec(golden.at("spec"));
    const ParallelLayout& l = g.layout;
    ASSERT_EQ(l.world_size(), golden.at("spec").at("world").get<int64_t>());
    ASSERT_EQ(golden.at("ranks").size(), static_cast<size_t>(l.world_size()));
    for (const json& jr : golden.at("ranks")) {
      const int64_t rank = jr.at("rank");
      SCOPED_TRACE(StrCat("rank ", rank));
      // The rank grids.
      Result<RankCoordinates> rc = GlobalRankCoordinates(l, rank);
      ASSERT_TRUE(rc.ok()) << rc.status().ToString();
      EXPECT_EQ(rc->tp_rank, jr.at("tp_rank").get<int64_t>());
      EXPECT_EQ(rc->pp_rank, jr.at("pp_rank").get<int64_t>());
      EXPECT_EQ(rc->dp_rank, jr.at("dp_rank").get<int64_t>());
      EXPECT_EQ(rc->ep_rank, jr.at("ep_rank").get<int64_t>());
      EXPECT_EQ(rc->etp_rank, jr.at("expert_tp_rank").get<int64_t>());
      EXPECT_EQ(rc->expert_dp_rank, jr.at("expert_dp_rank").get<int64_t>());
      EXPECT_EQ(FolderName(l, jr.at("tp_rank"), jr.at("pp_rank"), jr.at("ep_rank")),
                jr.at("ckpt_dir").get<std::string>());

      ChunkCoords at;
      at.tp_rank = jr.at("tp_rank");
      at.pp_rank = jr.at("pp_rank");
      at.ep_rank = jr.at("ep_rank");
      at.etp_rank = jr.at("expert_tp_rank");
      Result<RankOptimizer> r = BuildRankOptimizer(g.config, l, g.settings, at);
      ASSERT_TRUE(r.ok()) << r.status().ToString();

      // Model chunks: named_parameters() and DDP's bucket size.
      const json& chunks = jr.at("chunks");
      ASSERT_EQ(r->chunks.size(), chunks.size());
      std::vector<std::optional<int64_t>> bucket_size(chunks.size());
      size_t chunk_buffers = 0;
      for (size_t ci = 0; ci < chunks.size(); ++ci) {
        SCOPED_TRACE(StrCat("chunk ", ci));
        const json& jc = chunks[ci];
        ASSERT_EQ(jc.at("chunk").get<size_t>(), ci);
        EXPECT_EQ(JsonOptInt(jc.at("vp_stage")), l.vpp > 1 ? std::optional<int64_t>(ci) : std::nullopt);
        EXPECT_EQ(jc.at("pre_process").get<bool>(), at.pp_rank == 0 && ci == 0);
        EXPECT_EQ(jc.at("post_process").get<bool>(),
                  at.pp_rank == l.pp - 1 && static_cast<int64_t>(ci) == l.vpp - 1);
        ChunkCoords cc = at;
        cc.vp_stage = static_cast<int64_t>(ci);
        bucket_size[ci] = DefaultBucketSize(g.settings.overlap_grad_reduce, g.settings.ddp_bucket_size, l.dp, cc);
        EXPECT_EQ(bucket_size[ci], JsonOptInt(jc.at("ddp_bucket_size")));
        CheckChunkParams(r->chunks[ci], jc.at("named_parameters"), g.config.params_dtype);
        chunk_buffers += jc.at("buffers").size();
      }

      // Sub-optimizers: dense, then expert (EP > 1 with experts).
      const json& opts = jr.at("optimizers");
      const size_t n_opt = 1 + (r->expert.empty() ? 0 : 1);
      ASSERT_EQ(opts.size(), n_opt);
      EXPECT_EQ(jr.at("chained_optimizer_len").get<size_t>(), n_opt);
      size_t gbufs_seen = 0;
      for (const json& jo : opts) {
        const bool expert = jo.at("kind") == "expert";
        SCOPED_TRACE(expert ? "expert optimizer" : "dense optimizer");
        saw_expert = saw_expert || expert;
        EXPECT_EQ(jo.at("index").get<size_t>(), expert ? 1u : 0u);
        EXPECT_EQ(jo.at("class").get<std::string>(), "DistributedOptimizer");
        const std::vector<ParamBuffer>& mine = expert ? r->expert : r->dense;
        const int64_t dp_rank = expert ? jr.at("expert_dp_rank").get<int64_t>() : jr.at("dp_rank").get<int64_t>();
        EXPECT_EQ(jo.at("dp_size").get<int64_t>(), expert ? r->expert_dp : r->dense_dp);
        EXPECT_EQ(jo.at("dp_rank").get<int64_t>(), dp_rank);
        EXPECT_EQ(jo.at("data_parallel_group_idx").get<int64_t>(),
                  expert ? r->expert_dp_group_idx : r->dense_dp_group_idx);
        const json& gbufs = jo.at("gbufs");
        ASSERT_EQ(mine.size(), gbufs.size());
        ASSERT_EQ(jo.at("per_bucket_numel").size(), gbufs.size());
        ASSERT_EQ(jo.at("per_bucket_numel_unpadded").size(), gbufs.size());
        gbufs_seen += gbufs.size();
        for (size_t gi = 0; gi < gbufs.size(); ++gi) {
          SCOPED_TRACE(StrCat("gbuf_idx ", gi));
          const json& jg = gbufs[gi];
          const ParamBuffer& b = mine[gi];
          EXPECT_EQ(jg.at("gbuf_idx").get<size_t>(), gi);
          ASSERT_EQ(jg.at("chunk").get<int64_t>(), b.chunk);
          EXPECT_EQ(b.expert, expert);
          EXPECT_EQ(jg.at("ddp_attr").get<std::string>(), expert ? "expert_parallel_buffers" : "buffers");
          const std::string dtk = DTypePairName(b.param_dtype, b.grad_dtype);
          EXPECT_EQ(jg.at("dtype_key").get<std::string>(), dtk);
          std::vector<int64_t> numel, unpadded;
          for (const BufferBucket& k : b.buckets) {
            numel.push_back(k.numel);
            unpadded.push_back(k.numel_unpadded);
          }
          EXPECT_EQ((json{{dtk, numel}}), jo.at("per_bucket_numel")[gi]);
          EXPECT_EQ((json{{dtk, unpadded}}), jo.at("per_bucket_numel_unpadded")[gi]);
          // The DDP buffer this gbuf is.
          const json* jb = nullptr;
          for (const json& x : chunks[b.chunk].at("buffers")) {
            if (x.at("kind") == jg.at("ddp_attr") && x.at("index") == jg.at("index_in_chunk")) jb = &x;
          }
          ASSERT_NE(jb, nullptr);
          CheckBuffer(b, r->chunks[b.chunk], *jb, bucket_size[b.chunk]);
          // This DP rank's ranges.
          EXPECT_EQ(ExpectedRanges(b, r->chunks[b.chunk], dp_rank), RealRanges(jg.at("this_dp_rank_param_ranges")));
        }
      }
      EXPECT_EQ(gbufs_seen, chunk_buffers) << "every DDP buffer is one gbuf of one sub-optimizer";
    }
  }
  EXPECT_TRUE(saw_expert) << "no golden has an expert optimizer";
}


// The same settings read back from the `args` Megatron-LM stored in the
// goldens' legacy model_optim_rng.pt (expected.json records each field's
// str()): DistOptFromArgs and LayoutFromArgs give what the layouts above
// were checked with.
TEST(DistOptFromArgs, MatchesTheGoldensArgs) {
  for (const std::string& name : GoldenLayoutNames()) {
    SCOPED_TRACE(name);
    const std::string base = StrCat("tests/golden/legacy/", name, "/");
    const GoldenSetup g =
        SetupFromSpec(json::parse(testing::ReadRequiredSourceFile(base + "layout.json")).at("spec"));
    const json expected = json::parse(testing::ReadRequiredSourceFile(base + "expected.json"));
    const json* args = nullptr;
    for (const auto& [file, ent] : expected.at("describe").at("legacy").at("files").items()) {
      if (file.size() > 18 && file.substr(file.size() - 18) == "model_optim_rng.pt") {
        args = &ent.at("args");
        break;
      }
    }
    ASSERT_NE(args, nullptr);
    // str() of each field back to a pickle value: True/False, None, ints,
    // floats, else a string.
    pickle::Arena values;
    megatron::CommonState common;
    for (const auto& [k, v] : args->items()) {
      const std::string text = v.get<std::string>();
      pickle::Value* pv = nullptr;
      size_t used = 0;
      if (text == "True" || text == "False") {
        pv = values.Bool(text == "True");
      } else if (text == "None") {
        pv = values.None();
      } else if (!text.empty() && text.find_first_not_of("-0123456789") == std::string::npos) {
        pv = values.Int(std::stoll(text));
      } else if (!text.empty() && text.find_first_not_of("-0123456789.e+") == std::string::npos &&
                 (std::stod(text, &used), used == text.size())) {
        pv = values.Float(std::stod(text));
      } else {
        pv = values.String(text);
      }
      common.args_fields.emplace(k, pv);
    }
    const DistOptSettings s = DistOptFromArgs(common, std::nullopt);
    EXPECT_EQ(s.spec, g.settings.spec);
    EXPECT_EQ(s.params_dtype, g.settings.params_dtype);
    EXPECT_EQ(s.overlap_grad_reduce, g.settings.overlap_grad_reduce);
    EXPECT_EQ(s.ddp_bucket_size, g.settings.ddp_bucket_size);
    EXPECT_EQ(s.grad_reduce_in_fp32, g.settings.grad_reduce_in_fp32);
    EXPECT_EQ(s.pad_buckets_for_high_nccl_busbw, g.settings.pad_buckets_for_high_nccl_busbw);
    EXPECT_EQ(s.num_instances, g.settings.num_instances);
    Result<ParallelLayout> l = LayoutFromArgs(common);
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    EXPECT_EQ(LayoutString(*l), LayoutString(g.layout));
    EXPECT_EQ((std::vector<int64_t>{l->tp, l->pp, l->vpp, l->dp, l->cp, l->ep, l->etp}),
              (std::vector<int64_t>{g.layout.tp, g.layout.pp, g.layout.vpp, g.layout.dp, g.layout.cp, g.layout.ep,
                                    g.layout.etp}));
  }
}

TEST(LegacyRanks, MatchRealLegacyFolders) {
  for (const std::string& name : GoldenLayoutNames()) {
    SCOPED_TRACE(name);
    const std::string base = StrCat("tests/golden/legacy/", name, "/");
    const json golden = json::parse(testing::ReadRequiredSourceFile(base + "layout.json"));
    const GoldenSetup g = SetupFromSpec(golden.at("spec"));
    Result<std::vector<LegacyRankFolder>> folders = LegacyRanks(g.layout);
    ASSERT_TRUE(folders.ok()) << folders.status().ToString();
    // The folders on disk and their files; distrib_optim.pt's structure
    // (expected.json): a dict (one sub-optimizer) or [dense | None, expert | None].
    const json expected = json::parse(testing::ReadRequiredSourceFile(base + "expected.json"));
    const json& files = expected.at("describe").at("legacy").at("files");
    const std::string iter = testing::ReadSourceFile(base + "legacy/latest_checkpointed_iteration.txt");
    ASSERT_FALSE(iter.empty());
    const std::string iter_dir = fmt::format("iter_{:07d}", std::stoll(iter));
    std::set<std::string> on_disk;
    for (const auto& e : std::filesystem::directory_iterator(testing::SourcePath(base + "legacy/" + iter_dir))) {
      on_disk.insert(e.path().filename());
    }
    std::set<std::string> mine;
    for (const LegacyRankFolder& f : *folders) {
      SCOPED_TRACE(f.folder);
      EXPECT_TRUE(mine.insert(f.folder).second);
      // The writer is the recorded rank with this ckpt_dir.
      const json& jr = golden.at("ranks").at(f.rank);
      EXPECT_EQ(jr.at("ckpt_dir").get<std::string>(), f.folder);
      EXPECT_EQ(f.at.tp_rank, jr.at("tp_rank").get<int64_t>());
      EXPECT_EQ(f.at.pp_rank, jr.at("pp_rank").get<int64_t>());
      EXPECT_EQ(f.at.ep_rank, jr.at("ep_rank").get<int64_t>());
      EXPECT_EQ(f.at.etp_rank, jr.at("expert_tp_rank").get<int64_t>());
      const std::string dir = testing::SourcePath(base + "legacy/" + iter_dir + "/" + f.folder);
      EXPECT_EQ(f.model_file, std::filesystem::exists(dir + "/model_optim_rng.pt"));
      EXPECT_EQ(f.model_file, jr.at("expert_dp_rank").get<int64_t>() == 0);
      ASSERT_TRUE(files.contains(iter_dir + "/" + f.folder + "/distrib_optim.pt"));
      const json& st = files.at(iter_dir + "/" + f.folder + "/distrib_optim.pt").at("structure");
      size_t n_opt = 0;
      for (const json& o : jr.at("optimizers")) {
        const bool dp0 = o.at("dp_rank").get<int64_t>() == 0;
        EXPECT_EQ(dp0, o.at("kind") == "expert" ? f.expert_optimizer : f.dense_optimizer) << o.at("kind");
        if (st.is_array()) {
          EXPECT_EQ(dp0, !st.at(n_opt).is_null()) << o.at("kind");
        } else {
          EXPECT_TRUE(dp0 && st.is_object()) << o.at("kind");
        }
        ++n_opt;
      }
      EXPECT_EQ(st.is_array() ? st.size() : 1u, n_opt);
    }
    EXPECT_EQ(mine, on_disk);
    // Every recorded rank's folder is one of them (its model-parallel state is in it).
    for (const json& jr : golden.at("ranks")) {
      EXPECT_TRUE(mine.count(jr.at("ckpt_dir").get<std::string>())) << jr.at("ckpt_dir");
    }
  }
}

TEST(LegacyRanks, FoldersFollowTheExpertGrid) {
  // TP2 ETP1 EP2 DP1: rank 1 is tp 1 / ep 1; no folder for (tp 0, ep 1) or (tp 1, ep 0).
  ParallelLayout l;
  l.tp = 2;
  l.ep = 2;
  l.etp = 1;
  Result<std::vector<LegacyRankFolder>> f = LegacyRanks(l);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->size(), 2u);
  EXPECT_TRUE((*f)[1].model_file && (*f)[1].dense_optimizer && (*f)[1].expert_optimizer);
  EXPECT_EQ((*f)[0].folder, "mp_rank_00_000");
  EXPECT_EQ((*f)[1].folder, "mp_rank_01_001");
  EXPECT_EQ((*f)[1].at.tp_rank, 1);
  EXPECT_EQ((*f)[1].at.ep_rank, 1);
  EXPECT_EQ((*f)[1].at.etp_rank, 0);
  // PP2 EP2: mp_rank_TT_PPP_EEE; the second stage's writers start at rank tp*dp.
  l.tp = 1;
  l.dp = 2;
  l.pp = 2;
  f = LegacyRanks(l);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->size(), 4u);
  EXPECT_EQ((*f)[3].folder, "mp_rank_00_001_001");
  EXPECT_EQ((*f)[3].rank, 3);
  EXPECT_FALSE((*f)[3].dense_optimizer);  // dense DP rank 1: [None, expert]
  EXPECT_TRUE((*f)[3].expert_optimizer);
  // TP4 ETP1 EP2 DP1: dense TP ranks 2 and 3 (expert DP rank 1) write no
  // model_optim_rng.pt, only their dense optimizer state.
  l = ParallelLayout{};
  l.tp = 4;
  l.ep = 2;
  l.etp = 1;
  f = LegacyRanks(l);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  ASSERT_EQ(f->size(), 4u);
  EXPECT_EQ((*f)[2].folder, "mp_rank_02_000");
  EXPECT_FALSE((*f)[2].model_file);
  EXPECT_TRUE((*f)[2].dense_optimizer);
  EXPECT_FALSE((*f)[2].expert_optimizer);
  EXPECT_EQ((*f)[3].folder, "mp_rank_03_001");
  // TP1 ETP2: two expert TP ranks would write one folder.
  l = ParallelLayout{};
  l.dp = 2;
  l.etp = 2;
  f = LegacyRanks(l);
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("would both write"), std::string::npos) << f.status().ToString();
  // Without MoE the writers are DP rank 0: one folder per (tp, pp).
  l = ParallelLayout{};
  l.tp = 2;
  l.etp = 2;
  l.dp = 4;
  l.pp = 2;
  f = LegacyRanks(l);
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->size(), 4u);
  EXPECT_EQ((*f)[2].folder, "mp_rank_00_001");
  EXPECT_EQ((*f)[2].rank, 8);
}
// Holders of a chunk are the ranks that agree with its writer on the
// coordinates its sharing keeps (pp; tp when TP-split; ep, and etp when
// ETP-split): checked against the coordinates megatron-core's own
// parallel_state gave each rank of the golden layouts (incl. EP 2).
TEST(ChunkHolders, GroupTheRanksMegatronsCoordinatesTieTogether) {
  const std::vector<std::string> names = GoldenLayoutNames();
  ASSERT_GE(names.size(), 6u);
  for (const std::string& name : names) {
    SCOPED_TRACE(name);
    const json golden = json::parse(testing::ReadRequiredSourceFile(StrCat("tests/golden/legacy/", name, "/layout.json")));
    const ParallelLayout l = SetupFromSpec(golden.at("spec")).layout;
    const json& ranks = golden.at("ranks");
    for (ChunkSharing s : {ChunkSharing::kDense, ChunkSharing::kDenseTpSplit, ChunkSharing::kExpert,
                           ChunkSharing::kExpertTpSplit}) {
      SCOPED_TRACE(static_cast<int>(s));
      Result<ChunkHolderGroups> h = ChunkHolders(l, s);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      ASSERT_EQ(h->group_of_rank.size(), ranks.size());
      auto tie = [&](const json& r) {
        const int64_t pp = r.at("pp_rank");
        switch (s) {
          case ChunkSharing::kDense: return std::vector<int64_t>{pp};
          case ChunkSharing::kDenseTpSplit: return std::vector<int64_t>{pp, r.at("tp_rank").get<int64_t>()};
          case ChunkSharing::kExpert: return std::vector<int64_t>{pp, r.at("ep_rank").get<int64_t>()};
          case ChunkSharing::kExpertTpSplit:
            return std::vector<int64_t>{pp, r.at("ep_rank").get<int64_t>(), r.at("expert_tp_rank").get<int64_t>()};
        }
        return std::vector<int64_t>{};
      };
      for (const json& w : ranks) {
        std::vector<int64_t> want;
        for (const json& r : ranks) {
          if (tie(r) == tie(w)) want.push_back(r.at("rank").get<int64_t>());
        }
        const int64_t g = h->group_of_rank[static_cast<size_t>(w.at("rank").get<int64_t>())];
        EXPECT_EQ(h->groups[static_cast<size_t>(g)], want) << "writer " << w.at("rank");
      }
    }
  }
}

// A tensor's sharing from its name and chunks, on the layouts of the interop
// goldens (TP2: a norm has one chunk per layer, a TP-split weight two).
TEST(TensorSharing, FromTheNameAndTheChunksOfTheStackedAxes) {
  const std::vector<ChunkExtent> per_layer = {{{0, 0}, {1, 16}}, {{1, 0}, {1, 16}}};
  const std::vector<ChunkExtent> tp_split = {{{0, 0, 0}, {1, 8, 16}}, {{0, 8, 0}, {1, 8, 16}},
                                             {{1, 0, 0}, {1, 8, 16}}, {{1, 8, 0}, {1, 8, 16}}};
  EXPECT_EQ(TensorSharing("decoder.layers.input_layernorm.weight", per_layer), ChunkSharing::kDense);
  EXPECT_EQ(TensorSharing("decoder.layers.self_attention.linear_qkv.weight", tp_split), ChunkSharing::kDenseTpSplit);
  EXPECT_EQ(TensorSharing("optimizer.state.exp_avg.decoder.layers.self_attention.linear_qkv.weight", tp_split),
            ChunkSharing::kDenseTpSplit);
  // No stacked axis: two chunks are a TP split, one is not.
  EXPECT_EQ(TensorSharing("embedding.word_embeddings.weight", {{{{0, 0}, {32, 16}}, {{32, 0}, {32, 16}}}}),
            ChunkSharing::kDenseTpSplit);
  EXPECT_EQ(TensorSharing("decoder.final_layernorm.weight", {{{{0}, {16}}}}), ChunkSharing::kDense);
  // Per-layer keys (a digit after decoder.layers.) have no stacked layer axis.
  EXPECT_EQ(TensorSharing("decoder.layers.0.mlp.linear_fc2.weight", {{{{0, 0}, {16, 24}}, {{0, 24}, {16, 24}}}}),
            ChunkSharing::kDenseTpSplit);
  // Experts: layers and experts stacked; two chunks per (layer, expert) are an ETP split.
  const std::vector<ChunkExtent> experts = {{{0, 0, 0}, {1, 1, 8}}, {{0, 1, 0}, {1, 1, 8}}};
  EXPECT_EQ(TensorSharing("decoder.layers.mlp.experts.experts.linear_fc2.weight", experts), ChunkSharing::kExpert);
  const std::vector<ChunkExtent> etp = {{{0, 0, 0}, {1, 1, 4}}, {{0, 0, 4}, {1, 1, 4}}};
  EXPECT_EQ(TensorSharing("decoder.layers.mlp.experts.experts.linear_fc2.weight", etp), ChunkSharing::kExpertTpSplit);
  EXPECT_EQ(TensorSharing("decoder.layers.mlp.shared_experts.linear_fc2.weight", per_layer), ChunkSharing::kDense);
  // What each rank holds alone.
  EXPECT_EQ(TensorSharing("optimizer.distributed.dp_group_idx_0.gbuf_idx_0.dtype_(torch.float32, torch.float32).bucket_idx_0.exp_avg", per_layer),
            std::nullopt);
  EXPECT_EQ(TensorSharing("optimizer.state", per_layer), std::nullopt);
}

}  // namespace
}  // namespace ckpt::model
