// Private helpers shared by the megatron .cc files (not part of the API).
#ifndef CKPT_FORMAT_MEGATRON_INTERNAL_H_
#define CKPT_FORMAT_MEGATRON_INTERNAL_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace ckpt::megatron::internal_megatron {

bool StartsWith(std::string_view s, std::string_view p);
bool EndsWith(std::string_view s, std::string_view p);
// Python int() of an ASCII decimal with an optional sign; nullopt on overflow.
std::optional<int64_t> ParseDecimal(std::string_view s);
// Drops a leading "chained_<n>." (ChainedOptimizer prefix).
std::string_view StripChainedPrefix(std::string_view key);
// "optimizer.state.exp_avg.decoder.layers.x" -> "decoder.layers.x"; "" otherwise.
std::string_view ModelKeyOfOptimizerKey(std::string_view key);
// "3.2 MiB".
std::string HumanBytes(uint64_t n);
// Elements joined by sep.
template <typename T>
std::string Join(const std::vector<T>& v, std::string_view sep) {
  return fmt::format("{}", fmt::join(v, sep));
}

}  // namespace ckpt::megatron::internal_megatron

#endif  // CKPT_FORMAT_MEGATRON_INTERNAL_H_
