// Exit codes shared by every ckptkit subcommand, as diff(1) and cmp(1) use them.
#ifndef CKPT_TOOLS_CLI_LIB_EXIT_CODE_H_
#define CKPT_TOOLS_CLI_LIB_EXIT_CODE_H_

#include "ckpt/status.h"

namespace ckpt::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitDataProblem = 1;  // corrupt, incomplete, unsafe or different data
inline constexpr int kExitUsage = 2;        // bad flags, missing/unreadable input, unknown format

// Maps a failed Status to an exit code: problems found inside the data
// (DataLoss, OutOfRange, Unimplemented such as a pickle global refused in
// strict mode, FailedPrecondition on contents) give 1; everything about
// reaching the input or the request itself (InvalidArgument, NotFound,
// PermissionDenied, I/O, ResourceExhausted, ...) gives 2.
int ExitCodeFor(const Status& status);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_EXIT_CODE_H_
