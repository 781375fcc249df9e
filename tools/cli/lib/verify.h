// `ckptkit verify`: report every problem in a checkpoint's data.
#ifndef CKPT_TOOLS_CLI_LIB_VERIFY_H_
#define CKPT_TOOLS_CLI_LIB_VERIFY_H_

#include <ostream>
#include <string>

#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::cli {

struct VerifyCommandOptions {
  std::string path;
  bool deep = false;
  bool json = false;
  bool show_progress = false;  // draw a progress line on err (a terminal)
  size_t max_problems = 50;    // text output: problems listed before "... N more"
  Env* env = nullptr;
};

// Prints the result; sets *exit_code to 0 (no problem) or 1 (problems found).
// Errors (exit 2 by the caller): the path cannot be reached or is not a checkpoint.
Status RunVerify(const VerifyCommandOptions& options, std::ostream& out, std::ostream& err, int* exit_code);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_VERIFY_H_
