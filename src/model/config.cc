// ModelConfig and ParallelLayout: validation, Megatron args, HF config.json.
#include <fmt/format.h>

#include <cmath>
#include <string>
#include <vector>

#include "ckpt/model.h"
#include "model/args.h"
#include "util/checked_math.h"
#include "util/strings.h"

namespace ckpt::model {
namespace {

using megatron::ArgBool;
using megatron::ArgInt;
using megatron::ArgString;

// Raw sizes read from a file, checked before any arithmetic on them.
Status InRange(std::string_view name, int64_t v) {
  if (v < 0 || v > kMaxModelSize) {
    return InvalidArgumentError(StrCat(name, " ", v, " is outside [0, ", kMaxModelSize, "]"));
  }
  return OkStatus();
}

Status Positive(std::string_view name, int64_t v) {
  if (v < 1) return InvalidArgumentError(StrCat(name, " must be >= 1, got ", v));
  return OkStatus();
}

std::string_view DTypeHfName(DType d) {
  switch (d) {
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
    default:
      return "float32";
  }
}

// The JSON number for a double that is an integer (rope_theta 10000 -> 10000.0 as HF writes).
nlohmann::ordered_json Num(double v) { return v; }

}  // namespace

// ---------------------------------------------------------------------------
// ParallelLayout

Status ParallelLayout::Validate() const {
  CKPT_RETURN_IF_ERROR(Positive("tp (tensor_model_parallel_size)", tp));
  CKPT_RETURN_IF_ERROR(Positive("pp (pipeline_model_parallel_size)", pp));
  CKPT_RETURN_IF_ERROR(Positive("vpp (virtual pipeline stages)", vpp));
  CKPT_RETURN_IF_ERROR(Positive("dp (data_parallel_size)", dp));
  CKPT_RETURN_IF_ERROR(Positive("cp (context_parallel_size)", cp));
  CKPT_RETURN_IF_ERROR(Positive("ep (expert_model_parallel_size)", ep));
  CKPT_RETURN_IF_ERROR(Positive("etp (expert_tensor_parallel_size)", etp));
  // Sizes come from files: bound them so that products cannot overflow and
  // per-rank loops stay finite (2^20 ranks per axis, 2^24 in all).
  for (const auto& [name, v] : {std::pair<const char*, int64_t>{"tp", tp}, {"pp", pp}, {"vpp", vpp}, {"dp", dp},
                                {"cp", cp}, {"ep", ep}, {"etp", etp}}) {
    if (v > (int64_t{1} << 20)) return InvalidArgumentError(StrCat(name, "=", v, " is larger than 2^20"));
  }
  if (tp * cp * dp > (int64_t{1} << 24) || tp * cp * dp * pp > (int64_t{1} << 24)) {
    return InvalidArgumentError(StrCat("world size tp*cp*dp*pp=", tp * cp * dp * pp, " is larger than 2^24"));
  }
  const int64_t dense = tp * cp * dp;
  if (dense % (ep * etp) != 0) {
    return InvalidArgumentError(StrCat("ep=", ep, " * etp=", etp, " does not divide tp*cp*dp=", dense,
                                       " (the expert grid reuses the dense ranks)"));
  }
  if (vpp > 1 && pp == 1) return InvalidArgumentError("vpp > 1 needs pp > 1 (virtual stages interleave a pipeline)");
  if (first_stage_layers && *first_stage_layers < 0) return InvalidArgumentError("first_stage_layers must be >= 0");
  if (last_stage_layers && *last_stage_layers < 0) return InvalidArgumentError("last_stage_layers must be >= 0");
  return OkStatus();
}

Result<std::vector<LayerRange>> ParallelLayout::Stages(int64_t num_layers) const {
  CKPT_RETURN_IF_ERROR(Validate());
  if (num_layers < 1) return InvalidArgumentError(StrCat("num_layers must be >= 1, got ", num_layers));
  // Layers per (rank, stage) in pipeline order: chunk k = stage * pp + rank.
  const int64_t chunks = pp * vpp;
  std::vector<int64_t> sizes(chunks, 0);
  const bool uneven = first_stage_layers.has_value() || last_stage_layers.has_value();
  if (!uneven) {
    if (num_layers % chunks != 0) {
      return InvalidArgumentError(StrCat("num_layers ", num_layers, " does not split evenly over pp=", pp,
                                         " x vpp=", vpp, " stages"));
    }
    for (int64_t& s : sizes) s = num_layers / chunks;
  } else {
    if (vpp > 1) return InvalidArgumentError("uneven first/last pipeline stages with vpp > 1 are not supported");
    int64_t rest = num_layers;
    int64_t middle = pp;
    if (first_stage_layers) {
      sizes[0] = *first_stage_layers;
      rest -= sizes[0];
      --middle;
    }
    if (last_stage_layers && pp > 1) {
      sizes[pp - 1] = *last_stage_layers;
      rest -= sizes[pp - 1];
      --middle;
    }
    if (rest < 0 || (middle == 0 && rest != 0) || (middle > 0 && rest % middle != 0)) {
      return InvalidArgumentError(StrCat("num_layers ", num_layers, " does not split over pp=", pp,
                                         " with first stage ", first_stage_layers.value_or(-1), " and last stage ",
                                         last_stage_layers.value_or(-1), " layers"));
    }
    for (int64_t r = 0; r < pp; ++r) {
      const bool fixed = (r == 0 && first_stage_layers) || (r == pp - 1 && pp > 1 && last_stage_layers);
      if (!fixed) sizes[r] = rest / middle;
    }
  }
  std::vector<LayerRange> out;
  int64_t begin = 0;
  for (int64_t k = 0; k < chunks; ++k) {
    LayerRange r;
    r.vp_stage = k / pp;
    r.pp_rank = k % pp;
    r.begin = begin;
    r.end = begin + sizes[k];
    begin = r.end;
    out.push_back(r);
  }
  return out;
}

std::string LayoutString(const ParallelLayout& l) {
  std::string s = StrCat("TP=", l.tp, " PP=", l.pp, " DP=", l.dp);
  if (l.vpp > 1) s += StrCat(" VPP=", l.vpp);
  if (l.cp > 1) s += StrCat(" CP=", l.cp);
  if (l.ep > 1) s += StrCat(" EP=", l.ep);
  if (l.etp != l.tp) s += StrCat(" ETP=", l.etp);
  return s;
}

// ---------------------------------------------------------------------------
// ModelConfig

int64_t ModelConfig::PaddedVocab(int64_t vocab, int64_t tp) const {
  const int64_t m = std::max<int64_t>(1, make_vocab_size_divisible_by) * std::max<int64_t>(1, tp);
  return (vocab + m - 1) / m * m;
}

Status ModelConfig::Validate() const {
  // Sizes come from files: bound them so every product below fits in int64.
  for (auto [name, v] : {std::pair<const char*, int64_t>{"num_layers", num_layers}, {"hidden_size", hidden_size},
                         {"ffn_hidden_size", ffn_hidden_size}, {"num_attention_heads", num_attention_heads},
                         {"num_query_groups", num_query_groups}, {"kv_channels", kv_channels},
                         {"padded_vocab_size", padded_vocab_size}, {"max_position_embeddings", max_position_embeddings},
                         {"num_experts", num_experts}, {"moe_ffn_hidden_size", moe_ffn_hidden_size},
                         {"moe_router_topk", moe_router_topk}}) {
    if (v > kMaxModelSize) return InvalidArgumentError(StrCat(name, " ", v, " is larger than ", kMaxModelSize));
    if (v < 0) return InvalidArgumentError(StrCat(name, " ", v, " is negative"));
  }
  CKPT_RETURN_IF_ERROR(Positive("num_layers", num_layers));
  CKPT_RETURN_IF_ERROR(Positive("hidden_size", hidden_size));
  CKPT_RETURN_IF_ERROR(Positive("num_attention_heads", num_attention_heads));
  CKPT_RETURN_IF_ERROR(Positive("num_query_groups", num_query_groups));
  CKPT_RETURN_IF_ERROR(Positive("kv_channels", kv_channels));
  CKPT_RETURN_IF_ERROR(Positive("padded_vocab_size", padded_vocab_size));
  if (!moe()) CKPT_RETURN_IF_ERROR(Positive("ffn_hidden_size", ffn_hidden_size));
  if (num_attention_heads % num_query_groups != 0) {
    return InvalidArgumentError(StrCat("num_attention_heads ", num_attention_heads,
                                       " is not a multiple of num_query_groups ", num_query_groups));
  }
  if (positions == Positions::kLearned) CKPT_RETURN_IF_ERROR(Positive("max_position_embeddings", max_position_embeddings));
  if (moe()) {
    CKPT_RETURN_IF_ERROR(Positive("moe_ffn_hidden_size", moe_ffn_hidden_size));
    CKPT_RETURN_IF_ERROR(Positive("moe_router_topk", moe_router_topk));
    if (moe_router_topk > num_experts) {
      return InvalidArgumentError(StrCat("moe_router_topk ", moe_router_topk, " > num_experts ", num_experts));
    }
  }
  if (vocab_size && (*vocab_size < 1 || *vocab_size > padded_vocab_size)) {
    return InvalidArgumentError(StrCat("vocab_size ", *vocab_size, " is not in [1, padded_vocab_size ",
                                       padded_vocab_size, "]"));
  }
  return OkStatus();
}

Family GuessFamily(const ModelConfig& c) {
  if (c.moe()) return c.qk_layernorm ? Family::kQwen3Moe : Family::kMixtral;
  if (c.positions == Positions::kLearned) return Family::kGpt2;
  if (c.qk_layernorm) return Family::kQwen3;
  if (c.add_qkv_bias && !c.add_bias_linear) return Family::kQwen2;
  if (c.sliding_window) return Family::kMistral;
  return Family::kLlama;
}

// ---------------------------------------------------------------------------
// Megatron args

std::optional<double> ArgDouble(const megatron::CommonState& c, std::string_view name) {
  auto it = c.args_fields.find(name);
  if (it == c.args_fields.end() || it->second == nullptr) return std::nullopt;
  const pickle::Value* v = it->second;
  if (v->kind == pickle::Kind::kFloat) return v->f;
  if (v->kind == pickle::Kind::kInt) return static_cast<double>(v->i);
  return std::nullopt;
}

Result<ModelConfig> ConfigFromArgs(const megatron::CommonState* common, const ShapeOf& shape_of) {
  ModelConfig c;
  auto shape = [&](std::string_view k) { return shape_of ? shape_of(k) : std::nullopt; };
  auto stacked = [&](std::string_view suffix) -> std::optional<std::vector<int64_t>> {
    if (auto s = shape(StrCat("decoder.layers.", suffix))) return s;
    if (auto s = shape(StrCat("decoder.layers.0.", suffix))) {
      s->insert(s->begin(), -1);  // unknown layer count
      return s;
    }
    return std::nullopt;
  };
  const bool has_args = common != nullptr && common->args != nullptr;
  if (!has_args) {
    return InvalidArgumentError(
        "the checkpoint has no Megatron-LM `args` in its common state: the model config (heads, query groups, "
        "norm, activation) cannot be told from tensor shapes alone; give an HF config (hf_config)");
  }
  const megatron::CommonState& a = *common;
  auto get_int = [&](std::string_view n) { return ArgInt(a, n); };
  auto req = [&](std::string_view n) -> Result<int64_t> {
    if (auto v = get_int(n)) return *v;
    return InvalidArgumentError(StrCat("args.", n, " is missing from the checkpoint's common state"));
  };
  CKPT_ASSIGN_OR_RETURN(c.num_layers, req("num_layers"));
  CKPT_ASSIGN_OR_RETURN(c.hidden_size, req("hidden_size"));
  CKPT_ASSIGN_OR_RETURN(c.num_attention_heads, req("num_attention_heads"));
  CKPT_RETURN_IF_ERROR(InRange("args.hidden_size", c.hidden_size));
  CKPT_RETURN_IF_ERROR(InRange("args.num_attention_heads", c.num_attention_heads));
  c.ffn_hidden_size = get_int("ffn_hidden_size").value_or(4 * c.hidden_size);
  c.num_query_groups = ArgBool(a, "group_query_attention").value_or(false)
                           ? get_int("num_query_groups").value_or(c.num_attention_heads)
                           : c.num_attention_heads;
  c.kv_channels = get_int("kv_channels").value_or(c.num_attention_heads > 0 ? c.hidden_size / c.num_attention_heads : 0);
  c.make_vocab_size_divisible_by = get_int("make_vocab_size_divisible_by").value_or(128);
  c.vocab_size = get_int("vocab_size");
  if (auto v = get_int("padded_vocab_size")) c.padded_vocab_size = *v;
  c.max_position_embeddings = get_int("max_position_embeddings").value_or(get_int("seq_length").value_or(0));
  const std::string norm = ArgString(a, "normalization").value_or("LayerNorm");
  if (norm == "RMSNorm") {
    c.norm = Norm::kRMSNorm;
  } else if (norm == "LayerNorm") {
    c.norm = Norm::kLayerNorm;
  } else {
    return InvalidArgumentError(StrCat("args.normalization ", Quote(norm), " is not LayerNorm or RMSNorm"));
  }
  c.norm_epsilon = ArgDouble(a, "norm_epsilon").value_or(ArgDouble(a, "layernorm_epsilon").value_or(1e-5));
  c.apply_layernorm_1p = ArgBool(a, "apply_layernorm_1p").value_or(false);
  if (ArgBool(a, "swiglu").value_or(false)) {
    c.activation = Activation::kSwiGLU;
  } else if (ArgBool(a, "squared_relu").value_or(false)) {
    c.activation = Activation::kSquaredReLU;
  } else if (ArgBool(a, "openai_gelu").value_or(false)) {
    c.activation = Activation::kGeluTanh;
  } else {
    c.activation = Activation::kGelu;
  }
  c.add_bias_linear = ArgBool(a, "add_bias_linear").value_or(true);
  c.add_qkv_bias = ArgBool(a, "add_qkv_bias").value_or(false);
  c.qk_layernorm = ArgBool(a, "qk_layernorm").value_or(false);
  const std::string pos = ArgString(a, "position_embedding_type").value_or("learned_absolute");
  if (pos == "rope") {
    c.positions = Positions::kRope;
  } else if (pos == "learned_absolute") {
    c.positions = Positions::kLearned;
  } else if (pos == "none") {
    c.positions = Positions::kNone;
  } else {
    return InvalidArgumentError(StrCat("args.position_embedding_type ", Quote(pos),
                                       " is not supported (rope, learned_absolute, none)"));
  }
  c.rotary_base = ArgDouble(a, "rotary_base").value_or(10000);
  c.rotary_percent = ArgDouble(a, "rotary_percent").value_or(1.0);
  c.rotary_interleaved = ArgBool(a, "rotary_interleaved").value_or(false);
  c.use_rope_scaling = ArgBool(a, "use_rope_scaling").value_or(false);
  c.rope_scaling_factor = ArgDouble(a, "rope_scaling_factor").value_or(8.0);
  c.seq_len_interpolation_factor = ArgDouble(a, "rotary_seq_len_interpolation_factor");
  // args.window_size is a (left, right) tuple: HF sliding_window = left + 1.
  if (auto it = a.args_fields.find("window_size"); it != a.args_fields.end() && it->second != nullptr) {
    const pickle::Value* w = it->second;
    if ((w->kind == pickle::Kind::kTuple || w->kind == pickle::Kind::kList) && !w->items().empty() &&
        w->items()[0]->kind == pickle::Kind::kInt && w->items()[0]->i >= 0) {
      c.sliding_window = w->items()[0]->i + 1;
    }
  }
  c.tied_embeddings = !ArgBool(a, "untie_embeddings_and_output_weights").value_or(false);
  c.num_experts = get_int("num_experts").value_or(0);
  c.moe_router_topk = get_int("moe_router_topk").value_or(2);
  c.moe_ffn_hidden_size = get_int("moe_ffn_hidden_size").value_or(c.ffn_hidden_size);
  c.moe_shared_expert_intermediate_size = get_int("moe_shared_expert_intermediate_size").value_or(0);
  c.moe_router_pre_softmax = ArgBool(a, "moe_router_pre_softmax").value_or(false);
  c.moe_grouped_gemm = ArgBool(a, "moe_grouped_gemm").value_or(false);
  c.moe_router_dtype = ArgString(a, "moe_router_dtype").value_or("");
  if (auto layer_freq = get_int("moe_layer_freq"); c.moe() && layer_freq && *layer_freq != 1) {
    return InvalidArgumentError(StrCat("args.moe_layer_freq ", *layer_freq,
                                       ": mixed dense and MoE layers are not in the family tables"));
  }
  if (ArgBool(a, "bf16").value_or(false)) {
    c.params_dtype = DType::kBFloat16;
  } else if (ArgBool(a, "fp16").value_or(false)) {
    c.params_dtype = DType::kFloat16;
  }

  // Fill what args left out from the stored shapes, validate, then cross-check.
  auto emb = shape("embedding.word_embeddings.weight");
  if (emb && emb->size() == 2 && c.padded_vocab_size == 0) c.padded_vocab_size = (*emb)[0];
  CKPT_RETURN_IF_ERROR(c.Validate(), "args");
  if (emb && emb->size() == 2) {
    if ((*emb)[0] != c.padded_vocab_size || (*emb)[1] != c.hidden_size) {
      return InvalidArgumentError(StrCat("args (padded_vocab_size ", c.padded_vocab_size, ", hidden_size ",
                                         c.hidden_size, ") contradict embedding.word_embeddings.weight of shape [",
                                         (*emb)[0], ", ", (*emb)[1], "]"));
    }
  }
  if (auto qkv = stacked("self_attention.linear_qkv.weight"); qkv && qkv->size() == 3) {
    if ((*qkv)[0] >= 0 && (*qkv)[0] != c.num_layers) {
      return InvalidArgumentError(StrCat("args.num_layers ", c.num_layers,
                                         " contradicts decoder.layers.self_attention.linear_qkv.weight with ",
                                         (*qkv)[0], " layers"));
    }
    if ((*qkv)[1] != c.qkv_rows() || (*qkv)[2] != c.hidden_size) {
      return InvalidArgumentError(StrCat(
          "args (num_attention_heads ", c.num_attention_heads, ", num_query_groups ", c.num_query_groups,
          ", kv_channels ", c.kv_channels, ", hidden_size ", c.hidden_size, ") give linear_qkv [", c.qkv_rows(), ", ",
          c.hidden_size, "], the checkpoint's decoder.layers.self_attention.linear_qkv.weight is [",
          (*qkv)[1], ", ", (*qkv)[2], "] per layer"));
    }
  }
  if (auto fc2 = stacked("mlp.linear_fc2.weight"); fc2 && fc2->size() == 3 && !c.moe()) {
    if ((*fc2)[2] != c.ffn_hidden_size) {
      return InvalidArgumentError(StrCat("args.ffn_hidden_size ", c.ffn_hidden_size,
                                         " contradicts decoder.layers.mlp.linear_fc2.weight's ", (*fc2)[2], " columns"));
    }
  }
  if (c.moe()) {
    if (auto e = shape("decoder.layers.mlp.experts.experts.linear_fc2.weight"); e && e->size() == 4) {
      if ((*e)[1] != c.num_experts || (*e)[3] != c.moe_ffn_hidden_size) {
        return InvalidArgumentError(StrCat("args (num_experts ", c.num_experts, ", moe_ffn_hidden_size ",
                                           c.moe_ffn_hidden_size,
                                           ") contradict decoder.layers.mlp.experts.experts.linear_fc2.weight of shape [",
                                           fmt::format("{}", fmt::join(*e, ", ")), "]"));
      }
    }
  }
  return c;
}

Result<ParallelLayout> LayoutFromArgs(const megatron::CommonState& a) {
  ParallelLayout l;
  l.tp = ArgInt(a, "tensor_model_parallel_size").value_or(1);
  l.pp = ArgInt(a, "pipeline_model_parallel_size").value_or(1);
  l.cp = ArgInt(a, "context_parallel_size").value_or(1);
  l.ep = ArgInt(a, "expert_model_parallel_size").value_or(1);
  l.etp = ArgInt(a, "expert_tensor_parallel_size").value_or(l.tp);
  if (auto v = ArgInt(a, "virtual_pipeline_model_parallel_size")) l.vpp = *v;
  if (auto dp = ArgInt(a, "data_parallel_size")) {
    l.dp = *dp;
  } else if (auto ws = ArgInt(a, "world_size")) {
    // Sizes from a file: tp * pp * cp may be 0 or overflow (Validate below names the bad size).
    auto tp_pp = CheckedMulSigned(l.tp, l.pp);
    auto mp = tp_pp ? CheckedMulSigned(*tp_pp, l.cp) : std::nullopt;
    if (mp && *mp > 0 && *ws % *mp == 0) l.dp = *ws / *mp;
  }
  l.first_stage_layers = ArgInt(a, "decoder_first_pipeline_num_layers");
  l.last_stage_layers = ArgInt(a, "decoder_last_pipeline_num_layers");
  CKPT_RETURN_IF_ERROR(l.Validate());
  return l;
}


DistOptSettings DistOptFromArgs(const megatron::CommonState& a, std::optional<LayerSpec> spec) {
  DistOptSettings s;
  if (spec) {
    s.spec = *spec;
  } else {
    const std::optional<std::string> impl = ArgString(a, "transformer_impl");
    s.spec = impl && *impl == "local" ? LayerSpec::kLocal : LayerSpec::kTransformerEngine;
  }
  if (ArgBool(a, "bf16").value_or(false)) {
    s.params_dtype = DType::kBFloat16;
  } else if (ArgBool(a, "fp16").value_or(false)) {
    s.params_dtype = DType::kFloat16;
  }
  s.overlap_grad_reduce = ArgBool(a, "overlap_grad_reduce").value_or(false);
  s.ddp_bucket_size = ArgInt(a, "ddp_bucket_size");
  // arguments.py: bf16 forces accumulate_allreduce_grads_in_fp32 unless
  // --grad-reduce-in-bf16; the stored value is the final one.
  if (auto fp32 = ArgBool(a, "accumulate_allreduce_grads_in_fp32")) {
    s.grad_reduce_in_fp32 = *fp32;
  } else {
    s.grad_reduce_in_fp32 = s.params_dtype == DType::kBFloat16 && !ArgBool(a, "grad_reduce_in_bf16").value_or(false);
  }
  s.pad_buckets_for_high_nccl_busbw = ArgBool(a, "ddp_pad_buckets_for_high_nccl_busbw").value_or(false);
  s.num_instances = ArgInt(a, "num_distributed_optimizer_instances").value_or(1);
  return s;
}

// ---------------------------------------------------------------------------
// HF config.json

Result<nlohmann::ordered_json> MakeHfConfig(const ModelConfig& c, Family f, DType dtype) {
  if (!c.vocab_size) return InvalidArgumentError("vocab_size is unknown");
  if (c.rotary_percent != 1.0) {
    return InvalidArgumentError(StrCat("rotary_percent ", c.rotary_percent, " (partial rotary) is not supported"));
  }
  nlohmann::ordered_json j;
  j["architectures"] = {std::string(FamilyArchitecture(f))};
  j["model_type"] = std::string(FamilyName(f));
  const std::string dt(DTypeHfName(dtype));
  if (f == Family::kGpt2) {
    j["vocab_size"] = *c.vocab_size;
    j["n_positions"] = c.max_position_embeddings;
    j["n_embd"] = c.hidden_size;
    j["n_layer"] = c.num_layers;
    j["n_head"] = c.num_attention_heads;
    j["n_inner"] = c.ffn_hidden_size;
    j["activation_function"] = c.activation == Activation::kGeluTanh ? "gelu_new" : "gelu";
    j["layer_norm_epsilon"] = Num(c.norm_epsilon);
    j["resid_pdrop"] = 0.0;
    j["embd_pdrop"] = 0.0;
    j["attn_pdrop"] = 0.0;
    j["scale_attn_weights"] = true;
    j["initializer_range"] = 0.02;
    j["tie_word_embeddings"] = c.tied_embeddings;
    j["use_cache"] = true;
    j["torch_dtype"] = dt;
    j["dtype"] = dt;
    return j;
  }
  const bool moe_f = f == Family::kMixtral || f == Family::kQwen3Moe;
  j["vocab_size"] = *c.vocab_size;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = f == Family::kMixtral ? c.moe_ffn_hidden_size : c.ffn_hidden_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_attention_heads;
  j["num_key_value_heads"] = c.num_query_groups;
  j["head_dim"] = c.kv_channels;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = Num(c.norm_epsilon);
  j["rope_theta"] = Num(c.rotary_base);
  if (c.use_rope_scaling) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", c.rope_scaling_factor},
                         {"low_freq_factor", 1.0},
                         {"high_freq_factor", 4.0},
                         {"original_max_position_embeddings", 8192}};
  } else if (c.seq_len_interpolation_factor) {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", *c.seq_len_interpolation_factor}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["tie_word_embeddings"] = c.tied_embeddings;
  j["use_cache"] = true;
  switch (f) {
    case Family::kLlama:
      j["attention_bias"] = c.add_bias_linear;
      j["mlp_bias"] = c.add_bias_linear;
      j["pretraining_tp"] = 1;
      break;
    case Family::kMistral:
    case Family::kMixtral:
      j["sliding_window"] = c.sliding_window ? nlohmann::ordered_json(*c.sliding_window) : nlohmann::ordered_json(nullptr);
      break;
    case Family::kQwen2:
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      j["max_window_layers"] = c.num_layers;
      break;
    case Family::kQwen3:
    case Family::kQwen3Moe:
      j["attention_bias"] = false;
      j["use_sliding_window"] = false;
      j["sliding_window"] = nullptr;
      j["max_window_layers"] = c.num_layers;
      break;
    default:
      break;
  }
  if (moe_f) {
    if (c.moe_router_dtype == "fp64") {
      return InvalidArgumentError("moe_router_dtype fp64 has no HF equivalent");
    }
    j["num_experts_per_tok"] = c.moe_router_topk;
    if (f == Family::kMixtral) {
      // Mixtral renormalizes the top-k softmax weights: Megatron's
      // pre_softmax=False (top-k, then softmax over the k) is the same function.
      if (c.moe_router_pre_softmax) {
        return InvalidArgumentError(
            "moe_router_pre_softmax=True (softmax over all experts, no renormalization) differs from Mixtral's "
            "routing (renormalized top-k); qwen3_moe with norm_topk_prob=false is the matching HF family");
      }
      j["num_local_experts"] = c.num_experts;
      j["router_aux_loss_coef"] = 0.02;
      j["router_jitter_noise"] = 0.0;
      j["output_router_logits"] = false;
    } else {
      j["num_experts"] = c.num_experts;
      j["moe_intermediate_size"] = c.moe_ffn_hidden_size;
      j["norm_topk_prob"] = !c.moe_router_pre_softmax;
      j["decoder_sparse_step"] = 1;
      j["mlp_only_layers"] = nlohmann::ordered_json::array();
      j["router_aux_loss_coef"] = 0.001;
      j["output_router_logits"] = false;
    }
  }
  j["torch_dtype"] = dt;
  j["dtype"] = dt;
  return j;
}

