// Layout and model summary: args from the common dict, cross-checked against
// the chunk grid of `.metadata` (docs/megatron-format.md §2.6, §3, §3.6).
#include <algorithm>
#include <set>
#include <string>

#include <fmt/ranges.h>

#include "format/megatron/internal.h"
#include "format/megatron/megatron.h"
#include "util/strings.h"

namespace ckpt::megatron {
namespace {

using namespace internal_megatron;  // NOLINT

const dcp::Entry* FindTensor(const dcp::Metadata& md, std::string_view key) {
  int64_t i = md.FindEntry(key);
  if (i < 0 || static_cast<size_t>(i) >= md.entries.size()) {
    // FindEntry relies on entry_index; fall back to a scan for hand-built metadata.
    for (const dcp::Entry& e : md.entries) {
      if (e.key == key) return e.type == dcp::EntryType::kTensor ? &e : nullptr;
    }
    return nullptr;
  }
  const dcp::Entry& e = md.entries[i];
  return e.type == dcp::EntryType::kTensor ? &e : nullptr;
}

// Number of distinct chunk offsets along `axis`.
std::optional<int64_t> DistinctOffsets(const dcp::Entry& e, size_t axis) {
  if (axis >= e.size.size() || e.chunks.empty()) return std::nullopt;
  std::set<int64_t> s;
  for (const dcp::Chunk& c : e.chunks) {
    if (axis >= c.offsets.size()) return std::nullopt;
    s.insert(c.offsets[axis]);
  }
  return static_cast<int64_t>(s.size());
}

// A model tensor under its stacked name ("decoder.layers.<suffix>", with the
// layer axis) or, failing that, the per-layer name of the lowest layer
// ("decoder.layers.<i>.<suffix>"). `stacked` tells which one was found.
const dcp::Entry* FindLayerTensor(const dcp::Metadata& md, std::string_view suffix,
                                  const std::vector<int64_t>& layer_ids, bool* stacked) {
  if (const dcp::Entry* e = FindTensor(md, StrCat("decoder.layers.", suffix))) {
    *stacked = true;
    return e;
  }
  for (int64_t i : layer_ids) {
    if (const dcp::Entry* e = FindTensor(md, StrCat("decoder.layers.", i, ".", suffix))) {
      *stacked = false;
      return e;
    }
  }
  return nullptr;
}

// a == 2 * b without overflow (sizes come from the file).
bool IsDouble(int64_t a, int64_t b) { return a >= 0 && b >= 0 && a % 2 == 0 && a / 2 == b; }

GridFacts ReadGrid(const dcp::Metadata& md) {
  GridFacts g;
  std::set<int64_t> layer_ids;
  std::optional<int64_t> stacked_layers;
  bool any_norm_weight = false, any_norm_bias = false;
  for (const dcp::Entry& e : md.entries) {
    bool is_bytes = e.type == dcp::EntryType::kBytes;
    KeyKind kind = Classify(e.key, is_bytes);
    if (is_bytes) {
      auto so = ParseShardedObjectKey(e.key);
      if (!so.has_value()) continue;
      if (kind == KeyKind::kRngState && !g.pp.has_value() && so->shape.size() >= 2 &&
          so->shape[0] > 0 && so->shape[1] > 0) {
        g.pp = so->shape[0];
        g.rng_tp = so->shape[1];
      } else if (kind == KeyKind::kRerunState && !g.world_size.has_value() &&
                 so->shape.size() == 1 && so->shape[0] > 0) {
        g.world_size = so->shape[0];
      }
      continue;
    }
    if (kind != KeyKind::kModel) continue;
    std::string_view rest;
    if (auto li = PerLayerIndex(e.key, "decoder.layers.", &rest)) {
      if (*li >= 0 && *li < (int64_t{1} << 40)) layer_ids.insert(*li);
      g.per_layer_keys = true;
    } else if (StartsWith(e.key, "decoder.layers.") && !e.size.empty() && e.size[0] > 0) {
      g.stacked_layers = true;
      stacked_layers = std::max(stacked_layers.value_or(0), e.size[0]);
    }
    if (EndsWith(e.key, "layer_norm_weight") || EndsWith(e.key, "layernorm.weight")) {
      any_norm_weight = true;
    }
    if (EndsWith(e.key, "layer_norm_bias") || EndsWith(e.key, "layernorm.bias")) any_norm_bias = true;
  }
  if (stacked_layers.has_value()) {
    g.num_layers = stacked_layers;
  } else if (!layer_ids.empty()) {
    g.num_layers = *layer_ids.rbegin() + 1;
  }
  std::vector<int64_t> ids(layer_ids.begin(), layer_ids.end());

  // TP: chunks along the TP axis of a TP-split tensor (§3.1). Column-parallel
  // weights split their second-to-last axis, row-parallel ones the last.
  struct Cand {
    std::string_view suffix;
    bool layer;
    bool row_parallel;
  };
  static constexpr Cand kTpCands[] = {
      {"self_attention.linear_qkv.weight", true, false},
      {"self_attention.linear_proj.weight", true, true},
      {"mlp.linear_fc2.weight", true, true},
      {"embedding.word_embeddings.weight", false, false},
      {"output_layer.weight", false, false},
  };
  for (const Cand& c : kTpCands) {
    bool stacked = false;
    const dcp::Entry* e = c.layer ? FindLayerTensor(md, c.suffix, ids, &stacked) : FindTensor(md, c.suffix);
    if (e == nullptr || e->size.size() < 2) continue;
    size_t axis = c.row_parallel ? e->size.size() - 1 : e->size.size() - 2;
    if (auto n = DistinctOffsets(*e, axis)) {
      g.tp = *n;
      g.tp_key = e->key;
      break;
    }
  }

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

  // Experts (§3.4): router [L, E, H] (or [E, H] per layer); expert fc2 [L, E, H, F_e].
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
  if (efc2 != nullptr && efc2->size.size() >= 2) {
    g.etp = DistinctOffsets(*efc2, efc2->size.size() - 1);
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
      if (auto ei = PerLayerIndex(std::string_view(e.key).substr(p + 1), "mlp.experts.experts.", &rest)) {
        if (*ei >= 0 && *ei < (int64_t{1} << 40)) max_e = std::max(max_e.value_or(0), *ei + 1);
      }
    }
    g.num_experts = max_e;
  }
  return g;
}

std::optional<std::string> DTypeArg(const CommonState& c) {
  if (auto s = ArgString(c, "params_dtype")) {
    std::string v = *s;
    if (StartsWith(v, "torch.")) v = v.substr(6);
    return v;
  }
  if (ArgBool(c, "bf16").value_or(false)) return "bfloat16";
  if (ArgBool(c, "fp16").value_or(false)) return "float16";
  if (ArgBool(c, "bf16").has_value() || ArgBool(c, "fp16").has_value()) return "float32";
  return std::nullopt;
}

void Compare(std::string_view what, const std::optional<int64_t>& args, const std::optional<int64_t>& grid,
             std::string_view grid_source, std::vector<std::string>* out) {
  if (!args.has_value() || !grid.has_value() || *args == *grid) return;
  out->push_back(StrCat(what, ": args ", *args, ", chunk grid ", *grid,
                        grid_source.empty() ? "" : StrCat(" (", grid_source, ")")));
}

}  // namespace

