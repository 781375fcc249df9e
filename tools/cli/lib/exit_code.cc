#include "lib/exit_code.h"

namespace ckpt::cli {

int ExitCodeFor(const Status& status) {
  switch (status.code()) {
    case Code::kOk:
      return kExitOk;
    case Code::kDataLoss:
    case Code::kOutOfRange:
    case Code::kUnimplemented:
    case Code::kFailedPrecondition:
      return kExitDataProblem;
    default:
      return kExitUsage;
  }
}

}  // namespace ckpt::cli