std::optional<nlohmann::ordered_json> MakeGenerationConfig(const nlohmann::json& reference) {
  nlohmann::ordered_json g;
  for (const char* k : {"bos_token_id", "eos_token_id", "pad_token_id"}) {
    if (reference.is_object() && reference.contains(k) && !reference[k].is_null()) g[k] = reference[k];
  }
  if (g.empty()) return std::nullopt;
  g["_from_model_config"] = true;
  return g;
}

namespace {

// Typed fields of an untrusted JSON object (an HF config or its rope
// block): absent or null gives the default, any other type is an error naming
// the field. nlohmann's value() would throw on a wrong type.
Result<std::string> StrField(const nlohmann::json& o, const char* where, const char* key, std::string def) {
  if (!o.contains(key) || o[key].is_null()) return def;
  if (!o[key].is_string()) return InvalidArgumentError(StrCat(where, key, " is not a string"));
  return o[key].get<std::string>();
}

Result<bool> BoolField(const nlohmann::json& o, const char* where, const char* key, bool def) {
  if (!o.contains(key) || o[key].is_null()) return def;
  if (!o[key].is_boolean()) return InvalidArgumentError(StrCat(where, key, " is not true or false"));
  return o[key].get<bool>();
}

Result<double> NumField(const nlohmann::json& o, const char* where, const char* key, double def) {
  if (!o.contains(key) || o[key].is_null()) return def;
  if (!o[key].is_number()) return InvalidArgumentError(StrCat(where, key, " is not a number"));
  const double v = o[key].get<double>();
  if (!std::isfinite(v)) return InvalidArgumentError(StrCat(where, key, " is not finite"));
  return v;
}

}  // namespace

