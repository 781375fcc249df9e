// The model part of `inspect`'s Megatron summary (internal to the model layer
// and its caller src/checkpoint/megatron_reader.cc).
//
// megatron::Summarize (format/megatron) reports what the files show: the
// parallel layout (args and chunk grid), the optimizer, the key classes.
// SummarizeModel adds what the model is: the GPT shape Megatron-LM's `args`
// describe (layers, hidden, ffn, heads, groups, vocabulary, experts, norm,
// positions, dtype), gaps filled and args cross-checked from the stored
// tensors' shapes and names, and a family guess. The checkpoint layer merges
// the two into `details.megatron.summary` and the text lines of `inspect`
// (docs/format.md §8.6).
//
// The family guess is descriptive text ("Llama-like", "Mixtral-like (MoE)",
// "GPT (GPT-2/3 style)", "GPT MoE", "GPT", "unknown"), not a model::Family:
// it is made from whatever args and keys are there, where GuessFamily needs a
// whole ModelConfig, and it names what it saw in `family_reason`.
//
// Never fails: what cannot be told stays unset. Thread-safety: pure
// functions. Lifetime: nothing returned points into `common` or `md`.
#ifndef CKPT_MODEL_SUMMARY_H_
#define CKPT_MODEL_SUMMARY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "format/dcp/metadata.h"
#include "format/megatron/megatron.h"

namespace ckpt::model {

// What the stored tensors' shapes and names show about the model (docs/format.md
// §8.6, §9.1).
struct ShapeFacts {
  std::optional<int64_t> num_layers;         // stacked leading axis, or max per-layer index + 1
  std::optional<int64_t> num_experts;        // router / expert axis, or max per-expert index + 1
  std::optional<int64_t> hidden_size;        // embedding / final norm
  std::optional<int64_t> padded_vocab_size;  // embedding rows
  std::optional<int64_t> ffn_hidden_size;    // dense fc2 last axis
  std::optional<bool> swiglu;                // fc1 rows == 2 * fc2 columns
  std::optional<bool> layernorm_bias;        // a layer-norm bias exists (LayerNorm, not RMSNorm)
  std::optional<bool> learned_position_embeddings;
  std::optional<bool> untied_output_layer;   // output_layer.weight present
};

struct ModelSummary {
  ShapeFacts from_shapes;
  // From args; what args do not give, from from_shapes.
  std::optional<int64_t> num_layers, hidden_size, ffn_hidden_size, num_attention_heads,
      num_query_groups, kv_channels, padded_vocab_size, vocab_size, max_position_embeddings,
      seq_length, num_experts, moe_router_topk, moe_ffn_hidden_size;
  std::optional<bool> group_query_attention, swiglu, untie_embeddings_and_output_weights;
  std::optional<std::string> normalization, position_embedding_type, params_dtype;
  std::string vocab_source;   // "args.padded_vocab_size" / "embedding shape" / ""
  std::string family;         // "Llama-like", "Mixtral-like (MoE)", "GPT", ... or "unknown"
  std::string family_reason;  // "swiglu + RMSNorm + rope"
  // Each disagreement of args with the shapes, e.g.
  // "num_layers: args 6, chunk grid 4 (decoder.layers)"; the caller lists
  // them after megatron::Summary::mismatches.
  std::vector<std::string> mismatches;
};

// Summarizes the model of a torch_dist checkpoint. `common` may be null (no
// common.pt / no common_state): then only the shapes tell. Never fails.
ModelSummary SummarizeModel(const megatron::CommonState* common, const dcp::Metadata& md);

// `details.megatron.summary.model` (unset facts are omitted).
nlohmann::json ToJson(const ModelSummary& s);
// The model facts of `details.megatron.summary.layout_from_chunks`, merged
// there with megatron::GridFacts (unset facts are omitted).
nlohmann::json ToJson(const ShapeFacts& f);

// Human lines: "model: Llama-like (swiglu + RMSNorm + rope)", then the sizes
// ("  layers=4 hidden=8 ffn=16 heads=4 ...") when any is known.
std::vector<std::string> ToText(const ModelSummary& s);

}  // namespace ckpt::model

#endif  // CKPT_MODEL_SUMMARY_H_
