// Per-family name tables (data) and the plans built from them: which
// Megatron-Core module tensor is which HF tensor, through which transform.
//
// A table row names a Role (what the tensor is: embedding, fused QKV, gated
// fc1, an expert's fc2, ...), the Megatron module name(s) and the HF name(s).
// The Role alone decides the transform, when the row applies (biases, QK
// norm, untied output, MoE vs dense) and the expected shape; a family is
// only its names plus two flags (Conv1D weights, the HF name prefix).
// Megatron alternatives are separated by '|': the name
// first as torch_dist stores it (megatron-core's local spec maps the norm
// modules to Transformer Engine's fused names, `linear_qkv.layer_norm_weight`,
// in sharded_state_dict), then the module name legacy state dicts use.
// HF outputs of a split transform are separated by '|' in output order.
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <string>
#include <unordered_map>
#include <vector>

#include "ckpt/model.h"
#include "util/strings.h"

namespace ckpt::model {
namespace {

enum class Role {
  kEmbedding,
  kPositions,
  kFinalNorm,
  kFinalNormBias,
  kOutput,
  kInputNorm,
  kInputNormBias,
  kQkv,
  kQkvBias,
  kQNorm,
  kKNorm,
  kProj,
  kProjBias,
  kMlpNorm,
  kMlpNormBias,
  kFc1,
  kFc1Bias,
  kFc2,
  kFc2Bias,
  kRouter,
  kExpertFc1,
  kExpertFc2,
};

struct Rule {
  Role role;
  const char* megatron;  // name pattern(s) with {L} (layer) and {E} (expert); the first is written on import
  const char* hf;        // HF name pattern(s)
  const char* te = nullptr;  // the name written on import for the Transformer Engine spec, when it differs
};

struct FamilyTable {
  Family family;
  const char* model_type;
  const char* architecture;
  bool conv1d;  // HF stores linear weights as [in, out] (GPT-2's Conv1D)
  std::vector<Rule> rules;
};

// Rows shared by the Llama-like dense families (Llama, Mistral, Qwen2, Qwen3).
std::vector<Rule> LlamaLikeRules(bool moe_mixtral, bool moe_qwen) {
  std::vector<Rule> r = {
      {Role::kEmbedding, "embedding.word_embeddings.weight", "model.embed_tokens.weight"},
      {Role::kInputNorm, "decoder.layers.{L}.self_attention.linear_qkv.layer_norm_weight|decoder.layers.{L}.input_layernorm.weight",
       "model.layers.{L}.input_layernorm.weight"},
      {Role::kQkv, "decoder.layers.{L}.self_attention.linear_qkv.weight",
       "model.layers.{L}.self_attn.q_proj.weight|model.layers.{L}.self_attn.k_proj.weight|model.layers.{L}.self_attn.v_proj.weight"},
      {Role::kQkvBias, "decoder.layers.{L}.self_attention.linear_qkv.bias",
       "model.layers.{L}.self_attn.q_proj.bias|model.layers.{L}.self_attn.k_proj.bias|model.layers.{L}.self_attn.v_proj.bias"},
      {Role::kQNorm, "decoder.layers.{L}.self_attention.q_layernorm.weight", "model.layers.{L}.self_attn.q_norm.weight"},
      {Role::kKNorm, "decoder.layers.{L}.self_attention.k_layernorm.weight", "model.layers.{L}.self_attn.k_norm.weight"},
      {Role::kProj, "decoder.layers.{L}.self_attention.linear_proj.weight", "model.layers.{L}.self_attn.o_proj.weight"},
      {Role::kProjBias, "decoder.layers.{L}.self_attention.linear_proj.bias", "model.layers.{L}.self_attn.o_proj.bias"},
      {Role::kFinalNorm, "decoder.final_layernorm.weight", "model.norm.weight"},
      {Role::kOutput, "output_layer.weight", "lm_head.weight"},
  };
  if (moe_mixtral || moe_qwen) {
    // MoE layers keep a separate pre-MLP norm module (the router reads its
    // output). The local spec's sharded_state_dict_keys_map still stores it
    // under the fused name; the TE spec under the module name.
    r.push_back({Role::kMlpNorm, "decoder.layers.{L}.mlp.linear_fc1.layer_norm_weight|decoder.layers.{L}.pre_mlp_layernorm.weight",
                 "model.layers.{L}.post_attention_layernorm.weight", "decoder.layers.{L}.pre_mlp_layernorm.weight"});
  } else {
    r.push_back({Role::kMlpNorm, "decoder.layers.{L}.mlp.linear_fc1.layer_norm_weight|decoder.layers.{L}.pre_mlp_layernorm.weight",
                 "model.layers.{L}.post_attention_layernorm.weight"});
    r.push_back({Role::kFc1, "decoder.layers.{L}.mlp.linear_fc1.weight",
                 "model.layers.{L}.mlp.gate_proj.weight|model.layers.{L}.mlp.up_proj.weight"});
    r.push_back({Role::kFc1Bias, "decoder.layers.{L}.mlp.linear_fc1.bias",
                 "model.layers.{L}.mlp.gate_proj.bias|model.layers.{L}.mlp.up_proj.bias"});
    r.push_back({Role::kFc2, "decoder.layers.{L}.mlp.linear_fc2.weight", "model.layers.{L}.mlp.down_proj.weight"});
    r.push_back({Role::kFc2Bias, "decoder.layers.{L}.mlp.linear_fc2.bias", "model.layers.{L}.mlp.down_proj.bias"});
  }
  if (moe_mixtral) {
    r.push_back({Role::kRouter, "decoder.layers.{L}.mlp.router.weight", "model.layers.{L}.block_sparse_moe.gate.weight"});
    r.push_back({Role::kExpertFc1, "decoder.layers.{L}.mlp.experts.experts.{E}.linear_fc1.weight",
                 "model.layers.{L}.block_sparse_moe.experts.{E}.w1.weight|model.layers.{L}.block_sparse_moe.experts.{E}.w3.weight"});
    r.push_back({Role::kExpertFc2, "decoder.layers.{L}.mlp.experts.experts.{E}.linear_fc2.weight",
                 "model.layers.{L}.block_sparse_moe.experts.{E}.w2.weight"});
  }
  if (moe_qwen) {
    r.push_back({Role::kRouter, "decoder.layers.{L}.mlp.router.weight", "model.layers.{L}.mlp.gate.weight"});
    r.push_back({Role::kExpertFc1, "decoder.layers.{L}.mlp.experts.experts.{E}.linear_fc1.weight",
                 "model.layers.{L}.mlp.experts.{E}.gate_proj.weight|model.layers.{L}.mlp.experts.{E}.up_proj.weight"});
    r.push_back({Role::kExpertFc2, "decoder.layers.{L}.mlp.experts.experts.{E}.linear_fc2.weight",
                 "model.layers.{L}.mlp.experts.{E}.down_proj.weight"});
  }
  return r;
}

std::vector<Rule> Gpt2Rules() {
  return {
      {Role::kEmbedding, "embedding.word_embeddings.weight", "transformer.wte.weight"},
      {Role::kPositions, "embedding.position_embeddings.weight", "transformer.wpe.weight"},
      {Role::kInputNorm, "decoder.layers.{L}.self_attention.linear_qkv.layer_norm_weight|decoder.layers.{L}.input_layernorm.weight",
       "transformer.h.{L}.ln_1.weight"},
      {Role::kInputNormBias, "decoder.layers.{L}.self_attention.linear_qkv.layer_norm_bias|decoder.layers.{L}.input_layernorm.bias",
       "transformer.h.{L}.ln_1.bias"},
      {Role::kQkv, "decoder.layers.{L}.self_attention.linear_qkv.weight", "transformer.h.{L}.attn.c_attn.weight"},
      {Role::kQkvBias, "decoder.layers.{L}.self_attention.linear_qkv.bias", "transformer.h.{L}.attn.c_attn.bias"},
      {Role::kProj, "decoder.layers.{L}.self_attention.linear_proj.weight", "transformer.h.{L}.attn.c_proj.weight"},
      {Role::kProjBias, "decoder.layers.{L}.self_attention.linear_proj.bias", "transformer.h.{L}.attn.c_proj.bias"},
      {Role::kMlpNorm, "decoder.layers.{L}.mlp.linear_fc1.layer_norm_weight|decoder.layers.{L}.pre_mlp_layernorm.weight",
       "transformer.h.{L}.ln_2.weight"},
      {Role::kMlpNormBias, "decoder.layers.{L}.mlp.linear_fc1.layer_norm_bias|decoder.layers.{L}.pre_mlp_layernorm.bias",
       "transformer.h.{L}.ln_2.bias"},
      {Role::kFc1, "decoder.layers.{L}.mlp.linear_fc1.weight", "transformer.h.{L}.mlp.c_fc.weight"},
      {Role::kFc1Bias, "decoder.layers.{L}.mlp.linear_fc1.bias", "transformer.h.{L}.mlp.c_fc.bias"},
      {Role::kFc2, "decoder.layers.{L}.mlp.linear_fc2.weight", "transformer.h.{L}.mlp.c_proj.weight"},
      {Role::kFc2Bias, "decoder.layers.{L}.mlp.linear_fc2.bias", "transformer.h.{L}.mlp.c_proj.bias"},
      {Role::kFinalNorm, "decoder.final_layernorm.weight", "transformer.ln_f.weight"},
      {Role::kFinalNormBias, "decoder.final_layernorm.bias", "transformer.ln_f.bias"},
      {Role::kOutput, "output_layer.weight", "lm_head.weight"},
  };
}

const std::vector<FamilyTable>& Tables() {
  static const std::vector<FamilyTable>* tables = new std::vector<FamilyTable>{
      {Family::kLlama, "llama", "LlamaForCausalLM", false, LlamaLikeRules(false, false)},
      {Family::kMistral, "mistral", "MistralForCausalLM", false, LlamaLikeRules(false, false)},
      {Family::kQwen2, "qwen2", "Qwen2ForCausalLM", false, LlamaLikeRules(false, false)},
      {Family::kQwen3, "qwen3", "Qwen3ForCausalLM", false, LlamaLikeRules(false, false)},
      {Family::kMixtral, "mixtral", "MixtralForCausalLM", false, LlamaLikeRules(true, false)},
      {Family::kQwen3Moe, "qwen3_moe", "Qwen3MoeForCausalLM", false, LlamaLikeRules(false, true)},
      {Family::kGpt2, "gpt2", "GPT2LMHeadModel", true, Gpt2Rules()},
  };
  return *tables;
}

const FamilyTable& TableOf(Family f) {
  for (const FamilyTable& t : Tables()) {
    if (t.family == f) return t;
  }
  return Tables().front();  // unreachable: every Family has a table
}

enum class Scope { kGlobal, kLayer, kExpert };

Scope ScopeOf(Role r) {
  switch (r) {
    case Role::kEmbedding:
    case Role::kPositions:
    case Role::kFinalNorm:
    case Role::kFinalNormBias:
    case Role::kOutput:
      return Scope::kGlobal;
    case Role::kExpertFc1:
    case Role::kExpertFc2:
      return Scope::kExpert;
    default:
      return Scope::kLayer;
  }
}

// Whether the model has this tensor at all.
bool Applies(Role r, const ModelConfig& c) {
  const bool ln = c.norm == Norm::kLayerNorm;
  switch (r) {
    case Role::kPositions:
      return c.positions == Positions::kLearned;
    case Role::kFinalNormBias:
    case Role::kInputNormBias:
    case Role::kMlpNormBias:
      return ln;
    case Role::kOutput:
      return !c.tied_embeddings;
    case Role::kQkvBias:
      return c.add_qkv_bias || c.add_bias_linear;
    case Role::kQNorm:
    case Role::kKNorm:
      return c.qk_layernorm;
    case Role::kProjBias:
      return c.add_bias_linear;
    case Role::kFc1:
    case Role::kFc2:
      return !c.moe();
    case Role::kFc1Bias:
    case Role::kFc2Bias:
      return !c.moe() && c.add_bias_linear;
    case Role::kRouter:
    case Role::kExpertFc1:
    case Role::kExpertFc2:
      return c.moe();
    default:
      return true;
  }
}

bool IsNorm(Role r) {
  return r == Role::kFinalNorm || r == Role::kInputNorm || r == Role::kMlpNorm || r == Role::kQNorm ||
         r == Role::kKNorm;
}

// The Megatron tensor's shape (one layer / expert slice).
std::vector<int64_t> MegatronShape(Role r, const ModelConfig& c, int64_t padded_vocab) {
  const int64_t h = c.hidden_size;
  const int64_t fc1 = c.gated() ? 2 * c.ffn_hidden_size : c.ffn_hidden_size;
  switch (r) {
    case Role::kEmbedding:
    case Role::kOutput:
      return {padded_vocab, h};
    case Role::kPositions:
      return {c.max_position_embeddings, h};
    case Role::kFinalNorm:
    case Role::kFinalNormBias:
    case Role::kInputNorm:
    case Role::kInputNormBias:
    case Role::kMlpNorm:
    case Role::kMlpNormBias:
    case Role::kProjBias:
    case Role::kFc2Bias:
      return {h};
    case Role::kQkv:
      return {c.qkv_rows(), h};
    case Role::kQkvBias:
      return {c.qkv_rows()};
    case Role::kQNorm:
    case Role::kKNorm:
      return {c.kv_channels};
    case Role::kProj:
      return {h, c.num_attention_heads * c.kv_channels};
    case Role::kFc1:
      return {fc1, h};
    case Role::kFc1Bias:
      return {fc1};
    case Role::kFc2:
      return {h, c.ffn_hidden_size};
    case Role::kRouter:
      return {c.num_experts, h};
    case Role::kExpertFc1:
      return {2 * c.moe_ffn_hidden_size, h};
    case Role::kExpertFc2:
      return {h, c.moe_ffn_hidden_size};
  }
  return {};
}

std::string Fill(std::string_view pattern, int64_t layer, int64_t expert) {
  std::string s(pattern);
  for (auto [tok, v] : {std::pair<std::string_view, int64_t>{"{L}", layer}, {"{E}", expert}}) {
    for (size_t p = s.find(tok); p != std::string::npos; p = s.find(tok)) {
      s.replace(p, tok.size(), std::to_string(v));
    }
  }
  return s;
}

std::vector<std::string> SplitBar(std::string_view s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (true) {
    size_t p = s.find('|', start);
    out.emplace_back(s.substr(start, p == std::string_view::npos ? std::string_view::npos : p - start));
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
  return out;
}

// The three row groups of a fused QKV tensor (rows = (nh + 2 ng) * hd), per
// query group g: [q heads of g; k_g; v_g]. Megatron row offsets of q/k/v
// within group block g.
struct QkvGeometry {
  int64_t ng, hpg, hd;
  int64_t block() const { return (hpg + 2) * hd; }
  int64_t q_off(int64_t g) const { return g * block(); }
  int64_t k_off(int64_t g) const { return g * block() + hpg * hd; }
  int64_t v_off(int64_t g) const { return g * block() + (hpg + 1) * hd; }
};

QkvGeometry Geometry(const ModelConfig& c) {
  return {c.num_query_groups, c.num_attention_heads / c.num_query_groups, c.kv_channels};
}

Status CheckFamilyFits(const ModelConfig& c, Family f) {
  const FamilyTable& t = TableOf(f);
  auto bad = [&](std::string why) {
    return InvalidArgumentError(StrCat("the model does not fit HF family ", t.model_type, ": ", why));
  };
  const bool gpt2 = f == Family::kGpt2;
  if (gpt2) {
    if (c.norm != Norm::kLayerNorm) return bad("gpt2 uses LayerNorm, the checkpoint's normalization is RMSNorm");
    if (c.positions != Positions::kLearned) return bad("gpt2 has learned position embeddings (position_embedding_type learned_absolute)");
    if (c.gated()) return bad("gpt2 has a plain GeLU MLP, the checkpoint's is gated (swiglu)");
    if (c.num_query_groups != c.num_attention_heads) return bad("gpt2 has no grouped-query attention");
    if (c.kv_channels * c.num_attention_heads != c.hidden_size) return bad("gpt2 needs kv_channels * heads == hidden_size");
    if (!c.add_bias_linear) return bad("gpt2 has biases on every linear layer (add_bias_linear)");
    if (c.moe()) return bad("gpt2 has no experts");
  } else {
    if (c.norm != Norm::kRMSNorm) return bad("it uses RMSNorm, the checkpoint's normalization is LayerNorm");
    if (c.positions != Positions::kRope) return bad("it uses rotary position embeddings, the checkpoint's are not rope");
    if (!c.gated()) return bad("its MLP is gated (swiglu), the checkpoint's is not");
    if (c.rotary_interleaved) return bad("rotary_interleaved=True is not HF's rotate-half rope");
    const bool moe_family = f == Family::kMixtral || f == Family::kQwen3Moe;
    if (moe_family != c.moe()) {
      return bad(c.moe() ? StrCat("the checkpoint has ", c.num_experts, " experts") : "the checkpoint has no experts");
    }
    if (c.qk_layernorm && f != Family::kQwen3 && f != Family::kQwen3Moe) return bad("it has no QK layernorm (qk_layernorm)");
    if (!c.qk_layernorm && (f == Family::kQwen3 || f == Family::kQwen3Moe)) return bad("it needs QK layernorm (qk_layernorm)");
    if (c.add_bias_linear && f != Family::kLlama) return bad("it has no biases on linear layers (add_bias_linear)");
    if (c.add_qkv_bias && !c.add_bias_linear && f != Family::kQwen2) {
      return bad("it has no QKV-only bias (add_qkv_bias; HF's attention_bias also biases o_proj)");
    }
    if (f == Family::kQwen2 && !c.add_qkv_bias && !c.add_bias_linear) return bad("qwen2 always has a QKV bias (add_qkv_bias)");
    if (c.moe_shared_expert_intermediate_size > 0) return bad("shared experts are not in this family's table");
  }
  return OkStatus();
}

// Rows of a QKV tensor in HF order for output `which` (0 q, 1 k, 2 v).
std::vector<std::pair<int64_t, int64_t>> QkvRowsOf(const QkvGeometry& q, int which) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t g = 0; g < q.ng; ++g) {
    if (which == 0) out.push_back({q.q_off(g), q.q_off(g) + q.hpg * q.hd});
    if (which == 1) out.push_back({q.k_off(g), q.k_off(g) + q.hd});
    if (which == 2) out.push_back({q.v_off(g), q.v_off(g) + q.hd});
  }
  return out;
}

// Appends `rows` of source src at index idx, merging adjacent ranges.
void AddRows(TensorPlan* p, int src, const std::vector<int64_t>& idx, int64_t b, int64_t e) {
  if (b == e) return;
  if (!p->rows.empty()) {
    RowSlice& last = p->rows.back();
    if (last.source == src && last.index == idx && last.row_end == b) {
      last.row_end = e;
      return;
    }
  }
  p->rows.push_back({src, idx, b, e});
}

// The index of source `name` in plan->sources, added when new. `index` maps
// names to positions (a linear search made planning quadratic in the tensor
// count: seconds for a large mixture of experts; found by hf_config_fuzz).
int AddSource(Plan* plan, std::unordered_map<std::string, int>* index, std::string name,
              std::vector<int64_t> shape) {
  auto [it, fresh] = index->try_emplace(name, static_cast<int>(plan->sources.size()));
  if (fresh) plan->sources.push_back({std::move(name), std::move(shape)});
  return it->second;
}

std::vector<int64_t> WithRows(std::vector<int64_t> shape, int64_t rows) {
  shape[0] = rows;
  return shape;
}

std::vector<int64_t> Transposed(const std::vector<int64_t>& s) {
  return s.size() == 2 ? std::vector<int64_t>{s[1], s[0]} : s;
}

}  // namespace