Result<HfModel> ParseHfConfig(const nlohmann::json& j) {
  if (!j.is_object()) return InvalidArgumentError("an HF config must be a JSON object");
  constexpr const char* kWhere = "HF config: ";
  HfModel m;
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    arch = j["architectures"][0].get<std::string>();
  }
  CKPT_ASSIGN_OR_RETURN(std::string type, StrField(j, kWhere, "model_type", ""));
  auto fam = ParseFamily(!type.empty() ? type : arch);
  if (!fam.ok()) {
    return InvalidArgumentError(StrCat("HF config: model_type ", Quote(type), " / architecture ", Quote(arch),
                                       " is not a supported family: ", fam.status().message()));
  }
  m.family = *fam;
  ModelConfig& c = m.config;
  auto geti = [&](const char* k) -> std::optional<int64_t> {
    if (j.contains(k) && j[k].is_number_integer()) return j[k].get<int64_t>();
    return std::nullopt;
  };
  auto req = [&](const char* k) -> Result<int64_t> {
    if (auto v = geti(k)) return *v;
    return InvalidArgumentError(StrCat("HF config: ", k, " is missing or not an integer"));
  };
  // Every integer field read below: another type is an error here (geti would
  // take it as absent and a default would stand in silently), and a size is
  // checked before any arithmetic on it.
  for (const char* k : {"vocab_size", "n_layer", "n_embd", "n_head", "n_inner", "n_positions", "num_hidden_layers",
                        "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
                        "max_position_embeddings", "num_local_experts", "num_experts", "num_experts_per_tok",
                        "moe_intermediate_size", "sliding_window", "decoder_sparse_step"}) {
    if (j.contains(k) && !j[k].is_null() && !j[k].is_number_integer()) {
      return InvalidArgumentError(StrCat(kWhere, k, " is not an integer"));
    }
    if (auto v = geti(k)) CKPT_RETURN_IF_ERROR(InRange(StrCat(kWhere, k), *v));
  }
  c.vocab_size = geti("vocab_size");
  if (!c.vocab_size) return InvalidArgumentError("HF config: vocab_size is missing");
  for (const char* k : {"num_attention_heads", "n_head"}) {
    if (auto v = geti(k); v && *v == 0) return InvalidArgumentError(StrCat("HF config: ", k, " is 0"));
  }
  c.padded_vocab_size = *c.vocab_size;
  if (m.family == Family::kGpt2) {
    CKPT_ASSIGN_OR_RETURN(c.num_layers, req("n_layer"));
    CKPT_ASSIGN_OR_RETURN(c.hidden_size, req("n_embd"));
    CKPT_ASSIGN_OR_RETURN(c.num_attention_heads, req("n_head"));
    c.num_query_groups = c.num_attention_heads;
    c.kv_channels = c.hidden_size / c.num_attention_heads;
    c.ffn_hidden_size = geti("n_inner").value_or(4 * c.hidden_size);
    c.max_position_embeddings = geti("n_positions").value_or(1024);
    c.norm = Norm::kLayerNorm;
    CKPT_ASSIGN_OR_RETURN(c.norm_epsilon, NumField(j, kWhere, "layer_norm_epsilon", 1e-5));
    CKPT_ASSIGN_OR_RETURN(const std::string act, StrField(j, kWhere, "activation_function", "gelu_new"));
    if (act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") {
      c.activation = Activation::kGeluTanh;
    } else if (act == "gelu") {
      c.activation = Activation::kGelu;
    } else {
      return InvalidArgumentError(StrCat("HF config: activation_function ", Quote(act), " is not supported"));
    }
    c.add_bias_linear = true;
    c.positions = Positions::kLearned;
    CKPT_ASSIGN_OR_RETURN(c.tied_embeddings, BoolField(j, kWhere, "tie_word_embeddings", true));
    CKPT_ASSIGN_OR_RETURN(const bool scale_by_layer, BoolField(j, kWhere, "scale_attn_by_inverse_layer_idx", false));
    CKPT_ASSIGN_OR_RETURN(const bool upcast, BoolField(j, kWhere, "reorder_and_upcast_attn", false));
    if (scale_by_layer || upcast) {
      return InvalidArgumentError("HF config: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn have no Megatron equivalent");
    }
    return m;
  }
  CKPT_ASSIGN_OR_RETURN(c.num_layers, req("num_hidden_layers"));
  CKPT_ASSIGN_OR_RETURN(c.hidden_size, req("hidden_size"));
  CKPT_ASSIGN_OR_RETURN(c.num_attention_heads, req("num_attention_heads"));
  c.num_query_groups = geti("num_key_value_heads").value_or(c.num_attention_heads);
  c.kv_channels = geti("head_dim").value_or(c.hidden_size / c.num_attention_heads);
  c.ffn_hidden_size = geti("intermediate_size").value_or(0);
  c.max_position_embeddings = geti("max_position_embeddings").value_or(0);
  c.norm = Norm::kRMSNorm;
  CKPT_ASSIGN_OR_RETURN(c.norm_epsilon, NumField(j, kWhere, "rms_norm_eps", 1e-6));
  CKPT_ASSIGN_OR_RETURN(const std::string act, StrField(j, kWhere, "hidden_act", "silu"));
  if (act != "silu") return InvalidArgumentError(StrCat("HF config: hidden_act ", Quote(act), " is not silu"));
  c.activation = Activation::kSwiGLU;
  c.positions = Positions::kRope;
  CKPT_ASSIGN_OR_RETURN(c.tied_embeddings, BoolField(j, kWhere, "tie_word_embeddings", false));
  // rope: v4 top-level rope_theta / rope_scaling, or v5 rope_parameters.
  nlohmann::json rope = j.contains("rope_parameters") && j["rope_parameters"].is_object() ? j["rope_parameters"]
                        : j.contains("rope_scaling") && j["rope_scaling"].is_object() ? j["rope_scaling"]
                                                                                     : nlohmann::json::object();
  constexpr const char* kRope = "HF config: rope_parameters / rope_scaling ";
  CKPT_ASSIGN_OR_RETURN(const double nested_theta, NumField(rope, kRope, "rope_theta", 10000.0));
  CKPT_ASSIGN_OR_RETURN(c.rotary_base, NumField(j, kWhere, "rope_theta", nested_theta));
  CKPT_ASSIGN_OR_RETURN(const std::string legacy_type, StrField(rope, kRope, "type", "default"));
  CKPT_ASSIGN_OR_RETURN(const std::string rope_type, StrField(rope, kRope, "rope_type", legacy_type));
  if (rope_type == "llama3") {
    CKPT_ASSIGN_OR_RETURN(const double low, NumField(rope, kRope, "low_freq_factor", 1.0));
    CKPT_ASSIGN_OR_RETURN(const double high, NumField(rope, kRope, "high_freq_factor", 4.0));
    CKPT_ASSIGN_OR_RETURN(const double original, NumField(rope, kRope, "original_max_position_embeddings", 8192));
    if (low != 1.0 || high != 4.0 || original != 8192) {
      return InvalidArgumentError(
          "HF config: llama3 rope_scaling with low_freq_factor/high_freq_factor/original_max_position_embeddings "
          "other than 1/4/8192 (megatron-core hard-codes those)");
    }
    c.use_rope_scaling = true;
    CKPT_ASSIGN_OR_RETURN(c.rope_scaling_factor, NumField(rope, kRope, "factor", 8.0));
  } else if (rope_type == "linear") {
    CKPT_ASSIGN_OR_RETURN(c.seq_len_interpolation_factor, NumField(rope, kRope, "factor", 1.0));
  } else if (rope_type != "default") {
    return InvalidArgumentError(StrCat("HF config: rope type ", Quote(rope_type), " is not supported"));
  }
  CKPT_ASSIGN_OR_RETURN(const double partial_rotary, NumField(j, kWhere, "partial_rotary_factor", 1.0));
  if (partial_rotary != 1.0) {
    return InvalidArgumentError("HF config: partial_rotary_factor != 1 is not supported");
  }
  switch (m.family) {
    case Family::kLlama: {
      CKPT_ASSIGN_OR_RETURN(c.add_bias_linear, BoolField(j, kWhere, "attention_bias", false));
      CKPT_ASSIGN_OR_RETURN(const bool mlp_bias, BoolField(j, kWhere, "mlp_bias", false));
      if (mlp_bias != c.add_bias_linear) {
        return InvalidArgumentError("HF config: attention_bias != mlp_bias has no Megatron equivalent (add_bias_linear)");
      }
      break;
    }
    case Family::kQwen2:
      c.add_qkv_bias = true;
      break;
    case Family::kQwen3:
    case Family::kQwen3Moe: {
      c.qk_layernorm = true;
      CKPT_ASSIGN_OR_RETURN(const bool attention_bias, BoolField(j, kWhere, "attention_bias", false));
      if (attention_bias) return InvalidArgumentError("HF config: attention_bias=true is not supported for qwen3");
      break;
    }
    default:
      break;
  }
  if (m.family == Family::kMistral || m.family == Family::kMixtral) {
    if (auto w = geti("sliding_window")) c.sliding_window = *w;
  }
  if (m.family == Family::kMixtral) {
    CKPT_ASSIGN_OR_RETURN(c.num_experts, req("num_local_experts"));
    c.moe_router_topk = geti("num_experts_per_tok").value_or(2);
    c.moe_ffn_hidden_size = c.ffn_hidden_size;
    c.moe_router_pre_softmax = false;
  } else if (m.family == Family::kQwen3Moe) {
    // Hub configs say num_experts; transformers 5.x saves it as num_local_experts (attribute_map).
    if (auto n = geti("num_experts")) {
      c.num_experts = *n;
    } else {
      CKPT_ASSIGN_OR_RETURN(c.num_experts, req("num_local_experts"));
    }
    c.moe_router_topk = geti("num_experts_per_tok").value_or(8);
    CKPT_ASSIGN_OR_RETURN(c.moe_ffn_hidden_size, req("moe_intermediate_size"));
    CKPT_ASSIGN_OR_RETURN(const bool norm_topk, BoolField(j, kWhere, "norm_topk_prob", false));
    c.moe_router_pre_softmax = !norm_topk;
    if (geti("decoder_sparse_step").value_or(1) != 1 ||
        (j.contains("mlp_only_layers") && j["mlp_only_layers"].is_array() && !j["mlp_only_layers"].empty())) {
      return InvalidArgumentError("HF config: mixed dense and MoE layers (decoder_sparse_step, mlp_only_layers) are not supported");
    }
  }
  return m;
}

