// The one reading of a target name and of a max_shard_size, for the CLI and
// Python alike.
#include <string>

#include "ckpt/convert.h"
#include "util/strings.h"

namespace ckpt {
namespace {

constexpr std::string_view kTargetNames[] = {"safetensors", "torch", "dcp", "torch_dist", "hf", "legacy"};
static_assert(std::size(kTargetNames) == kTargetFormatCount, "name every TargetFormat");
static_assert(static_cast<size_t>(TargetFormat::kLegacy) + 1 == kTargetFormatCount,
              "a new TargetFormat goes last, in kAllTargetFormats and kTargetNames");

char Upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

}  // namespace

std::string_view TargetFormatName(TargetFormat to) {
  const size_t i = static_cast<size_t>(to);
  return i < kTargetFormatCount ? kTargetNames[i] : std::string_view("unknown");
}

Result<TargetFormat> ParseTargetFormat(std::string_view name) {
  for (TargetFormat t : kAllTargetFormats) {
    if (name == TargetFormatName(t)) return t;
  }
  std::string valid;
  for (TargetFormat t : kAllTargetFormats) valid += StrCat(valid.empty() ? "" : ", ", TargetFormatName(t));
  return InvalidArgumentError(StrCat("to ", Quote(name), " is not a target (expected one of ", valid, ")"));
}

// transformers/utils/hub.py convert_file_size_to_int: upper-cased suffix
// GIB/MIB/KIB -> int(size[:-3]) * 2**30/2**20/2**10; GB/MB/KB ->
// int(size[:-2]) * 10**9/10**6/10**3, then // 8 if the last character is a
// lowercase "b"; anything else raises. Its int() would also take a sign,
// spaces or underscores around the digits: refused here, as "0" is.
Result<uint64_t> ParseSize(std::string_view text) {
  auto invalid = [&](std::string_view why) {
    return InvalidArgumentError(StrCat("max_shard_size ", Quote(text), ": ", why));
  };
  size_t digits = 0;
  uint64_t value = 0;
  bool overflow = false;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
    const uint64_t d = static_cast<uint64_t>(text[digits] - '0');
    overflow = overflow || __builtin_mul_overflow(value, 10, &value) || __builtin_add_overflow(value, d, &value);
    ++digits;
  }
  const std::string_view unit = text.substr(digits);
  std::string upper;
  for (char c : unit) upper += Upper(c);
  uint64_t mul = 0;
  bool bits = false;
  if (upper.empty()) {
    mul = 1;
  } else if (upper == "KIB" || upper == "MIB" || upper == "GIB") {
    mul = uint64_t{1} << (upper[0] == 'K' ? 10 : upper[0] == 'M' ? 20 : 30);
  } else if (upper == "KB" || upper == "MB" || upper == "GB") {
    mul = upper[0] == 'K' ? 1'000 : upper[0] == 'M' ? 1'000'000 : 1'000'000'000;
    bits = unit.back() == 'b';
  }
  if (digits == 0 || mul == 0) {
    return invalid(
        "not a size: write digits (bytes), optionally followed by KB, MB, GB (powers of 1000; a lowercase final "
        "'b', as in 5Gb, counts bits) or KiB, MiB, GiB (powers of 1024), as transformers reads it");
  }
  uint64_t bytes = 0;
  if (overflow || __builtin_mul_overflow(value, mul, &bytes)) return invalid("too large (more than 2^64-1 bytes)");
  if (bits) bytes /= 8;
  if (bytes == 0) return invalid("must be positive");
  return bytes;
}

}  // namespace ckpt
