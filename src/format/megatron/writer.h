// Writing the Megatron layer of a torch_dist checkpoint: the bytes that
// megatron-core's `dist_checkpointing.save` (and Megatron-LM's
// `save_checkpoint`) put around a DCP folder, for one chosen core version.
//
// What each version writes (read from the real sources: megatron-core 0.16.1
// and 0.19.2, dist_checkpointing/{serialization,core}.py,
// strategies/{common,torch}.py):
//   metadata.json  `json.dump(asdict(CheckpointingConfig(backend, version)))`:
//                  0.16: {"sharded_backend": "torch_dist", "sharded_backend_version": 1,
//                         "common_backend": "torch", "common_backend_version": 1}
//                  0.19: {"sharded_backend": "torch_dist", "sharded_backend_version": 1}
//                  (Python json defaults: ", " and ": " separators, ensure_ascii, no newline).
//   common state   0.16: `common.pt` = torch.save(common_dict, "<dir>/common.pt")
//                        (archive folder "common", the file's stem);
//                  0.19: the DCP bytes entry `common_state/shard_0_1`, a ShardedObject
//                        whose item is torch.save([common_dict], io.BytesIO())
//                        (archive folder "archive"), as `_mcore_to_torch_sharded_object`
//                        serializes every ShardedObject.
//   tracker        Megatron-LM `latest_checkpointed_iteration.txt`: str(iteration)
//                  or "release", no newline.
//
// Pure format code: text out, archives to a ByteSink; no Env, no paths.
//
// Thread-safety: stateless functions. Lifetime: WriteCommonState reads the
// source TorchFile and calls `reopen` while it runs; both must stay valid
// until it returns.
#ifndef CKPT_FORMAT_MEGATRON_WRITER_H_
#define CKPT_FORMAT_MEGATRON_WRITER_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ckpt/byte_source.h"
#include "ckpt/status.h"
#include "format/megatron/megatron.h"
#include "format/torch/torch_file.h"
#include "format/torch/tree_writer.h"

namespace ckpt::megatron {

// The megatron-core save layouts ckptkit writes.
enum class CoreVersion {
  k0_16,  // core <= 0.18 layout, as 0.16.1 writes it: common.pt, 4-key metadata.json
  k0_19,  // core >= 0.19 layout, as 0.19.2 writes it: common_state entry, 2-key metadata.json
};
inline constexpr int kCoreVersionCount = 2;
inline constexpr CoreVersion kNewestCoreVersion = CoreVersion::k0_19;

// "0.16" / "0.19".
std::string_view CoreVersionName(CoreVersion v);

// Accepts "0.16" and "0.19" (a patch suffix "0.16.1" too). Errors:
// InvalidArgument naming the accepted values.
Result<CoreVersion> ParseCoreVersion(std::string_view text);

// True when the version keeps the common dict inside DCP (kCommonStateKey),
// false when it writes kCommonFileName.
bool CommonStateInDcp(CoreVersion v);

// ---------------------------------------------------------------------------
// metadata.json

// The file's exact text for `v`. `carried`: keys of a source metadata.json
// that are not CheckpointingConfig fields (a newer writer's additions), kept
// in order after the version's own keys; only 0.19 may carry them (0.16.1's
// `CheckpointingConfig(**config)` raises on an unknown key), so for 0.16 they
// must be empty. Errors: InvalidArgument (carried not an object, carried keys
// for 0.16, a carried key that is a CheckpointingConfig field).
Result<std::string> SerializeConfig(CoreVersion v,
                                    const nlohmann::ordered_json& carried = nlohmann::ordered_json::object());

// The CheckpointingConfig field names of any version (sharded_backend,
// sharded_backend_version, common_backend, common_backend_version).
bool IsConfigField(std::string_view key);

// `json.dumps(value)` with Python's defaults: ", " / ": " separators,
// ensure_ascii (non-ASCII as lowercase \uXXXX, surrogate pairs beyond the BMP),
// floats as repr() writes them, NaN / Infinity / -Infinity. Keys in the
// object's order. Errors: InvalidArgument for a string that is not UTF-8 or
// nesting deeper than 512.
Result<std::string> PythonJsonDumps(const nlohmann::ordered_json& value);

// ---------------------------------------------------------------------------
// latest_checkpointed_iteration.txt

// "release" or the decimal iteration, no newline (Megatron-LM
// `f.write(str(iteration))`). Errors: InvalidArgument for a negative iteration.
Result<std::string> SerializeTracker(const Tracker& t);

// ---------------------------------------------------------------------------
// The common state

// What the root of the source archive is.
enum class CommonSource {
  kDict,         // common.pt: the common dict itself
  kWrappedDict,  // a `common_state/shard_0_1` item: [common dict]
  kStateDict,    // a whole torch.save state dict: its tensors are removed (they are
                 // written as DCP entries), the rest is the common dict
};

// Indices into file.tensors() of the tensors that Megatron's
// `extract_matching_values` would take out of a state dict (the "sharded"
// part when each is a ShardedTensor): every tensor reached from the root
// dict through dicts and lists only. Tensors inside tuples or other objects
// stay in the common dict (Megatron treats those as atomic leaves).
// Errors: FailedPrecondition when the root is not a dict; ResourceExhausted
// beyond pickle::kDefaultMaxDepth.
Result<std::vector<size_t>> ExtractedTensors(const torch::TorchFile& file);

// Writes the common state in `v`'s form (see the header comment) to sink:
// for 0.16 the bytes of common.pt, for 0.19 the bytes of the
// `common_state/shard_0_1` item. The dict comes from `file` (nullptr: an
// empty dict) read as `source` says:
//  - kDict / kWrappedDict: the dict as stored; written again through
//    TorchTreeWriter, so torch.save of a dict that torch.load returned comes
//    back byte for byte (storages copied as stored).
//  - kStateDict: the root dict minus ExtractedTensors(file), as
//    `extract_matching_values(sd, is_tensor)[1]` returns it: a dict or list
//    whose every element was extracted disappears (an originally empty one
//    stays), lists are compacted, and every dict it rebuilds is a plain dict
//    (an OrderedDict loses its class and `_metadata`).
// `reopen` re-opens `file` at write time (see TorchTreeWriter::Import).
// Errors: DataLoss when the root does not have the shape `source` names;
// those of TorchTreeWriter (Import, Write) and of the sink.
Status WriteCommonState(CoreVersion v, const torch::TorchFile* file, CommonSource source,
                        torch::TorchTreeWriter::Reopener reopen, ByteSink* sink);

// Writes a common dict built in `w`'s arena (e.g. a fresh {"args": ...,
// "iteration": ...}) in `v`'s form, as WriteCommonState does.
// Errors: those of TorchTreeWriter::Write and of the sink.
Status WriteCommonTree(CoreVersion v, torch::TorchTreeWriter* w, pickle::Value* dict, ByteSink* sink);

// The common state's "content_metadata" Megatron-LM writes with the
// distributed optimizer (_build_sharded_state_dict_metadata):
// {"distrib_optim_sharding_type": sharding_type,
//  "distrib_optim_fully_reshardable_mem_efficient": False (fully_reshardable only),
//  "singleton_local_shards": False, "chained_optim_avoid_prefix": True}, in w's arena.
pickle::Value* DistOptContentMetadata(torch::TorchTreeWriter* w, std::string_view sharding_type);

}  // namespace ckpt::megatron

#endif  // CKPT_FORMAT_MEGATRON_WRITER_H_