Summary Summarize(const CommonState* common, const dcp::Metadata& md) {
  Summary s;
  s.from_chunks = ReadGrid(md);
  const GridFacts& g = s.from_chunks;
  for (const dcp::Entry& e : md.entries) {
    KeyKind k = Classify(e.key, e.type == dcp::EntryType::kBytes);
    s.keys_by_kind[k]++;
    if (k == KeyKind::kOptimizerState) s.optimizer.state_keys++;
    if (k == KeyKind::kOptimizerParam) s.optimizer.param_keys++;
  }

  ParallelLayout& a = s.from_args;
  auto& m = s.model;
  if (common != nullptr) {
    const CommonState& c = *common;
    s.has_common = true;
    s.iteration = c.iteration;
    s.checkpoint_version = c.checkpoint_version;
    s.num_floating_point_operations_so_far = c.num_floating_point_operations_so_far;
    s.singleton_local_shards = c.singleton_local_shards;

    a.tp = ArgInt(c, "tensor_model_parallel_size");
    a.pp = ArgInt(c, "pipeline_model_parallel_size");
    a.cp = ArgInt(c, "context_parallel_size");
    a.ep = ArgInt(c, "expert_model_parallel_size");
    a.etp = ArgInt(c, "expert_tensor_parallel_size");
    a.world_size = ArgInt(c, "world_size");
    a.sequence_parallel = ArgBool(c, "sequence_parallel");
    a.dp = ArgInt(c, "data_parallel_size");
    if (!a.dp.has_value() && a.world_size && a.tp && a.pp) {
      int64_t cp = a.cp.value_or(1);
      if (*a.tp > 0 && *a.pp > 0 && cp > 0 && *a.tp <= INT64_MAX / *a.pp &&
          *a.tp * *a.pp <= INT64_MAX / cp) {
        int64_t mp = *a.tp * *a.pp * cp;
        if (*a.world_size % mp == 0) a.dp = *a.world_size / mp;
      }
    }
    a.vpp = ArgInt(c, "virtual_pipeline_model_parallel_size");
    m.num_layers = ArgInt(c, "num_layers");
    if (!a.vpp.has_value()) {
      auto per = ArgInt(c, "num_layers_per_virtual_pipeline_stage");
      if (per && m.num_layers && a.pp && *per > 0 && *a.pp > 0 && *a.pp <= INT64_MAX / *per &&
          *m.num_layers % (*a.pp * *per) == 0) {
        a.vpp = *m.num_layers / (*a.pp * *per);
      }
    }

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

    s.optimizer.type = ArgString(c, "optimizer");
    s.optimizer.use_distributed_optimizer = ArgBool(c, "use_distributed_optimizer");
    if (c.distrib_optim_sharding_type.has_value()) {
      s.optimizer.sharding_type = c.distrib_optim_sharding_type;
      s.optimizer.sharding_type_source = "content_metadata";
    } else if (!c.param_state_sharding_types.empty()) {
      s.optimizer.sharding_type = c.param_state_sharding_types[0];
      s.optimizer.sharding_type_source = "optimizer.param_state_sharding_type";
    } else if (s.optimizer.use_distributed_optimizer.value_or(false)) {
      // §1.3: checkpoints from core < 0.13 have no content_metadata.
      bool fps = ArgBool(c, "ckpt_fully_parallel_save").value_or(false);
      s.optimizer.sharding_type = fps ? "fully_sharded_model_space" : "dp_zero_gather_scatter";
      s.optimizer.sharding_type_source = "inferred from args.ckpt_fully_parallel_save";
    }
    if (c.distrib_optim_sharding_type.has_value() && !c.param_state_sharding_types.empty() &&
        *c.distrib_optim_sharding_type != c.param_state_sharding_types[0]) {
      s.mismatches.push_back(StrCat("optimizer sharding type: content_metadata ",
                                    *c.distrib_optim_sharding_type,
                                    ", optimizer.param_state_sharding_type ",
                                    c.param_state_sharding_types[0]));
    }
    s.optimizer.present = c.optimizer != nullptr;
  }
  s.optimizer.present = s.optimizer.present || s.optimizer.state_keys + s.optimizer.param_keys > 0;

  // Cross-check args against the chunk grid.
  Compare("TP", a.tp, g.tp, g.tp_key, &s.mismatches);
  Compare("TP", a.tp, g.rng_tp, "rng_state shape", &s.mismatches);
  Compare("PP", a.pp, g.pp, "rng_state shape", &s.mismatches);
  Compare("world size", a.world_size, g.world_size, "rerun_state_machine_state shape", &s.mismatches);
  // expert_tensor_parallel_size defaults to TP when unset (validate_args).
  Compare("ETP", a.etp.has_value() ? a.etp : (g.etp.has_value() ? a.tp : std::nullopt), g.etp,
          "expert linear_fc2 chunks", &s.mismatches);
  Compare("num_layers", m.num_layers, g.num_layers, "decoder.layers", &s.mismatches);
  if (m.num_experts.value_or(0) > 0 || g.num_experts.has_value()) {
    Compare("num_experts", m.num_experts, g.num_experts, "expert axis", &s.mismatches);
  }
  Compare("hidden_size", m.hidden_size, g.hidden_size, "embedding", &s.mismatches);
  Compare("padded_vocab_size", m.padded_vocab_size, g.padded_vocab_size, "embedding rows",
          &s.mismatches);
  Compare("ffn_hidden_size", m.ffn_hidden_size, g.ffn_hidden_size, "mlp.linear_fc2", &s.mismatches);
  s.layout_mismatch = !s.mismatches.empty();

  // Fill model facts the args did not give from the grid.
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
  m.family_reason = StrCat(Join(why, " + "));

  // Optimizer sharding type from key names when nothing else told.
  if (!s.optimizer.sharding_type.has_value() && s.optimizer.present) {
    std::optional<std::string> t;
    for (const dcp::Entry& e : md.entries) {
      std::string_view k = StripChainedPrefix(e.key);
      if (k.find(".bucket_idx_") != std::string_view::npos && StartsWith(k, "optimizer.distributed.")) {
        t = "dp_reshardable";
      } else if (StartsWith(k, "optimizer.distributed.") && k.find(".param_state/") != std::string_view::npos) {
        t = "dp_zero_gather_scatter";
      } else if (StartsWith(k, "optimizer.state.param.")) {
        t = "fully_reshardable";
      }
      if (t) break;
    }
    if (t) {
      s.optimizer.sharding_type = t;
      s.optimizer.sharding_type_source = "inferred from key names";
    }
  }
  return s;
}

