#include "lib/reshard.h"

#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "ckpt/reshard.h"
#include "lib/inspect.h"
#include "util/strings.h"

namespace ckpt::cli {

Status RunReshard(const ReshardCommandOptions& options, std::ostream& out, std::ostream& err) {
  if (options.to != "torch_dist" && options.to != "legacy") {
    return InvalidArgumentError(StrCat("--to ", options.to, ": torch_dist or legacy"));
  }
  if (options.to == "legacy" && !options.optimizer_sharding.empty()) {
    return InvalidArgumentError("--optimizer-sharding applies to --to torch_dist (legacy keeps distrib_optim.pt)");
  }
  const std::string sharding = options.optimizer_sharding.empty() ? "fully_reshardable" : options.optimizer_sharding;
  if (sharding != "fully_reshardable" && sharding != "dp_reshardable") {
    return InvalidArgumentError(StrCat("--optimizer-sharding ", sharding, ": fully_reshardable or dp_reshardable"));
  }
  if (!options.check && options.dst.empty()) return InvalidArgumentError("DST is required (or --check)");
  ReshardOptions r;
  r.tp = options.tp;
  r.pp = options.pp;
  r.vpp = options.vpp;
  r.dp = options.dp;
  r.ep = options.ep;
  r.etp = options.etp;
  r.vocab_size = options.vocab_size;
  r.no_optimizer = options.no_optimizer;
  r.to = options.to == "legacy" ? ReshardFormat::kLegacy : ReshardFormat::kTorchDist;
  r.optimizer_sharding = sharding == "dp_reshardable" ? OptimizerSharding::kDpReshardable
                                                                         : OptimizerSharding::kFullyReshardable;
  r.megatron_version = options.megatron_version;
  r.iteration = options.iteration;
  r.thread_count = static_cast<int>(options.thread_count);
  r.direct_io = !options.buffered_io;
  r.check_only = options.check;
  r.env = options.env;
  const auto start = std::chrono::steady_clock::now();
  if (options.show_progress) {
    r.progress = [&err, start](uint64_t done, uint64_t total) {
      int pct = total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      const double rate = secs > 0 ? static_cast<double>(done) / secs : 0;
      err << fmt::format("\rresharding: {:3d}%  {} / {}  {}/s   ", pct, HumanBytes(done), HumanBytes(total),
                         HumanBytes(static_cast<uint64_t>(rate)))
          << std::flush;
    };
  }
  CKPT_ASSIGN_OR_RETURN(ReshardReport report, Reshard(options.src, options.dst, r));
  if (options.show_progress) err << "\n";
  if (!options.quiet) {
    for (const std::string& w : report.warnings) err << "ckptkit reshard: warning: " << w << "\n";
  }
  if (options.json) {
    nlohmann::json j;
    j["src"] = options.src;
    j["dst"] = options.dst;
    j["check"] = options.check;
    j["source_layout"] = report.source_layout;
    j["target_layout"] = report.target_layout;
    j["source_optimizer_sharding"] = report.optimizer;
    j["target_format"] = options.to;
    j["target_optimizer_sharding"] = report.optimizer.empty() || options.no_optimizer ? ""
                                     : options.to == "legacy"                        ? "legacy distrib_optim.pt"
                                                                                     : sharding;
    j["loads_as_is"] = report.loads_as_is;
    j["load_blockers"] = report.load_blockers;
    j["source_padded_vocab"] = report.source_padded_vocab;
    j["target_padded_vocab"] = report.target_padded_vocab;
    j["files"] = report.files;
    j["warnings"] = report.warnings;
    j["tensors"] = report.tensors;
    j["bytes"] = report.bytes;
    j["data_files"] = report.data_files;
    j["direct_io_files"] = report.direct_io_files;
    out << j.dump(2) << "\n";
    return OkStatus();
  }
  if (options.quiet) return OkStatus();
  out << fmt::format("{} -> {}{}\n", report.source_layout, report.target_layout,
                     report.optimizer.empty() ? "" : fmt::format(", optimizer {} -> {}", report.optimizer,
                                                                  options.no_optimizer ? "dropped"
                                                                  : options.to == "legacy" ? "legacy distrib_optim.pt"
                                                                                           : sharding));
  if (report.target_padded_vocab != report.source_padded_vocab) {
    out << fmt::format("padded vocabulary {} -> {}\n", report.source_padded_vocab, report.target_padded_vocab);
  }
  if (options.check) {
    if (report.loads_as_is) {
      out << "megatron-core loads the source as it is at the target layout: no reshard needed\n";
    } else {
      out << "megatron-core would not load the source as it is at the target layout:\n";
      for (const std::string& b : report.load_blockers) out << "  - " << b << "\n";
    }
    out << fmt::format("OK: the target layout fits the model; reshard would write {} tensors ({})\n", report.tensors,
                       HumanBytes(report.bytes));
    return OkStatus();
  }
  out << fmt::format("wrote {} tensors ({}) to {} file{}:\n", report.tensors, HumanBytes(report.bytes),
                     report.files.size(), report.files.size() == 1 ? "" : "s");
  for (const std::string& f : report.files) out << "  " << f << "\n";
  if (report.data_files > 0) out << DataFilesLine(report.data_files, report.direct_io_files, !options.buffered_io);
  return OkStatus();
}

}  // namespace ckpt::cli
