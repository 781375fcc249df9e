#include <unistd.h>

#include <cstdio>
#include <iostream>

#include "ckpt/convert.h"
#include "commands.h"
#include "lib/convert.h"

namespace ckpt::cli {

void RegisterConvert(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<ConvertCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "Convert a checkpoint to safetensors, torch.save or a DCP folder, streaming tensor by tensor\n"
      "(peak memory about one copy buffer, not the checkpoint).");
  cmd->add_option("SRC", opts->src, "source checkpoint path")->required();
  cmd->add_option("DST", opts->dst,
                  "destination file (.safetensors / .pt / .bin) or folder (sharded or DCP output)")
      ->required();
  cmd->add_option("--to", opts->to, "target format")
      ->required()
      ->check(CLI::IsMember({"safetensors", "torch", "dcp"}));
  cmd->add_option("--thread-count", opts->thread_count,
                  "--to dcp: number of .distcp files, as torch's FileSystemWriter(thread_count=N)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--max-shard-size", opts->max_shard_size,
                  "split into shards of at most this size (e.g. 5GB, 500MiB, 1000000); DST is a folder");
  cmd->add_flag("--allow-opaque", opts->allow_opaque,
                "carry objects whose pickle globals are not on the allowlist as opaque records\n"
                "(dropped with a warning where the target cannot hold them)");
  cmd->add_flag("--json", opts->json, "print a JSON report on stdout");
  cmd->add_flag("--quiet,-q", opts->quiet, "no progress or warnings on stderr");
  cmd->callback([opts, exit_code] {
    opts->show_progress = !opts->quiet && !opts->json && ::isatty(STDERR_FILENO);
    Status s = RunConvert(*opts, std::cout, std::cerr);
    *exit_code = s.ok() ? 0 : ReportError("convert", s);
  });
}

}  // namespace ckpt::cli
