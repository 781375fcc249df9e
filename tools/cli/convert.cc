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
  cmd->add_option("--to", opts->to, "target format (hf: a HuggingFace model folder from a Megatron-Core torch_dist GPT checkpoint;\n"
                  "legacy: Megatron-LM's mp_rank_XX/model_optim_rng.pt + distrib_optim.pt layout)")
      ->required()
      ->check(CLI::IsMember(targets));
  cmd->add_option("--thread-count", opts->thread_count,
                  "--to dcp / torch_dist: number of .distcp files, as torch's FileSystemWriter(thread_count=N)")
      ->check(CLI::Range(1, 1024));
  cmd->add_flag("--buffered-io", opts->buffered_io,
                "--to dcp / torch_dist: write the data files through the page cache instead of around it\n"
                "(O_DIRECT, the default where the file system allows; --json reports which)");
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
                  "--to torch_dist / legacy: write a Megatron-LM root: DST/iter_<N:07d>/ and\n"
                  "DST/latest_checkpointed_iteration.txt (the default for a Megatron-LM root source;\n"
                  "--to legacy: the source's iteration unless given)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-shard-size", opts->max_shard_size,
                  "split into shards of at most this size, read as transformers reads max_shard_size\n"
                  "(5GB = 5*10^9, 500MiB = 500*2^20, 5Gb = 5*10^9/8 bits, 1000000 bytes); DST is a folder");
  cmd->add_option("--hf-config", opts->hf_config,
                  "--to hf: an HF config.json giving what Megatron's args lack (the unpadded vocab_size,\n"
                  "token ids) and the family; checked against the checkpoint's args");
  cmd->add_option("--family", opts->family, "--to hf: the HF family (default: from --hf-config or the args)")
      ->check(CLI::IsMember({"llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "gpt2"}));
  auto vocab = std::make_shared<int64_t>(0);
  CLI::Option* vocab_opt = cmd->add_option("--vocab-size", *vocab, "--to hf: the unpadded vocabulary size")
                               ->check(CLI::PositiveNumber);
  cmd->add_option("--dtype", opts->dtype, "--to hf (and HF -> torch_dist): cast the weights")
      ->check(CLI::IsMember({"bf16", "fp16", "fp32"}));
  cmd->add_flag("--no-optimizer", opts->no_optimizer,
                "--to legacy: leave the optimizer state out (no distrib_optim.pt)");
  cmd->add_flag("--bin", opts->bin, "--to hf: write pytorch_model*.bin instead of safetensors");
  cmd->add_option("--tp", opts->tp, "HF -> torch_dist: tensor-parallel size the checkpoint is for")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--pp", opts->pp, "HF -> torch_dist: pipeline-parallel size")->check(CLI::PositiveNumber);
  cmd->add_option("--ep", opts->ep, "HF -> torch_dist: expert-parallel size")->check(CLI::PositiveNumber);
  auto etp = std::make_shared<int64_t>(1);
  CLI::Option* etp_opt = cmd->add_option("--etp", *etp, "HF -> torch_dist: expert tensor-parallel size (default: --tp)")
                             ->check(CLI::PositiveNumber);
  cmd->add_option("--megatron-layer-spec", opts->megatron_layer_spec,
                  "HF -> torch_dist: the GPTModel layer spec whose names to write: local (default) or te")
      ->check(CLI::IsMember({"local", "te"}));
  cmd->add_option("--make-vocab-size-divisible-by", opts->make_vocab_size_divisible_by,
                  "HF -> torch_dist: vocabulary padding multiple (times --tp), as Megatron-LM's flag (default 128)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--allow-opaque", opts->allow_opaque,
                "carry objects whose pickle globals are not on the allowlist as opaque records\n"
                "(dropped with a warning where the target cannot hold them)");
  cmd->add_flag("--json", opts->json, "print a JSON report on stdout");
  cmd->add_flag("--quiet,-q", opts->quiet, "no progress or warnings on stderr");
  cmd->callback([opts, exit_code, iteration, iteration_opt, vocab, vocab_opt, etp, etp_opt] {
    if (iteration_opt->count() > 0) opts->iteration = *iteration;
    if (vocab_opt->count() > 0) opts->vocab_size = *vocab;
    if (etp_opt->count() > 0) opts->etp = *etp;
    opts->show_progress = !opts->quiet && !opts->json && ::isatty(STDERR_FILENO);
    Status s = RunConvert(*opts, std::cout, std::cerr);
    *exit_code = s.ok() ? 0 : ReportError("convert", s);
  });
}

}  // namespace ckpt::cli
