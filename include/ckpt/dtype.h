// ckpt::DType: every element type torch can store, and its names in each format.
//
// One table (dtype.cc) maps each DType to its torch name ("bfloat16", as
// `str(torch.bfloat16)` without the "torch." prefix), its element size in
// bytes, the legacy torch storage class that torch.save uses for it (empty when
// torch saves it as UntypedStorage with _rebuild_tensor_v3), and its safetensors
// dtype string (empty when safetensors has none).
//
// Thread-safety: all functions are pure.
#ifndef CKPT_DTYPE_H_
#define CKPT_DTYPE_H_

#include <cstdint>
#include <optional>
#include <string_view>

namespace ckpt {

enum class DType : uint8_t {
  kBool,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kUInt16,
  kUInt32,
  kUInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
  kComplex32,
  kComplex64,
  kComplex128,
  kFloat8_e4m3fn,
  kFloat8_e5m2,
  kFloat8_e4m3fnuz,
  kFloat8_e5m2fnuz,
  kFloat8_e8m0fnu,
  kFloat4_e2m1fn_x2,
  kQInt8,
  kQUInt8,
  kQInt32,
  kQUInt4x2,
  kQUInt2x4,
  kBits8,
  kBits16,
  kNumDTypes,  // keep last
};

inline constexpr int kNumDTypes = static_cast<int>(DType::kNumDTypes);

// Bytes per element (float4_e2m1fn_x2 packs two values in one element of 1 byte).
int64_t DTypeSize(DType dtype);
// "float32", "bfloat16", ... as torch prints it without "torch.".
std::string_view DTypeName(DType dtype);
// "FloatStorage" etc., or "" if torch saves this dtype via UntypedStorage.
std::string_view DTypeLegacyStorage(DType dtype);
// "F32", "BF16", ..., or "" when safetensors has no such dtype.
std::string_view DTypeSafetensorsName(DType dtype);

std::optional<DType> DTypeFromName(std::string_view torch_name);
std::optional<DType> DTypeFromLegacyStorage(std::string_view storage_class);
std::optional<DType> DTypeFromSafetensorsName(std::string_view st_name);

}  // namespace ckpt

#endif  // CKPT_DTYPE_H_
