"""Write and inspect real PyTorch Distributed Checkpoints (DCP) for tests.

Everything here uses torch's own code: checkpoints are written by
`torch.distributed.checkpoint.save` running in `world_size` real processes
(spawned, gloo backend, CPU), and they are read back with torch's own
FileSystemReader / planners.  Nothing in this module computes an offset or a
file layout itself: facts come from torch.

Public API
  write_dcp(path, world_size, builder, *, thread_count=1,
            single_file_per_rank=True, extensions=None, timeout_s=180)
      Spawn `world_size` ranks; each calls `builder(rank, world_size)` (a
      picklable, module-level function) and saves the result with
      FileSystemWriter.  Raises RuntimeError naming the rank and carrying its
      traceback if any rank fails, and TimeoutError if the save hangs.
  load_reference(path) -> dict[str, object]
      The checkpoint as torch loads it (dcp_to_torch_save + torch.load with
      weights_only=False), flattened to DCP FQNs.
  load_nested(path) -> dict
      Same, without flattening (nested as the writer's state dict was).
  load_flat_direct(path) -> dict[str, object]
      Same values via `_load_state_dict(..., _EmptyStateDictLoadPlanner(),
      no_dist=True)` without the torch.save round trip, flattened.
  flatten(nested) -> dict[str, object]
      DCP's own FQN flattening ('.' joins, list indices, tuples are leaves).
  describe(path) -> dict (JSON-able)
      Metadata as read by FileSystemReader(path).read_metadata().
  tensor_sha256(t) -> str
      sha256 of a tensor's bytes (contiguous, native = little-endian order).
  Builders: build_plain, build_sharded, build_uneven, build_per_item,
      build_all_dtypes, build_zstd, build_tiny (all `(rank, world_size) -> state dict`).
  DCP_DTYPES: names of every dtype DCP in torch 2.13 saves and loads.

Thread-safety: write_dcp spawns processes; call it from one thread at a time
per `path`.  The builders must only be called inside a rank process that has
an initialized default process group (write_dcp does that).
"""

from __future__ import annotations

import datetime
import hashlib
import io
import os
import shutil
import tempfile
import time
import traceback
import warnings
from typing import Any, Callable, Dict, Optional, Sequence

import torch

# Every dtype torch 2.13 DCP (FileSystemWriter, TORCH_SAVE format) round-trips.
# torch.bits8/bits16/bits*x* fail in DCP planning (`_element_size` calls
# torch.iinfo on them); quantized and sub-byte int dtypes are not tensors DCP
# can plan either.
DCP_DTYPES = [
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2",
]

# dtypes that DCP rejects (planning fails with TypeError inside torch._utils._element_size).
DCP_REJECTED_DTYPES = ["bits8", "bits16"]


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