std::string_view FamilyName(Family f) { return TableOf(f).model_type; }

Result<Family> ParseFamily(std::string_view name) {
  for (const FamilyTable& t : Tables()) {
    if (name == t.model_type || name == t.architecture) return t.family;
  }
  std::vector<std::string> names;
  for (const FamilyTable& t : Tables()) names.emplace_back(t.model_type);
  return InvalidArgumentError(StrCat("unknown model family ", Quote(name), " (known: ", fmt::format("{}", fmt::join(names, ", ")), ")"));
}

std::string_view FamilyArchitecture(Family f) { return TableOf(f).architecture; }

std::vector<StoredRef> TorchDistCandidates(std::string_view module_name) {
  std::vector<StoredRef> out;
  constexpr std::string_view kLayers = "decoder.layers.";
  if (module_name.substr(0, kLayers.size()) != kLayers) {
    out.push_back({std::string(module_name), {}});
    return out;
  }
  std::string_view rest = module_name.substr(kLayers.size());
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos || dot == 0 ||
      !std::all_of(rest.begin(), rest.begin() + dot, [](char ch) { return ch >= '0' && ch <= '9'; })) {
    out.push_back({std::string(module_name), {}});
    return out;
  }
  const int64_t layer = std::stoll(std::string(rest.substr(0, dot)));
  std::string_view suffix = rest.substr(dot + 1);
  constexpr std::string_view kExperts = "mlp.experts.experts.";
  if (suffix.substr(0, kExperts.size()) == kExperts) {
    std::string_view er = suffix.substr(kExperts.size());
    size_t d2 = er.find('.');
    if (d2 != std::string_view::npos && d2 > 0 &&
        std::all_of(er.begin(), er.begin() + d2, [](char ch) { return ch >= '0' && ch <= '9'; })) {
      const int64_t expert = std::stoll(std::string(er.substr(0, d2)));
      std::string tail(er.substr(d2 + 1));
      out.push_back({StrCat(kLayers, kExperts, tail), {layer, expert}});
      out.push_back({StrCat(kLayers, layer, ".", kExperts, tail), {expert}});
      return out;
    }
  }
  out.push_back({StrCat(kLayers, suffix), {layer}});
  out.push_back({std::string(module_name), {}});
  return out;
}

