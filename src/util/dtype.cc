#include "ckpt/dtype.h"

#include <array>
#include <string_view>

namespace ckpt {
namespace {

struct DTypeInfo {
  DType dtype;
  std::string_view name;
  int64_t size;
  std::string_view legacy_storage;
  std::string_view safetensors;
};

// Legacy storages: torch.storage._dtype_to_storage_type_map(); dtypes absent
// there are in torch.storage._new_dtypes() and saved via UntypedStorage.
// Safetensors names: safetensors/src/tensor.rs Dtype and bindings torch.py _TYPES.
constexpr std::array<DTypeInfo, kNumDTypes> kTable = {{
    {DType::kBool, "bool", 1, "BoolStorage", "BOOL"},
    {DType::kUInt8, "uint8", 1, "ByteStorage", "U8"},
    {DType::kInt8, "int8", 1, "CharStorage", "I8"},
    {DType::kInt16, "int16", 2, "ShortStorage", "I16"},
    {DType::kInt32, "int32", 4, "IntStorage", "I32"},
    {DType::kInt64, "int64", 8, "LongStorage", "I64"},
    {DType::kUInt16, "uint16", 2, "", "U16"},
    {DType::kUInt32, "uint32", 4, "", "U32"},
    {DType::kUInt64, "uint64", 8, "", "U64"},
    {DType::kFloat16, "float16", 2, "HalfStorage", "F16"},
    {DType::kBFloat16, "bfloat16", 2, "BFloat16Storage", "BF16"},
    {DType::kFloat32, "float32", 4, "FloatStorage", "F32"},
    {DType::kFloat64, "float64", 8, "DoubleStorage", "F64"},
    {DType::kComplex32, "complex32", 4, "", ""},
    {DType::kComplex64, "complex64", 8, "ComplexFloatStorage", "C64"},
    {DType::kComplex128, "complex128", 16, "ComplexDoubleStorage", ""},
    {DType::kFloat8_e4m3fn, "float8_e4m3fn", 1, "", "F8_E4M3"},
    {DType::kFloat8_e5m2, "float8_e5m2", 1, "", "F8_E5M2"},
    {DType::kFloat8_e4m3fnuz, "float8_e4m3fnuz", 1, "", "F8_E4M3FNUZ"},
    {DType::kFloat8_e5m2fnuz, "float8_e5m2fnuz", 1, "", "F8_E5M2FNUZ"},
    {DType::kFloat8_e8m0fnu, "float8_e8m0fnu", 1, "", "F8_E8M0"},
    {DType::kFloat4_e2m1fn_x2, "float4_e2m1fn_x2", 1, "", "F4"},  // F4: shape counts 4-bit values
    {DType::kQInt8, "qint8", 1, "QInt8Storage", ""},
    {DType::kQUInt8, "quint8", 1, "QUInt8Storage", ""},
    {DType::kQInt32, "qint32", 4, "QInt32Storage", ""},
    {DType::kQUInt4x2, "quint4x2", 1, "QUInt4x2Storage", ""},
    {DType::kQUInt2x4, "quint2x4", 1, "QUInt2x4Storage", ""},
    {DType::kBits8, "bits8", 1, "", ""},
    {DType::kBits16, "bits16", 2, "", ""},
}};

constexpr bool TableIsOrdered() {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (static_cast<int>(kTable[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableIsOrdered(), "dtype table out of order with enum DType");

const DTypeInfo& Info(DType d) { return kTable[static_cast<int>(d)]; }

}  // namespace

int64_t DTypeSize(DType d) { return Info(d).size; }
std::string_view DTypeName(DType d) { return Info(d).name; }
std::string_view DTypeLegacyStorage(DType d) { return Info(d).legacy_storage; }
std::string_view DTypeSafetensorsName(DType d) { return Info(d).safetensors; }

std::optional<DType> DTypeFromName(std::string_view n) {
  for (const auto& e : kTable)
    if (e.name == n) return e.dtype;
  return std::nullopt;
}
std::optional<DType> DTypeFromLegacyStorage(std::string_view n) {
  if (n.empty()) return std::nullopt;
  for (const auto& e : kTable)
    if (e.legacy_storage == n) return e.dtype;
  return std::nullopt;
}
std::optional<DType> DTypeFromSafetensorsName(std::string_view n) {
  if (n.empty()) return std::nullopt;
  for (const auto& e : kTable)
    if (e.safetensors == n) return e.dtype;
  return std::nullopt;
}

}  // namespace ckpt
