// `ckptkit inspect`: what is inside a checkpoint, read from metadata only.
#ifndef CKPT_TOOLS_CLI_LIB_INSPECT_H_
#define CKPT_TOOLS_CLI_LIB_INSPECT_H_

#include <ostream>
#include <string>

#include <nlohmann/json.hpp>

#include "ckpt/checkpoint.h"
#include "ckpt/status.h"

namespace ckpt::cli {

struct InspectOptions {
  std::string path;
  bool json = false;
  size_t max_rows = 0;  // 0: all tensors
  Env* env = nullptr;
};

// The JSON document `inspect --json` prints:
// {"path", "format", "tensors": [{"key","dtype","shape","nbytes", ...}],
//  "objects": [{"key","type","repr","opaque"}], "total_bytes", "details": {...}}.
nlohmann::json InspectJson(const std::string& path, const CheckpointReader& reader);

// Opens options.path in inspect mode (unknown pickle globals shown as opaque
// records, never executed) and writes a report to out.
// Errors: those of OpenCheckpoint.
Status Inspect(const InspectOptions& options, std::ostream& out);

// "1.50 MiB" style.
std::string HumanBytes(uint64_t n);
// "[2, 3]".
std::string ShapeString(const std::vector<int64_t>& shape);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_INSPECT_H_