Result<Plan> PlanExport(const ModelConfig& c, Family family,
                        const std::function<bool(std::string_view)>& has_module) {
  CKPT_RETURN_IF_ERROR(c.Validate());
  CKPT_RETURN_IF_ERROR(CheckFamilyFits(c, family));
  if (!c.vocab_size.has_value()) {
    return InvalidArgumentError("the HF vocabulary size is unknown (args.vocab_size is not set): give it (vocab_size)");
  }
  const int64_t vocab = *c.vocab_size;
  if (vocab > c.padded_vocab_size) {
    return InvalidArgumentError(StrCat("vocab_size ", vocab, " is larger than the checkpoint's ",
                                       c.padded_vocab_size, " embedding rows"));
  }
  const FamilyTable& table = TableOf(family);
  const QkvGeometry qg = Geometry(c);
  Plan plan;
  std::unordered_map<std::string, int> source_index;
  for (const Rule& rule : table.rules) {
    if (!Applies(rule.role, c)) continue;
    const Scope scope = ScopeOf(rule.role);
    const int64_t layers = scope == Scope::kGlobal ? 1 : c.num_layers;
    const int64_t experts = scope == Scope::kExpert ? c.num_experts : 1;
    const std::vector<int64_t> mshape = MegatronShape(rule.role, c, c.padded_vocab_size);
    const std::vector<std::string> alts = SplitBar(rule.megatron);
    const std::vector<std::string> hf = SplitBar(rule.hf);
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t e = 0; e < experts; ++e) {
        std::string src_name;
        for (const std::string& a : alts) {
          std::string n = Fill(a, l, e);
          if (has_module(n)) {
            src_name = std::move(n);
            break;
          }
        }
        if (src_name.empty()) {
          return NotFoundError(StrCat("the checkpoint has no ", Quote(Fill(alts[0], l, e)),
                                      alts.size() > 1 ? StrCat(" (nor ", Quote(Fill(alts[1], l, e)), ")") : "",
                                      ", which the ", table.model_type, " mapping needs"));
        }
        const int src = AddSource(&plan, &source_index, src_name, mshape);
        auto out = [&](size_t i) {
          TensorPlan p;
          p.name = Fill(hf[i], l, e);
          p.shape = mshape;
          return p;
        };
        const std::vector<int64_t> noidx;
        switch (rule.role) {
          case Role::kEmbedding:
          case Role::kOutput: {
            TensorPlan p = out(0);
            p.shape = {vocab, c.hidden_size};
            AddRows(&p, src, noidx, 0, vocab);
            p.why = vocab < c.padded_vocab_size ? "vocab padding trimmed" : "copy";
            plan.outputs.push_back(std::move(p));
            break;
          }
          case Role::kQkv:
          case Role::kQkvBias: {
            if (table.conv1d) {
              // GPT-2: one c_attn = [Q_all; K_all; V_all], weights stored [in, out].
              TensorPlan p = out(0);
              for (int which = 0; which < 3; ++which) {
                for (auto [b, en] : QkvRowsOf(qg, which)) AddRows(&p, src, noidx, b, en);
              }
              p.transpose = rule.role == Role::kQkv;
              p.shape = p.transpose ? Transposed(mshape) : mshape;
              p.why = "qkv de-interleave into c_attn";
              plan.outputs.push_back(std::move(p));
            } else {
              static constexpr std::array<const char*, 3> kWhich = {"q", "k", "v"};
              for (int which = 0; which < 3; ++which) {
                TensorPlan p = out(which);
                int64_t n = 0;
                for (auto [b, en] : QkvRowsOf(qg, which)) {
                  AddRows(&p, src, noidx, b, en);
                  n += en - b;
                }
                p.shape = WithRows(mshape, n);
                p.why = StrCat("qkv split ", kWhich[which]);
                plan.outputs.push_back(std::move(p));
              }
            }
            break;
          }
          case Role::kFc1:
          case Role::kFc1Bias:
          case Role::kExpertFc1: {
            if (table.conv1d || !c.gated()) {
              TensorPlan p = out(0);
              AddRows(&p, src, noidx, 0, mshape[0]);
              p.transpose = table.conv1d && mshape.size() == 2;
              p.shape = p.transpose ? Transposed(mshape) : mshape;
              p.why = p.transpose ? "Conv1D transpose" : "copy";
              plan.outputs.push_back(std::move(p));
              break;
            }
            const int64_t f = mshape[0] / 2;
            for (int half = 0; half < 2; ++half) {
              TensorPlan p = out(half);
              AddRows(&p, src, noidx, half * f, (half + 1) * f);
              p.shape = WithRows(mshape, f);
              p.why = half == 0 ? "fc1 split gate" : "fc1 split up";
              plan.outputs.push_back(std::move(p));
            }
            break;
          }
          default: {
            TensorPlan p = out(0);
            AddRows(&p, src, noidx, 0, mshape[0]);
            p.transpose = table.conv1d && mshape.size() == 2 &&
                          (rule.role == Role::kProj || rule.role == Role::kFc2);
            p.shape = p.transpose ? Transposed(mshape) : mshape;
            if (IsNorm(rule.role) && c.apply_layernorm_1p) {
              p.add = 1.0;
              p.why = "apply_layernorm_1p: +1";
            } else {
              p.why = p.transpose ? "Conv1D transpose" : "copy";
            }
            plan.outputs.push_back(std::move(p));
            break;
          }
        }
      }
    }
  }
  return plan;
}

