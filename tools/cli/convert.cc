#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "ckpt/convert.h"
#include "commands.h"
#include "lib/convert.h"

namespace ckpt::cli {

void RegisterConvert(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<ConvertCommandOptions>();
  std::vector<std::string> targets;
  for (TargetFormat t : kAllTargetFormats) targets.emplace_back(TargetFormatName(t));
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "Convert a checkpoint to safetensors, torch.save, a DCP folder or a Megatron-Core torch_dist\n"
      "checkpoint, streaming tensor by tensor\n"
      "(peak memory about one copy buffer, not the checkpoint).");
  cmd->add_option("SRC", opts->src, "source checkpoint path")->required();
  cmd->add_option("DST", opts->dst,
                  "destination file (.safetensors / .pt / .bin) or folder (sharded or DCP output)")
      ->required();
  cmd->add_option("--to", opts->to, "target format (hf: not built yet)")
      ->required()
      ->check(CLI::IsMember(targets));
  cmd->add_option("--thread-count", opts->thread_count,
                  "--to dcp / torch_dist: number of .distcp files, as torch's FileSystemWriter(thread_count=N)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--dcp-metadata-layout", opts->dcp_metadata_layout,
                  "--to dcp: .metadata for older readers: torch2.13 (default; torch >= 2.4),\n"
                  "torch2.3 (no storage_meta/version; torch >= 2.3), torch2.0 (also the pre-2.3\n"
                  "TensorProperties class path; torch >= 2.0)")
      ->check(CLI::IsMember({"torch2.13", "torch2.3", "torch2.0"}));
  cmd->add_option("--megatron-version", opts->megatron_version,
                  "--to torch_dist: the megatron-core layout to write: 0.16 (common.pt, core <= 0.18) or\n"
                  "0.19 (common_state entry, core >= 0.19; the default)")
      ->check(CLI::IsMember({"0.16", "0.19"}));
  auto iteration = std::make_shared<int64_t>(0);
  CLI::Option* iteration_opt = cmd->add_option("--iteration", *iteration,
                  "--to torch_dist: write a Megatron-LM root: DST/iter_<N:07d>/ and\n"
                  "DST/latest_checkpointed_iteration.txt (the default for a Megatron-LM root source)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-shard-size", opts->max_shard_size,
                  "split into shards of at most this size, read as transformers reads max_shard_size\n"
                  "(5GB = 5*10^9, 500MiB = 500*2^20, 5Gb = 5*10^9/8 bits, 1000000 bytes); DST is a folder");
  cmd->add_flag("--allow-opaque", opts->allow_opaque,
                "carry objects whose pickle globals are not on the allowlist as opaque records\n"
                "(dropped with a warning where the target cannot hold them)");
  cmd->add_flag("--json", opts->json, "print a JSON report on stdout");
  cmd->add_flag("--quiet,-q", opts->quiet, "no progress or warnings on stderr");
  cmd->callback([opts, exit_code, iteration, iteration_opt] {
    if (iteration_opt->count() > 0) opts->iteration = *iteration;
    opts->show_progress = !opts->quiet && !opts->json && ::isatty(STDERR_FILENO);
    Status s = RunConvert(*opts, std::cout, std::cerr);
    *exit_code = s.ok() ? 0 : ReportError("convert", s);
  });
}

}  // namespace ckpt::cli
