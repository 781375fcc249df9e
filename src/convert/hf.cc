// Convert with to=hf: a stub until the conversion is built.
#include "convert/hf.h"

namespace ckpt::internal_convert {

Result<ConvertReport> ConvertToHf(const std::string& src, const std::string& dst,
                                  const ConvertOptions& options, Env* env) {
  return UnimplementedError("to=\"hf\" is not built yet");
}

}  // namespace ckpt::internal_convert
