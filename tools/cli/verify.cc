#include <unistd.h>

#include <iostream>

#include "commands.h"
#include "lib/verify.h"

namespace ckpt::cli {

void RegisterVerify(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<VerifyCommandOptions>();
  CLI::App* cmd = app.add_subcommand(
      "verify",
      "Check that a checkpoint is complete and readable: for DCP / torch_dist, every tensor covered\n"
      "exactly once by its chunks, every item inside its file, every embedded archive valid.\n"
      "Exit 0 when no problem is found, 1 when there are problems (each names file, offset, key).");
  cmd->add_option("CKPT", opts->path, "checkpoint path (file or folder)")->required();
  cmd->add_flag("--deep", opts->deep, "also read and decode every byte (checks zip CRC-32s)");
  cmd->add_flag("--json", opts->json, "print a JSON report on stdout");
  cmd->callback([opts, exit_code] {
    opts->show_progress = !opts->json && ::isatty(STDERR_FILENO);
    int code = 0;
    Status s = RunVerify(*opts, std::cout, std::cerr, &code);
    *exit_code = s.ok() ? code : ReportError("verify", s);
  });
}

}  // namespace ckpt::cli
