"""ckptkit as a torch.distributed.checkpoint (DCP) storage plug-in.

    import torch.distributed.checkpoint as dcp
    import ckptkit.dcp
    dcp.save(state_dict, storage_writer=ckptkit.dcp.StorageWriter(path, thread_count=4))
    dcp.load(state_dict, storage_reader=ckptkit.dcp.StorageReader(path))
    dcp.async_save(state_dict, storage_writer=ckptkit.dcp.StorageWriter(path))

Drop-in replacements for torch's FileSystemWriter / FileSystemReader: the
checkpoint on disk is the one FileSystemWriter(single_file_per_rank=True,
serialization_format=TORCH_SAVE) writes (`__<rank>_<n>.distcp` files of
embedded torch.save archives, bytes items as their raw payload, a pickled
`.metadata`), so either side can be stock torch. Any world size works, and
loading into another world size or sharding works because DCP's planners do
the resharding: this module only serves WriteItems and ReadItems.

Division of labour: Python plans (which item goes to which file, as torch does)
and hands buffers over; the C++ engine (ckptkit._core) writes the data files
(one thread per file, each file written to a temporary, fsynced and renamed),
and decodes each stored chunk's archive straight into a tensor's memory. Tensor
bytes cross the boundary zero-copy through the buffer protocol (a numpy uint8
view of a contiguous CPU tensor). `.metadata` is pickled here, exactly as
torch's FileSystemWriter.finish does (torch's own classes), and published by the
C++ engine (ckpt/engine.h) after every rank's files are in place.

Overwriting: unlike FileSystemWriter, a destination that already holds a
checkpoint stays intact and loadable until the new one is complete. Every rank
then writes into a hidden staging folder beside it (`.<name>.ckptkit-shared`),
which the coordinator's finish switches with the destination in one step; files
there that are not the checkpoint's (a README) are carried over, the old
checkpoint's own files do not survive. A save that fails or is killed leaves the
old checkpoint as it was (its leftovers are reused and pruned by the next save
to the same destination). With use_collectives=False (per-rank `.metadata`) each
rank withdraws its own `.metadata` first instead.

Differences from FileSystemWriter: no `single_file_per_rank=False`, no stream
extensions on write (the reader does decode torch's "stream.zstd/1"), no
safetensors serialization format. Tensor chunks are written as torch.save of a
contiguous tensor; torch writes a permuted (non-contiguous but dense) tensor
with its strides, so only those files differ in bytes (the values are equal).

This module imports torch (it is a torch plug-in); `import ckptkit` alone does
not.

Thread-safety: one writer / reader object per save / load, as with torch's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import os
import pickle
import threading
import uuid
import warnings
from typing import Any, Optional, Union

import torch
from torch.distributed.checkpoint.filesystem import _StorageInfo, _StoragePrefix
from torch.distributed.checkpoint.metadata import (
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    WriteItem,
    WriteItemType,
)
from torch.distributed.checkpoint.staging import BlockingAsyncStager
from torch.distributed.checkpoint.storage import StorageReader as _TorchStorageReader
from torch.distributed.checkpoint.storage import StorageWriter as _TorchStorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from . import _core

__all__ = ["StorageReader", "StorageWriter"]

PathLike = Union[str, "os.PathLike[str]"]

_METADATA_FN = ".metadata"
_DCP_VERSION = "1.0.0"  # torch 2.13's CURRENT_DCP_VERSION
# Chunks decoded per C++ call when loading (bounds the memory held at once).
_READ_BATCH_BYTES = 256 << 20
# C++ decode calls in flight at once when loading.
_READ_THREADS = max(1, min(8, os.cpu_count() or 1))


def _item_size(item: WriteItem) -> int:
    # torch 2.13's filesystem._item_size: the size of the whole tensor (not of
    # the chunk) times the element size; it decides the split over files.
    size = 1
    for s in item.tensor_data.size:
        size *= s
    return size * torch._utils._element_size(item.tensor_data.properties.dtype)


def _split_by_size_and_type_local(bins: int, items: list[WriteItem]) -> list[list[WriteItem]]:
    # torch 2.13's filesystem._split_by_size_and_type.
    if bins == 1:
        return [items]
    bytes_w = [wi for wi in items if wi.type == WriteItemType.BYTE_IO]
    tensor_w = [wi for wi in items if wi.type != WriteItemType.BYTE_IO]
    buckets: list[list[WriteItem]] = [[] for _ in range(bins)]
    bucket_sizes = [0] * bins
    tensor_w.sort(key=_item_size, reverse=True)
    for i, wi in enumerate(bytes_w):
        buckets[i % bins].append(wi)
    for wi in tensor_w:
        idx = min(range(bins), key=lambda b: bucket_sizes[b])
        buckets[idx].append(wi)
        bucket_sizes[idx] += _item_size(wi)
    return buckets


try:  # the installed torch's own split, so files match its FileSystemWriter
    from torch.distributed.checkpoint.filesystem import _split_by_size_and_type
except ImportError:  # pragma: no cover - a torch without it
    _split_by_size_and_type = _split_by_size_and_type_local


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _byte_view(t: torch.Tensor) -> Any:
    """A zero-copy uint8 numpy view of a contiguous CPU tensor's bytes."""
    flat = t.reshape(-1)
    if flat.element_size() != 1 or flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat.numpy()


