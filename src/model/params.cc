// The parameters of a GPTModel chunk in megatron-core's registration order,
// with their TP shards, and the DistributedDataParallel buffers they are
// copied into (the distributed optimizer's layout).
//
// Registration order is module construction order (torch's
// named_parameters: a module's own parameters, then its children in the
// order they were assigned). Read from megatron-core 0.16.1 / 0.19.2 and
// checked against named_parameters() of real GPTModels (local spec):
//   GPTModel:          embedding (word_embeddings, position_embeddings), decoder, output_layer
//   TransformerBlock:  layers.0 .. layers.n-1, final_layernorm
//   TransformerLayer:  input_layernorm, self_attention, pre_mlp_layernorm, mlp
//   SelfAttention:     linear_proj (built by Attention.__init__), then linear_qkv,
//                      q_layernorm, k_layernorm (built after super().__init__)
//   MLP:               linear_fc1, linear_fc2
//   MoELayer:          router, experts (local_experts.0..), shared_experts
//   Linear layers:     weight, bias; TE LayerNormLinear: layer_norm_weight,
//                      layer_norm_bias, weight, bias (Transformer Engine's
//                      own order; TE is not installable here, so the TE
//                      spec's order is from its source, not from a run).
// The buffer layout follows param_and_grad_buffer.py (_ParamAndGradBuffer).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <map>
#include <numeric>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "ckpt/model.h"
#include "util/strings.h"

namespace ckpt::model {

std::string_view LayerSpecName(LayerSpec s) {
  return s == LayerSpec::kLocal ? "local" : "te";
}

Result<LayerSpec> ParseLayerSpec(std::string_view name) {
  if (name == "local") return LayerSpec::kLocal;
  if (name == "te" || name == "transformer_engine") return LayerSpec::kTransformerEngine;
  return InvalidArgumentError(StrCat("unknown layer spec '", name, "': expected local or te"));
}

int64_t ChunkParam::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

namespace {

// Builds the list; every shard division is checked.
class ParamList {
 public:
  ParamList(int64_t tp, int64_t tp_rank) : tp_(tp), tp_rank_(tp_rank) {}

  // A parameter split over `parts` ranks (tp or etp) along `split`.
  void Add(std::string module_name, std::string global_name, std::vector<int64_t> global_shape, TpSplit split,
           int64_t parts, int64_t rank, bool expert = false) {
    ChunkParam p;
    p.module_name = std::move(module_name);
    p.global_name = std::move(global_name);
    p.global_shape = global_shape;
    p.shape = global_shape;
    p.split = split;
    p.tp_size = split == TpSplit::kNone ? 1 : parts;
    p.tp_rank = split == TpSplit::kNone ? 0 : rank;
    p.expert = expert;
    if (split != TpSplit::kNone) {
      const size_t dim = split == TpSplit::kCols ? 1 : 0;
      const int64_t unit = split == TpSplit::kGatedRows ? 2 * parts : parts;
      if (dim >= global_shape.size() || global_shape[dim] % unit != 0) {
        if (error_.ok()) {
          error_ = InvalidArgumentError(StrCat(p.global_name, ": dimension ", dim, " of [",
                                               fmt::format("{}", fmt::join(global_shape, ", ")), "] does not split over ", parts,
                                               split == TpSplit::kGatedRows ? " ranks (gate and up halves)" : " ranks"));
        }
        return;
      }
      p.shape[dim] = global_shape[dim] / parts;
    }
    out_.push_back(std::move(p));
  }
  void AddDense(std::string module_name, std::string global_name, std::vector<int64_t> shape, TpSplit split) {
    Add(std::move(module_name), std::move(global_name), std::move(shape), split, tp_, tp_rank_);
  }

  Status error() const { return error_; }
  std::vector<ChunkParam>& params() { return out_; }

