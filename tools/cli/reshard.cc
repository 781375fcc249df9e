#include <unistd.h>

#include <iostream>
#include <memory>
#include <string>

#include "commands.h"
#include "lib/reshard.h"

namespace ckpt::cli {

void RegisterReshard(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<ReshardCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "reshard",
      "Rewrite a Megatron checkpoint (torch_dist of any optimizer sharding type, or legacy mp_rank_*)\n"
      "for another TP / PP / VPP / DP / EP layout, optimizer state included, offline and streaming.\n"
      "The output is torch_dist with the optimizer state fully_reshardable (model space) or in the\n"
      "new layout's buckets (dp_reshardable), or (--to legacy) Megatron-LM's mp_rank_* folders with\n"
      "distrib_optim.pt, and args for the new layout. --check says whether megatron-core would load\n"
      "SRC as it is at the new layout (and if not, why), whether the layout fits, and what would be written.");
  cmd->add_option("SRC", opts->src, "source checkpoint (a Megatron-LM root or iteration folder)")->required();
  cmd->add_option("DST", opts->dst, "destination root (iter_<N:07d>/ and latest_checkpointed_iteration.txt)");
  for (auto [flag, field, what] :
       {std::tuple{"--tp", &opts->tp, "tensor-parallel size"}, std::tuple{"--pp", &opts->pp, "pipeline-parallel size"},
        std::tuple{"--vpp", &opts->vpp, "virtual pipeline stages per pipeline rank (1: none)"},
        std::tuple{"--dp", &opts->dp, "data-parallel size"}, std::tuple{"--ep", &opts->ep, "expert-parallel size"},
        std::tuple{"--etp", &opts->etp, "expert tensor-parallel size (default: --tp when the source's equals its tp)"}}) {
    cmd->add_option(flag, *field, std::string(what) + " of the target (default: the source's)")
        ->check(CLI::PositiveNumber);
  }
  auto vocab = std::make_shared<int64_t>(0);
  CLI::Option* vocab_opt =
      cmd->add_option("--vocab-size", *vocab,
                      "the tokenizer's vocabulary size, when args lack it and the new TP's padding is ambiguous")
          ->check(CLI::PositiveNumber);
  cmd->add_option("--to", opts->to, "output format: torch_dist (the default) or legacy (Megatron-LM's mp_rank_* folders\n"
                  "with model_optim_rng.pt and distrib_optim.pt at the new layout)")->check(CLI::IsMember({"torch_dist", "legacy"}));
  cmd->add_option("--optimizer-sharding", opts->optimizer_sharding,
                  "optimizer state of the output: fully_reshardable (model space; loads at any layout;\n"
                  "the default) or dp_reshardable (the target layout's own buckets, megatron-core's default)")
      ->check(CLI::IsMember({"fully_reshardable", "dp_reshardable"}));
  cmd->add_flag("--no-optimizer", opts->no_optimizer, "leave the optimizer state out");
  cmd->add_option("--megatron-version", opts->megatron_version,
                  "the megatron-core layout to write: 0.16 (common.pt) or 0.19 (the default)")
      ->check(CLI::IsMember({"0.16", "0.19"}));
  auto iteration = std::make_shared<int64_t>(0);
  CLI::Option* iteration_opt =
      cmd->add_option("--iteration", *iteration, "the output's iteration (default: the source's)")
          ->check(CLI::NonNegativeNumber);
  cmd->add_option("--thread-count", opts->thread_count, "number of .distcp files written in parallel")
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--buffered-io", opts->buffered_io,
                "write the data files through the page cache instead of around it (O_DIRECT, the default\n"
                "where the file system allows; --json reports which)");
  cmd->add_flag("--check", opts->check, "preflight only: check the target layout against the model, write nothing");
  cmd->add_flag("--json", opts->json, "print a JSON report on stdout");
  cmd->add_flag("--quiet,-q", opts->quiet, "no progress or warnings on stderr");
  cmd->callback([opts, exit_code, vocab, vocab_opt, iteration, iteration_opt] {
    if (vocab_opt->count() > 0) opts->vocab_size = *vocab;
    if (iteration_opt->count() > 0) opts->iteration = *iteration;
    opts->show_progress = !opts->quiet && !opts->json && ::isatty(STDERR_FILENO);
    Status s = RunReshard(*opts, std::cout, std::cerr);
    *exit_code = s.ok() ? 0 : ReportError("reshard", s);
  });
}

}  // namespace ckpt::cli
