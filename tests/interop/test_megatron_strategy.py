"""ckptkit.megatron strategies against real megatron-core (CPU, gloo ranks).

Proves, with Megatron's own dist_checkpointing.save / load:
  (1) save with ckptkit's TorchDistSaveStrategy -> load with stock Megatron, and
  (2) save with stock -> load with ckptkit's TorchDistLoadStrategy: every tensor
      (bit for bit) and every ShardedObject and common entry equal; state dicts with
      TP-style shards along axes 0, 1 and 2 (one with a prepended stacking axis),
      TP x DP replicas (replica_id != 0 on some ranks), fully replicated tensors,
      ShardedObjects held by every rank, and a real GPTModel (local spec);
  (3) across world sizes: saved with 2 ranks -> loaded with 4, saved with 4 ->
      loaded with 1 (both strategies on both sides);
  (4) async_sharded_save=True through Megatron's AsyncCallsQueue (forked writer);
  (5) FullyParallelSaveStrategyWrapper / FullyParallelLoadStrategyWrapper around
      the ckptkit strategies; load_tensors_metadata / load_sharded_metadata;
  (6) `ckptkit verify` exits 0 on ckptkit-written checkpoints, and
      `ckptkit diff <stock> <ckptkit>` of the same state exits 0; the data files
      hold the same items in the same files as stock's;
  (7) a rank failing in the middle of a ckptkit save (sync and async): the save
      raises CheckpointException on every rank, nothing hangs, and no `.metadata`
      or `metadata.json` is left.

Each scenario spawns its ranks once (megatron_fixtures' worker, with its
fixture-only CPU shim for Megatron's CUDA bookkeeping) and records named checks
per rank; the tests below assert them. Every spawn has a timeout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("megatron.core")
import megatron_fixtures as mf  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

_SPAWN_TIMEOUT_S = int(os.environ.get("CKPTKIT_TEST_SPAWN_TIMEOUT_S", "120"))
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ----------------------------------------------------------------------------
# Spawning with a timeout
# ----------------------------------------------------------------------------
def _spawn(world: int, fn: Callable, spec: Any, timeout: float = _SPAWN_TIMEOUT_S) -> None:
    """Runs fn(spec) on `world` gloo ranks; fails (never hangs) after `timeout` s, naming each
    rank's check in progress, with every rank's Python stacks (faulthandler, SIGUSR1) in the
    captured stderr."""
    ctx = mp.start_processes(mf._worker, args=(world, mf._free_port(), fn, spec), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            alive = [p.pid for p in ctx.processes if p.is_alive()]
            # The ranks and their forked writers (Megatron's TemporalAsyncCaller), which
            # inherit the faulthandler registration.
            pids = alive + [c for pid in alive for c in _child_pids(pid)]
            for pid in pids:
                print(f"== stacks of pid {pid} (rank or writer; children {_child_pids(pid)})", file=sys.stderr,
                      flush=True)
                if os.environ.get("CKPTKIT_TEST_GDB"):  # native stacks first (a local debugging aid)
                    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt"],
                                   stdout=sys.stderr, stderr=subprocess.STDOUT, timeout=120, check=False)
                try:
                    os.kill(pid, signal.SIGUSR1)
                except ProcessLookupError:
                    continue
                time.sleep(1)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            where = []
            for r in range(world):
                try:
                    with open(_progress_path(spec, r)) as f:
                        where.append(f"rank {r}: {f.read()}")
                except OSError:
                    where.append(f"rank {r}: no check started")
            pytest.fail(f"{fn.__name__} on {world} ranks did not finish in {timeout} s (hang); "
                        + "; ".join(where))


def _progress_path(spec: Any, rank: int) -> str:
    return os.path.join(spec.root, f"progress_{spec.scenario}_{rank}.txt")


@dataclasses.dataclass
class Spec:
    root: str
    scenario: str


class Checks:
    """Named checks of one rank: each records None (passed) or the failure text."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.results: Dict[str, Optional[str]] = {}

    def run(self, name: str, fn: Callable[[], None]) -> None:
        with open(_progress_path(self.spec, dist.get_rank()), "w") as f:
            f.write(f"in {name} (checks before it: {', '.join(self.results) or 'none'})")
        t0 = time.monotonic()
        try:
            fn()
            self.results[name] = None
        except BaseException as e:  # noqa: BLE001 - CheckpointException is a BaseException
            self.results[name] = "".join(traceback.format_exception(e))[-6000:]
            # At once, not only in the report: a check that fails on one rank alone leaves the
            # others in its collectives, and the spawn's timeout message then needs this.
            print(f"rank {dist.get_rank()}: check {name} failed:\n{self.results[name]}", file=sys.stderr,
                  flush=True)
        if os.environ.get("CKPTKIT_TEST_TIMES"):
            print(f"rank {dist.get_rank()}: {name}: {time.monotonic() - t0:.2f} s", flush=True)

    def write(self) -> None:
        with open(_progress_path(self.spec, dist.get_rank()), "w") as f:
            f.write(f"after all {len(self.results)} checks (the final barrier or teardown)")
        path = os.path.join(self.spec.root, f"report_{self.spec.scenario}_{dist.get_rank()}.json")
        with open(path, "w") as f:
            json.dump(self.results, f)


