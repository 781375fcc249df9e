// ModelConfig + ParallelLayout -> Megatron-LM's `args` fields.
#include "ckpt/model.h"

namespace ckpt::model {
namespace {

ArgValue I(int64_t v) { return {ArgValue::Kind::kInt, v, 0, ""}; }
ArgValue B(bool v) { return {ArgValue::Kind::kBool, v ? 1 : 0, 0, ""}; }
ArgValue F(double v) { return {ArgValue::Kind::kFloat, 0, v, ""}; }
ArgValue S(std::string v) { return {ArgValue::Kind::kString, 0, 0, std::move(v)}; }
ArgValue None() { return {}; }
ArgValue D(DType d) {
  return {ArgValue::Kind::kTorchDType, 0, 0,
          d == DType::kBFloat16 ? "bfloat16" : d == DType::kFloat16 ? "float16" : "float32"};
}

}  // namespace

std::vector<std::pair<std::string, ArgValue>> MegatronArgs(const ModelConfig& c, const ParallelLayout& l) {
  std::vector<std::pair<std::string, ArgValue>> a = {
      {"num_layers", I(c.num_layers)},
      {"hidden_size", I(c.hidden_size)},
      {"ffn_hidden_size", I(c.ffn_hidden_size)},
      {"num_attention_heads", I(c.num_attention_heads)},
      {"group_query_attention", B(c.num_query_groups != c.num_attention_heads)},
      {"num_query_groups", I(c.num_query_groups)},
      {"kv_channels", I(c.kv_channels)},
      {"vocab_size", c.vocab_size ? I(*c.vocab_size) : None()},
      {"padded_vocab_size", I(c.padded_vocab_size)},
      {"make_vocab_size_divisible_by", I(c.make_vocab_size_divisible_by)},
      {"max_position_embeddings", I(c.max_position_embeddings)},
      {"seq_length", I(c.max_position_embeddings)},
      {"position_embedding_type",
       S(c.positions == Positions::kRope ? "rope" : c.positions == Positions::kLearned ? "learned_absolute" : "none")},
      {"add_position_embedding", B(c.positions == Positions::kLearned)},
      {"rotary_base", I(static_cast<int64_t>(c.rotary_base))},
      {"rotary_percent", F(c.rotary_percent)},
      {"rotary_interleaved", B(c.rotary_interleaved)},
      {"use_rope_scaling", B(c.use_rope_scaling)},
      {"rope_scaling_factor", F(c.rope_scaling_factor)},
      {"rotary_seq_len_interpolation_factor",
       c.seq_len_interpolation_factor ? F(*c.seq_len_interpolation_factor) : None()},
      {"normalization", S(c.norm == Norm::kRMSNorm ? "RMSNorm" : "LayerNorm")},
      {"norm_epsilon", F(c.norm_epsilon)},
      {"apply_layernorm_1p", B(c.apply_layernorm_1p)},
      {"swiglu", B(c.activation == Activation::kSwiGLU)},
      {"openai_gelu", B(c.activation == Activation::kGeluTanh)},
      {"squared_relu", B(c.activation == Activation::kSquaredReLU)},
      {"add_bias_linear", B(c.add_bias_linear)},
      {"add_qkv_bias", B(c.add_qkv_bias || c.add_bias_linear)},
      {"qk_layernorm", B(c.qk_layernorm)},
      {"untie_embeddings_and_output_weights", B(!c.tied_embeddings)},
      {"window_size", None()},
      {"num_experts", c.moe() ? I(c.num_experts) : None()},
      {"moe_router_topk", I(c.moe_router_topk)},
      {"moe_ffn_hidden_size", c.moe() ? I(c.moe_ffn_hidden_size) : None()},
      {"moe_router_pre_softmax", B(c.moe_router_pre_softmax)},
      {"moe_grouped_gemm", B(c.moe_grouped_gemm)},
      {"moe_layer_freq", I(1)},
      {"moe_token_dispatcher_type", S("alltoall")},
      {"params_dtype", D(c.params_dtype)},
      {"bf16", B(c.params_dtype == DType::kBFloat16)},
      {"fp16", B(c.params_dtype == DType::kFloat16)},
      {"tensor_model_parallel_size", I(l.tp)},
      {"pipeline_model_parallel_size", I(l.pp)},
      {"virtual_pipeline_model_parallel_size", l.vpp > 1 ? I(l.vpp) : None()},
      {"context_parallel_size", I(l.cp)},
      {"expert_model_parallel_size", I(l.ep)},
      {"expert_tensor_parallel_size", I(l.etp)},
      {"data_parallel_size", I(l.dp)},
      {"world_size", I(l.world_size())},
      {"decoder_first_pipeline_num_layers", l.first_stage_layers ? I(*l.first_stage_layers) : None()},
      {"decoder_last_pipeline_num_layers", l.last_stage_layers ? I(*l.last_stage_layers) : None()},
      {"use_distributed_optimizer", B(false)},
      {"ckpt_format", S("torch_dist")},
  };
  return a;
}

}  // namespace ckpt::model