def _cpu_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The tensor's values as a plain contiguous CPU tensor (what torch.save(t.contiguous()) stores)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    return t.contiguous()


def _fsync_dir(path: PathLike) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Staging for async_save: tensors copied into the C++ engine's StagingPool
# --------------------------------------------------------------------------
_POOL_LOCK = threading.Lock()
_POOL: Optional[Any] = None  # the process's _core.StagingPool


def _process_pool(need: int, capacity: Optional[int]) -> Any:
    """The process-wide staging pool: `capacity` bytes when given (fixed), else
    sized by the first save that needs it and re-created larger only when a
    later save needs more (the old one is freed once its saves finish)."""
    global _POOL
    with _POOL_LOCK:
        if capacity is not None:
            if _POOL is None or _POOL.capacity != _core.StagingPool.footprint([capacity]):
                _POOL = _core.StagingPool(capacity)
        elif _POOL is None or _POOL.capacity < need:
            _POOL = _core.StagingPool(max(need, 1))
        return _POOL


def _local_parts(state_dict: Any) -> tuple[list, bool]:
    """Every tensor that staging copies, in _iterate_state_dict's order, and
    whether torch's own staging is needed instead (ShardedTensor, a DTensor off
    the CPU)."""
    from torch.distributed._state_dict_utils import _iterate_state_dict

    found: list = []
    fallback = [False]

    def tensor_func(obj, pg, device, companion):
        found.append(obj)
        return obj

    def dtensor_func(obj, pg, device, companion):
        if obj.device.type != "cpu":
            fallback[0] = True
        found.append(obj._local_tensor)
        return obj

    def sharded_func(obj, pg, device, companion):
        fallback[0] = True
        return obj

    _iterate_state_dict(state_dict, sharded_func, dtensor_func, tensor_func, type_check=False)
    return found, fallback[0]


def _copy_into_region(region: Any, t: torch.Tensor, on_device: list) -> torch.Tensor:
    """`t`'s values copied into a pool region (a numpy uint8 array owning it), as
    a tensor of t's dtype and shape viewing the region; a device tensor's copy is
    non-blocking (its device appended to on_device: synchronize before use)."""
    out = torch.from_numpy(region)
    out = out.view(t.dtype) if t.dtype != torch.uint8 else out
    out = out.reshape(t.shape)
    if t.device.type != "cpu":
        out.copy_(t.detach(), non_blocking=True)
        on_device.append(t.device)
    else:
        out.copy_(t.detach())
    return out


