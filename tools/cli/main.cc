// ckptkit: read, explain, verify and convert training checkpoints.
#include <iostream>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "commands.h"
#include "lib/exit_code.h"

namespace ckpt::cli {

int ReportError(const char* command, const Status& status) {
  std::cerr << "ckptkit " << command << ": error: " << status.ToString() << "\n";
  return ExitCodeFor(status);
}

}  // namespace ckpt::cli

int main(int argc, char** argv) {
#ifdef __GLIBC__
  // A fixed mmap threshold (glibc's default one rises after the first large
  // free): the large blocks of a parse (the unpickled graph of a million-chunk
  // .metadata, ~200 MiB) then go back to the system when freed, instead of
  // staying in the heap while the index is built, a quarter more peak memory.
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
#endif
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
