// Convert with to=hf (internal to the convert layer): a Hugging Face
// transformers model folder written from a training checkpoint.
//
// Not built yet: ConvertToHf returns Unimplemented. It is declared here so
// that Convert's dispatch, the target name "hf" (ParseTargetFormat) and the
// CLI / Python choices are in place before the conversion itself.
//
// Thread-safety: reentrant for different destinations.
#ifndef CKPT_CONVERT_HF_H_
#define CKPT_CONVERT_HF_H_

#include <string>

#include "ckpt/convert.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

// Convert with options.to == kHf (see ckpt/convert.h).
// Errors: Unimplemented (not built yet).
Result<ConvertReport> ConvertToHf(const std::string& src, const std::string& dst,
                                  const ConvertOptions& options, Env* env);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_HF_H_