std::vector<std::string> CompareConfigs(const ModelConfig& a, const ModelConfig& h) {
  std::vector<std::string> out;
  auto cmp = [&](std::string_view name, auto x, auto y) {
    if (x != y) out.push_back(fmt::format("{}: checkpoint {}, HF config {}", name, x, y));
  };
  cmp("num_layers", a.num_layers, h.num_layers);
  cmp("hidden_size", a.hidden_size, h.hidden_size);
  cmp("num_attention_heads", a.num_attention_heads, h.num_attention_heads);
  cmp("num_query_groups (num_key_value_heads)", a.num_query_groups, h.num_query_groups);
  cmp("kv_channels (head_dim)", a.kv_channels, h.kv_channels);
  if (!a.moe() || h.moe()) {
    if (!(a.moe() && h.num_experts > 0 && h.ffn_hidden_size == h.moe_ffn_hidden_size)) {
      cmp("ffn_hidden_size (intermediate_size)", a.ffn_hidden_size, h.ffn_hidden_size);
    }
  }
  cmp("normalization", a.norm == Norm::kRMSNorm ? "RMSNorm" : "LayerNorm", h.norm == Norm::kRMSNorm ? "RMSNorm" : "LayerNorm");
  cmp("gated MLP (swiglu)", a.gated(), h.gated());
  cmp("position embeddings", static_cast<int>(a.positions), static_cast<int>(h.positions));
  cmp("qk_layernorm", a.qk_layernorm, h.qk_layernorm);
  cmp("qkv bias", a.add_qkv_bias || a.add_bias_linear, h.add_qkv_bias || h.add_bias_linear);
  cmp("tied embeddings", a.tied_embeddings, h.tied_embeddings);
  cmp("num_experts", a.num_experts, h.num_experts);
  if (a.moe()) {
    cmp("moe_router_topk (num_experts_per_tok)", a.moe_router_topk, h.moe_router_topk);
    cmp("moe_ffn_hidden_size", a.moe_ffn_hidden_size, h.moe_ffn_hidden_size);
  }
  if (std::abs(a.rotary_base - h.rotary_base) > 1e-9 * std::abs(a.rotary_base) && a.positions == Positions::kRope) {
    cmp("rotary_base (rope_theta)", a.rotary_base, h.rotary_base);
  }
  return out;
}

}  // namespace ckpt::model