def _reports(root: str, scenario: str, world: int) -> Dict[str, List[Optional[str]]]:
    out: Dict[str, List[Optional[str]]] = {}
    for r in range(world):
        with open(os.path.join(root, f"report_{scenario}_{r}.json")) as f:
            for k, v in json.load(f).items():
                out.setdefault(k, []).append(v)
    return out


# ----------------------------------------------------------------------------
# State dict: valid for any world size 1..4
# ----------------------------------------------------------------------------
_OBJS = 4  # ShardedObjects "obj.meta" with global shape (4,), every rank holds all


def _obj_value(i: int) -> dict:
    return {"i": i, "name": f"obj{i}", "t": torch.arange(i + 1, dtype=torch.int16), "nested": [i, (i, "x")]}


def _make_sd(fill: bool) -> dict:
    """Sharded state dict of this rank in a world of W ranks. fill=False: zero
    tensors and no object data (a load request of the same layout)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    W, r = dist.get_world_size(), dist.get_rank()
    tp = 2 if W % 2 == 0 else 1
    tp_rank, dp_rank = r % tp, r // tp

    def val(key, shape, dtype):
        return mf.global_tensor(key, shape, dtype) if fill else torch.zeros(shape, dtype=dtype)

    def chunk(t, axis, i, n):
        return torch.chunk(t, n, dim=axis)[i].clone()

    sd: Dict[str, Any] = {}
    sd["layer.w_rows"] = ShardedTensor.from_rank_offsets(
        "layer.w_rows", chunk(val("layer.w_rows", (12, 5), torch.float32), 0, r, W), (0, r, W), replica_id=0)
    sd["layer.w_cols"] = ShardedTensor.from_rank_offsets(
        "layer.w_cols", chunk(val("layer.w_cols", (3, 12), torch.bfloat16), 1, r, W), (1, r, W), replica_id=0)
    sd["layer.counts"] = ShardedTensor.from_rank_offsets(
        "layer.counts", chunk(val("layer.counts", (12,), torch.float64), 0, r, W).to(torch.int64) * 1000,
        (0, r, W), replica_id=0)
    # Stacked layers: prepended axis 0 (layer index), sharded along global axis 2.
    full = val("stack.w", (2, 6, 12), torch.float32)
    sd["stack"] = [
        ShardedTensor.from_rank_offsets("stack.w", chunk(full[i], 1, r, W), (0, i, 2), (2, r, W),
                                        replica_id=0, prepend_axis_num=1)
        for i in range(2)
    ]
    # TP x DP: split over TP, replicated over DP (replica_id (0, 0, dp_rank)).
    sd["tp.w"] = ShardedTensor.from_rank_offsets(
        "tp.w", chunk(val("tp.w", (8, 6), torch.float16), 0, tp_rank, tp), (0, tp_rank, tp),
        replica_id=(0, 0, dp_rank))
    # Fully replicated: the main replica is rank 0's.
    sd["norm.w"] = ShardedTensor.from_rank_offsets("norm.w", val("norm.w", (7,), torch.float32), replica_id=r)
    sd["objs"] = [
        ShardedObject("obj.meta", _obj_value(i) if fill else None, (_OBJS,), (i,),
                      replica_id=0 if i % W == r else 1)
        for i in range(_OBJS)
    ]
    return sd


_COMMON = {"iteration": 7, "args": {"lr": 0.25, "name": "ckptkit"}}


def _full_sd(fill: bool) -> dict:
    sd = _make_sd(fill)
    if fill:
        sd.update(_COMMON)
    return sd


def _equal(got: Any, want: Any, path: str, errors: List[str]) -> None:
    if isinstance(want, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            errors.append(f"{path}: got {type(got).__name__}, want a tensor")
        elif got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            errors.append(f"{path}: got {got.dtype}{tuple(got.shape)}, want {want.dtype}{tuple(want.shape)}")
        elif not torch.equal(got.view(torch.uint8) if got.numel() else got,
                             want.view(torch.uint8) if want.numel() else want):
            errors.append(f"{path}: values differ")
    elif isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            errors.append(f"{path}: keys {sorted(got) if isinstance(got, dict) else type(got)} != {sorted(want)}")
            return
        for k in want:
            _equal(got[k], want[k], f"{path}.{k}", errors)
    elif isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)) or len(got) != len(want):
            errors.append(f"{path}: got {got!r}, want {want!r}")
            return
        for i, (g, w) in enumerate(zip(got, want)):
            _equal(g, w, f"{path}[{i}]", errors)
    elif got != want:
        errors.append(f"{path}: got {got!r}, want {want!r}")


def _expected() -> dict:
    """The loaded form of _full_sd(True): tensors and object data, this rank's shards."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    def unwrap(x):
        if isinstance(x, dict):
            return {k: unwrap(v) for k, v in x.items()}
        if isinstance(x, list):
            return [unwrap(v) for v in x]
        if isinstance(x, (ShardedTensor, ShardedObject)):
            return x.data
        return x

    return unwrap(_full_sd(True))


