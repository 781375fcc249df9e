// Model conversions between Megatron-Core torch_dist and HuggingFace
// (internal to the convert layer; see ckpt/convert.h for the options).
//
// Both directions plan every output tensor with the model layer
// (ckpt/model.h: ConfigFromArgs / ParseHfConfig, PlanExport / PlanImport)
// before anything is written, so a model that does not fit its family, a
// missing tensor or args that contradict the stored shapes fail with nothing
// on disk. Then each output tensor is streamed from only the source rows it
// needs (ReadTensorRegion): peak memory is about one tensor for the
// transposing / +1 transforms and bounded by the copy buffers otherwise.
//
// Thread-safety: reentrant for different destinations.
#ifndef CKPT_CONVERT_HF_H_
#define CKPT_CONVERT_HF_H_

#include <string>
#include <string_view>

#include "ckpt/convert.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

// torch_dist (root or iteration folder) -> HF folder: model*.safetensors (+
// index) or pytorch_model*.bin, config.json, generation_config.json when
// token ids are known. Files are published one by one (atomically), shards
// first, index, generation config, config.json last; on failure what this
// call published is removed and a folder it created is removed.
// Errors: InvalidArgument (options, family, config), NotFound (a tensor the
// mapping needs), DataLoss (unreadable chunks), I/O errors naming the file.
Result<ConvertReport> ConvertToHf(const std::string& src, const std::string& dst, const ConvertOptions& options,
                                  Env* env);

// Whether `src` is an HF model folder (config.json naming a supported
// architecture beside safetensors / .bin weights).
bool IsHfModelFolder(Env* env, const std::string& src);

// A weight file of a save_pretrained folder: "model.safetensors",
// "model-00001-of-00003.safetensors", "model.safetensors.index.json" (the
// pytorch_model*.bin forms for `bin`).
bool IsHfWeightFileName(std::string_view name, bool bin);

// HF model folder -> Megatron-LM root holding a torch_dist checkpoint with
// no optimizer state (dst/iter_<N:07d>/ + tracker; N = options.iteration or
// 0) for GPTModel at options.tp/pp/ep/etp, with the args Megatron-LM checks.
// Errors: as ConvertToHf; those of the torch_dist writer.
Result<ConvertReport> ConvertHfToTorchDist(const std::string& src, const std::string& dst,
                                           const ConvertOptions& options, Env* env);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_HF_H_