def _rank_main(
    rank: int,
    world_size: int,
    init_file: str,
    path: str,
    builder: Callable[[int, int], Dict[str, Any]],
    writer_kwargs: Dict[str, Any],
    pg_timeout_s: float,
) -> None:
    """Body of one rank (runs in a spawned child process)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=f"file://{init_file}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=pg_timeout_s),
        )
        try:
            state_dict = builder(rank, world_size)
            dcp.save(state_dict, storage_writer=FileSystemWriter(path, **writer_kwargs))
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except (Exception, KeyboardInterrupt):
        raise  # torch.multiprocessing forwards the traceback to the parent
    except BaseException as e:  # noqa: BLE001
        # DCP raises CheckpointException, a BaseException that
        # torch.multiprocessing would not forward: convert it.
        raise RuntimeError(f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def write_dcp(
    path: str | os.PathLike,
    world_size: int,
    builder: Callable[[int, int], Dict[str, Any]],
    *,
    thread_count: int = 1,
    single_file_per_rank: bool = True,
    extensions: Optional[Sequence[Any]] = None,
    timeout_s: float = 180.0,
) -> None:
    """Save `builder(rank, world_size)` from `world_size` real ranks with DCP.

    `path` is removed first if it exists.  `extensions` is passed to
    FileSystemWriter(_extensions=...) (e.g. [ZStandard()]).  Raises
    RuntimeError with each failing rank's traceback, TimeoutError when the
    ranks do not finish within `timeout_s` (all ranks are then killed).
    """
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    path = os.fspath(path)
    if os.path.exists(path):
        shutil.rmtree(path)
    writer_kwargs: Dict[str, Any] = dict(
        thread_count=thread_count,
        single_file_per_rank=single_file_per_rank,
        # fsync buys nothing for test fixtures and is slow on shared disks.
        sync_files=False,
        overwrite=True,
    )
    if extensions is not None:
        writer_kwargs["_extensions"] = list(extensions)

    with tempfile.TemporaryDirectory(prefix="dcp_pg_") as tmp:
        init_file = os.path.join(tmp, "pg_init")
        ctx = mp.start_processes(
            _rank_main,
            args=(world_size, init_file, path, builder, writer_kwargs, max(30.0, timeout_s)),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"write_dcp({path!r}, world_size={world_size}, builder="
                        f"{getattr(builder, '__name__', builder)}) did not finish in {timeout_s}s"
                    )
        except mp.ProcessRaisedException as e:
            raise RuntimeError(f"write_dcp({path!r}): rank {e.error_index} failed:\n{e}") from None
        except mp.ProcessExitedException as e:
            raise RuntimeError(
                f"write_dcp({path!r}): rank {e.error_index} exited with code {e.exit_code}"
            ) from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)
    if not os.path.exists(os.path.join(path, ".metadata")):
        raise RuntimeError(f"write_dcp({path!r}): ranks finished but no .metadata was written")


# ----------------------------------------------------------------------------
# Deterministic data
# ----------------------------------------------------------------------------


def make_tensor(dtype_name: str, shape: Sequence[int], seed: int) -> torch.Tensor:
    """Deterministic tensor of `dtype_name` and `shape` (same on every rank)."""
    g = torch.Generator().manual_seed(seed)
    shape = tuple(shape)
    numel = 1
    for s in shape:
        numel *= s
    dt = getattr(torch, dtype_name)
    if dtype_name == "bool":
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype_name in ("uint8", "float8_e8m0fnu", "float4_e2m1fn_x2"):
        raw = torch.randint(0, 256, shape, generator=g, dtype=torch.int64).to(torch.uint8)
        return raw if dtype_name == "uint8" else raw.view(dt)
    if dtype_name in ("int8", "int16", "int32", "int64"):
        info = torch.iinfo(dt)
        lo, hi = max(info.min, -(2**31)), min(info.max, 2**31 - 1)
        t = torch.randint(lo, hi, shape, generator=g, dtype=torch.int64)
        if dtype_name == "int64":
            t = t * 4_000_000_007  # exercise the high bytes
        return t.to(dt)
    if dtype_name in ("uint16", "uint32", "uint64"):
        bits = {"uint16": 16, "uint32": 32, "uint64": 64}[dtype_name]
        # Build from random bytes so the high bit is exercised too.
        raw = torch.randint(0, 256, (numel * bits // 8,), generator=g, dtype=torch.int64)
        return raw.to(torch.uint8).view(dt).reshape(shape)
    if dtype_name.startswith("complex"):
        re = torch.randn(shape, generator=g, dtype=torch.float64)
        im = torch.randn(shape, generator=g, dtype=torch.float64)
        return torch.complex(re, im).to(dt)
    # floating point, incl. float8
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dt)


def _mesh_1d(world_size: int):
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (world_size,))


def _dtensor(global_tensor: torch.Tensor, mesh, placements):
    """DTensor of `global_tensor` (identical on all ranks) with torch.chunk sharding."""
    from torch.distributed.tensor import distribute_tensor

    # src_data_rank=None: every rank slices its own piece, no communication.
    return distribute_tensor(global_tensor, mesh, placements, src_data_rank=None)


# ----------------------------------------------------------------------------
# Builders (module-level so they pickle for spawn)
# ----------------------------------------------------------------------------


def build_plain(rank: int, world_size: int) -> Dict[str, Any]:
    """Nested dict of several dtypes, scalars, an empty tensor, views, bytes objects."""
    base = make_tensor("float32", (4, 6), seed=11)
    return {
        "model": {
            "embed": {"weight": make_tensor("bfloat16", (5, 4), seed=1)},
            "layers": [
                {"w": make_tensor("float16", (3, 4), seed=2), "b": make_tensor("float32", (3,), seed=3)},
                {"w": make_tensor("float16", (3, 4), seed=4), "b": make_tensor("float32", (3,), seed=5)},
            ],
            "head.bias": make_tensor("float64", (2,), seed=6),  # dotted key: FQN clash-prone
            "mask": make_tensor("bool", (7,), seed=7),
            "ids": make_tensor("int64", (2, 3), seed=8),
        },
        "scalar_f32": torch.tensor(3.5),
        "scalar_i64": torch.tensor(-7, dtype=torch.int64),
        "scalar_bf16": torch.tensor(1.25, dtype=torch.bfloat16),
        "empty": torch.empty(0, 3, dtype=torch.float32),
        "empty_1d": torch.empty(0, dtype=torch.int32),
        "views": {
            "transposed": base.t(),  # non-contiguous
            "strided_cols": base[:, ::2],  # non-contiguous, storage larger than view
            "row_slice": base[1:3],  # contiguous view with storage_offset
            "expanded": torch.arange(3, dtype=torch.float32).expand(2, 3),  # stride 0
        },
        "step": 1234,
        "lr": 0.001,
        "name": "golden-ws1",
        "none_value": None,
        "flags": [True, False, 3],  # list without tensors: one bytes item
        "config": {"hidden": 4, "act": "gelu", "dims": [1, 2, 3]},  # dict: flattened to 3 items
        "blob": io.BytesIO(b"\x00\x01binary\xff"),
        "raw_bytes": b"raw-bytes\x00\x80",
        "tuple_of_tensors": (torch.ones(2), torch.zeros(1)),  # tuples are leaves: a bytes item
    }


def build_sharded(rank: int, world_size: int) -> Dict[str, Any]:
    """DTensor Shard(0)/Shard(1)/Replicate, plain replicated tensors, a few objects."""
    from torch.distributed.tensor import Replicate, Shard

    mesh = _mesh_1d(world_size)
    return {
        "row_sharded": _dtensor(make_tensor("float32", (8, 3), seed=21), mesh, [Shard(0)]),
        "col_sharded": _dtensor(make_tensor("bfloat16", (3, 6), seed=22), mesh, [Shard(1)]),
        "col_sharded_odd": _dtensor(make_tensor("int32", (2, 5), seed=23), mesh, [Shard(1)]),
        "replicated_dt": _dtensor(make_tensor("float16", (4,), seed=24), mesh, [Replicate()]),
        "replicated_plain": make_tensor("float32", (2, 2), seed=25),  # same on all ranks
        "nested": {"a": make_tensor("int64", (3,), seed=26), "b": [make_tensor("uint8", (5,), seed=27)]},
        "step": 7,
        "note": "ws2",
    }


def build_uneven(rank: int, world_size: int) -> Dict[str, Any]:
    """Uneven Shard(0): 7 and 10 rows (torch.chunk: 3,3,1 and 4,4,2 over 3 ranks),
    2 rows over 3 ranks (one rank holds an empty chunk), uneven Shard(1),
    1 row over 3 ranks (two identical empty chunks)."""
    from torch.distributed.tensor import Shard

    mesh = _mesh_1d(world_size)
    return {
        "rows7": _dtensor(make_tensor("float32", (7, 2), seed=31), mesh, [Shard(0)]),
        "rows10": _dtensor(make_tensor("bfloat16", (10, 3), seed=32), mesh, [Shard(0)]),
        "rows2": _dtensor(make_tensor("int16", (2, 4), seed=33), mesh, [Shard(0)]),
        "rows5_1d": _dtensor(make_tensor("float64", (5,), seed=34), mesh, [Shard(0)]),
        "cols4": _dtensor(make_tensor("float16", (2, 4), seed=35), mesh, [Shard(1)]),
        # 1 row over 3 ranks: ranks 1 and 2 both hold an empty chunk at offset
        # (1, 0); DCP's dedup keeps only one of them (the rank whose plan is smaller).
        "rows1": _dtensor(make_tensor("int32", (1, 4), seed=36), mesh, [Shard(0)]),
        "rank_note": "uneven",
    }


def build_per_item(rank: int, world_size: int) -> Dict[str, Any]:
    """For single_file_per_rank=False: 2-D mesh when world_size == 4."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    out: Dict[str, Any] = {}
    if world_size == 4:
        mesh2 = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
        out["grid"] = _dtensor(make_tensor("float32", (4, 6), seed=41), mesh2, [Shard(0), Shard(1)])
        out["grid_rep"] = _dtensor(make_tensor("float32", (5, 3), seed=42), mesh2, [Replicate(), Shard(0)])
    mesh = _mesh_1d(world_size)
    out["rows"] = _dtensor(make_tensor("int32", (6, 2), seed=43), mesh, [Shard(0)])
    out["shared"] = make_tensor("float64", (3,), seed=44)
    out["meta"] = {"epoch": 2, "tag": "per-item"}
    return out


