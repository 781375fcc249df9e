"""ckptkit: read PyTorch and safetensors checkpoints without executing pickles.

    import ckptkit
    with ckptkit.open("model.pt") as ckpt:          # strict: unknown pickle globals raise
        for key in ckpt:
            info = ckpt.info(key)                     # dtype name, shape, nbytes, storage, ...
            arr = ckpt[key]                           # numpy array (a copy, C-contiguous)
            t = ckpt.torch(key)                       # torch.Tensor, if torch is installed
    ckptkit.save_file({"w": tensor_or_ndarray}, "out.safetensors")   # or format="torch"

Tensor values are read and written by the C++ core as contiguous little-endian bytes into a
buffer allocated here, with the GIL released.

dtypes without a numpy equivalent (bfloat16, float8_*, float4_e2m1fn_x2, complex32,
the quantized and bits types) come back from `numpy()` as their raw bytes viewed as the
unsigned integer of the same width (uint16 for bfloat16, uint8 for float8, uint32 for
complex32, ...); `info(key).dtype` keeps the real dtype name and `info(key).raw` is True.
`torch()` gives them their real torch dtype.

Errors (one mapping, from the C++ Status code):
  missing key -> KeyError; missing file -> FileNotFoundError;
  corrupt/truncated data -> CorruptCheckpointError (a ValueError);
  unsupported feature, e.g. a pickle global refused in strict mode ->
  UnsupportedError (a NotImplementedError); bad argument -> ValueError;
  permission -> PermissionError; other I/O -> OSError.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Optional, Union

import numpy as np

from . import _core
from ._core import CorruptCheckpointError, UnsupportedError

__version__ = "0.1.0"
__all__ = [
    "Checkpoint",
    "CorruptCheckpointError",
    "TensorInfo",
    "UnsupportedError",
    "convert",
    "reshard",
    "open",
    "save_file",
]

PathLike = Union[str, "os.PathLike[str]"]

# torch dtype name -> numpy dtype, for the dtypes numpy has. Little-endian
# explicitly: the core always produces little-endian bytes.
_NUMPY_DTYPES = {
    "bool": np.dtype("?"),
    "uint8": np.dtype("u1"),
    "int8": np.dtype("i1"),
    "int16": np.dtype("<i2"),
    "int32": np.dtype("<i4"),
    "int64": np.dtype("<i8"),
    "uint16": np.dtype("<u2"),
    "uint32": np.dtype("<u4"),
    "uint64": np.dtype("<u8"),
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "float64": np.dtype("<f8"),
    "complex64": np.dtype("<c8"),
    "complex128": np.dtype("<c16"),
}
# Raw views for the rest, by element size.
_RAW_DTYPES = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}
# torch.frombuffer cannot build quantized tensors from bytes.
_NO_TORCH_FROMBUFFER = {"qint8", "quint8", "qint32", "quint4x2", "quint2x4"}


@dataclass(frozen=True)
class TensorInfo:
    """Metadata of one tensor, read without touching its data.

    dtype is torch's name ("bfloat16"); shape a tuple; nbytes = numel * itemsize is
    what numpy()/torch() read. file/storage/stride/storage_offset/data_offset say
    where the bytes live in the source (stride None = contiguous).
    """

    key: str
    dtype: str
    shape: tuple
    nbytes: int
    itemsize: int
    file: str = ""
    storage: str = ""
    stride: Optional[tuple] = None
    storage_offset: int = 0
    data_offset: int = 0
    requires_grad: bool = False
    is_parameter: bool = False
    # DCP / torch_dist: the stored chunks, each {"offsets", "sizes", "file",
    # "offset", "length"}; empty for single-file formats.
    chunks: tuple = ()

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def raw(self) -> bool:
        """True when numpy() returns raw bytes (no numpy dtype for self.dtype)."""
        return self.dtype not in _NUMPY_DTYPES

    @property
    def numpy_dtype(self) -> np.dtype:
        """The numpy dtype numpy() returns: the real one, or the raw unsigned view."""
        dt = _NUMPY_DTYPES.get(self.dtype)
        if dt is not None:
            return dt
        return _RAW_DTYPES.get(self.itemsize, np.dtype("u1"))


class Checkpoint:
    """An open checkpoint (torch.save zip, safetensors, or a sharded index/folder).

    A mapping-like view: len(), `key in ckpt`, iteration over keys (file order),
    ckpt[key] -> numpy array. Use as a context manager or call close().
    Safe to read from several threads (the C++ reader is immutable).
    """

    def __init__(self, reader: "_core.Reader", path: str):
        self._reader = reader
        self._path = path
        self._infos = [TensorInfo(**d) for d in reader.tensors()]
        self._index: dict = {}
        for i, info in enumerate(self._infos):
            self._index.setdefault(info.key, i)

    # --- metadata -------------------------------------------------------------
    @property
    def path(self) -> str:
        return self._path

    @property
    def format(self) -> str:
        """'torch', 'safetensors', 'safetensors-sharded' or 'torch-sharded'."""
        return self._reader.format

    @property
    def closed(self) -> bool:
        return self._reader.closed

    def keys(self) -> list:
        return [info.key for info in self._infos]

    def tensors(self) -> list:
        """TensorInfo of every tensor, in file order."""
        return list(self._infos)

    def info(self, key: str) -> TensorInfo:
        return self._infos[self._find(key)]

    def objects(self) -> list:
        """Non-tensor leaves: [{'key','type','repr','opaque'}]. Never executed."""
        return self._reader.objects()

    def details(self) -> dict:
        """Format details (safetensors __metadata__, shared storages, ...)."""
        return json.loads(self._reader.details_json())

    def layout_map(self) -> dict:
        """What `ckptkit inspect PATH --html` draws, as data: {"path", "format",
        "tensor_bytes", "files": [{"name", "bytes", "rank", "writer", "group",
        "contents"}], "other_files", "problems": [{"file", "message"}], "layout"
        (e.g. "TP=2 PP=2 DP=2"), "model_layout", "tensors": [{"key", "dtype",
        "shape", "nbytes", "section", "group", "chunks": [{"o": offsets, "s":
        sizes, "f": index into files}]}]}."""
        return json.loads(self._reader.layout_map_json(self._path))

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors"
        return f"<ckptkit.Checkpoint {self._path!r} format={self._format_or_none()} {state}>"

    # --- data -----------------------------------------------------------------
    def read_bytes(self, key: str) -> np.ndarray:
        """Tensor bytes as a 1-D uint8 array (contiguous, row-major, little-endian)."""
        i = self._find(key)
        buf = np.empty(self._infos[i].nbytes, dtype=np.uint8)
        self._reader.read_into(i, buf)  # releases the GIL
        return buf

    def numpy(self, key: str, index: Any = None) -> np.ndarray:
        """The tensor (or `index` of it) as a new numpy array.

        `index` is basic indexing with step 1: an int, a slice, or a tuple of
        them (missing trailing axes are whole; ints drop their axis, as in
        numpy). Only the chunks / bytes that the region touches are read.
        For dtypes numpy lacks (bfloat16, float8_*, ...) the array holds the raw
        bits as the unsigned integer of the same width; see TensorInfo.raw.
        """
        info = self.info(key)
        dt = info.numpy_dtype
        if index is None:
            buf = self.read_bytes(key)
            shape = tuple(info.shape)
        else:
            start, count, keep = _region(info.shape, index)
            n = info.itemsize
            for c in count:
                n *= c
            buf = np.empty(n, dtype=np.uint8)
            self._reader.read_region_into(self._find(key), list(start), list(count), buf)
            shape = tuple(c for c, k in zip(count, keep) if k)
        if dt.itemsize != info.itemsize:  # odd element size: trailing byte axis
            shape = shape + (info.itemsize,)
        return buf.view(dt).reshape(shape)

    def torch(self, key: str):
        """The tensor as a torch.Tensor with its real dtype (requires torch)."""
        import torch  # lazily: torch is optional

        info = self.info(key)
        if info.dtype in _NO_TORCH_FROMBUFFER:
            raise UnsupportedError(
                f"tensor {key!r}: dtype {info.dtype} cannot be built from bytes by torch"
            )
        tdtype = getattr(torch, info.dtype, None)
        if not isinstance(tdtype, torch.dtype):
            raise UnsupportedError(f"tensor {key!r}: torch has no dtype {info.dtype!r}")
        if info.nbytes == 0:
            return torch.empty(tuple(info.shape), dtype=tdtype)
        buf = self.read_bytes(key)
        # frombuffer shares buf's memory (a fresh array nobody else holds).
        return torch.frombuffer(buf, dtype=tdtype).reshape(tuple(info.shape))

    def __getitem__(self, key: str) -> np.ndarray:
        return self.numpy(key)

    def items(self) -> Iterator:
        for key in self.keys():
            yield key, self.numpy(key)

    # --- lifetime -------------------------------------------------------------
    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- private --------------------------------------------------------------
    def _find(self, key: str) -> int:
        if self._reader.closed:
            raise ValueError("I/O operation on a closed checkpoint")
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"no tensor {key!r} in {self._path}") from None
        except TypeError:
            raise TypeError(f"tensor keys are str, got {type(key).__name__}") from None

    def _format_or_none(self) -> Optional[str]:
        return None if self.closed else self.format


def _region(shape: tuple, index: Any) -> tuple:
    """(start, count, keep_axis) for basic indexing with step 1."""
    if not isinstance(index, tuple):
        index = (index,)
    if len(index) > len(shape):
        raise IndexError(f"too many indices ({len(index)}) for a tensor of rank {len(shape)}")
    start, count, keep = [], [], []
    for axis, size in enumerate(shape):
        ix = index[axis] if axis < len(index) else slice(None)
        if isinstance(ix, slice):
            if ix.step not in (None, 1):
                raise IndexError("only step 1 slices are supported")
            lo, hi, _ = ix.indices(size)
            start.append(lo)
            count.append(max(0, hi - lo))
            keep.append(True)
        elif isinstance(ix, (int, np.integer)):
            i = int(ix)
            if i < 0:
                i += size
            if not 0 <= i < size:
                raise IndexError(f"index {int(ix)} is out of bounds for axis {axis} with size {size}")
            start.append(i)
            count.append(1)
            keep.append(False)
        else:
            raise TypeError(f"unsupported index {ix!r}: use ints and slices")
    return start, count, keep


def open(path: PathLike, *, mode: str = "strict") -> Checkpoint:  # noqa: A001
    """Opens a checkpoint file or folder.

    mode="strict" rejects pickle globals not on the allowlist with
    UnsupportedError naming the global; mode="inspect" keeps them as opaque
    objects (see Checkpoint.objects()). Nothing in the file is ever executed.
    """
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    return Checkpoint(_core.open(path, mode), path)


def convert(
    src: PathLike,
    dst: PathLike,
    *,
    to: str = "safetensors",
    max_shard_size: Union[int, str, None] = None,
    allow_opaque: bool = False,
    thread_count: int = 1,
    megatron_version: Optional[str] = None,
    iteration: Optional[int] = None,
    hf_config: Optional[PathLike] = None,
    family: Optional[str] = None,
    vocab_size: Optional[int] = None,
    dtype: Optional[str] = None,
    bin: bool = False,
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    etp: Optional[int] = None,
    megatron_layer_spec: str = "local",
    make_vocab_size_divisible_by: int = 128,
    no_optimizer: bool = False,
    direct_io: bool = True,
) -> dict:
    """Converts a checkpoint to `to`: "safetensors", "torch", "dcp" (a
    torch.distributed.checkpoint folder), "torch_dist" (Megatron-Core),
    "hf" (a HuggingFace model folder from a Megatron-Core torch_dist GPT
    checkpoint; see below) or "legacy" (Megatron-LM's
    iter_N/mp_rank_XX/model_optim_rng.pt + distrib_optim.pt; no_optimizer
    leaves the optimizer state out). Target names are read by the same
    code as the CLI's --to; an unknown one is a ValueError listing them.

    max_shard_size (safetensors/torch) writes shards plus an index json: an
    int (bytes) or a string read as transformers' max_shard_size is ("5GB" is
    5*10**9 bytes, "500MiB" 500*2**20, "5Gb" 5*10**9 bits), by the same code
    as the CLI's --max-shard-size. thread_count (dcp/torch_dist) is the number
    of data files, as torch's FileSystemWriter(thread_count=...), written around
    the page cache (O_DIRECT) where the file system allows unless direct_io=False
    (the CLI's --buffered-io). megatron_version
    ("0.16" or "0.19", default the newest) and iteration (a Megatron-LM root
    with iter_<N:07d>/ and the tracker) apply to torch_dist. allow_opaque=False
    refuses inputs holding pickle objects that cannot be represented in the
    target format. Same behaviour as `ckptkit convert` (README).

    to="hf" turns a Megatron-Core torch_dist GPT checkpoint into a HuggingFace
    model folder (hf_config: a config.json for what args lack; family,
    vocab_size, dtype "bf16"/"fp16"/"fp32", bin for .bin files). An HF model
    folder with to="torch_dist" becomes a Megatron-LM root for GPTModel at
    tp/pp/ep/etp (megatron_layer_spec "local" or "te",
    make_vocab_size_divisible_by). The options are ckpt::ConvertOptions'.

    Returns {"files": [written paths, the commit file last], "warnings": [...],
    "tensors": count, "bytes": tensor bytes, "data_files": dcp/torch_dist data
    files written, "direct_io_files": how many of them went around the page cache}.
    """
    if not isinstance(thread_count, int) or thread_count < 1:
        raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
    if max_shard_size is not None and (isinstance(max_shard_size, bool)
                                       or not isinstance(max_shard_size, (int, str))):
        raise TypeError(f"max_shard_size must be an int or a size string, got {max_shard_size!r}")
    # `to` and max_shard_size are read in _core (ckpt::ParseTargetFormat, ckpt::ParseSize): an int size
    # travels as its decimal text, so every value takes the one path the CLI takes.
    size = None if max_shard_size is None else str(max_shard_size)
    return _core.convert(os.fspath(src), os.fspath(dst), str(to), size, bool(allow_opaque), thread_count,
                         megatron_version or "", iteration,
                         hf_config=os.fspath(hf_config) if hf_config is not None else "", family=family or "",
                         vocab_size=vocab_size, dtype=dtype or "", bin=bool(bin), tp=tp, pp=pp, ep=ep, etp=etp,
                         megatron_layer_spec=megatron_layer_spec,
                         make_vocab_size_divisible_by=make_vocab_size_divisible_by,
                         no_optimizer=bool(no_optimizer), direct_io=bool(direct_io))


def reshard(
    src: PathLike,
    dst: Optional[PathLike] = None,
    *,
    tp: int = 0,
    pp: int = 0,
    vpp: int = 0,
    dp: int = 0,
    ep: int = 0,
    etp: int = 0,
    vocab_size: Optional[int] = None,
    to: str = "torch_dist",
    optimizer_sharding: str = "fully_reshardable",
    no_optimizer: bool = False,
    megatron_version: Optional[str] = None,
    iteration: Optional[int] = None,
    thread_count: int = 1,
    check: bool = False,
    direct_io: bool = True,
) -> dict:
    """Rewrites a Megatron checkpoint (torch_dist of any optimizer sharding
    type, or legacy mp_rank_* folders) for another parallel layout: sizes left
    at 0 keep the source's. The output (a Megatron-LM root) is torch_dist with
    the optimizer state "fully_reshardable" (loads at any layout) or
    "dp_reshardable" (the new layout's buckets), or with to="legacy"
    Megatron-LM's mp_rank_* folders (distrib_optim.pt) at the new layout.
    check=True only checks the target against the model and says whether
    megatron-core would load src as it is there, writing nothing (dst may be
    None).
    Same behaviour as `ckptkit reshard` (README); the options are
    ckpt::ReshardOptions'.

    Returns {"source_layout", "target_layout", "source_optimizer_sharding",
    "loads_as_is" (megatron-core would load src at the target as it is),
    "load_blockers" (why not, one line each), "source_padded_vocab",
    "target_padded_vocab", "files", "warnings", "tensors", "bytes", "data_files",
    "direct_io_files" (as convert's; direct_io as there)}.
    """
    for name, v in (("tp", tp), ("pp", pp), ("vpp", vpp), ("dp", dp), ("ep", ep), ("etp", etp)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0 (0 keeps the source's), got {v!r}")
    if dst is None and not check:
        raise ValueError("dst is required unless check=True")
    return _core.reshard(os.fspath(src), os.fspath(dst) if dst is not None else "", tp=tp, pp=pp, vpp=vpp, dp=dp,
                         ep=ep, etp=etp, vocab_size=vocab_size, to=str(to),
                         optimizer_sharding=str(optimizer_sharding),
                         no_optimizer=bool(no_optimizer), megatron_version=megatron_version or "",
                         iteration=iteration, thread_count=thread_count, check=bool(check),
                         direct_io=bool(direct_io))


# numpy (kind, itemsize) -> torch dtype name, for save_file.
_TORCH_NAME_OF_NUMPY = {
    ("b", 1): "bool",
    ("u", 1): "uint8",
    ("i", 1): "int8",
    ("i", 2): "int16",
    ("i", 4): "int32",
    ("i", 8): "int64",
    ("u", 2): "uint16",
    ("u", 4): "uint32",
    ("u", 8): "uint64",
    ("f", 2): "float16",
    ("f", 4): "float32",
    ("f", 8): "float64",
    ("c", 8): "complex64",
    ("c", 16): "complex128",
}
# ml_dtypes' extension dtypes whose names and bits equal torch's.
_ML_DTYPES_NAMES = {
    "bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e8m0fnu",
}


def _numpy_entry(key: str, value: Any) -> tuple:
    a = np.asarray(value)
    dt = a.dtype
    name = _TORCH_NAME_OF_NUMPY.get((dt.kind, dt.itemsize))
    if name is None and dt.kind == "V" and dt.name in _ML_DTYPES_NAMES and dt.fields is None:
        name = dt.name
    if name is None:
        raise TypeError(f"tensor {key!r}: numpy dtype {dt} has no torch equivalent; "
                        "pass a torch.Tensor for bfloat16/float8/complex32 and friends")
    if dt.byteorder == ">" or (dt.byteorder == "=" and sys.byteorder == "big"):
        a = a.astype(dt.newbyteorder("<"))
    if not a.flags.c_contiguous:
        a = a.copy(order="C")  # not ascontiguousarray: it turns 0-dim into 1-dim
    # A flat uint8 view exports as a buffer for every dtype (extension dtypes
    # have no buffer format) and copes with 0-dim arrays; it shares a's memory.
    return (key, name, tuple(int(s) for s in a.shape), a.reshape(-1).view(np.uint8))


def _torch_entry(key: str, t: Any, torch: Any) -> tuple:
    if t.layout != torch.strided:
        raise ValueError(f"tensor {key!r}: layout {t.layout} is not supported (dense tensors only)")
    if t.is_quantized:
        raise UnsupportedError(f"tensor {key!r}: quantized tensors are not supported")
    if t.device.type != "cpu":
        raise ValueError(f"tensor {key!r} is on device {t.device}; save_file writes CPU tensors "
                         "only: move it first (t.cpu()), which copies it")
    if sys.byteorder != "little":
        raise UnsupportedError("save_file of torch tensors needs a little-endian host")
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    t = t.contiguous()  # no copy when already contiguous
    name = str(t.dtype).removeprefix("torch.")
    # reshape(-1) makes 0-dim tensors viewable as bytes; view(uint8) works for
    # every dtype (bool, bfloat16, float8, complex32, bits16 ...); numpy()
    # shares the memory and keeps the tensor alive.
    data = t.reshape(-1).view(torch.uint8).numpy()
    return (key, name, tuple(int(s) for s in t.shape), data)


def save_file(
    tensors: Mapping[str, Any],
    path: PathLike,
    *,
    format: str = "safetensors",  # noqa: A002
    metadata: Optional[Mapping[str, str]] = None,
) -> None:
    """Writes tensors to a .safetensors file or a torch.save archive.

    tensors maps str keys to torch.Tensors (any dtype torch.save stores: bfloat16,
    float8_*, uint16..64, bool, complex, ...) or numpy arrays (bool, ints, uints,
    float16/32/64, complex64/128; ml_dtypes' bfloat16/float8 by name). torch is
    imported only if a value is a torch.Tensor.

    Tensors are written contiguous and dense: a non-contiguous one is first made
    contiguous (a copy), a view writes only its own elements. CUDA/meta tensors
    raise ValueError (call .cpu() first), quantized ones UnsupportedError.
    requires_grad and nn.Parameter are not kept (as in a state_dict()).

    format="safetensors" (metadata: a str->str dict or None) writes bytes equal
    to safetensors.torch.save_file(tensors, path, metadata); format="torch"
    writes bytes equal to torch.save(dict(tensors), path) for tensors that own
    their whole storage (loadable with torch.load(weights_only=True, mmap=...)).
    Dict order is kept for "torch"; safetensors sorts as safetensors does.

    The file is published atomically (temporary file, fsync, rename); the data
    is streamed from the tensors' memory without copies, with the GIL released.
    Do not modify the tensors from another thread during the call.
    Errors: TypeError/ValueError for bad arguments, ValueError also for a dtype
    the format cannot hold (complex128 in safetensors), UnsupportedError for a
    dtype ckptkit does not know; FileNotFoundError/PermissionError/OSError for
    I/O (nothing is left at path, which keeps its old content).
    """
    if format not in ("safetensors", "torch"):
        raise ValueError(f"format must be 'safetensors' or 'torch', got {format!r}")
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of str to tensors, got {type(tensors).__name__}")
    meta = None
    if metadata is not None:
        if format != "safetensors":
            raise ValueError("metadata is only supported with format='safetensors'")
        meta = dict(metadata)
        for k, v in meta.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError(f"metadata must map str to str, got {k!r}: {type(v).__name__}")
    torch = sys.modules.get("torch")  # a torch.Tensor implies torch is imported
    torch_tensor = getattr(torch, "Tensor", None) if torch is not None else None
    entries = []  # holds every buffer (and so every tensor) alive during the write
    for key, value in tensors.items():
        if not isinstance(key, str):
            raise TypeError(f"tensor keys must be str, got {type(key).__name__}: {key!r}")
        if torch_tensor is not None and isinstance(value, torch_tensor):
            entries.append(_torch_entry(key, value, torch))
        elif isinstance(value, (np.ndarray, np.generic)):
            entries.append(_numpy_entry(key, value))
        else:
            raise TypeError(f"tensor {key!r}: expected a torch.Tensor or numpy.ndarray, "
                            f"got {type(value).__module__}.{type(value).__qualname__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        path = os.fsdecode(path)
    _core.save_file(path, format, entries, meta)


def __getattr__(name: str) -> Any:
    # `ckptkit.dcp` (the torch.distributed.checkpoint plug-in) imports torch and
    # `ckptkit.megatron` (the Megatron-Core strategies) megatron-core, so they are
    # loaded on first use, never by `import ckptkit`.
    if name in ("dcp", "megatron"):
        import importlib

        return importlib.import_module("." + name, __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