namespace {

// Strings from the checkpoint may hold invalid UTF-8, on which
// nlohmann::json::dump() throws; replace bad bytes with U+FFFD here.
std::string ValidUtf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = n > 0 && i + n <= s.size();
    uint32_t cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t k = 1; ok && k < n; ++k) {
      unsigned char cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (ok) {
      static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
      ok = cp >= kMin[n] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (ok) {
      out.append(s.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

template <typename T>
void Put(nlohmann::json& j, const char* k, const std::optional<T>& v) {
  if (v.has_value()) j[k] = *v;
}
void Put(nlohmann::json& j, const char* k, const std::optional<std::string>& v) {
  if (v.has_value()) j[k] = ValidUtf8(*v);
}

nlohmann::json LayoutJson(const ParallelLayout& l) {
  nlohmann::json j = nlohmann::json::object();
  Put(j, "tp", l.tp);
  Put(j, "pp", l.pp);
  Put(j, "dp", l.dp);
  Put(j, "cp", l.cp);
  Put(j, "ep", l.ep);
  Put(j, "etp", l.etp);
  Put(j, "vpp", l.vpp);
  Put(j, "world_size", l.world_size);
  Put(j, "sequence_parallel", l.sequence_parallel);
  return j;
}

std::string Opt(const std::optional<int64_t>& v) { return v ? StrCat(*v) : "?"; }

}  // namespace

nlohmann::json ToJson(const Summary& s) {
  nlohmann::json j = nlohmann::json::object();
  j["has_common"] = s.has_common;
  Put(j, "iteration", s.iteration);
  Put(j, "checkpoint_version", s.checkpoint_version);
  Put(j, "num_floating_point_operations_so_far", s.num_floating_point_operations_so_far);
  Put(j, "singleton_local_shards", s.singleton_local_shards);
  j["layout_from_args"] = LayoutJson(s.from_args);
  const GridFacts& g = s.from_chunks;
  nlohmann::json gj = nlohmann::json::object();
  Put(gj, "tp", g.tp);
  if (!g.tp_key.empty()) gj["tp_key"] = ValidUtf8(g.tp_key);
  Put(gj, "pp", g.pp);
  Put(gj, "rng_tp", g.rng_tp);
  Put(gj, "world_size", g.world_size);
  Put(gj, "etp", g.etp);
  Put(gj, "num_layers", g.num_layers);
  gj["stacked_layers"] = g.stacked_layers;
  gj["per_layer_keys"] = g.per_layer_keys;
  Put(gj, "num_experts", g.num_experts);
  Put(gj, "hidden_size", g.hidden_size);
  Put(gj, "padded_vocab_size", g.padded_vocab_size);
  Put(gj, "ffn_hidden_size", g.ffn_hidden_size);
  Put(gj, "swiglu", g.swiglu);
  Put(gj, "layernorm_bias", g.layernorm_bias);
  Put(gj, "learned_position_embeddings", g.learned_position_embeddings);
  Put(gj, "untied_output_layer", g.untied_output_layer);
  j["layout_from_chunks"] = gj;
  j["layout_mismatch"] = s.layout_mismatch;
  j["mismatches"] = nlohmann::json::array();
  for (const std::string& mm : s.mismatches) j["mismatches"].push_back(ValidUtf8(mm));
  const auto& m = s.model;
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
  j["model"] = mj;
  const auto& o = s.optimizer;
  nlohmann::json oj = nlohmann::json::object();
  oj["present"] = o.present;
  Put(oj, "type", o.type);
  Put(oj, "use_distributed_optimizer", o.use_distributed_optimizer);
  Put(oj, "sharding_type", o.sharding_type);
  if (!o.sharding_type_source.empty()) oj["sharding_type_source"] = ValidUtf8(o.sharding_type_source);
  oj["state_keys"] = o.state_keys;
  oj["param_keys"] = o.param_keys;
  j["optimizer"] = oj;
  nlohmann::json kj = nlohmann::json::object();
  for (const auto& [k, n] : s.keys_by_kind) kj[std::string(KeyKindName(k))] = n;
  j["keys_by_kind"] = kj;
  return j;
}

std::vector<std::string> ToText(const Summary& s) {
  std::vector<std::string> out;
  if (s.iteration || s.checkpoint_version) {
    std::string t = StrCat("iteration: ", Opt(s.iteration));
    if (s.checkpoint_version) t += fmt::format(" (checkpoint_version {})", *s.checkpoint_version);
    out.push_back(t);
  }
  const ParallelLayout& a = s.from_args;
  const GridFacts& g = s.from_chunks;
  bool have_args = a.tp || a.pp || a.world_size;
  std::string grid;
  {
    std::vector<std::string> parts;
    if (g.tp) parts.push_back(StrCat("TP=", *g.tp));
    if (g.pp) parts.push_back(StrCat("PP=", *g.pp));
    if (g.etp) parts.push_back(StrCat("ETP=", *g.etp));
    if (g.world_size) parts.push_back(StrCat("world ", *g.world_size));
    grid = StrCat(Join(parts, " "));
  }
  if (have_args) {
    std::string t = StrCat("parallel layout: TP=", Opt(a.tp), " PP=", Opt(a.pp), " DP=", Opt(a.dp));
    if (a.cp.value_or(1) != 1) t += StrCat(" CP=", *a.cp);
    if (a.ep.value_or(1) != 1) t += StrCat(" EP=", *a.ep);
    if (a.etp && a.etp != a.tp) t += StrCat(" ETP=", *a.etp);
    if (a.vpp) t += StrCat(" VPP=", *a.vpp);
    if (a.sequence_parallel.value_or(false)) t += " SP";
    if (a.world_size) t += StrCat(" (world ", *a.world_size, ")");
    t += " — from args";
    if (s.layout_mismatch) {
      t += "; chunk grid DISAGREES";
    } else if (!grid.empty()) {
      t += "; chunk grid agrees";
    }
    out.push_back(t);
  } else if (!grid.empty()) {
    out.push_back(StrCat("parallel layout: ", grid, " — from the chunk grid (no args)"));
  } else {
    out.push_back("parallel layout: unknown");
  }
  for (const std::string& mm : s.mismatches) out.push_back(StrCat("  mismatch: ", mm));

  const auto& m = s.model;
  {
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
    if (!p.empty()) out.push_back(StrCat("  ", Join(p, " ")));
  }
  const auto& o = s.optimizer;
  if (!o.present) {
    out.push_back("optimizer: none");
  } else {
    std::string t = StrCat("optimizer: ", o.type.value_or("present"));
    if (o.use_distributed_optimizer) {
      t += *o.use_distributed_optimizer ? ", distributed" : ", not distributed";
    }
    if (o.sharding_type) t += StrCat(", sharding ", *o.sharding_type, " (", o.sharding_type_source, ")");
    t += StrCat(", ", o.state_keys + o.param_keys, " keys (", o.param_keys, " fp32 main params)");
    out.push_back(t);
  }
  std::vector<std::string> kinds;
  for (const auto& [k, n] : s.keys_by_kind) kinds.push_back(StrCat(KeyKindName(k), " ", n));
  if (!kinds.empty()) out.push_back(StrCat("keys: ", Join(kinds, ", ")));
  return out;
}

}  // namespace ckpt::megatron