 private:
  int64_t tp_;
  int64_t tp_rank_;
  Status error_;
  std::vector<ChunkParam> out_;
};

}  // namespace

Result<std::vector<ChunkParam>> ChunkParameters(const ModelConfig& c, const ParallelLayout& l, LayerSpec spec,
                                                const ChunkCoords& at) {
  CKPT_RETURN_IF_ERROR(c.Validate());
  CKPT_ASSIGN_OR_RETURN(std::vector<LayerRange> stages, l.Stages(c.num_layers));
  auto in = [](int64_t v, int64_t n) { return v >= 0 && v < n; };
  if (!in(at.pp_rank, l.pp) || !in(at.vp_stage, l.vpp) || !in(at.tp_rank, l.tp) || !in(at.ep_rank, l.ep) ||
      !in(at.etp_rank, l.etp)) {
    return InvalidArgumentError(StrCat("chunk (pp_rank ", at.pp_rank, ", vp_stage ", at.vp_stage, ", tp_rank ",
                                       at.tp_rank, ", ep_rank ", at.ep_rank, ", etp_rank ", at.etp_rank,
                                       ") is outside the layout ", LayoutString(l)));
  }
  if (c.moe() && c.num_experts % l.ep != 0) {
    return InvalidArgumentError(StrCat("num_experts ", c.num_experts, " does not split over ep=", l.ep));
  }
  LayerRange range;
  for (const LayerRange& r : stages) {
    if (r.pp_rank == at.pp_rank && r.vp_stage == at.vp_stage) range = r;
  }
  const bool pre = at.pp_rank == 0 && at.vp_stage == 0;
  const bool post = at.pp_rank == l.pp - 1 && at.vp_stage == l.vpp - 1;
  const bool layer_norm = c.norm == Norm::kLayerNorm;
  const bool te = spec == LayerSpec::kTransformerEngine;
  const int64_t h = c.hidden_size;
  const int64_t v = c.padded_vocab_size;
  ParamList list(l.tp, at.tp_rank);

  if (pre) {
    list.AddDense("embedding.word_embeddings.weight", "embedding.word_embeddings.weight", {v, h}, TpSplit::kRows);
    if (c.positions == Positions::kLearned) {
      list.AddDense("embedding.position_embeddings.weight", "embedding.position_embeddings.weight",
                    {c.max_position_embeddings, h}, TpSplit::kNone);
    }
  }
  const int64_t attn_cols = c.num_attention_heads * c.kv_channels;
  const bool qkv_bias = c.add_bias_linear || c.add_qkv_bias;
  const int64_t fc1_rows = c.gated() ? 2 * c.ffn_hidden_size : c.ffn_hidden_size;
  const TpSplit fc1_split = c.gated() ? TpSplit::kGatedRows : TpSplit::kRows;
  for (int64_t local = 0; local < range.end - range.begin; ++local) {
    const int64_t g = range.begin + local;
    const std::string m = StrCat("decoder.layers.", local, ".");
    const std::string G = StrCat("decoder.layers.", g, ".");
    // A norm: [hidden] weight (+ bias for LayerNorm), replicated.
    auto norm = [&](const std::string& module, const std::string& global_prefix, int64_t size) {
      list.AddDense(StrCat(m, module, "weight"), StrCat(G, global_prefix, "weight"), {size}, TpSplit::kNone);
      if (layer_norm) {
        list.AddDense(StrCat(m, module, "bias"), StrCat(G, global_prefix, "bias"), {size}, TpSplit::kNone);
      }
    };
    // The fused TE names are the torch_dist names of both specs (the local
    // spec maps its norm modules to them in sharded_state_dict).
    if (!te) norm("input_layernorm.", "self_attention.linear_qkv.layer_norm_", h);
    list.AddDense(StrCat(m, "self_attention.linear_proj.weight"), StrCat(G, "self_attention.linear_proj.weight"),
                  {h, attn_cols}, TpSplit::kCols);
    if (c.add_bias_linear) {
      list.AddDense(StrCat(m, "self_attention.linear_proj.bias"), StrCat(G, "self_attention.linear_proj.bias"), {h},
                    TpSplit::kNone);
    }
    if (te) {
      list.AddDense(StrCat(m, "self_attention.linear_qkv.layer_norm_weight"),
                    StrCat(G, "self_attention.linear_qkv.layer_norm_weight"), {h}, TpSplit::kNone);
      if (layer_norm) {
        list.AddDense(StrCat(m, "self_attention.linear_qkv.layer_norm_bias"),
                      StrCat(G, "self_attention.linear_qkv.layer_norm_bias"), {h}, TpSplit::kNone);
      }
    }
    list.AddDense(StrCat(m, "self_attention.linear_qkv.weight"), StrCat(G, "self_attention.linear_qkv.weight"),
                  {c.qkv_rows(), h}, TpSplit::kRows);
    if (qkv_bias) {
      list.AddDense(StrCat(m, "self_attention.linear_qkv.bias"), StrCat(G, "self_attention.linear_qkv.bias"),
                    {c.qkv_rows()}, TpSplit::kRows);
    }
    if (c.qk_layernorm) {
      norm("self_attention.q_layernorm.", "self_attention.q_layernorm.", c.kv_channels);
      norm("self_attention.k_layernorm.", "self_attention.k_layernorm.", c.kv_channels);
    }
    if (!c.moe()) {
      if (!te) norm("pre_mlp_layernorm.", "mlp.linear_fc1.layer_norm_", h);
      if (te) {
        list.AddDense(StrCat(m, "mlp.linear_fc1.layer_norm_weight"), StrCat(G, "mlp.linear_fc1.layer_norm_weight"),
                      {h}, TpSplit::kNone);
        if (layer_norm) {
          list.AddDense(StrCat(m, "mlp.linear_fc1.layer_norm_bias"), StrCat(G, "mlp.linear_fc1.layer_norm_bias"),
                        {h}, TpSplit::kNone);
        }
      }
      list.AddDense(StrCat(m, "mlp.linear_fc1.weight"), StrCat(G, "mlp.linear_fc1.weight"), {fc1_rows, h},
                    fc1_split);
      if (c.add_bias_linear) {
        list.AddDense(StrCat(m, "mlp.linear_fc1.bias"), StrCat(G, "mlp.linear_fc1.bias"), {fc1_rows}, fc1_split);
      }
      list.AddDense(StrCat(m, "mlp.linear_fc2.weight"), StrCat(G, "mlp.linear_fc2.weight"), {h, c.ffn_hidden_size},
                    TpSplit::kCols);
      if (c.add_bias_linear) {
        list.AddDense(StrCat(m, "mlp.linear_fc2.bias"), StrCat(G, "mlp.linear_fc2.bias"), {h}, TpSplit::kNone);
      }
      continue;
    }
    // MoE layer: a separate pre-MLP norm module in both specs. The local spec
    // stores it under the fused name in torch_dist; the TE spec under its own.
    norm("pre_mlp_layernorm.", te ? "pre_mlp_layernorm." : "mlp.linear_fc1.layer_norm_", h);
    list.AddDense(StrCat(m, "mlp.router.weight"), StrCat(G, "mlp.router.weight"), {c.num_experts, h},
                  TpSplit::kNone);
    const int64_t local_experts = c.num_experts / l.ep;
    const int64_t moe_ffn = c.moe_ffn_hidden_size > 0 ? c.moe_ffn_hidden_size : c.ffn_hidden_size;
    const int64_t e_fc1 = c.gated() ? 2 * moe_ffn : moe_ffn;
    const bool ep_split = l.ep > 1;  // expert params leave the dense buffers only with EP > 1
    auto expert_global = [&](int64_t j, std::string_view tail) {
      return StrCat(G, "mlp.experts.experts.", at.ep_rank * local_experts + j, ".", tail);
    };
    if (te && c.moe_grouped_gemm) {
      // TEGroupedMLP: linear_fc1.weight0..n-1, then linear_fc2.weight0..n-1.
      for (int64_t j = 0; j < local_experts; ++j) {
        list.Add(StrCat(m, "mlp.experts.linear_fc1.weight", j), expert_global(j, "linear_fc1.weight"), {e_fc1, h},
                 fc1_split, l.etp, at.etp_rank, ep_split);
      }
      for (int64_t j = 0; j < local_experts; ++j) {
        list.Add(StrCat(m, "mlp.experts.linear_fc2.weight", j), expert_global(j, "linear_fc2.weight"), {h, moe_ffn},
                 TpSplit::kCols, l.etp, at.etp_rank, ep_split);
      }
    } else if (c.moe_grouped_gemm) {
      return UnimplementedError(
          "moe_grouped_gemm without Transformer Engine (megatron-core's GroupedMLP, weight1/weight2) is not supported");
    } else {
      for (int64_t j = 0; j < local_experts; ++j) {
        const std::string e = StrCat(m, "mlp.experts.local_experts.", j, ".");
        list.Add(StrCat(e, "linear_fc1.weight"), expert_global(j, "linear_fc1.weight"), {e_fc1, h}, fc1_split,
                 l.etp, at.etp_rank, ep_split);
        list.Add(StrCat(e, "linear_fc2.weight"), expert_global(j, "linear_fc2.weight"), {h, moe_ffn},
                 TpSplit::kCols, l.etp, at.etp_rank, ep_split);
      }
    }
    if (c.moe_shared_expert_intermediate_size > 0) {
      const int64_t s = c.moe_shared_expert_intermediate_size;
      list.AddDense(StrCat(m, "mlp.shared_experts.linear_fc1.weight"), StrCat(G, "mlp.shared_experts.linear_fc1.weight"),
                    {c.gated() ? 2 * s : s, h}, fc1_split);
      list.AddDense(StrCat(m, "mlp.shared_experts.linear_fc2.weight"), StrCat(G, "mlp.shared_experts.linear_fc2.weight"),
                    {h, s}, TpSplit::kCols);
    }
  }
  if (post) {
    list.AddDense("decoder.final_layernorm.weight", "decoder.final_layernorm.weight", {h}, TpSplit::kNone);
    if (layer_norm) {
      list.AddDense("decoder.final_layernorm.bias", "decoder.final_layernorm.bias", {h}, TpSplit::kNone);
    }
    // Tied embeddings: the output layer has no weight of its own on a stage
    // that also holds the embedding; a last stage without it keeps a copy.
    if (!c.tied_embeddings || !pre) {
      list.AddDense("output_layer.weight", "output_layer.weight", {v, h}, TpSplit::kRows);
    }
  }
  CKPT_RETURN_IF_ERROR(list.error());
  std::vector<ChunkParam>& out = list.params();
  // LanguageModule.setup_embeddings_and_output_layer: with PP > 1 the tied
  // embedding (first stage, no output layer) and its copy (last stage) are
  // marked shared_embedding; the buffers give each its own bucket.
  if (c.tied_embeddings && l.pp > 1) {
    for (ChunkParam& p : out) {
      if ((pre && !post && p.module_name == "embedding.word_embeddings.weight") ||
          (post && !pre && p.module_name == "output_layer.weight")) {
        p.shared_embedding = true;
      }
    }
  }
  return std::move(out);
}

std::vector<ShardRange> ShardRanges(const ChunkParam& p) {
  switch (p.split) {
    case TpSplit::kNone:
      return {{0, 0, p.global_shape.empty() ? 1 : p.global_shape[0]}};
    case TpSplit::kRows:
      return {{0, p.tp_rank * p.shape[0], (p.tp_rank + 1) * p.shape[0]}};
    case TpSplit::kCols:
      return {{1, p.tp_rank * p.shape[1], (p.tp_rank + 1) * p.shape[1]}};
    case TpSplit::kGatedRows: {
      const int64_t half = p.shape[0] / 2;
      const int64_t global_half = p.global_shape[0] / 2;
      return {{0, p.tp_rank * half, (p.tp_rank + 1) * half},
              {0, global_half + p.tp_rank * half, global_half + (p.tp_rank + 1) * half}};
    }
  }
  return {};
}

std::optional<int64_t> DefaultBucketSize(bool overlap_grad_reduce, std::optional<int64_t> ddp_bucket_size,
                                         int64_t dp, const ChunkCoords& at) {
  if (!overlap_grad_reduce || at.pp_rank > 0 || at.vp_stage > 0) return std::nullopt;
  if (ddp_bucket_size) return *ddp_bucket_size;
  return std::max<int64_t>(40000000, 1000000 * dp);
}

namespace {

int64_t RoundUp(int64_t n, int64_t d) { return (n + d - 1) / d * d; }

}  // namespace

Result<std::vector<ParamBuffer>> BuildBuffers(const std::vector<ChunkParam>& params, int64_t chunk, bool expert,
                                              DType param_dtype, const BufferOptions& options) {
  if (options.dp < 1) return InvalidArgumentError(StrCat("data-parallel size must be >= 1, got ", options.dp));
  if (options.bucket_size && *options.bucket_size < 1) {
    return InvalidArgumentError(StrCat("bucket_size must be >= 1, got ", *options.bucket_size));
  }
  const DType grad_dtype = options.grad_reduce_in_fp32 ? DType::kFloat32 : param_dtype;
  // One buffer per (param dtype, grad dtype); every parameter has the
  // model's dtype here (FP8 parameters are not modelled).
  std::vector<size_t> members;
  for (size_t i = 0; i < params.size(); ++i) {
    if (params[i].expert == expert) members.push_back(i);
  }
  std::vector<ParamBuffer> out;
  if (members.empty()) return out;
  ParamBuffer b;
  b.chunk = chunk;
  b.expert = expert;
  b.param_dtype = param_dtype;
  b.grad_dtype = grad_dtype;
  b.dp = options.dp;
  const bool aligned = options.packing == BufferPacking::kAligned;
  int64_t divisor = aligned ? std::lcm<int64_t>(options.dp, 128) : options.dp;
  if (aligned && options.pad_buckets_for_high_nccl_busbw) divisor = std::lcm<int64_t>(divisor, int64_t{1} << 16);
  const int64_t alignment = aligned ? 64 : 1;

  int64_t param_start = 0;
  int64_t bucket_start = 0;
  int64_t bucket_id = 0;
  int64_t open_params = 0;  // parameters in the open bucket
  int64_t param_end = 0;
  auto close_bucket = [&](int64_t end) {
    BufferBucket k;
    k.offset = bucket_start;
    k.numel_unpadded = end - bucket_start;
    const int64_t padded_end = RoundUp(end, divisor);
    k.numel = padded_end - bucket_start;
    b.buckets.push_back(k);
    bucket_start = padded_end;
    open_params = 0;
    ++bucket_id;
    return padded_end;
  };
  for (auto it = members.rbegin(); it != members.rend(); ++it) {
    const ChunkParam& p = params[*it];
    param_start = RoundUp(param_start, alignment);
    if (p.shared_embedding && open_params > 0) param_start = close_bucket(param_start);
    param_end = param_start + p.numel();
    b.params.push_back({*it, param_start, param_end, bucket_id});
    ++open_params;
    if ((options.bucket_size && param_end - bucket_start >= *options.bucket_size) || p.shared_embedding) {
      param_start = close_bucket(param_end);
    } else {
      param_start = param_end;
    }
  }
  if (open_params > 0) close_bucket(param_end);
  b.numel = bucket_start;
  b.numel_unpadded = 0;
  for (const BufferBucket& k : b.buckets) b.numel_unpadded += k.numel_unpadded;
  out.push_back(std::move(b));
  return out;
}

int64_t ParamBuffer::WorldOffset(const BufferParam& p) const {
  int64_t stripped = 0;
  for (int64_t k = 0; k < p.bucket && k < static_cast<int64_t>(buckets.size()); ++k) {
    stripped += buckets[k].numel - buckets[k].numel_unpadded;
  }
  return p.start - stripped;
}

std::pair<int64_t, int64_t> ParamBuffer::RankRange(int64_t bucket, int64_t r) const {
  const BufferBucket& k = buckets[bucket];
  const int64_t share = k.numel / dp;
  return {k.offset + r * share, k.offset + (r + 1) * share};
}

Result<RankOptimizer> BuildRankOptimizer(const ModelConfig& c, const ParallelLayout& l, const DistOptSettings& s,
                                         const ChunkCoords& at) {
  CKPT_RETURN_IF_ERROR(l.Validate());
  RankOptimizer r;
  r.at = at;
  r.at.vp_stage = 0;
  const int64_t dense_group = l.dp * l.cp;
  const int64_t expert_grid = l.ep * l.etp;
  if ((l.tp * l.cp * l.dp) % expert_grid != 0) {
    return InvalidArgumentError(StrCat("ep=", l.ep, " * etp=", l.etp, " does not divide tp*cp*dp=", l.tp * l.cp * l.dp));
  }
  const int64_t expert_group = l.tp * l.cp * l.dp / expert_grid;
  if (s.num_instances < 1 || dense_group % s.num_instances != 0 || expert_group % s.num_instances != 0) {
    return InvalidArgumentError(StrCat("num_distributed_optimizer_instances=", s.num_instances,
                                       " does not divide the data-parallel size ", dense_group));
  }
  r.dense_dp = dense_group / s.num_instances;
  r.expert_dp = expert_group / s.num_instances;
  r.dense_dp_group_idx = at.tp_rank + l.tp * at.pp_rank;
  r.expert_dp_group_idx = at.etp_rank + l.etp * (at.ep_rank + l.ep * at.pp_rank);
  for (int64_t v = 0; v < l.vpp; ++v) {
    ChunkCoords cc = at;
    cc.vp_stage = v;
    CKPT_ASSIGN_OR_RETURN(std::vector<ChunkParam> params, ChunkParameters(c, l, s.spec, cc));
    for (bool expert : {false, true}) {
      BufferOptions o;
      o.dp = expert ? r.expert_dp : r.dense_dp;
      // DDP reads the bucket size from the dense DP group for both kinds.
      o.bucket_size = DefaultBucketSize(s.overlap_grad_reduce, s.ddp_bucket_size, l.dp, cc);
      // Core <= 0.6's DDP took a fixed 40e6 (no --ddp-bucket-size, no DP rule).
      if (s.packing == BufferPacking::kPacked && o.bucket_size && !s.ddp_bucket_size) o.bucket_size = 40000000;
      o.grad_reduce_in_fp32 = s.grad_reduce_in_fp32;
      o.pad_buckets_for_high_nccl_busbw = s.pad_buckets_for_high_nccl_busbw;
      o.packing = s.packing;
      CKPT_ASSIGN_OR_RETURN(std::vector<ParamBuffer> b, BuildBuffers(params, v, expert, s.params_dtype, o));
      std::vector<ParamBuffer>& dst = expert ? r.expert : r.dense;
      for (ParamBuffer& x : b) dst.push_back(std::move(x));
    }
    r.chunks.push_back(std::move(params));
  }
  return r;
}

Result<RankCoordinates> GlobalRankCoordinates(const ParallelLayout& l, int64_t rank) {
  CKPT_RETURN_IF_ERROR(l.Validate());
  if (rank < 0 || rank >= l.world_size()) {
    return InvalidArgumentError(StrCat("rank ", rank, " is outside the layout ", LayoutString(l), " (world size ",
                                       l.world_size(), ")"));
  }
  const int64_t stage = l.tp * l.cp * l.dp;
  const int64_t i = rank % stage;
  RankCoordinates c;
  c.rank = rank;
  c.pp_rank = rank / stage;
  c.tp_rank = i % l.tp;
  c.cp_rank = (i / l.tp) % l.cp;
  c.dp_rank = i / (l.tp * l.cp);
  c.etp_rank = i % l.etp;
  c.ep_rank = (i / l.etp) % l.ep;
  c.expert_dp_rank = i / (l.etp * l.ep);
  return c;
}

Result<ChunkHolderGroups> ChunkHolders(const ParallelLayout& l, ChunkSharing sharing) {
  CKPT_RETURN_IF_ERROR(l.Validate());
  ChunkHolderGroups out;
  out.group_of_rank.resize(static_cast<size_t>(l.world_size()));
  std::map<std::array<int64_t, 3>, int64_t> index;  // the coordinates the holders share -> group
  for (int64_t rank = 0; rank < l.world_size(); ++rank) {
    CKPT_ASSIGN_OR_RETURN(RankCoordinates c, GlobalRankCoordinates(l, rank));
    std::array<int64_t, 3> key{c.pp_rank, -1, -1};
    switch (sharing) {
      case ChunkSharing::kDense: break;
      case ChunkSharing::kDenseTpSplit: key[1] = c.tp_rank; break;
      case ChunkSharing::kExpert: key[1] = c.ep_rank; break;
      case ChunkSharing::kExpertTpSplit: key[1] = c.ep_rank; key[2] = c.etp_rank; break;
    }
    auto [it, fresh] = index.emplace(key, static_cast<int64_t>(out.groups.size()));
    if (fresh) out.groups.emplace_back();
    out.groups[static_cast<size_t>(it->second)].push_back(rank);
    out.group_of_rank[static_cast<size_t>(rank)] = it->second;
  }
  return out;
}

std::optional<ChunkSharing> TensorSharing(std::string_view key, std::span<const ChunkExtent> chunks) {
  constexpr std::string_view kOptimizerState = "optimizer.state.";
  if (key.rfind(kOptimizerState, 0) == 0) {
    const size_t dot = key.find('.', kOptimizerState.size());
    if (dot == std::string_view::npos) return std::nullopt;
    key.remove_prefix(dot + 1);
  } else if (key.rfind("optimizer.", 0) == 0) {
    return std::nullopt;
  }
  const bool expert = key.find(".experts.") != std::string_view::npos && key.find("shared_experts") == std::string_view::npos;
  size_t stacked = 0;
  constexpr std::string_view kLayers = "decoder.layers.";
  if (const size_t at = key.find(kLayers); at != std::string_view::npos && at + kLayers.size() < key.size() &&
                                           !std::isdigit(static_cast<unsigned char>(key[at + kLayers.size()]))) {
    ++stacked;
  }
  if (expert && key.find("experts.experts.") != std::string_view::npos) ++stacked;
  std::set<std::vector<int64_t>> slots;  // the stacked axes' (offset, size) of each chunk
  bool split = false;
  for (const ChunkExtent& c : chunks) {
    std::vector<int64_t> slot;
    for (size_t i = 0; i < stacked; ++i) {
      const bool has = i < c.offsets.size() && i < c.sizes.size();
      slot.push_back(has ? c.offsets[i] : -1);
      slot.push_back(has ? c.sizes[i] : -1);
    }
    split = !slots.insert(std::move(slot)).second || split;
  }
  if (expert) return split ? ChunkSharing::kExpertTpSplit : ChunkSharing::kExpert;
  return split ? ChunkSharing::kDenseTpSplit : ChunkSharing::kDense;
}

Result<std::vector<LegacyRankFolder>> LegacyRanks(const ParallelLayout& l) {
  CKPT_RETURN_IF_ERROR(l.Validate());
  std::vector<LegacyRankFolder> out;
  std::unordered_map<std::string, size_t> seen;
  for (int64_t rank = 0; rank < l.world_size(); ++rank) {
    CKPT_ASSIGN_OR_RETURN(RankCoordinates c, GlobalRankCoordinates(l, rank));
    LegacyRankFolder f;
    f.model_file = c.expert_dp_rank == 0;
    f.dense_optimizer = c.dp_rank == 0 && c.cp_rank == 0;
    f.expert_optimizer = l.ep > 1 && c.expert_dp_rank == 0;
    if (!f.model_file && !f.dense_optimizer && !f.expert_optimizer) continue;
    f.rank = rank;
    f.at.tp_rank = c.tp_rank;
    f.at.pp_rank = c.pp_rank;
    f.at.ep_rank = c.ep_rank;
    f.at.etp_rank = c.etp_rank;
    f.folder = fmt::format("mp_rank_{:02d}", c.tp_rank);
    if (l.pp > 1) f.folder += fmt::format("_{:03d}", c.pp_rank);
    if (l.ep > 1) f.folder += fmt::format("_{:03d}", c.ep_rank);
    if (auto [it, fresh] = seen.emplace(f.folder, out.size()); !fresh) {
      const LegacyRankFolder& g = out[it->second];
      return InvalidArgumentError(StrCat("ranks ", g.rank, " and ", rank, " of ", LayoutString(l),
                                         " would both write the legacy folder ", f.folder, " (expert TP ranks ",
                                         g.at.etp_rank, " and ", f.at.etp_rank,
                                         "): the legacy format cannot hold this layout"));
    }
    out.push_back(std::move(f));
  }
  return out;
}

std::string DTypePairName(DType param_dtype, DType grad_dtype) {
  return StrCat("(torch.", DTypeName(param_dtype), ", torch.", DTypeName(grad_dtype), ")");
}

}  // namespace ckpt::model
