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
  std::string to;              // "safetensors" | "torch" | "dcp" | "torch_dist"
  std::string max_shard_size;  // "" or a size like "5GB", "500MiB", "1000"
  int64_t thread_count = 1;    // --to dcp / torch_dist: number of data files
  std::string dcp_metadata_layout;  // --to dcp: "", torch2.13, torch2.3, torch2.0
  std::string megatron_version;    // --to torch_dist: "0.16" | "0.19" | "" (newest)
  std::optional<int64_t> iteration;  // --to torch_dist: write a Megatron-LM root
  // Model conversion (--to hf; --to torch_dist from an HF model folder).
  std::string hf_config;
  std::string family;
  std::optional<int64_t> vocab_size;
  std::string dtype;
  bool bin = false;
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

// Parses "123", "10KB", "5GB" (powers of 1000, as transformers reads them) and
// "500KiB", "2GiB" (powers of 1024); units are case-insensitive except that a
// decimal unit ending in a lowercase 'b' ("5Gb", "5gb") is refused, since
// transformers reads it as bits. Errors: InvalidArgument for a missing number,
// an unknown unit, a value over 2^64-1 bytes, or zero.
Result<uint64_t> ParseSize(const std::string& text);

// Runs the conversion; the summary (or JSON report) goes to out, warnings and
// progress to err. Errors: those of ckpt::Convert, InvalidArgument for flags.
Status RunConvert(const ConvertCommandOptions& options, std::ostream& out, std::ostream& err);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_CONVERT_H_
