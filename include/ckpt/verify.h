// Verifying that a checkpoint is complete and readable.
//
// Verify opens any checkpoint OpenCheckpoint knows and reports every problem
// it finds in the data, each naming the file, the byte offset and the key:
//   DCP / torch_dist: every global tensor covered exactly once by its chunks
//   (identical replicas allowed), no chunk outside its tensor, every item
//   inside an existing file, items not overlapping, every embedded torch.save
//   archive parses and holds a tensor of the chunk's dtype and shape, every
//   bytes entry parses; Megatron: metadata.json, the common state and, in
//   deep mode, integrity.json's SHA-256 digests;
//   Megatron legacy (--ckpt-format torch): every (tp, pp, ep) rank folder of
//   the grid present and none extra, model_optim_rng.pt in each,
//   distrib_optim.pt in each when args.use_distributed_optimizer, every rank
//   file parses, distrib_optim.pt buffer sizes agree (numel_unpadded, per-bucket
//   sizes), one iteration for all;
//   torch / safetensors: the file opens (headers, pickle, records).
// With `deep`, every byte of every tensor is read and decoded (CRC-32 of zip
// records checked where the format stores one), and where ckptkit wrote a
// checksum manifest beside DCP data files (format/dcp/manifest.h), every
// item's stored bytes are hashed and compared with it: a data file that is
// well-formed but not the one saved (bit rot, a file copied from another
// save of the same structure) is named with the item's offset and key.
// Without `deep` the manifests are only parsed and matched to `.metadata`.
//
// A problem in the data is a VerifyProblem, not an error: the function only
// fails when the input cannot be reached (NotFound, PermissionDenied, I/O) or
// is not a checkpoint at all (InvalidArgument).
//
// Thread-safety: Verify may run concurrently on different paths.
#ifndef CKPT_VERIFY_H_
#define CKPT_VERIFY_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt {

struct VerifyOptions {
  bool deep = false;
  Env* env = nullptr;  // nullptr: Env::Default()
  // Called with (items done, items total) as chunks / tensors are checked. May be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

struct VerifyProblem {
  std::string file;  // relative to the checkpoint folder, or the file itself; "" if none
  bool has_offset = false;
  uint64_t offset = 0;
  std::string key;   // tensor / object key, "" if none
  std::string message;
};

struct VerifyReport {
  std::string format;
  bool deep = false;
  uint64_t tensors = 0;    // tensors checked
  uint64_t chunks = 0;     // stored pieces checked (chunks; 1 per tensor elsewhere)
  uint64_t objects = 0;    // non-tensor entries checked
  uint64_t files = 0;      // data files
  uint64_t bytes_read = 0;  // tensor bytes read and decoded (deep)
  // DCP / torch_dist written by ckptkit: checksum manifests found (their items
  // must be items of `.metadata`), and items whose stored bytes were hashed and
  // compared with the manifest's XXH3 (deep).
  uint64_t manifests = 0;
  uint64_t checksums = 0;
  std::vector<VerifyProblem> problems;
  // What was checked, for people (Megatron legacy: the rank grid, one line per
  // rank folder); empty for other formats.
  std::vector<std::string> layout;
  bool ok() const { return problems.empty(); }
};

// "file @ offset: 'key': message" with empty parts left out.
std::string ToString(const VerifyProblem& p);

Result<VerifyReport> Verify(const std::string& path, const VerifyOptions& options = {});

}  // namespace ckpt

#endif  // CKPT_VERIFY_H_
