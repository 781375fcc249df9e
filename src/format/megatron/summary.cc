// Layout and optimizer summary: args from the common dict, cross-checked
// against the chunk grid of `.metadata` (docs/format.md §8.6). What the model
// is (sizes, family) is src/model/summary.cc's.
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

}  // namespace

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

namespace {

GridFacts ReadGrid(const dcp::Metadata& md) {
  GridFacts g;
  std::set<int64_t> layer_ids;
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
    }
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

  // ETP: chunks along the last axis of the experts' fc2 [L, E, H, F_e].
  bool ste2 = false;
  const dcp::Entry* efc2 = FindLayerTensor(md, "mlp.experts.experts.linear_fc2.weight", ids, &ste2);
  if (efc2 != nullptr && efc2->size.size() >= 2) {
    g.etp = DistinctOffsets(*efc2, efc2->size.size() - 1);
  }
  return g;
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
    if (!a.vpp.has_value()) {
      // Older Megatron-LM: num_layers_per_virtual_pipeline_stage instead.
      auto layers = ArgInt(c, "num_layers");
      auto per = ArgInt(c, "num_layers_per_virtual_pipeline_stage");
      if (per && layers && a.pp && *per > 0 && *a.pp > 0 && *a.pp <= INT64_MAX / *per &&
          *layers % (*a.pp * *per) == 0) {
        a.vpp = *layers / (*a.pp * *per);
      }
    }

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
  s.layout_mismatch = !s.mismatches.empty();

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
  gj["stacked_layers"] = g.stacked_layers;
  gj["per_layer_keys"] = g.per_layer_keys;
  j["layout_from_chunks"] = gj;
  j["layout_mismatch"] = s.layout_mismatch;
  j["mismatches"] = nlohmann::json::array();
  for (const std::string& mm : s.mismatches) j["mismatches"].push_back(ValidUtf8(mm));
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

std::vector<std::string> LayoutText(const Summary& s) {
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
  return out;
}

std::vector<std::string> ContentsText(const Summary& s) {
  std::vector<std::string> out;
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
