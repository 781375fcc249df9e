// Registration of ckptkit's subcommands; each lives in its own file and
// parses only its flags, then calls a tools/cli/lib/ function.
#ifndef CKPT_TOOLS_CLI_COMMANDS_H_
#define CKPT_TOOLS_CLI_COMMANDS_H_

#include <CLI/CLI.hpp>

#include "ckpt/status.h"

namespace ckpt::cli {

// Each Register* adds a subcommand whose callback stores its exit code in *exit_code.
void RegisterInspect(CLI::App& app, int* exit_code);
void RegisterConvert(CLI::App& app, int* exit_code);
void RegisterGet(CLI::App& app, int* exit_code);
void RegisterDiff(CLI::App& app, int* exit_code);
void RegisterVerify(CLI::App& app, int* exit_code);
void RegisterReshard(CLI::App& app, int* exit_code);

// Prints "ckptkit <command>: <status>" to stderr and returns the exit code for it.
int ReportError(const char* command, const ckpt::Status& status);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_COMMANDS_H_