@torch.no_grad()
def _stage_into_pool(state_dict: Any, parts: list, capacity: Optional[int], timeout_s: float) -> Any:
    """A copy of `state_dict` whose tensors live in the staging pool: the same
    structure, non-tensor values shared (as torch's staging does), every tensor's
    values copied at this moment (`parts`: _local_parts' tensors). Returns once the
    copies are done."""
    from torch.distributed._state_dict_utils import _iterate_state_dict
    from torch.distributed.tensor import DTensor

    sizes = [t.numel() * t.element_size() for t in parts]
    pool = _process_pool(_core.StagingPool.footprint(sizes), capacity)
    buffers = iter(pool.acquire(sizes, timeout_s))
    on_device = []

    def staged_copy(t: torch.Tensor) -> torch.Tensor:
        return _copy_into_region(next(buffers), t, on_device)

    def tensor_func(obj, pg, device, companion):
        return staged_copy(obj)

    def dtensor_func(obj, pg, device, companion):
        local = staged_copy(obj._local_tensor)
        return DTensor.from_local(local, obj.device_mesh, obj.placements, run_check=False,
                                  shape=obj.size(), stride=obj.stride())

    def sharded_func(obj, pg, device, companion):  # pragma: no cover - routed to torch's staging
        raise AssertionError("ShardedTensor is staged by torch")

    staged = _iterate_state_dict(state_dict, sharded_func, dtensor_func, tensor_func, type_check=False)
    if on_device and torch.cuda.is_available():
        torch.cuda.synchronize()
    return staged


