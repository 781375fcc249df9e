// The globals the safe unpickler accepts in strict mode.
//
// Nothing on this list is ever imported or called: the list only decides
// whether a GLOBAL / STACK_GLOBAL / INST is accepted in strict mode (an error
// otherwise) and whether a kObject built on it is "opaque" in inspect mode.
// It names the classes and functions that torch.save, numpy, Megatron-LM and
// torch.distributed.checkpoint put in their pickles:
//
//   torch._utils: _rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3,
//     _rebuild_parameter, _rebuild_parameter_with_state,
//     _rebuild_device_tensor_from_numpy, _rebuild_device_tensor_from_cpu_tensor,
//     _rebuild_meta_tensor_no_storage, _rebuild_qtensor, _rebuild_sparse_tensor,
//     _rebuild_wrapper_subclass, _rebuild_nested_tensor
//   torch._tensor._rebuild_from_type_v2; torch.Tensor, torch.Size, torch.device,
//   torch.nn.parameter.Parameter, torch.serialization._get_layout
//   torch.<X>Storage (any name ending in "Storage", e.g. FloatStorage,
//     UntypedStorage), torch.storage.UntypedStorage / TypedStorage,
//     torch.<X>Tensor legacy tensor classes
//   torch.<dtype> for every ckpt::DType name plus bits/uint1..7/int1..7,
//   torch layouts (strided, sparse_coo, sparse_csr, sparse_csc, sparse_bsr,
//     sparse_bsc, _mkldnn), memory formats (contiguous_format, channels_last,
//     channels_last_3d, preserve_format), qschemes (per_tensor_affine, ...)
//   collections: OrderedDict, defaultdict, Counter, deque
//   builtins (also spelled __builtin__): set, frozenset, bytearray, bytes,
//     complex, slice, range, object, int, float, str, list, dict, tuple, bool
//   _codecs.encode; copyreg._reconstructor, copyreg.__newobj__,
//     copyreg.__newobj_ex__; argparse.Namespace; functools.partial (data only)
//   numpy: core.multiarray._reconstruct, _core.multiarray._reconstruct,
//     core.multiarray.scalar, _core.multiarray.scalar, ndarray, dtype,
//     dtypes.* (numpy >= 1.25 dtype classes), random state helpers
//     (numpy.random._pickle.__randomstate_ctor / __bit_generator_ctor /
//     __generator_ctor)
//   pathlib: PosixPath, PurePosixPath, WindowsPath, PureWindowsPath, Path
//   torch.distributed.checkpoint.metadata: Metadata, TensorStorageMetadata,
//     ChunkStorageMetadata, BytesStorageMetadata, TensorProperties, StorageMeta,
//     MetadataIndex, _MEM_FORMAT_ENCODING;
//   torch.distributed._shard.sharded_tensor.metadata.TensorProperties (2.3);
//   torch.distributed.checkpoint.filesystem._StorageInfo;
//   torch.distributed.checkpoint.planner: WriteItemType, LoadItemType, ...;
//   torch.distributed.checkpoint._nested_dict / _traverse helpers (none used)
//   Megatron-LM enum modules, any name: megatron.core.enums,
//     megatron.core.transformer.enums, megatron.training.enums,
//     megatron.core.dist_checkpointing.mapping (ShardedTensor & co.),
//     megatron.core.dist_checkpointing.core (CheckpointingConfig),
//     megatron.core.transformer.transformer_config /
//     megatron.core.model_parallel_config (dataclasses stored in args)
//
// To extend: add a row to kAllowed in allowlist.cc (name "*" admits a whole
// module; keep those to modules that only define enums or dataclasses), or
// pass UnpickleOptions::extra_allowed for one call.
//
// Thread-safety: pure functions over constant tables.
#ifndef CKPT_FORMAT_PICKLE_ALLOWLIST_H_
#define CKPT_FORMAT_PICKLE_ALLOWLIST_H_

#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace ckpt::pickle {

struct AllowedGlobal {
  std::string_view module;
  std::string_view name;  // "*": every name in module
};

// The built-in table (without the rule-based torch storage/dtype names).
std::span<const AllowedGlobal> DefaultAllowlist();

// True if module.name is on the built-in list or matches a rule (torch
// storage classes, torch dtypes). Expects normalized (Python 3) module names.
bool IsAllowedGlobal(std::string_view module, std::string_view name);

// Python 2 -> 3 spelling, as CPython's unpickler applies it for protocol < 3
// with fix_imports (_compat_pickle.NAME_MAPPING / IMPORT_MAPPING, the subset
// that matters here): __builtin__ -> builtins, copy_reg -> copyreg,
// __builtin__.unicode -> builtins.str, ... Returns {module, name}.
std::pair<std::string, std::string> NormalizeGlobal(std::string_view module,
                                                    std::string_view name);

// Python 3 -> 2 spelling, as CPython's Pickler writes GLOBAL at protocol < 3
// with fix_imports (REVERSE_NAME_MAPPING / REVERSE_IMPORT_MAPPING subset):
// builtins -> __builtin__, copyreg -> copy_reg, builtins.str ->
// __builtin__.unicode, ...
std::pair<std::string, std::string> Py2Global(std::string_view module, std::string_view name);

}  // namespace ckpt::pickle

#endif  // CKPT_FORMAT_PICKLE_ALLOWLIST_H_
