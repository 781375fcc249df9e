// `ckptkit reshard`: flag handling around ckpt::Reshard.
#ifndef CKPT_TOOLS_CLI_LIB_RESHARD_H_
#define CKPT_TOOLS_CLI_LIB_RESHARD_H_

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::cli {

struct ReshardCommandOptions {
  std::string src;
  std::string dst;  // empty with --check
  int64_t tp = 0, pp = 0, vpp = 0, dp = 0, ep = 0, etp = 0;  // 0: the source's
  std::optional<int64_t> vocab_size;
  std::string to = "torch_dist";
  std::string optimizer_sharding;  // "" = fully_reshardable (torch_dist output)
  bool no_optimizer = false;
  std::string megatron_version;
  std::optional<int64_t> iteration;
  int64_t thread_count = 1;
  bool buffered_io = false;  // no O_DIRECT (ReshardOptions::direct_io)
  bool check = false;
  bool json = false;
  bool quiet = false;
  bool show_progress = false;
  Env* env = nullptr;
};

// Reshards (or, with check, only checks and describes); the summary (or JSON
// report) goes to out, warnings and progress to err. Errors: those of
// ckpt::Reshard; InvalidArgument naming the flag for a target or optimizer
// sharding not written yet, or a missing DST.
Status RunReshard(const ReshardCommandOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_RESHARD_H_
