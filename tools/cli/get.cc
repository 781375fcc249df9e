#include <iostream>

#include "commands.h"
#include "lib/get.h"

namespace ckpt::cli {

void RegisterGet(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<GetOptions>();
  CLI::App* cmd = app.add_subcommand(
      "get",
      "Write one tensor (the assembled global tensor) or a slice of it to a .safetensors,\n"
      ".pt or .npy file, streaming: the tensor is never held in memory whole.");
  cmd->add_option("CKPT", opts->path, "a .pt/.bin/.pth, .safetensors, sharded index json, or folder")
      ->required();
  cmd->add_option("KEY", opts->key, "the tensor's key, as `inspect` lists it")->required();
  cmd->add_option("--slice", opts->slice,
                  "numpy-style basic slice without steps, e.g. '0:2,:,5' or ':, 10:20' or\n"
                  "'...,-1'. Negative values count from the end; slice bounds are clamped as\n"
                  "in Python; an integer index drops its axis, as numpy's x[5] does (write\n"
                  "'5:6' to keep it)");
  cmd->add_option("-o,--output", opts->output, "output file")->required();
  cmd->add_option("--format", opts->format,
                  "safetensors, pt or npy (default: from the output's extension: .safetensors,\n"
                  ".pt/.pth/.bin, .npy). .npy refuses dtypes numpy lacks (bfloat16, float8_*)")
      ->check(CLI::IsMember({"safetensors", "pt", "torch", "npy"}));
  cmd->add_option("--optimizer", opts->optimizer,
                  "write the optimizer state of KEY instead of KEY itself: param (fp32 main\n"
                  "parameters), exp_avg or exp_avg_sq, shaped like KEY whatever the distributed\n"
                  "optimizer's layout (a Megatron checkpoint)");
  cmd->add_flag("--json", opts->json,
                "print {key, dtype, shape, slice, nbytes, output, format} (shape of the output)");
  cmd->callback([opts, cmd, exit_code] {
    opts->has_slice = cmd->count("--slice") > 0;
    Status s = RunGet(*opts, std::cout);
    *exit_code = s.ok() ? 0 : ReportError("get", s);
  });
}

}  // namespace ckpt::cli
