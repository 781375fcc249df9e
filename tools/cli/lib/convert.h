// `ckptkit convert`: flag handling around ckpt::Convert.
#ifndef CKPT_TOOLS_CLI_LIB_CONVERT_H_
#define CKPT_TOOLS_CLI_LIB_CONVERT_H_

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::cli {

struct ConvertCommandOptions {
  std::string src;
  std::string dst;
  std::string to;              // a target name (ckpt::ParseTargetFormat)
  std::string max_shard_size;  // "" or a size like "5GB", "500MiB", "1000" (ckpt::ParseSize)
  int64_t thread_count = 1;    // --to dcp / torch_dist: number of data files
  bool buffered_io = false;    // --to dcp / torch_dist: no O_DIRECT (ConvertOptions::direct_io)
  std::string dcp_metadata_layout;  // --to dcp: "", torch2.13, torch2.3, torch2.0
  std::string megatron_version;    // --to torch_dist: "0.16" | "0.19" | "" (newest)
  std::optional<int64_t> iteration;  // --to torch_dist: write a Megatron-LM root
  // Model conversion (--to hf; --to torch_dist from an HF model folder).
  std::string hf_config;
  std::string family;
  std::optional<int64_t> vocab_size;
  std::string dtype;
  bool bin = false;
  bool no_optimizer = false;  // --to legacy: no optimizer state
  int64_t tp = 1, pp = 1, ep = 1;
  std::optional<int64_t> etp;
  std::string megatron_layer_spec = "local";
  int64_t make_vocab_size_divisible_by = 128;
  bool allow_opaque = false;
  bool json = false;
  bool quiet = false;
  bool show_progress = false;  // draw a progress line on err (a terminal)
  Env* env = nullptr;
};

// Runs the conversion; the summary (or JSON report) goes to out, warnings and
// progress to err. Errors: those of ckpt::ParseTargetFormat, ckpt::ParseSize
// and ckpt::Convert (which name the options); InvalidArgument naming the flag
// for flags given with a target that does not read them.
Status RunConvert(const ConvertCommandOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_CONVERT_H_
