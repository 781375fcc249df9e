#include "format/pickle/allowlist.h"

#include <array>

#include "ckpt/dtype.h"

namespace ckpt::pickle {
namespace {

// One table; see allowlist.h for the grouping and how to extend it.
constexpr AllowedGlobal kAllowed[] = {
    // torch tensor rebuild functions (torch/_utils.py, torch/_tensor.py).
    {"torch._utils", "_rebuild_tensor"},
    {"torch._utils", "_rebuild_tensor_v2"},
    {"torch._utils", "_rebuild_tensor_v3"},
    {"torch._utils", "_rebuild_parameter"},
    {"torch._utils", "_rebuild_parameter_with_state"},
    {"torch._utils", "_rebuild_device_tensor_from_numpy"},
    {"torch._utils", "_rebuild_device_tensor_from_cpu_tensor"},
    {"torch._utils", "_rebuild_meta_tensor_no_storage"},
    {"torch._utils", "_rebuild_qtensor"},
    {"torch._utils", "_rebuild_sparse_tensor"},
    {"torch._utils", "_rebuild_wrapper_subclass"},
    {"torch._utils", "_rebuild_nested_tensor"},
    {"torch._tensor", "_rebuild_from_type_v2"},
    {"torch", "Tensor"},
    {"torch", "Size"},
    {"torch", "device"},
    {"torch.nn.parameter", "Parameter"},
    {"torch.serialization", "_get_layout"},
    {"torch.storage", "UntypedStorage"},
    {"torch.storage", "TypedStorage"},
    {"torch.storage", "_load_from_bytes"},
    // layouts, memory formats, qschemes (torch/_weights_only_unpickler.py).
    {"torch", "strided"},
    {"torch", "sparse_coo"},
    {"torch", "sparse_csr"},
    {"torch", "sparse_csc"},
    {"torch", "sparse_bsr"},
    {"torch", "sparse_bsc"},
    {"torch", "_mkldnn"},
    {"torch", "jagged"},
    {"torch", "contiguous_format"},
    {"torch", "channels_last"},
    {"torch", "channels_last_3d"},
    {"torch", "preserve_format"},
    {"torch", "per_tensor_affine"},
    {"torch", "per_channel_affine"},
    {"torch", "per_tensor_symmetric"},
    {"torch", "per_channel_symmetric"},
    {"torch", "per_channel_affine_float_qparams"},
    // dtypes not in ckpt::DType.
    {"torch", "bits1x8"},
    {"torch", "bits2x4"},
    {"torch", "bits4x2"},
    {"torch", "uint1"}, {"torch", "uint2"}, {"torch", "uint3"}, {"torch", "uint4"},
    {"torch", "uint5"}, {"torch", "uint6"}, {"torch", "uint7"},
    {"torch", "int1"}, {"torch", "int2"}, {"torch", "int3"}, {"torch", "int4"},
    {"torch", "int5"}, {"torch", "int6"}, {"torch", "int7"},
    // Python standard library data types.
    {"collections", "OrderedDict"},
    {"collections", "defaultdict"},
    {"collections", "Counter"},
    {"collections", "deque"},
    {"builtins", "set"},
    {"builtins", "frozenset"},
    {"builtins", "bytearray"},
    {"builtins", "bytes"},
    {"builtins", "complex"},
    {"builtins", "slice"},
    {"builtins", "range"},
    {"builtins", "object"},
    {"builtins", "int"},
    {"builtins", "float"},
    {"builtins", "str"},
    {"builtins", "list"},
    {"builtins", "dict"},
    {"builtins", "tuple"},
    {"builtins", "bool"},
    {"_codecs", "encode"},
    {"copyreg", "_reconstructor"},
    {"copyreg", "__newobj__"},
    {"copyreg", "__newobj_ex__"},
    {"argparse", "Namespace"},
    {"_io", "BytesIO"},  // DCP bytes entries and Megatron (SAFE_GLOBALS); state is (value, pos, dict)
    {"functools", "partial"},
    {"pathlib", "Path"},
    {"pathlib", "PosixPath"},
    {"pathlib", "PurePosixPath"},
    {"pathlib", "WindowsPath"},
    {"pathlib", "PureWindowsPath"},
    {"datetime", "datetime"},
    {"datetime", "date"},
    {"datetime", "timedelta"},
    {"uuid", "UUID"},
    {"enum", "Enum"},
    // numpy (Megatron RNG state, numpy arrays and scalars in checkpoints).
    {"numpy.core.multiarray", "_reconstruct"},
    {"numpy._core.multiarray", "_reconstruct"},
    {"numpy.core.multiarray", "scalar"},
    {"numpy._core.multiarray", "scalar"},
    {"numpy", "ndarray"},
    {"numpy", "dtype"},
    {"numpy.dtypes", "*"},
    {"numpy.random._pickle", "__randomstate_ctor"},
    {"numpy.random._pickle", "__bit_generator_ctor"},
    {"numpy.random._pickle", "__generator_ctor"},
    {"numpy.random.mtrand", "RandomState"},
    {"numpy.random._mt19937", "MT19937"},
    // torch.distributed.checkpoint (DCP .metadata).
    {"torch.distributed.checkpoint.metadata", "Metadata"},
    {"torch.distributed.checkpoint.metadata", "TensorStorageMetadata"},
    {"torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"},
    {"torch.distributed.checkpoint.metadata", "BytesStorageMetadata"},
    {"torch.distributed.checkpoint.metadata", "TensorProperties"},
    {"torch.distributed.checkpoint.metadata", "StorageMeta"},
    {"torch.distributed.checkpoint.metadata", "MetadataIndex"},
    {"torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"},
    {"torch.distributed._shard.sharded_tensor.metadata", "TensorProperties"},
    {"torch.distributed._shard.sharded_tensor.metadata", "MEM_FORMAT_ENCODING"},
    {"torch.distributed._shard.metadata", "ShardMetadata"},
    {"torch.distributed.checkpoint.filesystem", "_StorageInfo"},
    {"torch.distributed.checkpoint.planner", "WriteItemType"},
    {"torch.distributed.checkpoint.planner", "LoadItemType"},
    {"torch.distributed.checkpoint.planner", "WriteItem"},
    {"torch.distributed.checkpoint.planner", "ReadItem"},
    {"torch.distributed.checkpoint.planner", "TensorWriteData"},
    {"torch.distributed.checkpoint.planner", "SavePlan"},
    {"torch.distributed.checkpoint.planner", "LoadPlan"},
    // Megatron-LM: modules of enums and config dataclasses stored in args.
    {"megatron.core.enums", "*"},
    {"megatron.core.transformer.enums", "*"},
    {"megatron.training.enums", "*"},
    {"megatron.core.dist_checkpointing.mapping", "*"},
    {"megatron.core.dist_checkpointing.core", "*"},
    {"megatron.core.transformer.transformer_config", "*"},
    {"megatron.core.model_parallel_config", "*"},
};

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

}  // namespace

std::span<const AllowedGlobal> DefaultAllowlist() { return kAllowed; }

bool IsAllowedGlobal(std::string_view module, std::string_view name) {
  if (module == "torch") {
    // torch.FloatStorage ... torch.UntypedStorage; torch.FloatTensor ...
    if (EndsWith(name, "Storage") || (EndsWith(name, "Tensor") && name != "Tensor")) {
      return name.find_first_not_of(
                 "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789") ==
             std::string_view::npos;
    }
    if (DTypeFromName(name).has_value()) return true;
    // Aliases torch accepts as dtypes.
    if (name == "float" || name == "double" || name == "half" || name == "long" ||
        name == "int" || name == "short" || name == "cfloat" || name == "cdouble" ||
        name == "chalf") {
      return true;
    }
  }
  for (const AllowedGlobal& g : kAllowed) {
    if (g.module == module && (g.name == "*" || g.name == name)) return true;
  }
  return false;
}

namespace {
struct NameMap {
  std::string_view py2_module, py2_name, py3_module, py3_name;
};
constexpr NameMap kNameMap[] = {
    {"__builtin__", "xrange", "builtins", "range"},
    {"__builtin__", "unichr", "builtins", "chr"},
    {"__builtin__", "unicode", "builtins", "str"},
    {"__builtin__", "long", "builtins", "int"},
};
constexpr std::pair<std::string_view, std::string_view> kModuleMap[] = {
    {"__builtin__", "builtins"},
    {"copy_reg", "copyreg"},
};
}  // namespace

std::pair<std::string, std::string> NormalizeGlobal(std::string_view module,
                                                    std::string_view name) {
  if (module == "__builtin__" && name == "basestring") return {"builtins", "str"};
  for (const NameMap& m : kNameMap) {
    if (m.py2_module == module && m.py2_name == name) {
      return {std::string(m.py3_module), std::string(m.py3_name)};
    }
  }
  for (const auto& [py2, py3] : kModuleMap) {
    if (module == py2) return {std::string(py3), std::string(name)};
  }
  return {std::string(module), std::string(name)};
}

std::pair<std::string, std::string> Py2Global(std::string_view module, std::string_view name) {
  for (const NameMap& m : kNameMap) {
    if (m.py3_module == module && m.py3_name == name) {
      return {std::string(m.py2_module), std::string(m.py2_name)};
    }
  }
  for (const auto& [py2, py3] : kModuleMap) {
    if (module == py3) return {std::string(py2), std::string(name)};
  }
  return {std::string(module), std::string(name)};
}

}  // namespace ckpt::pickle
