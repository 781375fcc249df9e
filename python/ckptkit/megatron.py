"""ckptkit as a Megatron-Core `dist_checkpointing` strategy for the torch_dist backend.

    from megatron.core import dist_checkpointing
    import ckptkit.megatron

    dist_checkpointing.save(sharded_state_dict, ckpt_dir,
                            sharded_strategy=ckptkit.megatron.TorchDistSaveStrategy(thread_count=2))
    state = dist_checkpointing.load(sharded_state_dict, ckpt_dir,
                                    sharded_strategy=ckptkit.megatron.TorchDistLoadStrategy())

What it is: subclasses of Megatron's TorchDistSaveShardedStrategy /
TorchDistLoadShardedStrategy (backend 'torch_dist', version 1) that keep all of
Megatron's logic (ShardedTensor -> torch ShardedTensor translation, ShardedObject
-> bytes, `keep_only_main_replica`, MCoreSavePlanner / MCoreLoadPlanner (the
global-shape checks, the decentralized global plan), the
finalize protocol) and swap only the storage layer: FileSystemWriterAsync ->
`_MegatronStorageWriter` (ckptkit.dcp.StorageWriter plus Megatron's async-writer
protocol, data files written by the C++ core, one thread per file) and
FileSystemReader -> ckptkit.dcp.StorageReader. The checkpoint on disk is the
one stock Megatron writes (same data files byte for byte for contiguous
tensors, same item split over files, an equal `.metadata` whose entries come in
a deterministic order, `metadata.json` and `common.pt` written by Megatron
itself), so either side can be stock; any world size, and loading into another
world size (DCP's planners reshard).

Fully-parallel wrappers: FullyParallelSaveStrategyWrapper(TorchDistSaveStrategy(),
group) and FullyParallelLoadStrategyWrapper(TorchDistLoadStrategy(), group) work
(the wrappers only rewrite replica ids / split the request, then call us).

Async (`dist_checkpointing.save(..., async_sharded_save=True)`): returns
Megatron's AsyncRequest; its async_fn writes this rank's files and runs where
the queue puts it: ckptkit.megatron.AsyncCallsQueue (the same interface as
Megatron's) runs it inside the training process, tensors staged into the
engine's bounded staging pool when scheduled and the bytes written by the C++
engine's threads (the GIL released), no worker process; Megatron's own
AsyncCallsQueue runs it in a forked process or its persistent worker (the
arguments are picklable). The
write results travel back through a private temporary file (FileSystemWriterAsync
uses a multiprocessing Manager queue, a server process started per training
process). Finalize (on every rank, after all ranks finished)
gathers the results; the coordinator publishes (`.metadata` written last by the
C++ engine; into a destination that held a checkpoint, every rank wrote into a
staging folder beside it, which is switched in whole) only if no rank failed;
otherwise every rank raises
CheckpointException. A failing write, staging or planning step on one rank is
reported through that path, so the other ranks never hang.

Megatron versions: 0.16.x (TorchDistSaveShardedStrategy(backend, version, ...),
async_save(sd, dir)) and 0.19.x (the strategy is no base class any more and
dist_checkpointing.save silently replaces any strategy that is not an instance
of it; async_save(sd, dir, async_strategy) with 'nvrx' as save()'s default;
load(sd, dir, async_strategy) via torch's load(no_dist=True); common state as a
ShardedObject). Only Megatron's own ('mcore') async machinery is supported:
pass `async_strategy='mcore'` to 0.19's save; 'nvrx' raises.

Plan reuse (`cached_metadata`, on by default here): while consecutive saves
have the same structure, Megatron's own plan cache is used as its strategy uses
it, so from the third save on planning runs no collective.

Not supported: `separation_hint` raises NotImplementedError; multi-storage-client (msc://)
paths are not handled (local or mounted file systems only).

Thread-safety: one strategy object per training process, used by one thread,
as Megatron's. A writer object serves one save.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import io
import os
import pickle
import queue
import shutil
import tempfile
import threading
import traceback
from pathlib import Path
from functools import partial
from typing import Any, Callable, Optional, Union

import torch
from torch.distributed import checkpoint as _dcp
from torch.distributed.checkpoint.api import WRAPPED_EXCEPTION, _wrap_exception
from torch.distributed.checkpoint.filesystem import _StorageInfo, _StoragePrefix
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult

from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.strategies import torch as _mtorch
from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest
from megatron.core.dist_checkpointing.strategies.filesystem_async import (
    _split_by_size_and_type as _megatron_split,
)
from megatron.core.dist_checkpointing.strategies.state_dict_saver import (
    save_state_dict_async_finalize,
    save_state_dict_async_plan,
)

from . import _core
from . import dcp as _ckdcp

__all__ = ["TorchDistLoadStrategy", "TorchDistSaveStrategy"]

PathLike = Union[str, "os.PathLike[str]"]

# 0.17+ (the 0.19 API): async_save/load take `async_strategy`, load goes through
# torch's load(no_dist=True).
_ASYNC_STRATEGY_API = "async_strategy" in inspect.signature(
    _mtorch.TorchDistLoadShardedStrategy.load
).parameters
_SUFFIX = ".distcp"

# The C++ writer, looked up at call time (tests replace it to inject failures).
_write_dcp_files: Callable[..., list] = _core.write_dcp_files


# --------------------------------------------------------------------------------------------
# Results channel between the write job and finalize
# --------------------------------------------------------------------------------------------
class _ResultsFile:
    """Results channel of an async save: the job pickles its result into a file of
    a private (0700) temporary folder (written aside, then renamed);
    retrieve_write_results reads it and removes file and folder. It survives fork
    and pickling into Megatron's persistent worker, and needs no Manager process
    (FileSystemWriterAsync starts one per training process: seconds on a busy
    host). The writer always runs on the same host as the rank."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ckptkit-megatron-")
        self.path = os.path.join(self.dir, "results.pkl")

    def put(self, item: Any) -> None:
        part = self.path + ".part"
        with open(part, "wb") as f:
            pickle.dump(item, f)
        os.replace(part, self.path)

    def get_nowait(self) -> Any:
        try:
            with open(self.path, "rb") as f:
                item = pickle.load(f)  # written by our own job into our private folder
        except FileNotFoundError:
            raise queue.Empty from None
        self.close()
        return item

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class _LocalResults:
    """In-process results channel for a synchronous save."""

    def __init__(self) -> None:
        self._items: list = []

    def put(self, item: Any) -> None:
        self._items.append(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise queue.Empty
        return self._items.pop(0)

    def close(self) -> None:
        self._items.clear()


class _Failure:
    """A failure raised before the write job ran (planning or staging), carried to
    the job so that it is reported through finalize on every rank."""

    def __init__(self, where: str, exc: BaseException) -> None:
        self.message = f"{where}: {type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}"


def _portable_error(exc: BaseException) -> RuntimeError:
    # Plain RuntimeError: it pickles into the results file whatever the original
    # exception class is (nanobind classes, exceptions holding tensors, ...).
    return RuntimeError(f"{type(exc).__name__}: {exc}\n{''.join(traceback.format_exception(exc))}")


# --------------------------------------------------------------------------------------------
# The write job (module level: picklable for Megatron's persistent async worker)
# --------------------------------------------------------------------------------------------
def _stage_buckets(buckets: Any) -> Any:
    """preload_fn: tensors to plain contiguous CPU tensors (Megatron's D2H step).
    A failure becomes a _Failure that the job reports (never raised here: in a
    synchronous save an exception on one rank would leave the others in the barrier)."""
    if isinstance(buckets, _Failure):
        return buckets
    try:
        return [
            (file_name, [(wi, data if wi.type == WriteItemType.BYTE_IO else _ckdcp._cpu_contiguous(data))
                         for wi, data in items])
            for file_name, items in buckets
        ]
    except Exception as e:  # noqa: BLE001 - reported through finalize on every rank
        return _Failure("staging tensors to CPU", e)


@torch.no_grad()
def _stage_buckets_into_pool(buckets: Any, timeout_s: float) -> Any:
    """The preload step of AsyncCallsQueue (in-process): every tensor's values of
    this moment copied into the process's staging pool (ckptkit.dcp's, bounded,
    reused), so training may change the originals once the request is scheduled.
    Bytes items (BytesIO the planner made) are kept. A failure becomes a _Failure
    that the job reports."""
    if isinstance(buckets, _Failure):
        return buckets
    try:
        tensors = [data for _, items in buckets for wi, data in items if wi.type != WriteItemType.BYTE_IO]
        sizes = [t.numel() * t.element_size() for t in tensors]
        pool = _ckdcp._process_pool(_core.StagingPool.footprint(sizes), None)
        regions = iter(pool.acquire(sizes, timeout_s))
        on_device: list = []
        staged = [
            (file_name, [(wi, data if wi.type == WriteItemType.BYTE_IO
                          else _ckdcp._copy_into_region(next(regions), data, on_device))
                         for wi, data in items])
            for file_name, items in buckets
        ]
        if on_device and torch.cuda.is_available():
            torch.cuda.synchronize()
        return staged
    except Exception as e:  # noqa: BLE001 - reported through finalize on every rank
        return _Failure("staging tensors into the staging pool", e)


def _write_rank_files(directory: str, prefix: str, rank: int, buckets: Any, results: Any, *,
                      in_process: bool = False) -> None:
    """async_fn: writes this rank's data files `<prefix><n>.distcp` (n = 0, 1, ...)
    with the C++ engine, one thread per file, each file atomically; puts either the
    list of WriteResults or a RuntimeError into `results`. Never raises.
    in_process: run on a thread of the training process (AsyncCallsQueue), where
    the process's garbage collector is not this job's to switch off."""
    gc_was_enabled = gc.isenabled() and not in_process
    if gc_was_enabled:
        gc.disable()  # as Megatron's writer: no GC of the parent's tensors in a forked child
    keep: list = []
    try:
        if isinstance(buckets, _Failure):
            raise RuntimeError(buckets.message)
        files = []
        for file_name, items in buckets:
            entries = []
            for wi, data in items:
                if wi.type == WriteItemType.BYTE_IO:
                    if not isinstance(data, io.BytesIO):
                        raise TypeError(f"rank {rank}: {wi.index.fqn}: planner gave {type(data).__name__} "
                                        f"for a BYTE_IO item")
                    buf = data.getbuffer()
                    keep.append(buf)
                    entries.append(("bytes", None, None, buf))
                else:
                    if not isinstance(data, torch.Tensor) or data.device.type != "cpu" or not data.is_contiguous():
                        raise TypeError(f"rank {rank}: {wi.index.fqn}: expected a staged contiguous CPU tensor, "
                                        f"got {type(data).__name__}")
                    entries.append(("tensor", _ckdcp._dtype_name(data.dtype), tuple(data.shape),
                                    _ckdcp._byte_view(data)))
            files.append(entries)
        placed, _ = _write_dcp_files(directory, prefix, files)
        keep.clear()
        out = []
        for (file_name, items), where in zip(buckets, placed):
            for (wi, _), (rel, offset, length) in zip(items, where):
                if rel != file_name:
                    raise RuntimeError(f"rank {rank}: {wi.index.fqn}: written to {rel}, planned {file_name}")
                # file_name, not rel: one str object per file, shared by its items as
                # in torch's _write_item results (the pickled `.metadata` memoizes it).
                out.append(WriteResult(index=wi.index, size_in_bytes=length,
                                       storage_data=_StorageInfo(file_name, offset, length)))
        results.put(out)
    except BaseException as e:  # noqa: BLE001 - every failure goes to finalize
        keep.clear()
        results.put(_portable_error(e))
    finally:
        if gc_was_enabled:
            gc.enable()


# --------------------------------------------------------------------------------------------
# Storage writer: ckptkit.dcp.StorageWriter + Megatron's FileSystemWriterAsync protocol
# --------------------------------------------------------------------------------------------
class _MegatronStorageWriter(_ckdcp.StorageWriter):
    """What save_state_dict_async_plan / _finalize expect of FileSystemWriterAsync:
    prepare_decentralized_global_plan, prepare_write_data, get_save_function_and_args,
    retrieve_write_results, finish. Inherited from ckptkit.dcp.StorageWriter:
    prepare_local_plan (a destination holding a checkpoint: every rank writes into
    the shared staging folder beside it) and finish (the C++ engine writes
    `.metadata` and switches a staged folder in, Megatron's common.pt carried over).

    Items go to files exactly as FileSystemWriterAsync puts them (Megatron's
    _split_by_size_and_type over `thread_count` bins, empty bins skipped, bytes
    items first in each file), so the files match a stock save's.
    """

    can_run_decentralized_global_plan = True

    def __init__(self, path: PathLike, thread_count: int, *, in_process: bool) -> None:
        super().__init__(path, thread_count=thread_count, overwrite=True)
        self._in_process = in_process
        self._buckets: Any = None  # [(file name, [(WriteItem, data)])] or a _Failure
        self._prefix: Optional[str] = None
        self._results: Any = None

    def prepare_decentralized_global_plan(self, local_plan: SavePlan) -> SavePlan:
        # As FileSystemWriterAsync: the file prefix comes from the global rank.
        return dataclasses.replace(local_plan, storage_data=_StoragePrefix(f"__{torch.distributed.get_rank()}_"))

    def prepare_write_data(self, plan: SavePlan, planner: SavePlanner) -> None:
        """Resolves every item of this rank's plan and assigns it to a file. Tensors
        stay where they are (staged to CPU by the preload step). Never raises: a
        failure is reported by the write job, so finalize fails on every rank."""
        try:
            prefix = plan.storage_data.prefix if plan.storage_data is not None else f"__{self.rank or 0}_"
            self._prefix = prefix
            buckets = []
            for bucket in _megatron_split(self.thread_count, list(plan.items)):
                ordered = ([wi for wi in bucket if wi.type == WriteItemType.BYTE_IO]
                           + [wi for wi in bucket if wi.type != WriteItemType.BYTE_IO])
                if not ordered:
                    continue  # FileSystemWriterAsync numbers only non-empty files
                items = []
                for wi in ordered:
                    data = planner.resolve_data(wi)
                    if wi.type != WriteItemType.BYTE_IO:
                        if not isinstance(data, torch.Tensor):
                            raise TypeError(f"{wi.index.fqn}: planner gave {type(data).__name__} for a tensor item")
                        data = data.detach()
                    items.append((wi, data))
                buckets.append((f"{prefix}{len(buckets)}{_SUFFIX}", items))
            self._buckets = buckets
        except Exception as e:  # noqa: BLE001
            self._prefix = self._prefix or "__0_"
            self._buckets = _Failure(f"preparing the write of {self.path}", e)
        if self._buckets:  # a non-empty list, or a _Failure
            self._results = _LocalResults() if self._in_process else _ResultsFile()

    def get_save_function_and_args(self) -> tuple[Optional[Callable], Optional[Callable], list]:
        """(async_fn, preload_fn, args) as FileSystemWriterAsync's: async_fn(*args)
        writes; Megatron replaces args[1] by preload_fn() before calling it.
        (None, None, []) when this rank has nothing to write."""
        if not self._buckets:
            return None, None, []
        from functools import partial

        return (
            partial(_write_rank_files, self._write_dir, self._prefix),
            partial(_stage_buckets, self._buckets),
            [torch.distributed.get_rank(), self._buckets, self._results],
        )

    def retrieve_write_results(self) -> Union[list[WriteResult], WRAPPED_EXCEPTION]:
        """This rank's WriteResults, or a wrapped exception for finalize to report."""
        if not self._buckets:
            return []
        try:
            got = self._results.get_nowait()
        except queue.Empty:
            self._results.close()
            return _wrap_exception(RuntimeError(f"{self.path}: the write job of this rank left no result "
                                                f"(did the async process die?)"))
        except Exception as e:  # noqa: BLE001 - e.g. an unreadable results file
            return _wrap_exception(RuntimeError(f"{self.path}: reading the write results failed: {e!r}"))
        if isinstance(got, BaseException):
            try:
                raise RuntimeError(f"ckptkit write failure in {self.path}: {got}") from got
            except RuntimeError as e:
                return _wrap_exception(e)
        return got

    def write_data(self, plan: SavePlan, planner: SavePlanner):  # pragma: no cover - not Megatron's path
        raise NotImplementedError("_MegatronStorageWriter writes through prepare_write_data + the async job")


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------
class TorchDistSaveStrategy(_mtorch.TorchDistSaveShardedStrategy):
    """Megatron's torch_dist save strategy with ckptkit's C++ DCP writer.

    Args:
        backend, version: recorded in metadata.json; 'torch_dist', 1 (what stock
            loaders expect).
        keep_only_main_replica: as Megatron's (True: only replica_id 0 is written).
        thread_count: data files (and C++ writer threads) per rank.
        cached_metadata: reuse the save plan and the global metadata while
            consecutive saves have the same structure (Megatron's own cache,
            validated the same way: the second save compares its plan with the
            first; from the third on, planning runs no collective and the save's
            only synchronization is finalize's gather of the write results).
            On by default here (off in Megatron's strategy); a save whose
            structure changed plans afresh.

    Raises: (constructor) ValueError for a bad thread_count, NotImplementedError
    for separation_hint; (save, or the finalize of an async
    save) CheckpointException on every rank if any rank failed to plan its files,
    stage its tensors or write (no `.metadata`, no `metadata.json`: nothing that
    looks complete); (async_save) ValueError for async_strategy other than 'mcore'.
    """

    def __init__(
        self,
        backend: str = "torch_dist",
        version: int = 1,
        keep_only_main_replica: bool = True,
        thread_count: int = 1,
        cached_metadata: bool = True,
        separation_hint: Optional[str] = None,
    ) -> None:
        if separation_hint is not None:
            raise NotImplementedError("ckptkit.megatron.TorchDistSaveStrategy: separation_hint is not supported")
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
        super().__init__(backend, version, keep_only_main_replica=keep_only_main_replica, thread_count=thread_count,
                         cached_metadata=cached_metadata)
        # Megatron's cache state (its __init__ sets these too; named here as this class uses them).
        self.use_cached_ckpt_structure = bool(cached_metadata)
        self.cached_central_plan = None
        self.cached_local_plan = None
        self.cached_global_metadata = None
        self.validated_cache_reuse = False
        self.validated_loaded_metadata_reuse = False
        self._sync_save = False

    def save(self, sharded_state_dict: Any, checkpoint_dir: Union[str, Path]) -> None:
        """Synchronous save: the same request, executed in this process (as Megatron's)."""
        self._sync_save = True
        try:
            request = self.async_save(sharded_state_dict, checkpoint_dir, "mcore")
        finally:
            self._sync_save = False
        request.execute_sync()

    def async_save(self, sharded_state_dict: Any, checkpoint_dir: Union[str, Path],
                   async_strategy: str = "mcore") -> AsyncRequest:
        """Plans the save (collectives with every rank) and returns the AsyncRequest:
        async_fn writes this rank's files, the finalize fn publishes `.metadata`."""
        if async_strategy != "mcore":
            raise ValueError(
                f"ckptkit.megatron.TorchDistSaveStrategy runs on Megatron's own async machinery: "
                f"pass async_strategy='mcore' (got {async_strategy!r})")
        sharded_state_dict, _, _ = _mtorch._replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict, self.keep_only_main_replica)
        pyt_state_dict = _mtorch.mcore_to_pyt_state_dict(sharded_state_dict, False)
        writer = _MegatronStorageWriter(os.fspath(checkpoint_dir), self.thread_count, in_process=self._sync_save)
        # The planner arguments of the installed Megatron's own async_save.
        extra = {"flatten_sharded_tensors": False} if _ASYNC_STRATEGY_API else {}
        planner = _mtorch.MCoreSavePlanner(
            dedup_replicated_tensors=not self.keep_only_main_replica, flatten_state_dict=False, **extra)
        # Megatron's plan cache, used as its own strategy uses it (strategies/torch.py, 'mcore').
        cache_kwargs: dict = {}
        loaded_all_plans = None
        if self.use_cached_ckpt_structure:
            loaded_all_plans = getattr(self.cached_global_metadata, "all_local_plans", None)
            cache_kwargs = dict(cached_ckpt_structure=(self.cached_central_plan, self.cached_local_plan,
                                                       self.validated_cache_reuse),
                                loaded_all_plans=loaded_all_plans)
        coordinator = 0
        (save_state_dict_ret, self.cached_central_plan, self.cached_local_plan, self.validated_cache_reuse,
         self.validated_loaded_metadata_reuse) = save_state_dict_async_plan(
            pyt_state_dict, writer, None, coordinator, planner=planner, **cache_kwargs)
        # (writer, global metadata or None, dist wrapper)
        if self.use_cached_ckpt_structure:
            rank = torch.distributed.get_rank()
            if loaded_all_plans and self.cached_global_metadata and self.validated_loaded_metadata_reuse:
                if rank == coordinator:
                    save_state_dict_ret = (save_state_dict_ret[0], self.cached_global_metadata, save_state_dict_ret[2])
            elif self.validated_cache_reuse:
                if save_state_dict_ret[1]:  # planned afresh: cache it
                    self.cached_global_metadata = save_state_dict_ret[1]
                elif rank == coordinator:  # the plan was reused: only the coordinator needs the metadata
                    save_state_dict_ret = (save_state_dict_ret[0], self.cached_global_metadata, save_state_dict_ret[2])
        save_fn, preload_fn, save_args = writer.get_save_function_and_args()

        def finalize_fn() -> None:
            save_state_dict_async_finalize(*save_state_dict_ret)

        return AsyncRequest(save_fn, save_args, [finalize_fn], preload_fn=preload_fn)

    def __str__(self) -> str:
        return f"ckptkit.megatron.TorchDistSaveStrategy({self.backend}, {self.version}, threads={self.thread_count})"


