// DCP folder -> one torch.save file, as
// torch.distributed.checkpoint.format_utils.dcp_to_torch_save writes it
// (internal to the convert layer; Convert routes DCP and Megatron
// torch_dist sources with to=torch here).
//
// What torch does (torch 2.13, format_utils.py + default_planner.py
// _EmptyStateDictLoadPlanner + _traverse.set_element): for each key of
// state_dict_metadata in .metadata order, the value (torch.empty(size, dtype)
// for a tensor, filled from its chunks; torch.load(weights_only=False) of the
// embedded archive for a bytes item) is set into a nested state dict along
// planner_data[key] (str elements are dict keys, int elements list indices,
// lists padded with None; without planner_data the flat key). The result is
// torch.save'd. This code builds the same tree:
//  - tensors are fresh contiguous tensors (requires_grad False, own storage)
//    streamed from the DCP chunks one at a time: peak memory is about the
//    largest tensor (plus the pickle), never the checkpoint;
//  - bytes items are carried over as their original pickled objects (their
//    Value trees, tensors inside re-pointed at storages of the output whose
//    bytes are copied from the embedded archive);
//  - the object identities torch's process has (path strings shared through
//    the .metadata pickle memo, CPython singletons, interned attribute names)
//    are reproduced so the pickle memo matches: see tree_writer.h.
// Output is byte-identical to dcp_to_torch_save for every case tested
// (tests/interop/test_dcp_convert.py, the golden DCP and Megatron folders).
// Where it may not be: string identity that depends on the loading process's
// interned-string table (e.g. an object attribute name that is also a str
// elsewhere in the same bytes item); torch.load of both files is still equal.
// .metadata is read a second time (its pickle graph, for string identity);
// if that fails the output loses only that memo sharing.
//
// Thread-safety: reentrant (reader reads are thread-safe).
#ifndef CKPT_CONVERT_DCP_TO_TORCH_H_
#define CKPT_CONVERT_DCP_TO_TORCH_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "checkpoint/dcp_reader.h"
#include "ckpt/env.h"
#include "ckpt/status.h"

namespace ckpt::internal_convert {

struct DcpToTorchOptions {
  Env* env = nullptr;  // nullptr: Env::Default()
  // kStrict: a bytes item importing a global off the allowlist is an error
  // (Unimplemented); kInspect: it travels as an opaque object, unchanged.
  pickle::Mode mode = pickle::Mode::kStrict;
  // (bytes done, bytes total) after each DCP tensor. May be empty.
  std::function<void(uint64_t, uint64_t)> progress;
};

struct DcpToTorchReport {
  uint64_t tensors = 0;   // DCP tensor entries written
  uint64_t objects = 0;   // bytes items carried over
  uint64_t bytes = 0;     // DCP tensor bytes written
  uint64_t storages = 0;  // storages in the output (incl. those inside objects)
};

// List indices in planner_data paths must be below this (torch pads lists
// with None up to the index; a larger one is a damaged file, not a list).
inline constexpr int64_t kMaxDcpListIndex = int64_t{1} << 24;

// Writes reader's checkpoint to path (atomically; the archive folder named
// after path's stem, as torch.save names it). On failure path is untouched
// (WriteFileAtomically) unless the final directory sync failed.
// Errors: DataLoss for planner paths that conflict (a path through a leaf, a
// str index into a list, a negative index or one >= kMaxDcpListIndex), for
// unreadable tensors or bytes items (naming the key); Unimplemented as above
// and for a big-endian embedded archive; I/O errors naming the file.
Result<DcpToTorchReport> WriteDcpAsTorchSave(const internal_checkpoint::DcpReader& reader, const std::string& path,
                                             const DcpToTorchOptions& options);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_DCP_TO_TORCH_H_