# ----------------------------------------------------------------------------
# Save / load through Megatron's entry points
# ----------------------------------------------------------------------------
def _fresh_dir(path: str) -> str:
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    dist.barrier()
    return path


def _save(sd: dict, path: str, strategy: Any, async_save: bool = False, fresh: bool = True) -> None:
    """dist_checkpointing.save; async requests run through Megatron's AsyncCallsQueue
    (TemporalAsyncCaller: the write runs in a forked process)."""
    import inspect

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

    kwargs = dict(sharded_strategy=strategy, async_sharded_save=async_save)
    if "async_strategy" in inspect.signature(dist_checkpointing.save).parameters:
        kwargs["async_strategy"] = "mcore"  # megatron-core >= 0.17 defaults to nvrx
    req = dist_checkpointing.save(sd, _fresh_dir(path) if fresh else path, **kwargs)
    if async_save:
        assert req is not None, "async save returned no AsyncRequest"
        q = AsyncCallsQueue(persistent=False)
        q.schedule_async_request(req)
        q.maybe_finalize_async_calls(blocking=True)
        q.close()
    else:
        assert req is None


def _assert_within(t0: float, seconds: float) -> None:
    took = time.monotonic() - t0
    assert took < seconds, f"took {took:.1f} s"


def _child_pids(pid: Any = "self") -> List[int]:
    """The child processes of `pid` (this process by default): every thread's /proc
    children list."""
    out: List[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(p) for p in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            # The thread exited after listdir (the writer thread of an earlier save, joined
            # but not yet gone from /proc): it has no children left to list.
            pass
    return out


def _save_in_process(sd: dict, path: str, strategy: Any, mutate: bool = False, fresh: bool = True) -> None:
    """An async dist_checkpointing.save run by ckptkit.megatron.AsyncCallsQueue in
    this process. mutate: every tensor of `sd` changes right after scheduling (the
    next training step); the checkpoint must hold the values of the call. No
    process is started (checked)."""
    import inspect

    import ckptkit.megatron
    from megatron.core import dist_checkpointing

    kwargs = dict(sharded_strategy=strategy, async_sharded_save=True)
    if "async_strategy" in inspect.signature(dist_checkpointing.save).parameters:
        kwargs["async_strategy"] = "mcore"
    children = _child_pids()
    req = dist_checkpointing.save(sd, _fresh_dir(path) if fresh else path, **kwargs)
    q = ckptkit.megatron.AsyncCallsQueue()
    q.schedule_async_request(req)
    if mutate:
        from megatron.core.dist_checkpointing.dict_utils import nested_values
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        for v in nested_values(sd):
            if isinstance(v, ShardedTensor):
                v.data.add_(1)
    assert q.get_num_unfinalized_calls() == 1
    # New children only: the list's order follows /proc/self/task, and a child of an earlier
    # check may exit meanwhile. (A spurious failure here on one rank alone sent that rank to
    # the next check's collectives while the other waited in this one's: a hang.)
    started = set(_child_pids()) - set(children)
    assert not started, f"a process was started: {sorted(started)} (before: {children})"
    q.maybe_finalize_async_calls(blocking=True)
    assert q.get_num_unfinalized_calls() == 0


def _load(sd: dict, path: str, strategy: Any) -> dict:
    from megatron.core import dist_checkpointing

    return dist_checkpointing.load(sd, path, sharded_strategy=strategy)


def _check_load(path: str, strategy_factory: Callable[[], Any]) -> Callable[[], None]:
    def check():
        got = _load(_full_sd(False), path, strategy_factory())
        errors: List[str] = []
        want = _expected()
        _equal({k: got[k] for k in want if k in got}, want, path, errors)
        missing = sorted(set(want) - set(got))
        assert not missing and not errors, f"rank {dist.get_rank()}: missing {missing}; " + "; ".join(errors[:10])

    return check


def _stock_save():
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    return TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=2)


def _ck_save():
    import ckptkit.megatron

    return ckptkit.megatron.TorchDistSaveStrategy(thread_count=2)


def _ck_load():
    import ckptkit.megatron

    return ckptkit.megatron.TorchDistLoadStrategy()


def _stock_load():
    return None  # dist_checkpointing.load's default: Megatron's TorchDistLoadShardedStrategy


def _fps(strategy):
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    return FullyParallelSaveStrategyWrapper(strategy, dist.group.WORLD, False)


def _fps_load(strategy):
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper

    # 'gather_object': the default 'broadcast' exchange moves tensors to CUDA.
    return FullyParallelLoadStrategyWrapper(strategy, dist.group.WORLD, exchange_algo="gather_object")


def _d(spec: Spec, name: str) -> str:
    return os.path.join(spec.root, name)


# ----------------------------------------------------------------------------
# Scenario bodies (module-level: run in spawned ranks)
# ----------------------------------------------------------------------------
def _failing_writer(real):
    def write(directory, prefix, files):
        real(directory, prefix, files)  # this rank's data files land ...
        raise OSError(28, "injected: no space left on device")  # ... then the write fails

    return write


def _killing_writer(real):
    def write(directory, prefix, files):
        os.kill(os.getpid(), signal.SIGKILL)  # the forked write process dies mid-save

    return write