class StorageWriter(_TorchStorageWriter, BlockingAsyncStager):
    """DCP StorageWriter backed by ckptkit's C++ DCP writer.

    Args:
        path: the checkpoint folder (created if missing).
        thread_count: data files per rank, written by that many C++ threads
            (items split over them as torch's FileSystemWriter does).
        overwrite: as FileSystemWriter: False raises if a checkpoint exists.
        cache_staged_state_dict: accepted for FileSystemWriter compatibility;
            staging always reuses the pool's memory.
        staging_bytes: capacity of the process's staging pool for async_save
            (None: sized by the first save; a later, larger save re-creates it).
            A save whose tensors do not fit waits for earlier saves to finish
            (at most staging_timeout_s, then raises): staging memory never
            grows past the pool.
        direct_io: write the data files around the page cache (O_DIRECT)
            where the file system allows (details() says where it did):
            no copy into fresh cache pages, no writeback storm at fsync, no
            cache pressure on the training process. False: through the page
            cache, as FileSystemWriter.
    """

    def __init__(
        self,
        path: PathLike,
        thread_count: int = 1,
        *,
        overwrite: bool = True,
        cache_staged_state_dict: bool = False,
        staging_bytes: Optional[int] = None,
        staging_timeout_s: float = 600.0,
        direct_io: bool = True,
    ) -> None:
        _TorchStorageWriter.__init__(self)
        BlockingAsyncStager.__init__(self, cache_staged_state_dict=cache_staged_state_dict)
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
        if staging_bytes is not None and (not isinstance(staging_bytes, int) or staging_bytes < 1):
            raise ValueError(f"staging_bytes must be a positive int or None, got {staging_bytes!r}")
        self.path = os.fspath(path)
        self.thread_count = thread_count
        self.staging_bytes = staging_bytes
        self.staging_timeout_s = float(staging_timeout_s)
        self.direct_io = bool(direct_io)
        self._last_write: dict = {}
        self.overwrite = overwrite
        self.save_id = str(uuid.uuid4())
        self.rank: Optional[int] = None
        self._staging: Optional[str] = None  # set per save by prepare_local_plan
        self.is_coordinator = True
        self.use_collectives = True

    def details(self) -> dict:
        """What this rank's last write did: {"direct_io": asked for,
        "data_files": files written, "direct_io_files": how many of them went
        around the page cache (fewer where the file system refused O_DIRECT),
        "bytes": bytes written}; {"direct_io": ...} alone before any write."""
        return {"direct_io": self.direct_io, **self._last_write}

    # --- StorageWriter protocol ------------------------------------------

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self.save_id = str(uuid.uuid4())

    def stage(self, state_dict: Any) -> Any:
        """async_save's staging step, the only part the caller waits for: every
        tensor copied (one memcpy into the engine's warm, bounded staging pool;
        non-blocking device-to-host copies for accelerator tensors, then one
        synchronize), so the caller may change its tensors as soon as async_save
        returns; the writes then run on a background thread from those copies.
        A state dict holding ShardedTensors, or DTensors off the CPU, is staged
        by torch's own BlockingAsyncStager instead."""
        parts, fallback = _local_parts(state_dict)
        if fallback:
            return BlockingAsyncStager.stage(self, state_dict)
        return _stage_into_pool(state_dict, parts, self.staging_bytes, self.staging_timeout_s)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.rank = kwargs.get("rank")
        self.is_coordinator = is_coordinator
        self.use_collectives = kwargs.get("use_collectives", True)

    def _metadata_path(self, rank: Optional[int] = None) -> str:
        name = _METADATA_FN if rank is None else f"__{rank}{_METADATA_FN}"
        return os.path.join(self.path, name)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        os.makedirs(self.path, exist_ok=True)
        self._staging = None
        per_rank = self.rank is not None and not self.use_collectives
        existing = self._metadata_path(0 if per_rank else None)
        if os.path.exists(existing):
            if not self.overwrite:
                raise RuntimeError(f"Checkpoint already exists in {self.path} and overwrite=False.")
            warnings.warn(f"Detected an existing checkpoint in {self.path}, overwriting.", stacklevel=2)
            if not per_rank:
                # Unlike FileSystemWriter, the old checkpoint stays intact and
                # loadable until the new one is complete: every rank writes into
                # a staging folder beside it (a name each derives alone; each
                # rank sees the old `.metadata` here, as nothing changes it
                # before this save's finish), which the coordinator's finish
                # switches in one step.
                self._staging = _core.shared_staging_path(self.path)
                os.makedirs(self._staging, exist_ok=True)
            else:
                # Per-rank metadata (no collectives): each rank withdraws its own
                # commit point before replacing its data files in place, so a save
                # that fails leaves no `.metadata` naming half-new files.
                try:
                    os.remove(self._metadata_path(self.rank))
                except FileNotFoundError:
                    pass
                _fsync_dir(self.path)
        if per_rank:
            plan = dataclasses.replace(plan, storage_data=_StoragePrefix(f"__{self.rank}_"))
        return plan

    @property
    def _write_dir(self) -> str:
        """Where this rank's data files go: the staging folder, or the destination."""
        return self._staging or self.path

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [
            dataclasses.replace(plan, storage_data=_StoragePrefix(f"__{i}_")) if plan.storage_data is None else plan
            for i, plan in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        prefix = plan.storage_data.prefix if plan.storage_data is not None else f"__{self.rank or 0}_"
        keep: list[Any] = []  # owners of the buffers handed to C++

        def item(wi: WriteItem) -> tuple:
            data = planner.resolve_data(wi)
            if wi.type == WriteItemType.BYTE_IO:
                if not isinstance(data, io.BytesIO):
                    raise TypeError(f"{wi.index.fqn}: planner gave {type(data).__name__} for a BYTE_IO item")
                buf = data.getbuffer()
                keep.append((data, buf))
                return ("bytes", None, None, buf)
            if not isinstance(data, torch.Tensor):
                raise TypeError(f"{wi.index.fqn}: planner gave {type(data).__name__} for a tensor item")
            t = _cpu_contiguous(data)
            keep.append(t)
            return ("tensor", _dtype_name(t.dtype), tuple(t.shape), _byte_view(t))

        # Files and the order inside each exactly as FileSystemWriter: items
        # split over thread_count files, bytes items first in each file.
        buckets = [
            [wi for wi in b if wi.type == WriteItemType.BYTE_IO] + [wi for wi in b if wi.type != WriteItemType.BYTE_IO]
            for b in _split_by_size_and_type(self.thread_count, list(plan.items))
        ]
        placed, direct_files = _core.write_dcp_files(self._write_dir, prefix,
                                                     [[item(wi) for wi in b] for b in buckets],
                                                     direct_io=self.direct_io)
        keep.clear()
        self._last_write = {"data_files": len(buckets), "direct_io_files": direct_files,
                            "bytes": sum(length for where in placed for (_, _, length) in where)}
        results = [
            WriteResult(index=wi.index, size_in_bytes=length, storage_data=_StorageInfo(rel, offset, length))
            for b, where in zip(buckets, placed)
            for wi, (rel, offset, length) in zip(b, where)
        ]
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        metadata.version = _DCP_VERSION
        storage_md = {}
        for wr_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in wr_list})
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        per_rank = not self.use_collectives and self.rank is not None
        files = sorted({sd.relative_path for sd in storage_md.values()})
        # The commit (C++ engine): `.metadata` written atomically last, after
        # every rank's files; a staged folder switched with the destination.
        _core.commit_dcp_folder(
            self.path, self._staging, files, pickle.dumps(metadata),
            metadata_name=os.path.basename(self._metadata_path(self.rank if per_rank else None)),
            prune=not per_rank)

    def storage_meta(self) -> Optional[StorageMeta]:
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)

    @property
    def checkpoint_id(self) -> PathLike:
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        try:
            os.fspath(checkpoint_id)
        except TypeError:
            return False
        return "://" not in str(checkpoint_id)


