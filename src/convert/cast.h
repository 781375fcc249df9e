// Element-wise helpers for model conversion (internal to the convert layer):
// dtype casts between float32 / bfloat16 / float16 with torch's rounding
// (round to nearest even; NaN stays NaN, with its sign), adding a scalar,
// and transposing a 2-D tensor's bytes.
//
// Thread-safety: CastSink is not synchronized; the functions are pure.
#ifndef CKPT_CONVERT_CAST_H_
#define CKPT_CONVERT_CAST_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "ckpt/byte_source.h"
#include "ckpt/dtype.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

// float32, bfloat16, float16.
bool IsFloatCastable(DType d);

// One element's conversions (exposed for tests).
float Bf16ToFloat(uint16_t b);
uint16_t FloatToBf16(float f);
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);

// Forwards bytes of dtype `from` to `out` as dtype `to`; a pass-through when
// they are equal. Elements may straddle Append calls; Finish reports a
// trailing partial element (DataLoss).
class CastSink final : public ByteSink {
 public:
  CastSink(DType from, DType to, ByteSink* out) : from_(from), to_(to), out_(out) {}
  Status Append(std::string_view data) override;
  uint64_t Position() const override { return in_; }
  Status Finish();

 private:
  DType from_, to_;
  ByteSink* out_;
  uint64_t in_ = 0;
  std::string carry_;
  std::string buf_;
};

// bytes (elements of `d`) += v, computed in float32 and rounded back.
// Errors: Unimplemented for a dtype other than the three float types.
Status AddScalar(DType d, double v, std::string* bytes);

// Row-major [rows, cols] -> [cols, rows] of elements of `elem` bytes.
std::string Transpose2D(std::string_view bytes, int64_t rows, int64_t cols, size_t elem);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_CAST_H_