def _raising(message: str):
    def fail(*args, **kwargs):
        raise RuntimeError(message)

    return fail


def _expect_failure_everywhere(path: str, run: Callable[[], None], published_before: bool = False,
                               want: Optional[str] = None) -> Callable[[], None]:
    def check():
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            run()
        except CheckpointException as e:
            if dist.get_rank() == 0:  # the coordinator holds the failure details
                expect = want or ("no space left on device" if published_before else "injected")
                assert list(e.failures) == [1] and expect in str(e).lower(), str(e)
        else:
            raise AssertionError(f"rank {dist.get_rank()}: save did not raise")
        dist.barrier()
        if not published_before:
            left = sorted(os.listdir(path))
            assert ".metadata" not in left and "metadata.json" not in left, left

    return check


def _failed_overwrite(spec: Spec) -> None:
    """A checkpoint, then a save over it in which rank 1's disk fills up (the C++
    engine's fault Env, async): every rank raises, the old checkpoint still loads
    with stock Megatron and holds only its own files; then an overwrite that
    succeeds replaces it whole (Megatron's common.pt and metadata.json kept)."""
    from ckptkit import _core

    path = _d(spec, "overwrite")
    _save(_full_sd(True), path, _ck_save())
    before = sorted(os.listdir(path))
    if dist.get_rank() == 1:
        _core._set_write_faults(space_limit=500)
    try:
        _expect_failure_everywhere(
            path, lambda: _save(_full_sd(True), path, _ck_save(), async_save=True, fresh=False),
            published_before=True)()
    finally:
        _core._clear_write_faults()
    assert sorted(os.listdir(path)) == before, (before, sorted(os.listdir(path)))
    _check_load(path, _stock_load)()
    dist.barrier()
    _save(_full_sd(True), path, _ck_save(), fresh=False)
    assert sorted(os.listdir(path)) == before, (before, sorted(os.listdir(path)))
    assert not os.path.exists(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.ckptkit-shared"))
    _check_load(path, _stock_load)()


def _plan_reuse(spec: Spec) -> None:
    """One strategy (cached_metadata, on by default), three saves of the same
    structure: the first plans with collectives, the second validates the cached
    plan, the third plans with none; each checkpoint loads with stock Megatron and
    the third's files equal the first's."""
    import ckptkit.megatron as km

    strategy = _ck_save()
    assert strategy.use_cached_ckpt_structure
    real = km.save_state_dict_async_plan
    names = ("all_gather_object", "gather_object", "scatter_object_list", "broadcast_object_list", "all_reduce",
             "all_gather", "broadcast", "barrier", "reduce_scatter")
    counts: List[int] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        n = [0]
        saved = {name: getattr(dist, name) for name in names}

        def wrap(f: Callable) -> Callable:
            def call(*a: Any, **k: Any) -> Any:
                n[0] += 1
                return f(*a, **k)
            return call

        for name, f in saved.items():
            setattr(dist, name, wrap(f))
        try:
            return real(*args, **kwargs)
        finally:
            for name, f in saved.items():
                setattr(dist, name, f)
            counts.append(n[0])

    km.save_state_dict_async_plan = counting
    try:
        for i in range(3):
            _save(_full_sd(True), _d(spec, f"reuse{i}"), strategy, async_save=(i == 2))
            _check_load(_d(spec, f"reuse{i}"), _stock_load)()
    finally:
        km.save_state_dict_async_plan = real
    assert counts[0] > 0 and counts[2] == 0, counts
    assert strategy.validated_cache_reuse
    first, third = _d(spec, "reuse0"), _d(spec, "reuse2")
    names0 = sorted(f for f in os.listdir(first) if f.endswith(".distcp"))
    assert names0 == sorted(f for f in os.listdir(third) if f.endswith(".distcp"))
    for f in names0:
        with open(os.path.join(first, f), "rb") as a, open(os.path.join(third, f), "rb") as b:
            assert a.read() == b.read(), f


def _nothing_to_write(spec: Spec) -> None:
    """Rank 1 holds only replicas (replica_id 1): it has no data file to write,
    sync or async, and the checkpoint is still complete."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    def sd(fill):
        t = mf.global_tensor("only.main", (5, 3), torch.float32) if fill else torch.zeros(5, 3)
        return {"only": ShardedTensor.from_rank_offsets("only.main", t, replica_id=dist.get_rank())}

    for async_save in (False, True):
        path = _d(spec, f"nothing_{int(async_save)}")
        _save(sd(True), path, _ck_save(), async_save=async_save)
        files = sorted(f for f in os.listdir(path) if f.endswith(".distcp"))
        assert files == ["__0_0.distcp"], files
        got = _load(sd(False), path, _stock_load())
        assert torch.equal(got["only"], sd(True)["only"].data)


def _pickled_request(spec: Spec) -> None:
    """The AsyncRequest's async_fn / args / preload_fn survive pickling (what
    PersistentAsyncCaller does to hand them to its spawned worker); run the
    unpickled copy here as that worker would, then finalize with the original."""
    from megatron.core import dist_checkpointing

    path = _fresh_dir(_d(spec, "pickled"))
    kwargs = {}
    import inspect

    if "async_strategy" in inspect.signature(dist_checkpointing.save).parameters:
        kwargs["async_strategy"] = "mcore"
    req = dist_checkpointing.save(_full_sd(True), path, sharded_strategy=_ck_save(), async_sharded_save=True,
                                  **kwargs)
    fn, args, preload = pickle.loads(pickle.dumps((req.async_fn, list(req.async_fn_args), req.preload_fn)))
    args[1] = preload()
    fn(*args)
    dist.barrier()
    for finalize in req.finalize_fns:
        finalize()
    _check_load(path, _stock_load)()


def scenario_world2(spec: Spec) -> None:
    """2 ranks: ckptkit save (to be loaded by 4 ranks), then injected failures."""
    import ckptkit.megatron

    checks = Checks(spec)
    checks.run("save_ck_w2", lambda: _save(_full_sd(True), _d(spec, "w2_ck"), _ck_save()))
    checks.run("load_w2_ck_stock_same_world", _check_load(_d(spec, "w2_ck"), _stock_load))

    real = ckptkit.megatron._write_dcp_files
    split, stage = ckptkit.megatron._megatron_split, ckptkit.dcp._cpu_contiguous
    if dist.get_rank() == 1:
        ckptkit.megatron._write_dcp_files = _failing_writer(real)
    try:
        path = _d(spec, "fail_sync")
        checks.run("failure_sync", _expect_failure_everywhere(
            path, lambda: _save(_full_sd(True), path, _ck_save())))
        path_a = _d(spec, "fail_async")
        checks.run("failure_async", _expect_failure_everywhere(
            path_a, lambda: _save(_full_sd(True), path_a, _ck_save(), async_save=True)))
        # The write process of rank 1 (Megatron's forked worker) killed outright.
        if dist.get_rank() == 1:
            ckptkit.megatron._write_dcp_files = _killing_writer(real)
        path_k = _d(spec, "fail_killed_writer")
        t0 = time.monotonic()
        checks.run("failure_killed_writer", _expect_failure_everywhere(
            path_k, lambda: _save(_full_sd(True), path_k, _ck_save(), async_save=True),
            want="did the async process die"))
        checks.run("failure_killed_writer_bounded", lambda: _assert_within(t0, 60))
        if dist.get_rank() == 1:
            ckptkit.megatron._write_dcp_files = _failing_writer(real)
        path_i = _d(spec, "fail_in_process")
        checks.run("failure_in_process_queue", _expect_failure_everywhere(
            path_i, lambda: _save_in_process(_full_sd(True), path_i, _ck_save())))
        # A failure while planning the files (prepare_write_data) or staging tensors
        # (the preload step) on rank 1 is reported through finalize the same way.
        ckptkit.megatron._write_dcp_files = real
        if dist.get_rank() == 1:
            ckptkit.megatron._megatron_split = _raising("injected: planning")
        path_p = _d(spec, "fail_prepare")
        checks.run("failure_prepare", _expect_failure_everywhere(
            path_p, lambda: _save(_full_sd(True), path_p, _ck_save())))
        ckptkit.megatron._megatron_split = split
        if dist.get_rank() == 1:
            ckptkit.dcp._cpu_contiguous = _raising("injected: staging")
        path_s = _d(spec, "fail_staging")
        checks.run("failure_staging", _expect_failure_everywhere(
            path_s, lambda: _save(_full_sd(True), path_s, _ck_save(), async_save=True)))
    finally:
        ckptkit.megatron._write_dcp_files = real
        ckptkit.megatron._megatron_split = split
        ckptkit.dcp._cpu_contiguous = stage
    # ckptkit.megatron.AsyncCallsQueue: the write in this process, the values of the call.
    checks.run("in_process_queue_holds_values_of_the_call", lambda: (
        _save_in_process(_full_sd(True), _d(spec, "in_process"), _ck_save(), mutate=True),
        _check_load(_d(spec, "in_process"), _stock_load)()))
    checks.run("in_process_queue_fps", lambda: (
        _save_in_process(_full_sd(True), _d(spec, "in_process_fps"), _fps(_ck_save()), mutate=True),
        _check_load(_d(spec, "in_process_fps"), _stock_load)()))
    checks.run("failed_overwrite_keeps_old", lambda: _failed_overwrite(spec))
    checks.run("plan_reuse_skips_planning_collectives", lambda: _plan_reuse(spec))
    checks.run("rank_with_nothing_to_write", lambda: _nothing_to_write(spec))
    checks.run("async_request_pickled_like_persistent_worker", lambda: _pickled_request(spec))
    # The strategy still works after a failed save, over the failed folder.
    checks.run("save_after_failure", lambda: (_save(_full_sd(True), _d(spec, "fail_sync"), _ck_save()),
                                              _check_load(_d(spec, "fail_sync"), _stock_load)()))
    checks.write()


def _gpt_spec(root: str, seed: int):
    return mf.GPTSpec(root=root, tp=2, pp=1, num_layers=2, hidden=32, heads=4, groups=2, ffn=64, vocab=64,
                      seq=16, optim=None, fully_parallel=False, seed=seed)


def _gpt_roundtrip(path: str, save_strategy: Callable, load_strategy: Callable) -> Callable[[], None]:
    def check():
        _, model = mf.build_gpt(_gpt_spec(path, seed=11))
        _save(model.sharded_state_dict(), path, save_strategy())
        _, target = mf.build_gpt(_gpt_spec(path, seed=12))
        want = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor) and "_extra_state" not in k}
        before = target.state_dict()
        assert any(not torch.equal(before[k], v) for k, v in want.items()), "target equals source before load"
        loaded = _load(target.sharded_state_dict(), path, load_strategy())
        target.load_state_dict(loaded)
        after = target.state_dict()
        bad = [k for k, v in want.items() if not torch.equal(after[k], v)]
        assert not bad, f"rank {dist.get_rank()}: GPT tensors differ after load: {bad}"

    return check


def scenario_world4(spec: Spec) -> None:
    """4 ranks: load the 2-rank save; save stock / ckptkit / async / fully parallel;
    load each with both strategies; GPTModel both ways."""
    import ckptkit.megatron
    from megatron.core.dist_checkpointing import serialization

    mf.init_parallel(2, 1)
    checks = Checks(spec)
    checks.run("load_w2_ck_stock_w4", _check_load(_d(spec, "w2_ck"), _stock_load))
    checks.run("load_w2_ck_ck_w4", _check_load(_d(spec, "w2_ck"), _ck_load))

    saves = {
        "w4_stock": lambda p: _save(_full_sd(True), p, _stock_save()),
        "w4_ck": lambda p: _save(_full_sd(True), p, _ck_save()),
        "w4_ck_async": lambda p: _save(_full_sd(True), p, _ck_save(), async_save=True),
        "w4_ck_fps": lambda p: _save(_full_sd(True), p, _fps(_ck_save())),
        "w4_ck_fps_async": lambda p: _save(_full_sd(True), p, _fps(_ck_save()), async_save=True),
    }
    for name, save in saves.items():
        checks.run(f"save_{name}", lambda name=name, save=save: save(_d(spec, name)))
    for name in saves:
        checks.run(f"load_{name}_stock", _check_load(_d(spec, name), _stock_load))
        checks.run(f"load_{name}_ck", _check_load(_d(spec, name), _ck_load))
    checks.run("fpsload_w4_stock_ck", _check_load(_d(spec, "w4_stock"), lambda: _fps_load(_ck_load())))

    def metadata_matches():
        from megatron.core.dist_checkpointing.strategies.torch import TorchDistLoadShardedStrategy

        for name in ("w4_ck", "w4_stock"):
            path = _d(spec, name)
            ours = ckptkit.megatron.TorchDistLoadStrategy().load_sharded_metadata(path)
            theirs = TorchDistLoadShardedStrategy().load_sharded_metadata(path)
            assert sorted(ours) == sorted(theirs), (sorted(ours), sorted(theirs))
            for k, v in theirs.items():
                assert type(ours[k]) is type(v) and getattr(ours[k], "global_shape", None) == getattr(
                    v, "global_shape", None) and getattr(ours[k], "dtype", None) == getattr(v, "dtype", None), k
            tm = ckptkit.megatron.TorchDistLoadStrategy().load_tensors_metadata(path)
            assert sorted(tm) == sorted(TorchDistLoadShardedStrategy().load_tensors_metadata(path))
            assert {"layer.w_rows", "stack.w", "tp.w", "norm.w"} <= set(tm), sorted(tm)
            assert tm["stack.w"].global_shape == (2, 6, 12)
            # The whole-checkpoint helper goes through the strategy as well.
            assert sorted(serialization.load_sharded_metadata(path, ckptkit.megatron.TorchDistLoadStrategy())) \
                == sorted(theirs)

    checks.run("sharded_metadata_matches_stock", metadata_matches)
    checks.run("gpt_ck_save_stock_load", _gpt_roundtrip(_d(spec, "gpt_ck"), _ck_save, _stock_load))
    checks.run("gpt_stock_save_ck_load", _gpt_roundtrip(_d(spec, "gpt_stock"), _stock_save, _ck_load))
    checks.write()


def scenario_world1(spec: Spec) -> None:
    """1 rank: load what 4 ranks saved (stock and ckptkit) with both strategies."""
    checks = Checks(spec)
    for name in ("w4_stock", "w4_ck", "w4_ck_async", "w4_ck_fps"):
        checks.run(f"load_{name}_stock_w1", _check_load(_d(spec, name), _stock_load))
        checks.run(f"load_{name}_ck_w1", _check_load(_d(spec, name), _ck_load))
    checks.write()


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("mc_strategy"))
    out = {}
    for scenario, world in (("world2", 2), ("world4", 4), ("world1", 1)):
        _spawn(world, globals()[f"scenario_{scenario}"], Spec(root=root, scenario=scenario))
        out[scenario] = _reports(root, scenario, world)
    return root, out


def _assert_checks(runs, scenario: str, prefix: str) -> None:
    _, reports = runs
    names = [n for n in reports[scenario] if n.startswith(prefix)]
    assert names, f"no check {prefix}* in {scenario}"
    failed = {n: [e for e in reports[scenario][n] if e] for n in names}
    failed = {n: e for n, e in failed.items() if e}
    assert not failed, "\n".join(f"--- {n} ---\n{e[0]}" for n, e in failed.items())


def test_ckptkit_save_loads_with_stock_megatron(runs):
    _assert_checks(runs, "world2", "save_ck_w2")
    _assert_checks(runs, "world2", "load_w2_ck_stock_same_world")
    for name in ("w4_ck", "w4_ck_async", "w4_ck_fps", "w4_ck_fps_async"):
        _assert_checks(runs, "world4", f"save_{name}")
        _assert_checks(runs, "world4", f"load_{name}_stock")


def test_stock_save_loads_with_ckptkit(runs):
    _assert_checks(runs, "world4", "save_w4_stock")
    _assert_checks(runs, "world4", "load_w4_stock_ck")


def test_ckptkit_roundtrip_same_world(runs):
    for name in ("w4_ck", "w4_ck_async", "w4_ck_fps", "w4_ck_fps_async"):
        _assert_checks(runs, "world4", f"load_{name}_ck")


def test_other_world_size_loads_both_ways(runs):
    _assert_checks(runs, "world4", "load_w2_ck_")  # 2 -> 4
    _assert_checks(runs, "world1", "load_")  # 4 -> 1


def test_async_save_publishes_complete_checkpoint(runs):
    root, _ = runs
    _assert_checks(runs, "world4", "save_w4_ck_async")
    for name in ("w4_ck_async", "w4_ck_fps_async"):
        files = set(os.listdir(os.path.join(root, name)))
        # common.pt: megatron-core < 0.17 (later versions keep the common state in the DCP files)
        want = {".metadata", "metadata.json"} | ({"common.pt"} & set(os.listdir(os.path.join(root, "w4_stock"))))
        assert want <= files, files
        assert not [f for f in files if f.endswith(".tmp")], files


def test_fully_parallel_wrappers(runs):
    _assert_checks(runs, "world4", "save_w4_ck_fps")
    _assert_checks(runs, "world4", "load_w4_ck_fps")
    _assert_checks(runs, "world4", "fpsload_w4_stock_ck")


def test_rank_with_nothing_to_write(runs):
    _assert_checks(runs, "world2", "rank_with_nothing_to_write")


def test_async_request_is_picklable(runs):
    _assert_checks(runs, "world2", "async_request_pickled_like_persistent_worker")


def test_sharded_metadata_matches_stock(runs):
    _assert_checks(runs, "world4", "sharded_metadata_matches_stock")


def test_gpt_model_both_ways(runs):
    _assert_checks(runs, "world4", "gpt_")


def test_failing_rank_raises_everywhere_and_publishes_nothing(runs):
    root, _ = runs
    _assert_checks(runs, "world2", "failure_sync")
    _assert_checks(runs, "world2", "failure_async")
    _assert_checks(runs, "world2", "failure_prepare")
    _assert_checks(runs, "world2", "failure_staging")
    _assert_checks(runs, "world2", "failure_in_process_queue")
    _assert_checks(runs, "world2", "failure_killed_writer")  # prefix: also _bounded (within 60 s)
    for name in ("fail_sync", "fail_async", "fail_prepare", "fail_staging", "fail_in_process", "fail_killed_writer"):
        assert os.path.isdir(os.path.join(root, name))  # the save did start there
    assert not os.path.exists(os.path.join(root, "fail_async", ".metadata"))
    assert not os.path.exists(os.path.join(root, "fail_in_process", ".metadata"))
    assert not os.path.exists(os.path.join(root, "fail_killed_writer", ".metadata"))
    _assert_checks(runs, "world2", "save_after_failure")


def test_in_process_async_queue(runs):
    """ckptkit.megatron.AsyncCallsQueue: no worker process; the tensors changed right
    after scheduling and the checkpoint (stock megatron-core loads it) holds the
    values of the call; also under the fully parallel wrapper."""
    _assert_checks(runs, "world2", "in_process_queue_holds_values_of_the_call")
    _assert_checks(runs, "world2", "in_process_queue_fps")


def test_in_process_queue_refuses_other_requests():
    import ckptkit.megatron
    from megatron.core.dist_checkpointing.strategies.async_utils import AsyncRequest

    q = ckptkit.megatron.AsyncCallsQueue()
    with pytest.raises(ValueError, match="TorchDistSaveStrategy"):
        q.schedule_async_request(AsyncRequest(print, ("x",), []))
    ran = []
    assert q.schedule_async_request(AsyncRequest(None, (), [lambda: ran.append(1)])) == 0
    assert q.maybe_finalize_async_calls(blocking=False, no_dist=True) == [0] and ran == [1]
    assert q.get_num_unfinalized_calls() == 0


def test_failed_overwrite_keeps_the_old_checkpoint(runs):
    _assert_checks(runs, "world2", "failed_overwrite_keeps_old")


def test_plan_reuse_skips_planning_collectives(runs):
    _assert_checks(runs, "world2", "plan_reuse_skips_planning_collectives")


def _layout(path: str) -> Dict[str, List[str]]:
    """data file -> the fqns of its items, in file order (from `.metadata`)."""
    with open(os.path.join(path, ".metadata"), "rb") as f:
        md = pickle.load(f)
    files: Dict[str, List[tuple]] = {}
    for idx, info in md.storage_data.items():
        off = tuple(idx.offset) if idx.offset is not None else None  # None: a bytes item
        files.setdefault(info.relative_path, []).append((info.offset, idx.fqn, off))
    return {k: [(fqn, off) for _, fqn, off in sorted(v)] for k, v in files.items()}


def test_files_match_stock_layout(runs):
    root, _ = runs
    stock = _layout(os.path.join(root, "w4_stock"))
    assert stock, "stock checkpoint has no data files"
    for name in ("w4_ck", "w4_ck_async"):
        assert _layout(os.path.join(root, name)) == stock, name
    data = sorted(f for f in os.listdir(os.path.join(root, "w4_stock")) if f.endswith(".distcp"))
    assert sorted(f for f in os.listdir(os.path.join(root, "w4_ck")) if f.endswith(".distcp")) == data
    for f in data:  # contiguous tensors: torch.save archives byte for byte
        with open(os.path.join(root, "w4_stock", f), "rb") as a, open(os.path.join(root, "w4_ck", f), "rb") as b:
            assert a.read() == b.read(), f


def test_metadata_matches_stock(runs):
    root, _ = runs

    def md(name):
        with open(os.path.join(root, name, ".metadata"), "rb") as f:
            m = pickle.load(f)
        return m

    stock = md("w4_stock")
    for name in ("w4_ck", "w4_ck_async"):
        ours = md(name)
        assert ours.state_dict_metadata == stock.state_dict_metadata, name
        assert ours.storage_data == stock.storage_data, name
        assert ours.planner_data == stock.planner_data, name
        assert getattr(ours, "mcore_data", None) == getattr(stock, "mcore_data", None), name
        assert getattr(ours, "all_local_plans", None) == getattr(stock, "all_local_plans", None), name
        assert ours.version == stock.version, name
        assert ours.storage_meta.checkpoint_id == os.path.join(root, name)
        for f in ("metadata.json", "common.pt"):  # written by Megatron itself on both sides
            if f == "common.pt" and not os.path.exists(os.path.join(root, "w4_stock", f)):
                continue  # megatron-core >= 0.17: the common state is a ShardedObject
            with open(os.path.join(root, "w4_stock", f), "rb") as a, open(os.path.join(root, name, f), "rb") as b:
                assert a.read() == b.read(), (name, f)


@pytest.fixture(scope="module")
def cli() -> str:
    for path in (os.environ.get("CKPTKIT_CLI"), os.path.join(_REPO, "build", "ckptkit"), shutil.which("ckptkit")):
        if path and os.access(path, os.X_OK):
            return path
    pytest.fail("ckptkit CLI not found: set CKPTKIT_CLI or build /work/main/build/ckptkit")


def _cli(cli: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_cli_verify_and_diff(runs, cli):
    root, _ = runs
    for name in ("w2_ck", "w4_ck", "w4_ck_async", "w4_ck_fps", "w4_ck_fps_async", "gpt_ck"):
        r = _cli(cli, "verify", os.path.join(root, name))
        assert r.returncode == 0, (name, r.stdout[-3000:], r.stderr[-3000:])
    for a, b in (("w4_stock", "w4_ck"), ("w4_stock", "w4_ck_async"), ("w4_stock", "w4_ck_fps"),
                 ("gpt_stock", "gpt_ck")):
        r = _cli(cli, "diff", os.path.join(root, a), os.path.join(root, b))
        assert r.returncode == 0, (a, b, r.stdout[-3000:], r.stderr[-3000:])
    # The diff can fail: a checkpoint of other values differs.
    r = _cli(cli, "diff", os.path.join(root, "w4_stock"), os.path.join(root, "w2_ck"))
    assert r.returncode == 0  # same global state saved by 2 and by 4 ranks
    r = _cli(cli, "diff", os.path.join(root, "gpt_stock"), os.path.join(root, "w4_ck"))
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr[-2000:])


def test_unsupported_options_raise():
    import ckptkit.megatron as km

    with pytest.raises(ValueError, match="thread_count"):
        km.TorchDistSaveStrategy(thread_count=0)
    assert km.TorchDistSaveStrategy().use_cached_ckpt_structure  # on by default
    assert not km.TorchDistSaveStrategy(cached_metadata=False).use_cached_ckpt_structure
    with pytest.raises(NotImplementedError, match="separation_hint"):
        km.TorchDistSaveStrategy(separation_hint="optimizer")
    # Checked before any collective: no process group needed.
    with pytest.raises(ValueError, match="async_strategy='mcore'"):
        km.TorchDistSaveStrategy().async_save({}, "/nonexistent", "nvrx")
    s = km.TorchDistSaveStrategy(thread_count=3)
    assert (s.backend, s.version, s.thread_count, s.keep_only_main_replica) == ("torch_dist", 1, 3, True)


def test_megatron_submodule_is_lazy():
    import ckptkit

    assert ckptkit.megatron.TorchDistSaveStrategy.__module__ == "ckptkit.megatron"
    code = "import sys, ckptkit; assert 'megatron' not in sys.modules and 'torch' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
