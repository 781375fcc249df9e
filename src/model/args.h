// Model facts from Megatron-LM's `args` (internal to the model layer and its
// callers in src/convert/ and src/checkpoint/).
//
// Megatron-LM stores its argparse.Namespace in the common state
// (common.pt or the common_state entry); the field names are those of
// megatron/training/arguments.py. These functions turn them into a
// ModelConfig / ParallelLayout, cross-checked against the stored tensors'
// shapes by the caller (ShapeOf).
#ifndef CKPT_MODEL_ARGS_H_
#define CKPT_MODEL_ARGS_H_

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ckpt/model.h"
#include "format/megatron/megatron.h"

namespace ckpt::model {

// A stored tensor's global shape by torch_dist key (nullopt when absent).
using ShapeOf = std::function<std::optional<std::vector<int64_t>>(std::string_view key)>;

// The model from args, with gaps filled from the stored shapes (hidden size,
// vocab rows, ffn size, layers). Errors: InvalidArgument when args are
// missing (no `args` in the common state) and the shapes cannot tell, or
// when args and shapes contradict each other: the message names the arg,
// its value, the tensor and its shape.
Result<ModelConfig> ConfigFromArgs(const megatron::CommonState* common, const ShapeOf& shape_of);

// The parallel layout args record (tensor/pipeline/expert sizes, virtual
// stages, uneven first/last stages). Sizes absent from args are 1.
// Errors: as ParallelLayout::Validate.
Result<ParallelLayout> LayoutFromArgs(const megatron::CommonState& common);

// How DDP and the distributed optimizer were configured, from args
// (overlap_grad_reduce, ddp_bucket_size, accumulate_allreduce_grads_in_fp32 /
// grad_reduce_in_bf16, ddp_pad_buckets_for_high_nccl_busbw,
// num_distributed_optimizer_instances, bf16 / fp16 for the params dtype,
// transformer_impl for the layer spec). Absent fields take Megatron-LM's
// defaults; `spec` overrides transformer_impl when the caller knows better
// (a legacy file's own parameter names).
DistOptSettings DistOptFromArgs(const megatron::CommonState& common, std::optional<LayerSpec> spec);

// A float arg (kFloat, or an int); nullopt when absent or None.
std::optional<double> ArgDouble(const megatron::CommonState& c, std::string_view name);

}  // namespace ckpt::model

#endif  // CKPT_MODEL_ARGS_H_
