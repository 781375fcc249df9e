// ckptkit: read, explain, verify and convert training checkpoints.
#include <iostream>

#include "commands.h"
#include "lib/exit_code.h"

namespace ckpt::cli {

int ReportError(const char* command, const Status& status) {
  std::cerr << "ckptkit " << command << ": error: " << status.ToString() << "\n";
  return ExitCodeFor(status);
}

}  // namespace ckpt::cli

int main(int argc, char** argv) {
  CLI::App app{
      "ckptkit: look inside, verify, convert and reshard PyTorch / Megatron / safetensors checkpoints.\n"
      "Exit codes: 0 ok, 1 a problem found in the data, 2 usage error or unreadable input."};
  app.set_version_flag("--version", "ckptkit 0.1.0");
  app.require_subcommand(1);
  int exit_code = 0;
  ckpt::cli::RegisterInspect(app, &exit_code);
  ckpt::cli::RegisterConvert(app, &exit_code);
  ckpt::cli::RegisterGet(app, &exit_code);
  ckpt::cli::RegisterDiff(app, &exit_code);
  ckpt::cli::RegisterVerify(app, &exit_code);
  ckpt::cli::RegisterReshard(app, &exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : ckpt::cli::kExitUsage;
  }
  return exit_code;
}