Result<Plan> PlanImport(const ModelConfig& c, Family family, std::string_view layer_spec, int64_t padded_vocab,
                        const std::function<bool(std::string_view)>& has_tensor) {
  CKPT_RETURN_IF_ERROR(c.Validate());
  CKPT_RETURN_IF_ERROR(CheckFamilyFits(c, family));
  if (layer_spec != "local" && layer_spec != "te") {
    return InvalidArgumentError(StrCat("megatron_layer_spec must be \"local\" or \"te\", got ", Quote(layer_spec)));
  }
  if (!c.vocab_size.has_value() || *c.vocab_size > padded_vocab) {
    return InvalidArgumentError(StrCat("padded vocabulary ", padded_vocab, " is smaller than vocab_size ",
                                       c.vocab_size.value_or(-1)));
  }
  const int64_t vocab = *c.vocab_size;
  const FamilyTable& table = TableOf(family);
  const QkvGeometry qg = Geometry(c);
  Plan plan;
  std::unordered_map<std::string, int> source_index;
  for (const Rule& rule : table.rules) {
    if (!Applies(rule.role, c)) continue;
    const Scope scope = ScopeOf(rule.role);
    const int64_t layers = scope == Scope::kGlobal ? 1 : c.num_layers;
    const int64_t experts = scope == Scope::kExpert ? c.num_experts : 1;
    const std::vector<int64_t> mshape = MegatronShape(rule.role, c, padded_vocab);
    const std::vector<std::string> alts = SplitBar(rule.megatron);
    const std::string mname = layer_spec == "te" && rule.te != nullptr ? std::string(rule.te) : alts[0];
    const std::vector<std::string> hf = SplitBar(rule.hf);
    for (int64_t l = 0; l < layers; ++l) {
      for (int64_t e = 0; e < experts; ++e) {
        std::vector<int> srcs;
        for (const std::string& h : hf) {
          std::string n = Fill(h, l, e);
          if (!has_tensor(n)) {
            return NotFoundError(StrCat("the HF checkpoint has no ", Quote(n), ", which the ", table.model_type,
                                        " mapping needs"));
          }
          srcs.push_back(AddSource(&plan, &source_index, std::move(n), {}));
        }
        // The stored torch_dist key and index of this module tensor.
        StoredRef where = TorchDistCandidates(Fill(mname, l, e)).front();
        TensorPlan p;
        p.name = where.key;
        p.out_index = where.index;
        p.shape = mshape;
        p.full_shape = where.index.size() == 2 ? std::vector<int64_t>{c.num_layers, c.num_experts}
                       : where.index.size() == 1 ? std::vector<int64_t>{c.num_layers}
                                                 : std::vector<int64_t>{};
        p.full_shape.insert(p.full_shape.end(), mshape.begin(), mshape.end());
        const std::vector<int64_t> noidx;
        auto expect = [&](int s, std::vector<int64_t> shape) { plan.sources[s].shape = std::move(shape); };
        switch (rule.role) {
          case Role::kEmbedding:
          case Role::kOutput:
            expect(srcs[0], {vocab, c.hidden_size});
            AddRows(&p, srcs[0], noidx, 0, vocab);
            AddRows(&p, -1, noidx, 0, padded_vocab - vocab);
            p.why = padded_vocab > vocab ? "vocab padded with zero rows" : "copy";
            break;
          case Role::kQkv:
          case Role::kQkvBias: {
            const int64_t nq = qg.ng * qg.hpg * qg.hd, nk = qg.ng * qg.hd;
            std::vector<int64_t> rest(mshape.begin() + 1, mshape.end());
            if (table.conv1d) {
              // One c_attn [in, 3*out] (bias [3*out]): rows of its transpose are [Q; K; V].
              const int s = srcs[0];
              expect(s, rule.role == Role::kQkv ? Transposed(mshape) : mshape);
              p.transpose_sources = rule.role == Role::kQkv;
              for (int64_t g = 0; g < qg.ng; ++g) {
                AddRows(&p, s, noidx, g * qg.hpg * qg.hd, (g + 1) * qg.hpg * qg.hd);
                AddRows(&p, s, noidx, nq + g * qg.hd, nq + (g + 1) * qg.hd);
                AddRows(&p, s, noidx, nq + nk + g * qg.hd, nq + nk + (g + 1) * qg.hd);
              }
            } else {
              std::vector<int64_t> qs = {nq}, ks = {nk};
              qs.insert(qs.end(), rest.begin(), rest.end());
              ks.insert(ks.end(), rest.begin(), rest.end());
              expect(srcs[0], qs);
              expect(srcs[1], ks);
              expect(srcs[2], ks);
              for (int64_t g = 0; g < qg.ng; ++g) {
                AddRows(&p, srcs[0], noidx, g * qg.hpg * qg.hd, (g + 1) * qg.hpg * qg.hd);
                AddRows(&p, srcs[1], noidx, g * qg.hd, (g + 1) * qg.hd);
                AddRows(&p, srcs[2], noidx, g * qg.hd, (g + 1) * qg.hd);
              }
            }
            p.why = "qkv group interleave";
            break;
          }
          case Role::kFc1:
          case Role::kFc1Bias:
          case Role::kExpertFc1:
            if (table.conv1d || !c.gated()) {
              p.transpose_sources = table.conv1d && mshape.size() == 2;
              expect(srcs[0], p.transpose_sources ? Transposed(mshape) : mshape);
              AddRows(&p, srcs[0], noidx, 0, mshape[0]);
              p.why = p.transpose_sources ? "Conv1D transpose" : "copy";
            } else {
              const int64_t f = mshape[0] / 2;
              expect(srcs[0], WithRows(mshape, f));
              expect(srcs[1], WithRows(mshape, f));
              AddRows(&p, srcs[0], noidx, 0, f);
              AddRows(&p, srcs[1], noidx, 0, f);
              p.why = "fc1 merge [gate; up]";
            }
            break;
          default:
            p.transpose_sources = table.conv1d && mshape.size() == 2 &&
                                  (rule.role == Role::kProj || rule.role == Role::kFc2);
            expect(srcs[0], p.transpose_sources ? Transposed(mshape) : mshape);
            AddRows(&p, srcs[0], noidx, 0, mshape[0]);
            if (IsNorm(rule.role) && c.apply_layernorm_1p) {
              p.add = -1.0;
              p.why = "apply_layernorm_1p: -1";
            } else {
              p.why = p.transpose_sources ? "Conv1D transpose" : "copy";
            }
            break;
        }
        plan.outputs.push_back(std::move(p));
      }
    }
  }
  plan.none_objects = ExtraStateObjects(c);
  return plan;
}

std::vector<std::string> ExtraStateObjects(const ModelConfig& c) {
  std::vector<std::string> out;
  const int64_t L = c.num_layers, E = c.num_experts;
  std::vector<std::string> dense = {"self_attention.linear_qkv", "self_attention.linear_proj"};
  if (!c.moe()) {
    dense.push_back("mlp.linear_fc1");
    dense.push_back("mlp.linear_fc2");
  }
  for (const std::string& m : dense) {
    for (int64_t l = 0; l < L; ++l) out.push_back(StrCat("decoder.layers.", m, "._extra_state/shard_", l, "_", L));
  }
  if (c.moe()) {
    for (const char* m : {"linear_fc1", "linear_fc2"}) {
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t e = 0; e < E; ++e) {
          out.push_back(
              StrCat("decoder.layers.mlp.experts.experts.", m, "._extra_state/shard_", l, ".", e, "_", L, ".", E));
        }
      }
    }
  }
  return out;
}

}  // namespace ckpt::model
