// dtype casts, scalar add and transpose for model conversion.
#include "convert/cast.h"

#include <cstring>

#include "util/strings.h"

namespace ckpt::internal_convert {
namespace {

float ToFloat(DType d, const char* p) {
  if (d == DType::kFloat32) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  uint16_t h;
  std::memcpy(&h, p, 2);
  return d == DType::kBFloat16 ? Bf16ToFloat(h) : HalfToFloat(h);
}

void FromFloat(DType d, float f, char* p) {
  if (d == DType::kFloat32) {
    std::memcpy(p, &f, 4);
    return;
  }
  uint16_t h = d == DType::kBFloat16 ? FloatToBf16(f) : FloatToHalf(f);
  std::memcpy(p, &h, 2);
}

}  // namespace

bool IsFloatCastable(DType d) { return d == DType::kFloat32 || d == DType::kBFloat16 || d == DType::kFloat16; }

float Bf16ToFloat(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while ((mant & 0x400u) == 0);
      x = sign | (static_cast<uint32_t>(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp + 112) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x7fffffu;
  const int32_t exp = static_cast<int32_t>((x >> 23) & 0xffu);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u));
  const int32_t e = exp - 127 + 15;
  if (e >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return static_cast<uint16_t>(sign);
    mant |= 0x800000u;
    const uint32_t shift = static_cast<uint32_t>(14 - e);
    uint32_t h = mant >> shift;
    const uint32_t rem = mant & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  uint32_t h = (static_cast<uint32_t>(e) << 10) | (mant >> 13);
  const uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds up into the exponent (or inf)
  return static_cast<uint16_t>(sign | h);
}

Status CastSink::Append(std::string_view data) {
  in_ += data.size();
  if (from_ == to_) return out_->Append(data);
  const size_t fs = DTypeSize(from_), ts = DTypeSize(to_);
  if (!carry_.empty()) {
    const size_t need = fs - carry_.size();
    const size_t take = std::min(need, data.size());
    carry_.append(data.substr(0, take));
    data.remove_prefix(take);
    if (carry_.size() < fs) return OkStatus();
    char tmp[8];
    FromFloat(to_, ToFloat(from_, carry_.data()), tmp);
    carry_.clear();
    CKPT_RETURN_IF_ERROR(out_->Append(std::string_view(tmp, ts)));
  }
  const size_t n = data.size() / fs;
  buf_.resize(n * ts);
  for (size_t i = 0; i < n; ++i) FromFloat(to_, ToFloat(from_, data.data() + i * fs), buf_.data() + i * ts);
  carry_.assign(data.substr(n * fs));
  return out_->Append(buf_);
}

Status CastSink::Finish() {
  if (!carry_.empty()) return DataLossError(StrCat("a partial element of ", carry_.size(), " bytes at the end of a cast"));
  return OkStatus();
}

Status AddScalar(DType d, double v, std::string* bytes) {
  if (!IsFloatCastable(d)) return UnimplementedError(StrCat("adding to a ", DTypeName(d), " tensor"));
  const size_t es = DTypeSize(d);
  for (size_t off = 0; off + es <= bytes->size(); off += es) {
    FromFloat(d, static_cast<float>(ToFloat(d, bytes->data() + off) + v), bytes->data() + off);
  }
  return OkStatus();
}

std::string Transpose2D(std::string_view bytes, int64_t rows, int64_t cols, size_t elem) {
  std::string out(bytes.size(), '\0');
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      std::memcpy(out.data() + (static_cast<size_t>(c) * rows + r) * elem,
                  bytes.data() + (static_cast<size_t>(r) * cols + c) * elem, elem);
    }
  }
  return out;
}

}  // namespace ckpt::internal_convert