class AsyncCallsQueue:
    """Megatron's AsyncCallsQueue, run inside the training process: no worker
    process, no fork.

        queue = ckptkit.megatron.AsyncCallsQueue()
        request = dist_checkpointing.save(sd, ckpt_dir, sharded_strategy=TorchDistSaveStrategy(),
                                          async_sharded_save=True)
        queue.schedule_async_request(request)   # returns once the tensors are staged
        ...                                      # training goes on, may change every tensor
        queue.maybe_finalize_async_calls(blocking=False)   # each step, on every rank

    The same methods as megatron.core.dist_checkpointing.strategies.async_utils.
    AsyncCallsQueue (schedule_async_request, maybe_finalize_async_calls(blocking,
    no_dist), get_num_unfinalized_calls, close), so a training loop swaps one
    for the other. For requests of ckptkit.megatron.TorchDistSaveStrategy only:
    scheduling copies this rank's tensors into the process's staging pool (the
    values of that moment: ckptkit.dcp's bounded, reused pool; a save that does
    not fit waits up to staging_timeout_s for earlier ones to finish) and starts
    the write on a thread, which hands the bytes to the C++ engine's writer
    threads (the GIL released, O_DIRECT where the file system allows) and waits.
    Megatron's queue forks a process (or feeds a persistent one) per save
    instead, whose pages the training process then copies on write.

    maybe_finalize_async_calls does what Megatron's does: the oldest call is
    done when its write finished on every rank (one all-reduce of a flag per
    check unless no_dist), then its finalize functions run (the coordinator
    publishes `.metadata`; a failure on any rank raises CheckpointException on
    every rank); blocking waits. Requests are finalized in order.

    Thread-safety: one queue per training process, used by one thread, called
    on every rank alike (the checks are collectives).
    """

    def __init__(self, staging_timeout_s: float = 600.0) -> None:
        self.staging_timeout_s = float(staging_timeout_s)
        self._active: list = []  # [(call index, thread or None, frozen request)]
        self._next = 0

    def schedule_async_request(self, async_request: AsyncRequest) -> int:
        fn = async_request.async_fn
        if fn is not None and not (isinstance(fn, partial) and fn.func is _write_rank_files):
            raise ValueError("ckptkit.megatron.AsyncCallsQueue runs the requests of "
                             "ckptkit.megatron.TorchDistSaveStrategy (got an async_fn "
                             f"{getattr(fn, '__qualname__', fn)!r}); use Megatron's AsyncCallsQueue for others")
        request = async_request.freeze() if hasattr(async_request, "freeze") else async_request
        thread = None
        if fn is not None:
            args = list(request.async_fn_args)
            args[1] = _stage_buckets_into_pool(args[1], self.staging_timeout_s)
            thread = threading.Thread(target=fn, args=args, kwargs={**request.async_fn_kwargs, "in_process": True},
                                      name=f"ckptkit-save-{self._next}", daemon=True)
            thread.start()
        idx = self._next
        self._next += 1
        self._active.append((idx, thread, request))
        return idx

    def maybe_finalize_async_calls(self, blocking: bool = False, no_dist: bool = False) -> list:
        finalized = []
        while self._active:
            idx, thread, request = self._active[0]
            alive = int(thread is not None and thread.is_alive())
            if not no_dist and torch.distributed.is_initialized():
                device = (torch.device("cuda", torch.cuda.current_device())
                          if torch.distributed.get_backend() == "nccl" else torch.device("cpu"))
                flag = torch.tensor([alive], dtype=torch.int32, device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                alive = int(flag.item())
            if alive and not blocking:
                break
            if thread is not None:
                thread.join()
            self._active.pop(0)
            for finalize in request.finalize_fns:
                finalize()
            finalized.append(idx)
        return finalized

    def get_num_unfinalized_calls(self) -> int:
        return len(self._active)

    def close(self, abort: bool = False) -> None:
        """Finalizes every call (blocking); abort=True drops them unpublished
        (their writes finish on their threads; nothing is published)."""
        if abort:
            self._active.clear()
            return
        self.maybe_finalize_async_calls(blocking=True)


class TorchDistLoadStrategy(_mtorch.TorchDistLoadShardedStrategy):
    """Megatron's torch_dist load strategy reading through ckptkit.dcp.StorageReader.

    kwargs go to Megatron's TorchDistLoadShardedStrategy (0.19: cache_metadata,
    stream_ckpt_dequant, checkpoint_name; 0.16: none).

    reshard (default True): a checkpoint saved at another parallel layout with
    the distributed optimizer's dp_reshardable buckets (megatron-core's
    default, which stock megatron-core cannot load at another layout) is
    resharded for this job's layout first (scratch_dir: where; see load).

    Raises (load): what Megatron's raises for a mismatching request
    (CheckpointingException, KeyError); FileNotFoundError without `.metadata`;
    ckptkit.CorruptCheckpointError (a ValueError) for damaged data files;
    RuntimeError naming the layout when resharding fails (on every rank).
    """

    def __init__(self, *, reshard: bool = True, scratch_dir: Optional[PathLike] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._reshard = bool(reshard)
        self._scratch_dir = os.fspath(scratch_dir) if scratch_dir is not None else None

    def _resharded(self, sharded_state_dict: Any, checkpoint_dir: str) -> tuple[str, Optional[str]]:
        """(folder to read, scratch root to remove afterwards or None).

        The distributed optimizer's dp_reshardable buckets are per layout: when
        this job's layout asks for bucket tensors the checkpoint does not hold
        at those shapes (stock megatron-core raises a global shape mismatch),
        global rank 0 reshards the checkpoint with ckptkit's engine
        (ckptkit.reshard, dp_reshardable at this job's parallel state) into a
        scratch folder (scratch_dir, else beside the checkpoint's root; as much
        disk as the checkpoint) and every rank reads from there. Collective:
        every rank of the job must call load."""
        import torch.distributed as dist

        if not self._reshard:
            return checkpoint_dir, None
        stored = _ckdcp.StorageReader(checkpoint_dir).read_metadata().state_dict_metadata
        need = any(isinstance(t, ShardedTensor) and ".distributed.dp_group_idx_" in t.key
                   and (t.key not in stored or tuple(getattr(stored[t.key], "size", ())) != tuple(t.global_shape))
                   for t in nested_values(sharded_state_dict))
        if dist.is_available() and dist.is_initialized():
            flag = torch.tensor([1 if need else 0], dtype=torch.int64)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            need = bool(flag.item())
        if not need:
            return checkpoint_dir, None
        from megatron.core import parallel_state as ps

        from . import reshard as _reshard

        layout = dict(tp=ps.get_tensor_model_parallel_world_size(), pp=ps.get_pipeline_model_parallel_world_size(),
                      vpp=ps.get_virtual_pipeline_model_parallel_world_size() or 1,
                      dp=ps.get_data_parallel_world_size(), ep=ps.get_expert_model_parallel_world_size(),
                      etp=ps.get_expert_tensor_parallel_world_size() or ps.get_tensor_model_parallel_world_size())
        distributed = dist.is_available() and dist.is_initialized()
        result: list = [None, None]  # [scratch root, error]
        if not distributed or dist.get_rank() == 0:
            root = os.path.dirname(os.path.abspath(checkpoint_dir))
            try:
                scratch = tempfile.mkdtemp(prefix="ckptkit-reshard-", dir=self._scratch_dir or root)
                out = os.path.join(scratch, "out")
                _reshard(checkpoint_dir, out, optimizer_sharding="dp_reshardable", megatron_version="0.16", **layout)
                result = [scratch, None]
            except Exception as e:  # noqa: BLE001 - every rank must learn of it, not hang
                result = [None, f"{type(e).__name__}: {e}"]
        if distributed:
            dist.broadcast_object_list(result, src=0)
        scratch, error = result
        if error is not None:
            raise RuntimeError(f"ckptkit: resharding {checkpoint_dir} for this job's layout {layout} failed: {error}")
        out = os.path.join(scratch, "out")
        iters = [d for d in os.listdir(out) if d.startswith("iter_")]
        return os.path.join(out, iters[0]), scratch

    def load(self, sharded_state_dict: Any, checkpoint_dir: Union[str, Path], *args: Any, **kwargs: Any) -> dict:
        """As Megatron's load (extra args, e.g. 0.19's async_strategy, are accepted
        and ignored: reading does not depend on how the checkpoint was saved).
        A checkpoint whose distributed-optimizer buckets are of another layout is
        resharded first (see _resharded; reshard=False turns it off)."""
        checkpoint_dir, scratch = self._resharded(sharded_state_dict, os.fspath(checkpoint_dir))
        try:
            return self._load(sharded_state_dict, checkpoint_dir)
        finally:
            if scratch is not None:
                import torch.distributed as dist

                if dist.is_available() and dist.is_initialized():
                    dist.barrier()
                    if dist.get_rank() == 0:
                        shutil.rmtree(scratch, ignore_errors=True)
                else:
                    shutil.rmtree(scratch, ignore_errors=True)

    def _load(self, sharded_state_dict: Any, checkpoint_dir: Union[str, Path]) -> dict:
        flexible = [t for t in nested_values(sharded_state_dict)
                    if isinstance(t, ShardedTensor) and not t.allow_shape_mismatch]
        mismatch_ok = {t.key: t for t in nested_values(sharded_state_dict)
                       if isinstance(t, ShardedTensor) and t.allow_shape_mismatch}
        orig = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = _mtorch._replace_state_dict_keys_with_sharded_keys(
            sharded_state_dict)
        pyt_state_dict = _mtorch.mcore_to_pyt_state_dict(sharded_state_dict, True)
        reader = _ckdcp.StorageReader(os.fspath(checkpoint_dir))
        # The planner arguments of the installed Megatron's own load.
        extra = {}
        if _ASYNC_STRATEGY_API:
            extra = dict(stream_ckpt_dequant=getattr(self, "stream_ckpt_dequant", True),
                         flatten_state_dict=False, flatten_sharded_tensors=False)
        planner = _mtorch.MCoreLoadPlanner(
            shapes_validation_sharded_tensors=flexible, allow_shape_mismatch_sharded_tensors=mismatch_ok, **extra)
        if _ASYNC_STRATEGY_API:  # 0.19: every rank plans its own reads
            _dcp.load(pyt_state_dict, storage_reader=reader, planner=planner, no_dist=True)
        else:  # 0.16: planned with collectives
            _dcp.load_state_dict(pyt_state_dict, reader, planner=planner)
        if not _ASYNC_STRATEGY_API or getattr(self, "cache_metadata", False):
            self.cached_global_metadata = reader.metadata
        mcore_state_dict = {k: _mtorch._unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        mcore_state_dict = _mtorch._replace_sharded_keys_with_state_dict_keys(
            mcore_state_dict, flat_mapping, rename_mapping)
        _mtorch._restore_dict_types(mcore_state_dict, orig)
        return mcore_state_dict

    def load_tensors_metadata(self, checkpoint_dir: Union[str, Path], metadata: Optional[Metadata] = None):
        """{key: ShardedTensor without data} of every tensor in `.metadata`."""
        if metadata is None:
            metadata = _ckdcp.StorageReader(os.fspath(checkpoint_dir)).read_metadata()
        return super().load_tensors_metadata(checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir: Union[str, Path]):
        """Tensors and ShardedObjects (by unique key) described by `.metadata`."""
        metadata = _ckdcp.StorageReader(os.fspath(checkpoint_dir)).read_metadata()
        out = {}
        for key, md in metadata.state_dict_metadata.items():
            if isinstance(md, BytesStorageMetadata):
                obj = ShardedObject.empty_from_unique_key(key)
                out[obj.unique_key] = obj
        out.update(self.load_tensors_metadata(checkpoint_dir, metadata))
        return out
