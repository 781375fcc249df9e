// Hand-built inputs for the megatron and model tests: dcp::Metadata and pickle
// values.
#ifndef CKPT_TESTS_UNIT_MEGATRON_MEGATRON_TESTUTIL_H_
#define CKPT_TESTS_UNIT_MEGATRON_MEGATRON_TESTUTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "format/dcp/metadata.h"
#include "format/pickle/value.h"

namespace ckpt::megatron::testing {

struct ChunkSpec {
  std::vector<int64_t> offsets;
  std::vector<int64_t> sizes;
  std::string file;
  uint64_t length = 100;
};

inline void AddTensor(dcp::Metadata* md, const std::string& key, std::vector<int64_t> size,
                      const std::vector<ChunkSpec>& chunks, DType dtype = DType::kBFloat16) {
  dcp::Entry e;
  e.key = key;
  e.type = dcp::EntryType::kTensor;
  e.dtype = dtype;
  e.size = std::move(size);
  int64_t entry_idx = static_cast<int64_t>(md->entries.size());
  for (const ChunkSpec& c : chunks) {
    dcp::StorageItem it;
    it.fqn = md->Keep(key);
    it.has_offset = true;
    it.offset = md->Keep(c.offsets);
    it.relative_path = md->Keep(c.file);
    it.length = c.length;
    it.entry = entry_idx;
    dcp::Chunk ch;
    ch.offsets = md->Keep(c.offsets);
    ch.sizes = md->Keep(c.sizes);
    ch.item = static_cast<int64_t>(md->items.size());
    md->items.push_back(std::move(it));
    e.chunks.push_back(std::move(ch));
  }
  md->entry_index[key] = entry_idx;
  md->entries.push_back(std::move(e));
}

inline void AddBytes(dcp::Metadata* md, const std::string& key, const std::string& file,
                     uint64_t length = 50) {
  dcp::Entry e;
  e.key = key;
  e.type = dcp::EntryType::kBytes;
  int64_t entry_idx = static_cast<int64_t>(md->entries.size());
  dcp::StorageItem it;
  it.fqn = md->Keep(key);
  it.relative_path = md->Keep(file);
  it.length = length;
  it.entry = entry_idx;
  e.item = static_cast<int64_t>(md->items.size());
  md->items.push_back(std::move(it));
  md->entry_index[key] = entry_idx;
  md->entries.push_back(std::move(e));
}

// Megatron's default rank order tp-cp-ep-dp-pp: rank = tp + TP*(dp + DP*pp).
inline std::string File(int64_t tp, int64_t dp, int64_t pp, int64_t TP, int64_t DP) {
  return "__" + std::to_string(tp + TP * (dp + DP * pp)) + "_0.distcp";
}

struct GptSpec {
  int64_t tp = 2, pp = 2, dp = 2;
  int64_t layers = 4, hidden = 8, ffn = 16, vocab = 128;
  int64_t qkv_rows = 16;  // (nq + 2ng) * d
  bool swiglu = true;
  bool rmsnorm = true;
  bool stacked = true;
  bool tied = false;
  int64_t experts = 0;  // > 0: MoE layers with expert fc1/fc2 and a router
  int64_t etp = 1;
  bool optimizer = true;
};

// A torch_dist .metadata as Megatron-LM would write for spec (no FPS: DP rank
// 0 of each (TP, PP) slice writes the model; optimizer buckets on every rank).
inline dcp::Metadata MakeGpt(const GptSpec& s) {
  dcp::Metadata md;
  auto f = [&](int64_t tp, int64_t pp) { return File(tp, 0, pp, s.tp, s.dp); };
  int64_t layers_per_stage = s.layers / s.pp;
  auto stage_of = [&](int64_t l) { return l / layers_per_stage; };
  // Embedding (first stage), TP-split rows.
  {
    std::vector<ChunkSpec> cs;
    for (int64_t r = 0; r < s.tp; ++r) {
      cs.push_back({{r * s.vocab / s.tp, 0}, {s.vocab / s.tp, s.hidden}, f(r, 0)});
    }
    AddTensor(&md, "embedding.word_embeddings.weight", {s.vocab, s.hidden}, cs);
  }
  auto layer_tensor = [&](const std::string& suffix, std::vector<int64_t> shape, int tp_axis,
                          int64_t parts) {
    // tp_axis: index into shape (without the layer axis), -1 = replicated.
    if (s.stacked) {
      std::vector<ChunkSpec> cs;
      std::vector<int64_t> gshape = {s.layers};
      gshape.insert(gshape.end(), shape.begin(), shape.end());
      for (int64_t l = 0; l < s.layers; ++l) {
        for (int64_t r = 0; r < (tp_axis < 0 ? 1 : parts); ++r) {
          std::vector<int64_t> off(gshape.size(), 0), sz = gshape;
          off[0] = l;
          sz[0] = 1;
          if (tp_axis >= 0) {
            sz[tp_axis + 1] = shape[tp_axis] / parts;
            off[tp_axis + 1] = r * sz[tp_axis + 1];
          }
          cs.push_back({off, sz, f(tp_axis < 0 ? 0 : r % s.tp, stage_of(l))});
        }
      }
      AddTensor(&md, "decoder.layers." + suffix, gshape, cs);
    } else {
      for (int64_t l = 0; l < s.layers; ++l) {
        std::vector<ChunkSpec> cs;
        for (int64_t r = 0; r < (tp_axis < 0 ? 1 : parts); ++r) {
          std::vector<int64_t> off(shape.size(), 0), sz = shape;
          if (tp_axis >= 0) {
            sz[tp_axis] = shape[tp_axis] / parts;
            off[tp_axis] = r * sz[tp_axis];
          }
          cs.push_back({off, sz, f(tp_axis < 0 ? 0 : r % s.tp, stage_of(l))});
        }
        AddTensor(&md, "decoder.layers." + std::to_string(l) + "." + suffix, shape, cs);
      }
    }
  };
  layer_tensor("self_attention.linear_qkv.layer_norm_weight", {s.hidden}, -1, 1);
  if (!s.rmsnorm) layer_tensor("self_attention.linear_qkv.layer_norm_bias", {s.hidden}, -1, 1);
  layer_tensor("self_attention.linear_qkv.weight", {s.qkv_rows, s.hidden}, 0, s.tp);
  layer_tensor("self_attention.linear_proj.weight", {s.hidden, s.qkv_rows / 2}, 1, s.tp);
  if (s.experts == 0) {
    layer_tensor("mlp.linear_fc1.layer_norm_weight", {s.hidden}, -1, 1);
    // SwiGLU: 2*TP chunks along the row axis (§3.1).
    layer_tensor("mlp.linear_fc1.weight", {(s.swiglu ? 2 : 1) * s.ffn, s.hidden}, 0,
                 s.swiglu ? 2 * s.tp : s.tp);
    layer_tensor("mlp.linear_fc2.weight", {s.hidden, s.ffn}, 1, s.tp);
  } else {
    layer_tensor("pre_mlp_layernorm.weight", {s.hidden}, -1, 1);
    layer_tensor("mlp.router.weight", {s.experts, s.hidden}, -1, 1);
    // Expert axis is a prepended axis: one chunk per expert (and ETP shard).
    std::vector<ChunkSpec> c1, c2;
    for (int64_t l = 0; l < s.layers; ++l) {
      for (int64_t e = 0; e < s.experts; ++e) {
        for (int64_t r = 0; r < s.etp; ++r) {
          int64_t rows = (s.swiglu ? 2 : 1) * s.ffn;
          c1.push_back({{l, e, r * rows / s.etp, 0}, {1, 1, rows / s.etp, s.hidden}, f(0, stage_of(l))});
          c2.push_back({{l, e, 0, r * s.ffn / s.etp}, {1, 1, s.hidden, s.ffn / s.etp}, f(0, stage_of(l))});
        }
      }
    }
    AddTensor(&md, "decoder.layers.mlp.experts.experts.linear_fc1.weight",
              {s.layers, s.experts, (s.swiglu ? 2 : 1) * s.ffn, s.hidden}, c1);
    AddTensor(&md, "decoder.layers.mlp.experts.experts.linear_fc2.weight",
              {s.layers, s.experts, s.hidden, s.ffn}, c2);
  }
  for (int64_t l = 0; l < s.layers; ++l) {
    AddBytes(&md,
             "decoder.layers.self_attention.linear_qkv._extra_state/shard_" + std::to_string(l) + "_" +
                 std::to_string(s.layers),
             f(0, stage_of(l)));
  }
  AddTensor(&md, "decoder.final_layernorm.weight", {s.hidden}, {{{0}, {s.hidden}, f(0, s.pp - 1)}});
  if (!s.tied) {
    std::vector<ChunkSpec> cs;
    for (int64_t r = 0; r < s.tp; ++r) {
      cs.push_back({{r * s.vocab / s.tp, 0}, {s.vocab / s.tp, s.hidden}, f(r, s.pp - 1)});
    }
    AddTensor(&md, "output_layer.weight", {s.vocab, s.hidden}, cs);
  }
  for (int64_t p = 0; p < s.pp; ++p) {
    for (int64_t t = 0; t < s.tp; ++t) {
      AddBytes(&md,
               "rng_state/shard_" + std::to_string(p) + "." + std::to_string(t) + "_" +
                   std::to_string(s.pp) + "." + std::to_string(s.tp),
               f(t, p));
    }
  }
  int64_t world = s.tp * s.pp * s.dp;
  for (int64_t r = 0; r < world; ++r) {
    AddBytes(&md,
             "rerun_state_machine_state/shard_" + std::to_string(r) + "_" + std::to_string(world),
             "__" + std::to_string(r) + "_0.distcp");
  }
  if (s.optimizer) {
    // dp_reshardable: per model-parallel rank I, 1-D bucket tensors split over DP.
    for (int64_t p = 0; p < s.pp; ++p) {
      for (int64_t t = 0; t < s.tp; ++t) {
        int64_t I = t + s.tp * p;
        std::string base = "optimizer.distributed.dp_group_idx_" + std::to_string(I) +
                           ".gbuf_idx_0.dtype_(torch.bfloat16, torch.float32).bucket_idx_0.";
        for (const char* st : {"param", "exp_avg", "exp_avg_sq"}) {
          std::vector<ChunkSpec> cs;
          for (int64_t d = 0; d < s.dp; ++d) {
            cs.push_back({{d * 1000}, {1000}, File(t, d, p, s.tp, s.dp), 4000});
          }
          AddTensor(&md, base + st, {1000 * s.dp}, cs, DType::kFloat32);
        }
        AddBytes(&md, "optimizer.distributed.dp_group_idx_" + std::to_string(I) + ".optimizer/shard_0_1",
                 f(t, p));
      }
    }
  }
  return md;
}

// pickle helpers
inline void Set(pickle::Arena& a, pickle::Value* dict, const std::string& k, pickle::Value* v) {
  a.SetItem(dict, a.String(k), v);
}

inline pickle::Value* Namespace(pickle::Arena& a, pickle::Value* fields) {
  pickle::Value* o = a.New(pickle::Kind::kObject);
  a.SetCallable(o, a.Global("argparse", "Namespace"));
  a.SetArgs(o, a.Tuple({}));
  o->newobj = true;
  a.SetState(o, fields);
  return o;
}

// The args (and common dict fields) MakeCommon writes.
struct CommonArgs {
  int64_t tp = 2, pp = 2, world = 8, layers = 4, hidden = 8, ffn = 16, vocab = 128;
  int64_t experts = -1;  // -1: field absent
  bool swiglu = true;
  std::string norm = "RMSNorm", pos = "rope";
  bool distributed = true;
  bool with_content_metadata = true;
};

// A Megatron-LM common dict for `s`: {args, checkpoint_version, iteration, ...}
// (args of a TP=2 PP=2 DP=2 Llama-like GPT by default).
inline pickle::Value* MakeCommon(pickle::Arena& a, const CommonArgs& s) {
  pickle::Value* f = a.Dict();
  Set(a, f, "tensor_model_parallel_size", a.Int(s.tp));
  Set(a, f, "pipeline_model_parallel_size", a.Int(s.pp));
  Set(a, f, "context_parallel_size", a.Int(1));
  Set(a, f, "expert_model_parallel_size", a.Int(1));
  Set(a, f, "expert_tensor_parallel_size", a.None());
  Set(a, f, "world_size", a.Int(s.world));
  Set(a, f, "sequence_parallel", a.Bool(true));
  Set(a, f, "virtual_pipeline_model_parallel_size", a.None());
  Set(a, f, "num_layers", a.Int(s.layers));
  Set(a, f, "hidden_size", a.Int(s.hidden));
  Set(a, f, "ffn_hidden_size", a.Int(s.ffn));
  Set(a, f, "num_attention_heads", a.Int(4));
  Set(a, f, "group_query_attention", a.Bool(true));
  Set(a, f, "num_query_groups", a.Int(2));
  Set(a, f, "kv_channels", a.Int(2));
  Set(a, f, "padded_vocab_size", a.Int(s.vocab));
  Set(a, f, "max_position_embeddings", a.Int(4096));
  Set(a, f, "seq_length", a.Int(2048));
  if (s.experts >= 0) Set(a, f, "num_experts", s.experts == 0 ? a.None() : a.Int(s.experts));
  Set(a, f, "moe_router_topk", a.Int(2));
  Set(a, f, "normalization", a.String(s.norm));
  Set(a, f, "swiglu", a.Bool(s.swiglu));
  Set(a, f, "untie_embeddings_and_output_weights", a.Bool(true));
  Set(a, f, "position_embedding_type", a.String(s.pos));
  Set(a, f, "params_dtype", a.Global("torch", "bfloat16"));
  Set(a, f, "bf16", a.Bool(true));
  Set(a, f, "optimizer", a.String("adam"));
  Set(a, f, "use_distributed_optimizer", a.Bool(s.distributed));
  Set(a, f, "ckpt_fully_parallel_save", a.Bool(true));

  pickle::Value* root = a.Dict();
  Set(a, root, "args", Namespace(a, f));
  Set(a, root, "checkpoint_version", a.Float(3.0));
  Set(a, root, "iteration", a.Int(100));
  pickle::Value* opt = a.Dict();
  pickle::Value* inner = a.Dict();
  Set(a, inner, "param_groups", a.List({}));
  Set(a, opt, "optimizer", inner);
  Set(a, opt, "param_state_sharding_type", a.String("dp_reshardable"));
  Set(a, root, "optimizer", opt);
  pickle::Value* sched = a.Dict();
  Set(a, sched, "max_lr", a.Float(3e-4));
  Set(a, sched, "num_steps", a.Int(800));
  Set(a, root, "opt_param_scheduler", sched);
  Set(a, root, "num_floating_point_operations_so_far", a.Int(123456));
  if (s.with_content_metadata) {
    pickle::Value* cm = a.Dict();
    Set(a, cm, "distrib_optim_sharding_type", a.String("dp_reshardable"));
    Set(a, cm, "singleton_local_shards", a.Bool(false));
    Set(a, cm, "chained_optim_avoid_prefix", a.Bool(true));
    Set(a, root, "content_metadata", cm);
  }
  pickle::Value* rerun = a.Dict();
  Set(a, rerun, "mode", a.String("disabled"));
  Set(a, root, "rerun_state_machine", rerun);
  return root;
}

}  // namespace ckpt::megatron::testing

#endif  // CKPT_TESTS_UNIT_MEGATRON_MEGATRON_TESTUTIL_H_
