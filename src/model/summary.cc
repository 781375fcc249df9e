// The model summary: args from the common dict, cross-checked against and
// completed from the stored tensors' shapes (docs/format.md §8.6, §9.1).
// Moved from format/megatron/summary.cc, which keeps the layout and optimizer.
#include "model/summary.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <set>
#include <string>

#include "ckpt/dtype.h"
#include "util/strings.h"

namespace ckpt::model {
namespace {

using megatron::ArgBool;
using megatron::ArgInt;
using megatron::ArgString;
using megatron::FindLayerTensor;
using megatron::FindTensor;

// a == 2 * b without overflow (sizes come from the file).
bool IsDouble(int64_t a, int64_t b) { return a >= 0 && b >= 0 && a % 2 == 0 && a / 2 == b; }

ShapeFacts ReadShapes(const dcp::Metadata& md) {
  ShapeFacts g;
  std::set<int64_t> layer_ids;
  std::optional<int64_t> stacked_layers;
  bool any_norm_weight = false, any_norm_bias = false;
  for (const dcp::Entry& e : md.entries) {
    if (e.type == dcp::EntryType::kBytes) continue;
    if (megatron::Classify(e.key, false) != megatron::KeyKind::kModel) continue;
    const std::string_view key = e.key;
    std::string_view rest;
    if (auto li = megatron::PerLayerIndex(key, "decoder.layers.", &rest)) {
      if (*li >= 0 && *li < (int64_t{1} << 40)) layer_ids.insert(*li);
    } else if (key.starts_with("decoder.layers.") && !e.size.empty() && e.size[0] > 0) {
      stacked_layers = std::max(stacked_layers.value_or(0), e.size[0]);
    }
    if (key.ends_with("layer_norm_weight") || key.ends_with("layernorm.weight")) any_norm_weight = true;
    if (key.ends_with("layer_norm_bias") || key.ends_with("layernorm.bias")) any_norm_bias = true;
  }
  if (stacked_layers.has_value()) {
    g.num_layers = stacked_layers;
  } else if (!layer_ids.empty()) {
    g.num_layers = *layer_ids.rbegin() + 1;
  }
  std::vector<int64_t> ids(layer_ids.begin(), layer_ids.end());

  if (const dcp::Entry* e = FindTensor(md, "embedding.word_embeddings.weight"); e && e->size.size() == 2) {
    g.padded_vocab_size = e->size[0];
    g.hidden_size = e->size[1];
  } else if (const dcp::Entry* o = FindTensor(md, "output_layer.weight"); o && o->size.size() == 2) {
    g.padded_vocab_size = o->size[0];
    g.hidden_size = o->size[1];
  } else if (const dcp::Entry* n = FindTensor(md, "decoder.final_layernorm.weight"); n && n->size.size() == 1) {
    g.hidden_size = n->size[0];
  }
  if (FindTensor(md, "embedding.word_embeddings.weight") != nullptr) {
    g.learned_position_embeddings = FindTensor(md, "embedding.position_embeddings.weight") != nullptr;
    g.untied_output_layer = FindTensor(md, "output_layer.weight") != nullptr;
  }
  if (any_norm_weight || any_norm_bias) g.layernorm_bias = any_norm_bias;

  // Dense MLP: ffn from fc2's last axis, GLU from fc1 rows == 2 * ffn.
  bool st1 = false, st2 = false;
  const dcp::Entry* fc1 = FindLayerTensor(md, "mlp.linear_fc1.weight", ids, &st1);
  const dcp::Entry* fc2 = FindLayerTensor(md, "mlp.linear_fc2.weight", ids, &st2);
  if (fc2 != nullptr && fc2->size.size() >= 2) g.ffn_hidden_size = fc2->size.back();
  if (fc1 != nullptr && fc2 != nullptr && fc1->size.size() >= 2 && fc2->size.size() >= 2) {
    g.swiglu = IsDouble(fc1->size[fc1->size.size() - 2], fc2->size.back());
  }

  // Experts (§9.1): router [L, E, H] (or [E, H] per layer); expert fc2 [L, E, H, F_e].
  bool str = false;
  if (const dcp::Entry* r = FindLayerTensor(md, "mlp.router.weight", ids, &str)) {
    size_t axis = str ? 1 : 0;
    if (r->size.size() > axis + 1) g.num_experts = r->size[axis];
  }
  bool ste1 = false, ste2 = false;
  const dcp::Entry* efc1 = FindLayerTensor(md, "mlp.experts.experts.linear_fc1.weight", ids, &ste1);
  const dcp::Entry* efc2 = FindLayerTensor(md, "mlp.experts.experts.linear_fc2.weight", ids, &ste2);
  if (!g.num_experts.has_value() && efc1 != nullptr) {
    size_t axis = ste1 ? 1 : 0;
    if (efc1->size.size() > axis + 2) g.num_experts = efc1->size[axis];
  }
  if (!g.swiglu.has_value() && efc1 != nullptr && efc2 != nullptr && efc1->size.size() >= 2 &&
      efc2->size.size() >= 2) {
    g.swiglu = IsDouble(efc1->size[efc1->size.size() - 2], efc2->size.back());
  }
  if (!g.num_experts.has_value()) {
    // singleton_local_shards style: decoder.layers.<i>.mlp.experts.experts.<e>.linear_fc1.weight
    std::optional<int64_t> max_e;
    for (const dcp::Entry& e : md.entries) {
      size_t p = e.key.find(".mlp.experts.experts.");
      if (p == std::string::npos) continue;
      std::string_view rest;
      if (auto ei = megatron::PerLayerIndex(std::string_view(e.key).substr(p + 1), "mlp.experts.experts.",
                                            &rest)) {
        if (*ei >= 0 && *ei < (int64_t{1} << 40)) max_e = std::max(max_e.value_or(0), *ei + 1);
      }
    }
    g.num_experts = max_e;
  }
  return g;
}

std::optional<std::string> DTypeArg(const megatron::CommonState& c) {
  if (auto s = ArgString(c, "params_dtype")) {
    std::string v = *s;
    if (v.starts_with("torch.")) v = v.substr(6);
    return v;
  }
  if (ArgBool(c, "bf16").value_or(false)) return "bfloat16";
  if (ArgBool(c, "fp16").value_or(false)) return "float16";
  if (ArgBool(c, "bf16").has_value() || ArgBool(c, "fp16").has_value()) return "float32";
  return std::nullopt;
}

// The same words as megatron::Summarize's layout cross-checks, since inspect
// lists both under one heading.
void Compare(std::string_view what, const std::optional<int64_t>& args, const std::optional<int64_t>& grid,
             std::string_view grid_source, std::vector<std::string>* out) {
  if (!args.has_value() || !grid.has_value() || *args == *grid) return;
  out->push_back(StrCat(what, ": args ", *args, ", chunk grid ", *grid,
                        grid_source.empty() ? "" : StrCat(" (", grid_source, ")")));
}

}  // namespace

ModelSummary SummarizeModel(const megatron::CommonState* common, const dcp::Metadata& md) {
  ModelSummary m;
  m.from_shapes = ReadShapes(md);
  const ShapeFacts& g = m.from_shapes;
  if (common != nullptr) {
    const megatron::CommonState& c = *common;
    m.num_layers = ArgInt(c, "num_layers");
    m.hidden_size = ArgInt(c, "hidden_size");
    m.ffn_hidden_size = ArgInt(c, "ffn_hidden_size");
    m.num_attention_heads = ArgInt(c, "num_attention_heads");
    m.group_query_attention = ArgBool(c, "group_query_attention");
    m.num_query_groups = ArgInt(c, "num_query_groups");
    m.kv_channels = ArgInt(c, "kv_channels");
    m.padded_vocab_size = ArgInt(c, "padded_vocab_size");
    m.vocab_size = ArgInt(c, "vocab_size");
    m.max_position_embeddings = ArgInt(c, "max_position_embeddings");
    m.seq_length = ArgInt(c, "seq_length");
    m.num_experts = ArgInt(c, "num_experts");
    m.moe_router_topk = ArgInt(c, "moe_router_topk");
    m.moe_ffn_hidden_size = ArgInt(c, "moe_ffn_hidden_size");
    m.normalization = ArgString(c, "normalization");
    m.swiglu = ArgBool(c, "swiglu");
    m.untie_embeddings_and_output_weights = ArgBool(c, "untie_embeddings_and_output_weights");
    m.position_embedding_type = ArgString(c, "position_embedding_type");
    m.params_dtype = DTypeArg(c);
  }

  // Cross-check args against the shapes.
  Compare("num_layers", m.num_layers, g.num_layers, "decoder.layers", &m.mismatches);
  if (m.num_experts.value_or(0) > 0 || g.num_experts.has_value()) {
    Compare("num_experts", m.num_experts, g.num_experts, "expert axis", &m.mismatches);
  }
  Compare("hidden_size", m.hidden_size, g.hidden_size, "embedding", &m.mismatches);
  Compare("padded_vocab_size", m.padded_vocab_size, g.padded_vocab_size, "embedding rows", &m.mismatches);
  Compare("ffn_hidden_size", m.ffn_hidden_size, g.ffn_hidden_size, "mlp.linear_fc2", &m.mismatches);

  // Fill model facts the args did not give from the shapes.
  if (!m.num_layers) m.num_layers = g.num_layers;
  if (!m.hidden_size) m.hidden_size = g.hidden_size;
  if (!m.ffn_hidden_size) m.ffn_hidden_size = g.ffn_hidden_size;
  if (!m.num_experts) m.num_experts = g.num_experts;
  if (m.padded_vocab_size) {
    m.vocab_source = "args.padded_vocab_size";
  } else if (g.padded_vocab_size) {
    m.padded_vocab_size = g.padded_vocab_size;
    m.vocab_source = "embedding shape";
  }
  bool norm_inferred = false, pos_inferred = false;
  if (!m.swiglu) m.swiglu = g.swiglu;
  if (!m.normalization && g.layernorm_bias.has_value()) {
    m.normalization = *g.layernorm_bias ? "LayerNorm" : "RMSNorm";
    norm_inferred = true;
  }
  if (!m.position_embedding_type && g.learned_position_embeddings.value_or(false)) {
    m.position_embedding_type = "learned_absolute";
    pos_inferred = true;
  }
  if (!m.untie_embeddings_and_output_weights) m.untie_embeddings_and_output_weights = g.untied_output_layer;
  if (!m.params_dtype) {
    if (const dcp::Entry* e = FindTensor(md, "embedding.word_embeddings.weight")) {
      m.params_dtype = std::string(DTypeName(e->dtype));
    }
  }

  // Family guess.
  bool moe = m.num_experts.value_or(0) > 0;
  bool swiglu = m.swiglu.value_or(false);
  bool rms = m.normalization.has_value() && *m.normalization == "RMSNorm";
  bool rope = m.position_embedding_type.has_value() && *m.position_embedding_type == "rope";
  bool learned = m.position_embedding_type.has_value() && *m.position_embedding_type == "learned_absolute";
  // Without args, no learned position table means rope or none: count it as rope-like.
  bool rope_like = rope || (!m.position_embedding_type.has_value() &&
                            !g.learned_position_embeddings.value_or(true));
  std::vector<std::string> why;
  if (swiglu) why.push_back("swiglu");
  if (m.normalization) why.push_back(*m.normalization + (norm_inferred ? " (from keys)" : ""));
  if (m.position_embedding_type) {
    why.push_back(*m.position_embedding_type + (pos_inferred ? " (from keys)" : ""));
  } else if (rope_like) {
    why.push_back("no learned position embeddings");
  }
  if (moe) why.push_back(StrCat(*m.num_experts, " experts"));
  if (!m.swiglu && !m.normalization && !m.position_embedding_type && !moe) {
    m.family = "unknown";
  } else if (moe && swiglu && rms && rope_like) {
    m.family = "Mixtral-like (MoE)";
  } else if (moe) {
    m.family = "GPT MoE";
  } else if (swiglu && rms && rope_like) {
    m.family = "Llama-like";
  } else if (!swiglu && learned && !rms) {
    m.family = "GPT (GPT-2/3 style)";
  } else {
    m.family = "GPT";
  }
  m.family_reason = fmt::format("{}", fmt::join(why, " + "));
  return m;
}

namespace {

template <typename T>
void Put(nlohmann::json& j, const char* k, const std::optional<T>& v) {
  if (v.has_value()) j[k] = *v;
}
void Put(nlohmann::json& j, const char* k, const std::optional<std::string>& v) {
  if (v.has_value()) j[k] = ValidUtf8(*v);
}

}  // namespace

nlohmann::json ToJson(const ShapeFacts& g) {
  nlohmann::json gj = nlohmann::json::object();
  Put(gj, "num_layers", g.num_layers);
  Put(gj, "num_experts", g.num_experts);
  Put(gj, "hidden_size", g.hidden_size);
  Put(gj, "padded_vocab_size", g.padded_vocab_size);
  Put(gj, "ffn_hidden_size", g.ffn_hidden_size);
  Put(gj, "swiglu", g.swiglu);
  Put(gj, "layernorm_bias", g.layernorm_bias);
  Put(gj, "learned_position_embeddings", g.learned_position_embeddings);
  Put(gj, "untied_output_layer", g.untied_output_layer);
  return gj;
}

nlohmann::json ToJson(const ModelSummary& m) {
  nlohmann::json mj = nlohmann::json::object();
  Put(mj, "num_layers", m.num_layers);
  Put(mj, "hidden_size", m.hidden_size);
  Put(mj, "ffn_hidden_size", m.ffn_hidden_size);
  Put(mj, "num_attention_heads", m.num_attention_heads);
  Put(mj, "group_query_attention", m.group_query_attention);
  Put(mj, "num_query_groups", m.num_query_groups);
  Put(mj, "kv_channels", m.kv_channels);
  Put(mj, "padded_vocab_size", m.padded_vocab_size);
  if (!m.vocab_source.empty()) mj["vocab_source"] = m.vocab_source;
  Put(mj, "vocab_size", m.vocab_size);
  Put(mj, "max_position_embeddings", m.max_position_embeddings);
  Put(mj, "seq_length", m.seq_length);
  Put(mj, "num_experts", m.num_experts);
  Put(mj, "moe_router_topk", m.moe_router_topk);
  Put(mj, "moe_ffn_hidden_size", m.moe_ffn_hidden_size);
  Put(mj, "normalization", m.normalization);
  Put(mj, "swiglu", m.swiglu);
  Put(mj, "untie_embeddings_and_output_weights", m.untie_embeddings_and_output_weights);
  Put(mj, "position_embedding_type", m.position_embedding_type);
  Put(mj, "params_dtype", m.params_dtype);
  mj["family"] = m.family;
  mj["family_reason"] = ValidUtf8(m.family_reason);
  return mj;
}

std::vector<std::string> ToText(const ModelSummary& m) {
  std::vector<std::string> out;
  std::string t = StrCat("model: ", m.family);
  if (!m.family_reason.empty()) t += StrCat(" (", m.family_reason, ")");
  out.push_back(t);
  std::vector<std::string> p;
  if (m.num_layers) p.push_back(StrCat("layers=", *m.num_layers));
  if (m.hidden_size) p.push_back(StrCat("hidden=", *m.hidden_size));
  if (m.ffn_hidden_size) p.push_back(StrCat("ffn=", *m.ffn_hidden_size));
  if (m.num_attention_heads) p.push_back(StrCat("heads=", *m.num_attention_heads));
  if (m.group_query_attention.value_or(false) && m.num_query_groups) {
    p.push_back(StrCat("query_groups=", *m.num_query_groups));
  }
  if (m.kv_channels) p.push_back(StrCat("kv_channels=", *m.kv_channels));
  if (m.padded_vocab_size) {
    p.push_back(StrCat("padded_vocab=", *m.padded_vocab_size,
                       m.vocab_source == "embedding shape" ? " (from embedding)" : ""));
  }
  if (m.max_position_embeddings) p.push_back(StrCat("max_pos=", *m.max_position_embeddings));
  if (m.seq_length) p.push_back(StrCat("seq_len=", *m.seq_length));
  if (m.num_experts.value_or(0) > 0) {
    p.push_back(StrCat("experts=", *m.num_experts));
    if (m.moe_router_topk) p.push_back(StrCat("topk=", *m.moe_router_topk));
  }
  if (m.untie_embeddings_and_output_weights) {
    p.push_back(*m.untie_embeddings_and_output_weights ? "untied output" : "tied embeddings");
  }
  if (m.params_dtype) p.push_back(StrCat("dtype=", *m.params_dtype));
  if (!p.empty()) out.push_back(StrCat("  ", fmt::format("{}", fmt::join(p, " "))));
  return out;
}

}  // namespace ckpt::model
