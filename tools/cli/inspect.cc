#include <iostream>

#include "commands.h"
#include "lib/inspect.h"

namespace ckpt::cli {

void RegisterInspect(CLI::App& app, int* exit_code) {
  auto opts = std::make_shared<InspectOptions>();
  CLI::App* cmd = app.add_subcommand(
      "inspect",
      "Show what a checkpoint holds: tensors (dtype, shape, bytes, storage), other objects\n"
      "(shown safely: pickled code is never run), format details. Reads metadata only.");
  cmd->add_option("PATH", opts->path, "a .pt/.bin/.pth, .safetensors, sharded index json, or folder")
      ->required();
  cmd->add_flag("--json", opts->json, "print one JSON document");
  cmd->add_option("--max-rows", opts->max_rows, "show at most N tensors in the table (0: all)");
  cmd->callback([opts, exit_code] {
    Status s = Inspect(*opts, std::cout);
    *exit_code = s.ok() ? 0 : ReportError("inspect", s);
  });
}

}  // namespace ckpt::cli
