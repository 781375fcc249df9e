// A torch.save state dict as DCP entries, flattened as torch.distributed.
// checkpoint's flatten_state_dict does (internal to the convert layer;
// Convert with to=dcp uses it for torch sources).
//
// torch 2.13 (_traverse.traverse_state_dict, _nested_dict.flatten_state_dict,
// default_planner): from the root dict, mappings (dict, OrderedDict) are
// descended with str(key) path elements; a list is descended (int path
// elements) only when it holds a tensor, a mapping, or a list that is itself
// descended; everything else is a leaf: a tensor becomes a tensor entry (one
// chunk), any other value (int, str, tuple, Namespace, a list of ints, ...) a
// bytes entry holding torch.save(value). The key is the path joined by '.';
// planner_data keeps the path. Empty mappings produce nothing, as in torch.
//
// Bytes entries are written as a torch.save archive ("archive" folder) of the
// leaf's pickled Value subtree; tensors inside (e.g. in a tuple) keep their
// rebuild calls and get their storages renumbered "0".. and copied as stored.
//
// Thread-safety: the callbacks read `file` and `reader` (thread-safe reads);
// both must outlive the entries.
#ifndef CKPT_CONVERT_DCP_FROM_TORCH_H_
#define CKPT_CONVERT_DCP_FROM_TORCH_H_

#include <functional>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "format/dcp/writer.h"
#include "format/torch/torch_file.h"

namespace ckpt::internal_convert {

// Called after each tensor chunk is streamed with its byte count.
using ChunkDone = std::function<void(uint64_t)>;

// Errors: FailedPrecondition when the root is not a dict (the caller falls
// back to flat keys); DataLoss when two leaves flatten to the same key or a
// tensor leaf is not among reader's tensors; Unimplemented for a dict key that
// is not a str, int, bool or None (torch flattens it with str(), which is not
// reproduced) and, at write time, for a bytes leaf holding tensors of a
// big-endian archive; ResourceExhausted beyond
// pickle::kDefaultMaxDepth.
Result<std::vector<dcp::EntryToWrite>> TorchStateDictToDcpEntries(const torch::TorchFile& file,
                                                                  const CheckpointReader& reader,
                                                                  ChunkDone on_chunk);

}  // namespace ckpt::internal_convert

#endif  // CKPT_CONVERT_DCP_FROM_TORCH_H_
