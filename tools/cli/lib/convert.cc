#include "lib/convert.h"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "ckpt/convert.h"
#include "lib/inspect.h"

namespace ckpt::cli {

Status RunConvert(const ConvertCommandOptions& options, std::ostream& out, std::ostream& err) {
  ConvertOptions c;
  CKPT_ASSIGN_OR_RETURN(c.to, ParseTargetFormat(options.to));
  const bool dcp_like = c.to == TargetFormat::kDcp || c.to == TargetFormat::kTorchDist;
  if (options.thread_count != 1 && !dcp_like) {
    return InvalidArgumentError("--thread-count applies to --to dcp and --to torch_dist only");
  }
  if (!options.megatron_version.empty() && c.to != TargetFormat::kTorchDist) {
    return InvalidArgumentError("--megatron-version applies to --to torch_dist only");
  }
  if (options.iteration && c.to != TargetFormat::kTorchDist && c.to != TargetFormat::kLegacy) {
    return InvalidArgumentError("--iteration applies to --to torch_dist and --to legacy only");
  }
  if (options.no_optimizer && c.to != TargetFormat::kLegacy) {
    return InvalidArgumentError("--no-optimizer applies to --to legacy only");
  }
  if (options.buffered_io && !dcp_like) {
    return InvalidArgumentError("--buffered-io applies to --to dcp and --to torch_dist only");
  }
  c.thread_count = options.thread_count;
  c.direct_io = !options.buffered_io;
  c.dcp_metadata_layout = options.dcp_metadata_layout;
  c.megatron_version = options.megatron_version;
  c.iteration = options.iteration;
  if (!options.max_shard_size.empty()) {
    CKPT_ASSIGN_OR_RETURN(c.max_shard_size, ParseSize(options.max_shard_size));
  }
  c.allow_opaque = options.allow_opaque;
  c.env = options.env;
  c.hf_config = options.hf_config;
  c.family = options.family;
  c.vocab_size = options.vocab_size;
  c.dtype = options.dtype;
  c.bin = options.bin;
  c.no_optimizer = options.no_optimizer;
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
  CKPT_ASSIGN_OR_RETURN(ConvertReport report, Convert(options.src, options.dst, c));
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
    if (dcp_like) {
      j["data_files"] = report.data_files;
      j["direct_io_files"] = report.direct_io_files;
    }
    out << j.dump(2) << "\n";
  } else if (!options.quiet) {
    out << fmt::format("wrote {} tensors ({}) to {} file{}:\n", report.tensors,
                       HumanBytes(report.bytes), report.files.size(),
                       report.files.size() == 1 ? "" : "s");
    for (const std::string& f : report.files) out << "  " << f << "\n";
    if (dcp_like) out << DataFilesLine(report.data_files, report.direct_io_files, !options.buffered_io);
  }
  return OkStatus();
}

}  // namespace ckpt::cli