class StorageReader(_TorchStorageReader):
    """DCP StorageReader backed by ckptkit's C++ DCP item decoder.

    Reads any checkpoint in FileSystemWriter's TORCH_SAVE layout (stock or
    ckptkit-written), including items compressed with torch's
    "stream.zstd/1" extension.
    """

    def __init__(self, path: PathLike) -> None:
        super().__init__()
        self.path = os.fspath(path)
        self.storage_data: dict[MetadataIndex, _StorageInfo] = {}
        self.metadata: Optional[Metadata] = None
        self.load_id = str(uuid.uuid4())
        self.rank: Optional[int] = None
        self.use_collectives = True

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        self.storage_data = {}
        self.metadata = None
        if checkpoint_id:
            self.path = os.fspath(checkpoint_id)
        self.load_id = str(uuid.uuid4())

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        name = _METADATA_FN if rank is None else f"__{rank}{_METADATA_FN}"
        with open(os.path.join(self.path, name), "rb") as f:
            metadata = pickle.load(f)  # torch's own format, as FileSystemReader reads it
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if metadata.storage_data is None:
            raise ValueError(f"{self.path}: .metadata has no storage_data")
        self.metadata = metadata
        self.storage_data = metadata.storage_data
        self.rank = kwargs.get("rank")
        self.use_collectives = kwargs.get("use_collectives", True)

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def _stored_chunk(self, index: MetadataIndex) -> tuple[torch.dtype, tuple]:
        """(dtype, sizes) of the stored chunk `index` names, from .metadata."""
        md = self.metadata.state_dict_metadata.get(index.fqn) if self.metadata is not None else None
        if not isinstance(md, TensorStorageMetadata):
            raise ValueError(f"{self.path}: {index.fqn!r} is not a tensor in .metadata")
        chunks = md.chunks
        if index.index is not None and 0 <= index.index < len(chunks) and chunks[index.index].offsets == index.offset:
            c = chunks[index.index]
        else:
            c = next((c for c in chunks if c.offsets == index.offset), None)
            if c is None:
                raise ValueError(f"{self.path}: {index.fqn!r} has no chunk at offsets {tuple(index.offset)}")
        return md.properties.dtype, tuple(c.sizes)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        per_file: dict[str, list[ReadItem]] = {}
        for req in plan.items:
            per_file.setdefault(self.storage_data[req.storage_index].relative_path, []).append(req)
        # Tensor requests go in batches of about _READ_BATCH_BYTES (the planner's
        # targets are resolved a batch at a time, so a planner that hands out
        # temporaries holds at most one batch), and each batch is decoded by up to
        # _READ_THREADS C++ calls at once (the GIL is released while they read).
        batch: list[tuple[str, ReadItem]] = []
        batch_bytes = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=_READ_THREADS) as pool:
            for rel, reqs in per_file.items():
                path = os.path.join(self.path, rel)
                reqs.sort(key=lambda r: self.storage_data[r.storage_index].offset)
                for req in reqs:
                    info = self.storage_data[req.storage_index]
                    if req.type == LoadItemType.BYTE_IO:
                        payload = _core.read_dcp_bytes(path, info.offset, info.length, info.transform_descriptors)
                        planner.load_bytes(req, io.BytesIO(payload))
                        continue
                    batch.append((path, req))
                    batch_bytes += info.length
                    if batch_bytes >= _READ_BATCH_BYTES:
                        self._read_tensors(batch, planner, pool)
                        batch, batch_bytes = [], 0
            if batch:
                self._read_tensors(batch, planner, pool)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    def _read_tensors(
        self, batch: list[tuple[str, ReadItem]], planner: LoadPlanner, pool: concurrent.futures.Executor
    ) -> None:
        # A request for a whole stored chunk whose target is a contiguous CPU
        # tensor of the stored dtype is decoded straight into the target; any
        # other (a slice, a strided or other-dtype target) is decoded once per
        # stored chunk into a temporary and copied.
        chunks: dict[MetadataIndex, torch.Tensor] = {}
        requests: list[tuple[str, tuple]] = []
        copies: list[tuple[str, ReadItem, torch.Tensor]] = []
        direct: list[tuple[ReadItem, torch.Tensor]] = []
        for path, req in batch:
            dtype, sizes = self._stored_chunk(req.storage_index)
            info = self.storage_data[req.storage_index]
            target = planner.resolve_tensor(req).detach()
            whole = all(o == 0 for o in req.storage_offsets) and tuple(req.lengths) == sizes
            if (
                whole
                and req.storage_index not in chunks
                and target.device.type == "cpu"
                and target.dtype == dtype
                and tuple(target.size()) == sizes
                and target.is_contiguous()
                and not target.is_conj()
                and not target.is_neg()
            ):
                requests.append((path, (req.storage_index.fqn, info.offset, info.length, info.transform_descriptors,
                                        _dtype_name(dtype), sizes, _byte_view(target))))
                direct.append((req, target))
                continue
            if req.storage_index not in chunks:
                t = torch.empty(sizes, dtype=dtype)
                chunks[req.storage_index] = t
                requests.append((path, (req.storage_index.fqn, info.offset, info.length, info.transform_descriptors,
                                        _dtype_name(dtype), sizes, _byte_view(t))))
            copies.append((path, req, target))
        # Split into up to _READ_THREADS runs of consecutive requests of about
        # equal bytes, each run within one file.
        total = sum(r[1][2] for r in requests)
        share = max(1, total // _READ_THREADS + 1)
        runs: list[tuple[str, list[tuple]]] = []
        acc = share
        for path, r in requests:
            if acc >= share or runs[-1][0] != path:
                runs.append((path, []))
                acc = 0
            runs[-1][1].append(r)
            acc += r[2]
        for f in [pool.submit(_core.read_dcp_tensors, path, rs) for path, rs in runs]:
            f.result()
        for req, target in direct:
            planner.commit_tensor(req, target)
        for path, req, target in copies:
            src = chunks[req.storage_index]
            for dim, (start, length) in enumerate(zip(req.storage_offsets, req.lengths)):
                src = src.narrow(dim, start, length)
            if target.size() != src.size():
                raise ValueError(
                    f"{path}: {req.storage_index.fqn!r}: planner wants {tuple(target.size())}, "
                    f"the stored slice is {tuple(src.size())}"
                )
            target.copy_(src)
            planner.commit_tensor(req, target)

    @property
    def checkpoint_id(self) -> PathLike:
        return self.path

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        return StorageWriter.validate_checkpoint_id(checkpoint_id)
