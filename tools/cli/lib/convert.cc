#include "lib/convert.h"

#include <fmt/format.h>

#include <cctype>
#include <string_view>
#include <nlohmann/json.hpp>

#include <chrono>

#include "ckpt/convert.h"
#include "convert/hf.h"
#include "lib/inspect.h"

namespace ckpt::cli {

Result<uint64_t> ParseSize(const std::string& text) {
  size_t i = 0;
  uint64_t value = 0;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (__builtin_mul_overflow(value, 10, &value) || __builtin_add_overflow(value, d, &value)) {
      return InvalidArgumentError(fmt::format("size '{}' is too large", text));
    }
    ++i;
  }
  if (i == 0) return InvalidArgumentError(fmt::format("size '{}' does not start with a number", text));
  // transformers' convert_file_size_to_int reads "5Gb"/"5gb" (a final
  // lowercase 'b' on a decimal unit) as bits, 1/8 of "5GB": refuse it rather
  // than disagree by a factor of 8.
  const std::string_view raw_unit = std::string_view(text).substr(i);
  if (!raw_unit.empty() && raw_unit.back() == 'b' &&
      !(raw_unit.size() >= 2 && (raw_unit[raw_unit.size() - 2] == 'i' ||
                                 raw_unit[raw_unit.size() - 2] == 'I'))) {
    std::string bytes_form = text.substr(0, i);
    for (char c : raw_unit) bytes_form += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return InvalidArgumentError(fmt::format(
        "size '{}': a lowercase 'b' means bits to transformers; write '{}' for bytes", text,
        bytes_form));
  }
  std::string unit;
  for (; i < text.size(); ++i) unit += static_cast<char>(std::toupper(static_cast<unsigned char>(text[i])));
  uint64_t mul = 0;
  if (unit.empty() || unit == "B") mul = 1;
  else if (unit == "KB") mul = 1000;
  else if (unit == "MB") mul = 1000 * 1000;
  else if (unit == "GB") mul = 1000ull * 1000 * 1000;
  else if (unit == "TB") mul = 1000ull * 1000 * 1000 * 1000;
  else if (unit == "KIB") mul = 1024;
  else if (unit == "MIB") mul = 1024 * 1024;
  else if (unit == "GIB") mul = 1024ull * 1024 * 1024;
  else if (unit == "TIB") mul = 1024ull * 1024 * 1024 * 1024;
  else {
    return InvalidArgumentError(
        fmt::format("size '{}': unknown unit (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)", text));
  }
  uint64_t out;
  if (__builtin_mul_overflow(value, mul, &out)) {
    return InvalidArgumentError(fmt::format("size '{}' is too large", text));
  }
  if (out == 0) return InvalidArgumentError(fmt::format("size '{}' must be positive", text));
  return out;
}

Status RunConvert(const ConvertCommandOptions& options, std::ostream& out, std::ostream& err) {
  ConvertOptions c;
  if (options.to == "safetensors") {
    c.to = TargetFormat::kSafetensors;
  } else if (options.to == "torch") {
    c.to = TargetFormat::kTorch;
  } else if (options.to == "dcp") {
    c.to = TargetFormat::kDcp;
  } else if (options.to == "torch_dist") {
    c.to = TargetFormat::kTorchDist;
  } else if (options.to == "hf") {
  } else {
    return InvalidArgumentError(
        fmt::format("--to {}: expected safetensors, torch, dcp, torch_dist or hf", options.to));
  }
  const bool dcp_like = c.to == TargetFormat::kDcp || c.to == TargetFormat::kTorchDist;
  if (options.thread_count != 1 && !dcp_like) {
    return InvalidArgumentError("--thread-count applies to --to dcp and --to torch_dist only");
  }
  if ((!options.megatron_version.empty() || options.iteration) && c.to != TargetFormat::kTorchDist) {
    return InvalidArgumentError("--megatron-version and --iteration apply to --to torch_dist only");
  }
  c.thread_count = options.thread_count;
  c.dcp_metadata_layout = options.dcp_metadata_layout;
  c.megatron_version = options.megatron_version;
  c.iteration = options.iteration;
  if (!options.max_shard_size.empty()) {
    CKPT_ASSIGN_OR_RETURN(c.max_shard_size, ParseSize(options.max_shard_size), "--max-shard-size");
  }
  c.allow_opaque = options.allow_opaque;
  c.env = options.env;
  c.hf_config = options.hf_config;
  c.family = options.family;
  c.vocab_size = options.vocab_size;
  c.dtype = options.dtype;
  c.bin = options.bin;
  c.tp = options.tp;
  c.pp = options.pp;
  c.ep = options.ep;
  c.etp = options.etp;
  c.megatron_layer_spec = options.megatron_layer_spec;
  c.make_vocab_size_divisible_by = options.make_vocab_size_divisible_by;
  const auto start = std::chrono::steady_clock::now();
  if (options.show_progress) {
    c.progress = [&err, start](uint64_t done, uint64_t total) {
      int pct = total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
      std::string eta = rate > 0 && total >= done
                            ? fmt::format("ETA {:.0f}s", static_cast<double>(total - done) / rate)
                            : std::string("ETA -");
      err << fmt::format("\rconverting: {:3d}%  {} / {}  {}/s  {}   ", pct, HumanBytes(done), HumanBytes(total),
                         HumanBytes(static_cast<uint64_t>(rate)), eta)
          << std::flush;
    };
  }
  Env* env = options.env ? options.env : Env::Default();
  Result<ConvertReport> converted = InternalError("not run");
  if (options.to == "hf") {
    converted = internal_convert::ConvertToHf(options.src, options.dst, c, env);
  } else if (c.to == TargetFormat::kTorchDist && internal_convert::IsHfModelFolder(env, options.src)) {
    converted = internal_convert::ConvertHfToTorchDist(options.src, options.dst, c, env);
  } else {
    converted = Convert(options.src, options.dst, c);
  }
  CKPT_ASSIGN_OR_RETURN(ConvertReport report, std::move(converted));
  if (options.show_progress) err << "\n";
  if (!options.quiet) {
    for (const std::string& w : report.warnings) err << "ckptkit convert: warning: " << w << "\n";
  }
  if (options.json) {
    nlohmann::json j;
    j["src"] = options.src;
    j["dst"] = options.dst;
    j["to"] = options.to;
    j["files"] = report.files;
    j["warnings"] = report.warnings;
    j["tensors"] = report.tensors;
    j["bytes"] = report.bytes;
    out << j.dump(2) << "\n";
  } else if (!options.quiet) {
    out << fmt::format("wrote {} tensors ({}) to {} file{}:\n", report.tensors,
                       HumanBytes(report.bytes), report.files.size(),
                       report.files.size() == 1 ? "" : "s");
    for (const std::string& f : report.files) out << "  " << f << "\n";
  }
  return OkStatus();
}

}  // namespace ckpt::cli
