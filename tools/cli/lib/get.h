// `ckptkit get`: write one tensor, or a box of it, to a .safetensors, .pt or
// .npy file.
//
// The tensor is streamed from CheckpointReader::ReadTensorRegion straight into
// the output file (which is published atomically), so memory stays bounded by
// the readers' and writers' copy buffers whatever the tensor's size. Works
// through the generic CheckpointReader interface only, so any format that
// OpenCheckpoint opens (torch, safetensors, sharded, DCP) works.
//
// Thread-safety: plain functions; reentrant.
#ifndef CKPT_TOOLS_CLI_LIB_GET_H_
#define CKPT_TOOLS_CLI_LIB_GET_H_

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/dtype.h"
#include "ckpt/env.h"
#include "ckpt/status.h"
#include "util/box.h"

namespace ckpt::cli {

// ------------------------------------------------------------------ slicing

// A parsed --slice: the box to read and the shape of the result.
struct Slice {
  Box box;                         // in the tensor's coordinates, rank == tensor rank
  std::vector<int64_t> out_shape;  // box.count without the axes an integer index dropped
  std::string text;                // normalised: "0:2, 0:4, 5" (resolved, non-negative)
};

// Parses a numpy-style basic slice without steps against `shape`:
// comma-separated items, each `:`, `a:`, `:b`, `a:b`, `a:b:` / `a:b:1`, an
// integer `i`, or one `...` (as many `:` as needed). Missing trailing items
// mean `:`. Bounds follow Python: negative values count from the end, slice
// bounds are clamped to [0, n] and an empty range (`5:2`) gives count 0; an
// integer index must be in [-n, n) and drops its axis from out_shape (as
// numpy's x[1] does). Whitespace around items is allowed. An empty spec is the
// whole tensor.
// Errors: InvalidArgument naming the item for a step other than 1, more
// items than axes, a second `...`, a malformed number or an out-of-range
// integer index.
Result<Slice> ParseSlice(std::string_view spec, std::span<const int64_t> shape);

// ------------------------------------------------------------------- .npy

// numpy's descr for dtype ('<f4', '|b1', '<c8', ...), or nullopt for dtypes
// numpy has no type for (bfloat16, float8_*, complex32, quantized, bits).
std::optional<std::string> NpyDescr(DType dtype);

// The complete .npy header (magic, version, length, dict, padding) that
// numpy.save (numpy 2.x) writes for a C-order array of this descr and shape:
// version 1.0 unless the header needs more than 65535 bytes, then 2.0; the
// dict padded with numpy's growth-axis spaces and to a multiple of 64 bytes.
std::string NpyHeader(std::string_view descr, std::span<const int64_t> shape);

// ------------------------------------------------------------ suggestions

// Up to `max` keys of `keys` closest to `key`: keys containing it (or contained
// in it) first, then by Levenshtein distance (at most max(2, |key|/3)); ties
// in the order of `keys`. Never suggests `key` itself.
std::vector<std::string> ClosestKeys(std::string_view key, const std::vector<std::string>& keys,
                                     size_t max = 5);

// ------------------------------------------------------------- the command

struct GetOptions {
  std::string path;    // the checkpoint
  std::string key;     // the tensor
  std::string slice;   // --slice; meaningful when has_slice
  bool has_slice = false;
  std::string output;  // -o
  std::string format;  // "", "safetensors", "pt" (or "torch"), "npy"; "" = from output's extension
  bool json = false;
  // --optimizer: the optimizer state ("param", "exp_avg", "exp_avg_sq") of
  // model tensor `key`, read from the Megatron checkpoint in model space
  // (OpenModelSpace): the key "optimizer.state.<optimizer>.<key>", shaped like
  // the model tensor whatever the optimizer's sharding type.
  std::string optimizer;
  Env* env = nullptr;  // nullptr: Env::Default()
};

// The output format: options.format, else from the extension of output
// (.safetensors; .pt/.pth/.bin; .npy). Errors: InvalidArgument when neither
// says.
Result<std::string> ResolveGetFormat(const GetOptions& options);

// Writes the tensor (or its slice) to options.output and a one-line summary
// (or, with json, {"key","dtype","shape","slice","nbytes","output","format"})
// to out. The output is written atomically: on error, nothing is left at
// options.output but what was there before.
// A key "optimizer.state.<state>.<key>" that the checkpoint does not store
// as such is also looked up in model space.
// Errors: NotFound "no tensor named 'K'" (with up to 5 close keys) for an
// unknown key; InvalidArgument for a bad slice, an unknown format or a dtype
// the output format cannot hold (e.g. bfloat16 in .npy); those of
// OpenCheckpoint and the readers; I/O errors naming the output path.
Status RunGet(const GetOptions& options, std::ostream& out);

}  // namespace ckpt::cli

#endif  // CKPT_TOOLS_CLI_LIB_GET_H_