def build_all_dtypes(rank: int, world_size: int) -> Dict[str, Any]:
    """One (2, 3) tensor of every dtype in DCP_DTYPES, keyed by dtype name."""
    return {name: make_tensor(name, (2, 3), seed=100 + i) for i, name in enumerate(DCP_DTYPES)}


def build_tiny(rank: int, world_size: int) -> Dict[str, Any]:
    """One tensor and one object: with thread_count=3 two buckets are empty."""
    return {"t": make_tensor("float32", (4,), seed=61), "step": 3}


def build_zstd(rank: int, world_size: int) -> Dict[str, Any]:
    """Small sharded + bytes state dict for the ZStandard extension."""
    from torch.distributed.tensor import Shard

    mesh = _mesh_1d(world_size)
    return {
        "w": _dtensor(make_tensor("float32", (6, 4), seed=51), mesh, [Shard(0)]),
        "zeros": torch.zeros(64, dtype=torch.float32),  # compresses well
        "b": make_tensor("bfloat16", (3,), seed=52),
        "info": {"compressed": True},
    }


# ----------------------------------------------------------------------------
# Reading (all via torch)
# ----------------------------------------------------------------------------


def flatten(nested: Dict[str, Any]) -> Dict[str, Any]:
    """Flatten with DCP's own rules (torch's `flatten_state_dict`)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    flat, _ = flatten_state_dict(nested)
    return flat


def load_nested(path: str | os.PathLike) -> Dict[str, Any]:
    """dcp_to_torch_save(path) -> torch.load(weights_only=False): nested state dict."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory(prefix="dcp_ref_") as tmp:
        out = os.path.join(tmp, "ref.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp_to_torch_save(os.fspath(path), out)
            return torch.load(out, weights_only=False)


def load_reference(path: str | os.PathLike) -> Dict[str, Any]:
    """The checkpoint as torch loads it, keyed by DCP FQN."""
    return flatten(load_nested(path))


def load_flat_direct(path: str | os.PathLike) -> Dict[str, Any]:
    """Like load_reference but straight from _load_state_dict (no torch.save round trip)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    sd: Dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load_state_dict(
            sd,
            storage_reader=FileSystemReader(os.fspath(path)),
            planner=_EmptyStateDictLoadPlanner(),
            no_dist=True,
        )
    return flatten(sd)


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw bytes of `t` made contiguous (native order; little-endian hosts only)."""
    t = t.detach().cpu().contiguous()
    if t.numel() == 0:
        return b""
    try:
        return t.reshape(-1).view(torch.uint8).numpy().tobytes()
    except (RuntimeError, TypeError):
        st = t.untyped_storage()
        start = t.storage_offset() * t.element_size()
        return bytes(st)[start:start + t.numel() * t.element_size()]


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(t)).hexdigest()


def dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Size):
        return list(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v


def read_metadata(path: str | os.PathLike):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(os.fspath(path)).read_metadata()


def describe(path: str | os.PathLike) -> Dict[str, Any]:
    """JSON-able view of the checkpoint's `.metadata` as torch reads it.

    {
      "version": str|None,
      "storage_meta": {"checkpoint_id","save_id","load_id","modules"} | None,
      "planner_data": {fqn: [path components]} | None,
      "keys": {fqn: {"kind": "tensor"|"bytes", "dtype", "size",
                     "properties": {...}, "chunks": [{"offsets","sizes"}],
                     "storage": [{"fqn","offset","index","relative_path",
                                  "file_offset","length","transform_descriptors"}]}},
      "storage_order": [[fqn, offset|None], ...]   # dict order of storage_data
      "files": {name: size}
    }
    In "storage" entries "offset" is MetadataIndex.offset (chunk offsets, None
    for bytes) and "file_offset" is _StorageInfo.offset (byte offset in file).
    """
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    path = os.fspath(path)
    md = read_metadata(path)
    storage = md.storage_data or {}
    per_fqn: Dict[str, list] = {}
    order = []
    for idx, info in storage.items():
        order.append([idx.fqn, None if idx.offset is None else list(idx.offset)])
        per_fqn.setdefault(idx.fqn, []).append(
            {
                "fqn": idx.fqn,
                "offset": None if idx.offset is None else list(idx.offset),
                "index": idx.index,
                "relative_path": info.relative_path,
                "file_offset": info.offset,
                "length": info.length,
                "transform_descriptors": _jsonable(getattr(info, "transform_descriptors", None)),
            }
        )
    keys: Dict[str, Any] = {}
    for fqn, smd in md.state_dict_metadata.items():
        if isinstance(smd, TensorStorageMetadata):
            p = smd.properties
            keys[fqn] = {
                "kind": "tensor",
                "dtype": dtype_name(p.dtype),
                "size": list(smd.size),
                "properties": {
                    "layout": str(p.layout),
                    "requires_grad": p.requires_grad,
                    "memory_format": str(p.memory_format),
                    "pin_memory": p.pin_memory,
                },
                "chunks": [{"offsets": list(c.offsets), "sizes": list(c.sizes)} for c in smd.chunks],
                "storage": per_fqn.get(fqn, []),
            }
        elif isinstance(smd, BytesStorageMetadata):
            keys[fqn] = {"kind": "bytes", "storage": per_fqn.get(fqn, [])}
        else:
            keys[fqn] = {"kind": type(smd).__name__, "storage": per_fqn.get(fqn, [])}
    sm = getattr(md, "storage_meta", None)
    files = {
        name: os.path.getsize(os.path.join(path, name))
        for name in sorted(os.listdir(path))
        if os.path.isfile(os.path.join(path, name))
    }
    return {
        "version": getattr(md, "version", None),
        "storage_meta": None
        if sm is None
        else {
            "checkpoint_id": _jsonable(sm.checkpoint_id),
            "checkpoint_id_type": type(sm.checkpoint_id).__name__,
            "save_id": sm.save_id,
            "load_id": sm.load_id,
            "modules": list(getattr(sm, "modules", []) or []),
        },
        "planner_data": _jsonable(md.planner_data),
        "keys": keys,
        "storage_order": order,
        "files": files,
    }


def pickle_globals(path: str | os.PathLike) -> list:
    """Every [module, name] the `.metadata` pickle resolves, in first-use order."""
    import pickle

    seen: list = []

    class _Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            if [module, name] not in seen:
                seen.append([module, name])
            return super().find_class(module, name)

    with open(os.path.join(os.fspath(path), ".metadata"), "rb") as f:
        _Recorder(f).load()
    return seen
