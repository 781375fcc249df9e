"""ckptkit.dcp.StorageWriter / StorageReader against stock torch 2.13 DCP.

Proves, with real torch on CPU (gloo ranks spawned by torch.multiprocessing):
  - save with ckptkit's writer -> load with stock FileSystemReader, same and
    different world size and sharding (2 ranks Shard(0) -> 1 rank full and
    3 ranks Shard(1); 4 ranks Shard(1) -> 2 ranks Shard(0));
  - save with stock FileSystemWriter -> load with ckptkit's reader, same;
  - every tensor (compared bit for bit) and every bytes object is equal;
  - `.metadata` written by ckptkit loads with stock torch and describes the
    same checkpoint as the stock one; data files are byte-identical to
    FileSystemWriter's for the same state and thread_count;
  - `ckptkit verify --deep` passes on what ckptkit wrote, and `ckptkit diff`
    sees no difference between stock- and ckptkit-written checkpoints;
  - a rank failing mid-save (full disk, I/O error, injected through the
    engine's fault Env) fails every rank, publishes nothing and leaves the
    old checkpoint loadable; overwriting switches the whole folder at once;
  - dtypes: every dtype DCP saves (bf16, float8, bool, complex, ...);
  - async_save, zstd-compressed stock items, and bad input.

Run with the extension on PYTHONPATH and CKPTKIT_CLI naming the CLI.
"""

from __future__ import annotations

import datetime
import io
import os
import tempfile
import time
import traceback
import warnings

import pytest

torch = pytest.importorskip("torch")
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import ckptkit  # noqa: E402
import ckptkit.dcp as kdcp  # noqa: E402
from dcp_fixtures import DCP_DTYPES, make_tensor  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning"),
    pytest.mark.filterwarnings("ignore:Detected an existing checkpoint:UserWarning"),
]


# ----------------------------------------------------------------------------
# State dicts (module-level so spawned ranks can rebuild them)
# ----------------------------------------------------------------------------

_SHARDED = {  # key -> (dtype, global shape, seed)
    "w": ("float32", (12, 6), 1),
    "bf": ("bfloat16", (6, 9), 2),
    "f8": ("float8_e4m3fn", (6, 4), 3),
    "flag": ("bool", (6, 3), 4),
    "cx": ("complex64", (6, 2), 5),  # Shard(1) over 3 ranks: 1, 1, 0 columns
    "odd": ("int32", (7, 5), 6),  # uneven in both dims
}
_OBJ = {"step": 7, "note": "hello", "blob": b"\x00\xff\x10" * 5}


def _global(key):
    dt, shape, seed = _SHARDED[key]
    return make_tensor(dt, shape, seed)


def _plain():
    return {"scalar": make_tensor("float64", (), 7), "rng": make_tensor("uint8", (16,), 8)}


def _state(world_size, dim, *, zeros=False):
    """The test state dict: DTensors Shard(dim) over world_size ranks (plain
    full tensors when dim is None), plain replicated tensors, bytes objects.
    zeros=True: same structure with zero values (a load target)."""
    sd = {}
    mesh = None
    if dim is not None:
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh("cpu", (world_size,))
    for k in _SHARDED:
        t = _global(k)
        if zeros:
            t = torch.zeros_like(t)
        if dim is not None:
            from torch.distributed.tensor import Shard, distribute_tensor
            t = distribute_tensor(t, mesh, [Shard(dim)], src_data_rank=None)
        sd[k] = t
    plain = _plain()
    sd["nested"] = {k: (torch.zeros_like(v) if zeros else v) for k, v in plain.items()}
    sd["obj"] = {"step": 0, "note": "", "blob": b""} if zeros else dict(_OBJ)
    return sd


def _bits(t):
    t = t.detach().contiguous().reshape(-1)
    return t.view(torch.uint8) if t.dtype != torch.uint8 else t


def _assert_same(got, want, where):
    assert got.dtype == want.dtype, f"{where}: dtype {got.dtype} != {want.dtype}"
    assert tuple(got.shape) == tuple(want.shape), f"{where}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(_bits(got), _bits(want)), f"{where}: values differ"


def _check_loaded(sd, world_size, dim, tag):
    """Asserts a loaded _state(world_size, dim) holds the saved values."""
    want = _state(world_size, dim)
    for k in _SHARDED:
        got, exp = sd[k], want[k]
        if dim is not None:
            got, exp = got.to_local(), exp.to_local()
        _assert_same(got, exp, f"{tag}: {k}")
    for k, v in want["nested"].items():
        _assert_same(sd["nested"][k], v, f"{tag}: nested.{k}")
    assert sd["obj"] == _OBJ, f"{tag}: obj {sd['obj']!r}"


# ----------------------------------------------------------------------------
# Multi-process harness
# ----------------------------------------------------------------------------


def _rank_main(rank, world_size, init_file, fn, args):
    import torch.distributed as dist

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=120))
        try:
            fn(rank, world_size, *args)
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except (Exception, KeyboardInterrupt):
        raise
    except BaseException as e:  # CheckpointException is a BaseException: forward it
        raise RuntimeError(f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def _spawn(world_size, fn, *args, timeout_s=150):
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="dcp_pg_") as tmp:
        ctx = mp.start_processes(_rank_main, args=(world_size, os.path.join(tmp, "init"), fn, args),
                                 nprocs=world_size, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=0.5):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{fn.__name__} on {world_size} ranks did not finish in {timeout_s}s")
        except mp.ProcessRaisedException as e:
            raise AssertionError(f"{fn.__name__}: rank {e.error_index} failed:\n{e}") from None
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)


def _save_both(rank, world_size, ours, stock, thread_count):
    """Each rank saves the same Shard(0) state with ckptkit's and torch's writer."""
    sd = _state(world_size, 0)
    dcp.save(sd, storage_writer=kdcp.StorageWriter(ours, thread_count=thread_count))
    dcp.save(sd, storage_writer=FileSystemWriter(stock, thread_count=thread_count, sync_files=False))


def _load_all(rank, world_size, ours, stock, dim=1):
    """Loads Shard(dim): ckptkit-written with stock reader and with ckptkit's reader,
    stock-written with ckptkit's reader."""
    for path, reader, tag in ((ours, FileSystemReader, "ours->stock"), (ours, kdcp.StorageReader, "ours->ours"),
                              (stock, kdcp.StorageReader, "stock->ours")):
        sd = _state(world_size, dim, zeros=True)
        dcp.load(sd, storage_reader=reader(path))
        _check_loaded(sd, world_size, dim, f"rank {rank} {tag}")


def _save_both_shard1(rank, world_size, ours, stock):
    sd = _state(world_size, 1)
    dcp.save(sd, storage_writer=kdcp.StorageWriter(ours))
    dcp.save(sd, storage_writer=FileSystemWriter(stock, sync_files=False))


# ----------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------


def _data_files(path):
    return sorted(f for f in os.listdir(path) if f.endswith(".distcp"))


def _verify_deep(run_cli, path):
    r = run_cli("verify", "--deep", path)
    assert r.returncode == 0, r
    assert r.stdout.startswith("OK"), r


@pytest.fixture(scope="module")
def two_rank_checkpoints(tmp_path_factory):
    """(ours, stock): the same Shard(0) state saved from 2 ranks, thread_count=2."""
    root = tmp_path_factory.mktemp("dcp_plugin")
    ours, stock = str(root / "ours"), str(root / "stock")
    _spawn(2, _save_both, ours, stock, 2)
    return ours, stock


def test_two_rank_save_matches_stock_files_and_metadata(two_rank_checkpoints):
    ours, stock = two_rank_checkpoints
    assert _data_files(ours) == _data_files(stock) == ["__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__1_1.distcp"]
    for f in _data_files(ours):
        with open(os.path.join(ours, f), "rb") as a, open(os.path.join(stock, f), "rb") as b:
            assert a.read() == b.read(), f"{f} differs from FileSystemWriter's"
    md_ours = FileSystemReader(ours).read_metadata()  # stock torch loads ckptkit's .metadata
    md_stock = FileSystemReader(stock).read_metadata()
    assert md_ours.state_dict_metadata == md_stock.state_dict_metadata
    assert md_ours.storage_data == md_stock.storage_data
    assert md_ours.planner_data == md_stock.planner_data
    assert md_ours.version == md_stock.version
    assert md_ours.storage_meta.checkpoint_id == ours


def test_two_rank_save_loads_into_one_rank_full(two_rank_checkpoints):
    ours, stock = two_rank_checkpoints
    for path, reader, tag in ((ours, FileSystemReader, "ours->stock"), (stock, kdcp.StorageReader, "stock->ours"),
                              (ours, kdcp.StorageReader, "ours->ours")):
        sd = _state(1, None, zeros=True)
        dcp.load(sd, storage_reader=reader(path), no_dist=True)
        _check_loaded(sd, 1, None, tag)


def test_two_rank_save_loads_into_three_ranks_shard1(two_rank_checkpoints):
    ours, stock = two_rank_checkpoints
    _spawn(3, _load_all, ours, stock)


def test_verify_deep_passes_on_ckptkit_output(two_rank_checkpoints, run_cli):
    _verify_deep(run_cli, two_rank_checkpoints[0])


def test_each_rank_records_a_checksum_manifest_that_verify_checks(two_rank_checkpoints, run_cli, tmp_path):
    """Each rank writes ckptkit-manifest__<rank>_.json (XXH3 of every item it
    stored); stock torch ignores it (the loads above); `verify --deep` hashes
    every item against it, and finds a data file that is well-formed but of
    another save, which no check of the format can."""
    import json
    import shutil

    ours, stock = two_rank_checkpoints
    assert sorted(f for f in os.listdir(ours) if f.startswith("ckptkit-manifest")) == [
        "ckptkit-manifest__0_.json", "ckptkit-manifest__1_.json"]
    md = FileSystemReader(ours).read_metadata()
    r = run_cli("verify", "--deep", "--json", ours)
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["manifests"] == 2 and doc["checksums"] == len(md.storage_data), doc
    stock_doc = json.loads(run_cli("verify", "--deep", "--json", stock).stdout)
    assert stock_doc["ok"] and stock_doc["manifests"] == 0 and stock_doc["checksums"] == 0, stock_doc

    # The same structure with other values, saved by ckptkit too; one of its data files swapped in.
    other = str(tmp_path / "other")
    _spawn(2, _save_scaled, other)
    mixed = str(tmp_path / "mixed")
    shutil.copytree(ours, mixed)
    shutil.copy(os.path.join(other, "__1_0.distcp"), os.path.join(mixed, "__1_0.distcp"))
    assert os.path.getsize(os.path.join(mixed, "__1_0.distcp")) == os.path.getsize(os.path.join(ours, "__1_0.distcp"))
    r = run_cli("verify", "--json", mixed)  # the format's own checks: nothing to see
    assert r.returncode == 0, r
    r = run_cli("verify", "--deep", "--json", mixed)
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and doc["problems"], doc
    assert all(p["file"] == "__1_0.distcp" and "differ from what was saved" in p["message"] for p in doc["problems"]), doc


def _save_scaled(rank, world_size, path):
    """_state with every float tensor's values changed (same shapes, dtypes and byte sizes)."""
    sd = _state(world_size, 0)
    for k in ("w", "bf", "cx", "odd"):
        sd[k] = sd[k] * 2
    sd["flag"] = sd["flag"].logical_not()
    sd["nested"] = {"scalar": sd["nested"]["scalar"] * 2, "rng": sd["nested"]["rng"] + 1}
    dcp.save(sd, storage_writer=kdcp.StorageWriter(path, thread_count=2))


def test_diff_sees_no_difference_between_stock_and_ckptkit_checkpoints(two_rank_checkpoints, run_cli):
    ours, stock = two_rank_checkpoints
    r = run_cli("diff", stock, ours, "--json")
    assert r.returncode == 0, r
    doc = __import__("json").loads(r.stdout)
    assert doc["identical"] is True, doc


def test_four_rank_save_loads_into_two_ranks_shard0(tmp_path, run_cli):
    # Shard(1) over 4 ranks (some ranks hold empty column ranges), thread_count 1.
    ours, stock = str(tmp_path / "ours"), str(tmp_path / "stock")
    _spawn(4, _save_both_shard1, ours, stock)
    assert _data_files(ours) == _data_files(stock) == [f"__{r}_0.distcp" for r in range(4)]
    for f in _data_files(ours):
        with open(os.path.join(ours, f), "rb") as a, open(os.path.join(stock, f), "rb") as b:
            assert a.read() == b.read(), f"{f} differs from FileSystemWriter's"
    _spawn(2, _load_all, ours, stock, 0)
    _verify_deep(run_cli, ours)


def _all_dtypes_state():
    sd = {f"t_{d}": make_tensor(d, (3, 4), seed=100 + i) for i, d in enumerate(DCP_DTYPES)}
    sd["empty"] = torch.zeros(0, 5)
    sd["scalar_bf16"] = make_tensor("bfloat16", (), 9)
    base = make_tensor("float32", (6, 4), 10)
    sd["row_view"] = base[2:4]  # a view of a larger storage
    sd["objs"] = {"list": [1, "two", 3.0], "bytes": b"\x01\x02", "none": None}
    return sd


def _zeros_like_state(sd):
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.zeros_like(v.contiguous())
        elif isinstance(v, dict):
            out[k] = {kk: None for kk in v}
        else:
            out[k] = None
    return out


def _assert_state_equal(got, want, tag):
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            _assert_same(got[k], v, f"{tag}: {k}")
        else:
            assert got[k] == v, f"{tag}: {k}: {got[k]!r} != {v!r}"


@pytest.mark.parametrize("thread_count", [1, 3])
def test_all_dtypes_round_trip_both_ways_and_byte_identical(tmp_path, run_cli, thread_count):
    sd = _all_dtypes_state()
    ours, stock = str(tmp_path / "ours"), str(tmp_path / "stock")
    dcp.save(sd, storage_writer=kdcp.StorageWriter(ours, thread_count=thread_count), no_dist=True)
    dcp.save(sd, storage_writer=FileSystemWriter(stock, thread_count=thread_count, sync_files=False), no_dist=True)
    assert _data_files(ours) == _data_files(stock) == [f"__0_{i}.distcp" for i in range(thread_count)]
    for f in _data_files(ours):
        with open(os.path.join(ours, f), "rb") as a, open(os.path.join(stock, f), "rb") as b:
            assert a.read() == b.read(), f"{f} differs from FileSystemWriter's"
    for path, reader, tag in ((ours, FileSystemReader, "ours->stock"), (stock, kdcp.StorageReader, "stock->ours")):
        got = _zeros_like_state(sd)
        dcp.load(got, storage_reader=reader(path), no_dist=True)
        _assert_state_equal(got, sd, tag)
    _verify_deep(run_cli, ours)


def test_permuted_and_noncontiguous_tensors_keep_their_values(tmp_path):
    base = make_tensor("bfloat16", (4, 6), 11)
    sd = {"t": base.t(), "strided": base[:, ::2], "neg": base.float().conj()}
    ours = str(tmp_path / "ours")
    dcp.save(sd, storage_writer=kdcp.StorageWriter(ours), no_dist=True)
    got = _zeros_like_state(sd)
    dcp.load(got, storage_reader=FileSystemReader(ours), no_dist=True)
    _assert_state_equal(got, {k: v.contiguous() for k, v in sd.items()}, "permuted")


def test_reader_fills_every_kind_of_destination(tmp_path, monkeypatch):
    # Whole contiguous targets are decoded in place; a transposed target, a
    # target of another dtype (DCP converts, as FileSystemReader's copy_ does)
    # and a target that is a view into a larger tensor go through a temporary.
    # A tiny batch size forces many batches and runs over several threads.
    monkeypatch.setattr(kdcp, "_READ_BATCH_BYTES", 200)
    monkeypatch.setattr(kdcp, "_READ_THREADS", 3)
    sd = {f"w{i}": make_tensor("float32", (8, 8), 200 + i) for i in range(12)}
    sd["bf"] = make_tensor("bfloat16", (5, 7), 230)
    stock = str(tmp_path / "stock")
    dcp.save(sd, storage_writer=FileSystemWriter(stock, thread_count=2, sync_files=False), no_dist=True)
    got = {k: torch.zeros_like(v) for k, v in sd.items()}
    transposed_storage = torch.zeros(8, 8)
    got["w1"] = transposed_storage.t()  # non-contiguous destination
    got["w2"] = torch.zeros(8, 8, dtype=torch.float64)  # other dtype
    big = torch.full((10, 8), -1.0)
    got["w3"] = big[1:9]  # a view: contiguous, with a storage offset
    dcp.load(got, storage_reader=kdcp.StorageReader(stock), no_dist=True)
    for k, v in sd.items():
        want = v.double() if k == "w2" else v
        _assert_same(got[k].contiguous(), want, k)
    _assert_same(transposed_storage.t().contiguous(), sd["w1"], "w1 storage")
    assert torch.equal(big[0], torch.full((8,), -1.0)) and torch.equal(big[9], torch.full((8,), -1.0))


def test_reader_decodes_zstd_compressed_stock_items(tmp_path):
    pytest.importorskip("zstandard")
    from torch.distributed.checkpoint._extension import ZStandard

    sd = {"w": make_tensor("float32", (64, 8), 12), "zeros": torch.zeros(256), "obj": {"k": "v" * 100}}
    stock = str(tmp_path / "stock")
    dcp.save(sd, storage_writer=FileSystemWriter(stock, _extensions=[ZStandard()], sync_files=False), no_dist=True)
    md = FileSystemReader(stock).read_metadata()
    assert any(info.transform_descriptors for info in md.storage_data.values())  # really compressed
    got = {"w": torch.zeros(64, 8), "zeros": torch.ones(256), "obj": {"k": None}}
    dcp.load(got, storage_reader=kdcp.StorageReader(stock), no_dist=True)
    _assert_state_equal(got, sd, "zstd")


def test_async_save_then_stock_load(tmp_path):
    sd = _all_dtypes_state()
    ours = str(tmp_path / "ours")
    fut = dcp.async_save(sd, storage_writer=kdcp.StorageWriter(ours, thread_count=2), no_dist=True)
    fut.result(timeout=120)
    got = _zeros_like_state(sd)
    dcp.load(got, storage_reader=FileSystemReader(ours), no_dist=True)
    _assert_state_equal(got, sd, "async")


def test_async_save_holds_the_values_of_the_moment_of_the_call(tmp_path):
    """async_save returns once every tensor is copied into the engine's staging
    pool: tensors changed right after it returns (in place, as an optimizer step
    does) do not reach the checkpoint, which holds the values of the call."""
    from torch.distributed.device_mesh import init_device_mesh  # noqa: F401 - DTensor below needs no mesh here

    g = torch.Generator().manual_seed(5)
    sd = {"w": torch.randn(256, 1024, generator=g), "b": torch.randn(1024, generator=g).to(torch.bfloat16),
          "step": torch.tensor(3), "mask": torch.rand(64, generator=g) > 0.5, "empty": torch.zeros(0, 4),
          "strided": torch.randn(32, 16, generator=g).t(), "obj": {"lr": 0.1}}
    want = {k: (v.clone() if isinstance(v, torch.Tensor) else dict(v)) for k, v in sd.items()}
    path = str(tmp_path / "a")
    fut = dcp.async_save(sd, storage_writer=kdcp.StorageWriter(path, thread_count=2), no_dist=True)
    for k in ("w", "b", "strided"):
        sd[k].add_(1)  # the next optimizer step, while the save is still running
    sd["step"].fill_(4)
    sd["mask"].logical_not_()
    sd["obj"]["lr"] = 0.2  # non-tensor values are shared, as with torch's own staging
    fut.result(timeout=120)
    got = {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else {"lr": None} for k, v in want.items()}
    dcp.load(got, storage_reader=FileSystemReader(path), no_dist=True)
    for k in ("w", "b", "step", "mask", "empty", "strided"):
        _assert_same(got[k], want[k], k)


def test_async_saves_stage_into_a_bounded_reused_pool(tmp_path):
    """Staging memory is one pool, reused: consecutive async saves of the same
    state stage into the same bytes (no growth), a save that does not fit waits
    for the previous one instead of allocating more, and a fixed staging_bytes
    smaller than one save is refused with a clear error."""
    g = torch.Generator().manual_seed(6)
    sd = {f"w{i}": torch.randn(512, 512, generator=g) for i in range(8)}  # 8 MiB
    need = _core_footprint(sd)
    futs = []
    for i in range(3):
        for t in sd.values():
            t.fill_(float(i))
        futs.append(dcp.async_save(sd, storage_writer=kdcp.StorageWriter(str(tmp_path / f"s{i}")), no_dist=True))
    for f in futs:
        f.result(timeout=120)
    pool = kdcp._POOL
    assert pool.capacity == need and pool.peak <= pool.capacity, (pool.capacity, pool.peak, need)
    for i in range(3):
        got = {k: torch.zeros(512, 512) for k in sd}
        dcp.load(got, storage_reader=FileSystemReader(str(tmp_path / f"s{i}")), no_dist=True)
        assert all(torch.all(v == float(i)) for v in got.values()), i
    with pytest.raises(ValueError, match="more than the pool's"):
        dcp.async_save(sd, storage_writer=kdcp.StorageWriter(str(tmp_path / "x"), staging_bytes=1 << 20),
                       no_dist=True).result(timeout=120)


def _async_save_dtensors(rank, world_size, path):
    """async_save of DTensors (Shard(0)) from 2 ranks through the staging pool:
    the staged copies keep each DTensor's placement, and values changed right
    after the call do not reach the checkpoint."""
    sd = _state(world_size, 0)
    fut = dcp.async_save(sd, storage_writer=kdcp.StorageWriter(path, thread_count=2))
    for k in ("w", "odd"):
        sd[k].to_local().add_(5)  # in place, on this rank's shard
    fut.result(timeout=120)
    got = _state(world_size, 0, zeros=True)
    dcp.load(got, storage_reader=FileSystemReader(path))
    _check_loaded(got, world_size, 0, f"rank {rank} async")


def test_async_save_of_dtensors_from_two_ranks(tmp_path):
    path = str(tmp_path / "c")
    _spawn(2, _async_save_dtensors, path)
    full = _state(1, None, zeros=True)
    dcp.load(full, storage_reader=FileSystemReader(path), no_dist=True)
    _check_loaded(full, 1, None, "one rank, full")


def _core_footprint(sd):
    from ckptkit import _core

    return _core.StagingPool.footprint([t.numel() * t.element_size() for t in sd.values()])


def _save_then_fail_on_rank1(rank, world_size, path, fault):
    """A good save, then a save of other values over it in which rank 1's disk
    fails (injected through the C++ engine's fault Env: a full disk after
    600 bytes, or an I/O error on its second data file): every rank must raise,
    and the old checkpoint must still load, with its values."""
    from ckptkit import _core

    dcp.save(_state(world_size, 0), storage_writer=kdcp.StorageWriter(path, thread_count=2))
    new = _state(world_size, 0)
    new["obj"] = dict(_OBJ, step=8)
    if rank == 1:
        if fault == "enospc":
            _core._set_write_faults(space_limit=600)
        else:
            _core._set_write_faults(fail_nth_append=2, path_contains="__1_1.distcp")
    try:
        dcp.save(new, storage_writer=kdcp.StorageWriter(path, thread_count=2))
    except CheckpointException as e:
        want = "no space left on device" if fault == "enospc" else "injected i/o error (eio)"
        assert want in str(e).lower() and "__1_" in str(e), str(e)
    else:
        raise AssertionError(f"rank {rank}: the save did not fail")
    finally:
        _core._clear_write_faults()
    got = _state(world_size, 0, zeros=True)
    dcp.load(got, storage_reader=FileSystemReader(path))
    _check_loaded(got, world_size, 0, f"rank {rank} after the failed overwrite")
    # Record the outcome, then leave without the harness's barrier and process
    # group teardown: once (in one of two fresh-clone CI runs on a loaded
    # machine; never in 10 local runs) rank 0 died with SIGABRT "terminate
    # called without an active exception" after a failed save: a C++
    # std::thread destroyed while joinable, where (gloo's teardown after a
    # failed collective, or elsewhere) is not settled. The assertions above
    # are what this test is about.
    with open(f"{path}.rank{rank}.ok", "w") as f:
        f.write("ok")
    os._exit(0)


@pytest.mark.parametrize("fault", ["enospc", "eio"])
def test_a_rank_failing_mid_save_fails_every_rank_and_keeps_the_old_checkpoint(tmp_path, fault):
    path = str(tmp_path / "c")
    _spawn(2, _save_then_fail_on_rank1, path, fault)
    assert os.path.exists(f"{path}.rank0.ok") and os.path.exists(f"{path}.rank1.ok")
    # Nothing of the failed save is published: the folder holds the old files only.
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "__0_1.distcp", "__1_0.distcp", "__1_1.distcp",
                                        "ckptkit-manifest__0_.json", "ckptkit-manifest__1_.json"]
    # (each rank loaded the old values back after the failure: _check_loaded, obj.step 7, not 8)


def _overwrite_twice(rank, world_size, path):
    """Three saves into one folder, the second into a folder holding a
    checkpoint of another world layout (more files), with a README beside it."""
    dcp.save(_state(world_size, 0), storage_writer=kdcp.StorageWriter(path, thread_count=3))
    if rank == 0:
        with open(os.path.join(path, "README"), "w") as f:
            f.write("notes")
    torch.distributed.barrier()
    dcp.save(_state(world_size, 1), storage_writer=kdcp.StorageWriter(path, thread_count=1))
    got = _state(world_size, 1, zeros=True)
    dcp.load(got, storage_reader=FileSystemReader(path))
    _check_loaded(got, world_size, 1, f"rank {rank}")
    torch.distributed.barrier()


def test_overwriting_replaces_the_whole_checkpoint_in_one_step(tmp_path):
    path = str(tmp_path / "c")
    _spawn(2, _overwrite_twice, path)
    # The old checkpoint's third files are gone, the README carried over, no staging left.
    assert sorted(os.listdir(path)) == [".metadata", "README", "__0_0.distcp", "__1_0.distcp",
                                        "ckptkit-manifest__0_.json", "ckptkit-manifest__1_.json"]
    assert open(os.path.join(path, "README")).read() == "notes"
    assert os.listdir(tmp_path) == ["c"]


def test_a_killed_saves_leftovers_are_pruned_by_the_next(tmp_path):
    """A staging folder a killed overwrite left (stale data files, a stale
    `.metadata`) is reused by the next overwrite, and none of it survives."""
    from ckptkit import _core

    path = str(tmp_path / "c")
    sd = {"a": make_tensor("float32", (8, 8), 1), "obj": {"k": 1}}
    dcp.save(sd, storage_writer=kdcp.StorageWriter(path), no_dist=True)
    staging = _core.shared_staging_path(path)
    assert staging == str(tmp_path / ".c.ckptkit-shared")
    os.makedirs(staging)
    for name in ("__0_0.distcp", "__7_0.distcp", ".metadata", ".__3_0.distcp.ckptkit-tmp", "ckptkit-manifest__7_.json"):
        with open(os.path.join(staging, name), "wb") as f:
            f.write(b"stale")
    sd2 = {"a": make_tensor("float32", (8, 8), 2), "obj": {"k": 2}}
    dcp.save(sd2, storage_writer=kdcp.StorageWriter(path), no_dist=True)
    assert sorted(os.listdir(tmp_path)) == ["c"]
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "ckptkit-manifest__0_.json"]
    got = {"a": torch.zeros(8, 8), "obj": {"k": None}}
    dcp.load(got, storage_reader=FileSystemReader(path), no_dist=True)
    assert torch.equal(got["a"], sd2["a"]) and got["obj"] == {"k": 2}


def test_stale_data_files_of_a_killed_first_save_are_pruned(tmp_path):
    """A folder with data files but no `.metadata` (a first save killed before
    its commit) is written in place; the stale files are removed at the commit."""
    path = str(tmp_path / "c")
    os.makedirs(path)
    for name in ("__0_0.distcp", "__5_0.distcp", "common.pt", "ckptkit-manifest__5_.json"):
        with open(os.path.join(path, name), "wb") as f:
            f.write(b"stale")
    sd = {"a": make_tensor("float32", (4,), 3)}
    dcp.save(sd, storage_writer=kdcp.StorageWriter(path), no_dist=True)
    assert sorted(os.listdir(path)) == [".metadata", "__0_0.distcp", "ckptkit-manifest__0_.json", "common.pt"]
    got = {"a": torch.zeros(4)}
    dcp.load(got, storage_reader=FileSystemReader(path), no_dist=True)
    assert torch.equal(got["a"], sd["a"])


def test_overwrite_false_refuses_an_existing_checkpoint(tmp_path):
    path = str(tmp_path / "c")
    dcp.save({"a": torch.ones(2)}, storage_writer=kdcp.StorageWriter(path), no_dist=True)
    with pytest.raises((RuntimeError, CheckpointException), match="already exists"):
        dcp.save({"a": torch.ones(2)}, storage_writer=kdcp.StorageWriter(path, overwrite=False), no_dist=True)


def test_bad_thread_count_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="thread_count"):
        kdcp.StorageWriter(str(tmp_path), thread_count=0)


def test_corrupt_item_is_reported_with_its_file(tmp_path):
    path = str(tmp_path / "c")
    dcp.save({"a": make_tensor("float32", (64,), 13)}, storage_writer=kdcp.StorageWriter(path), no_dist=True)
    data = os.path.join(path, "__0_0.distcp")
    raw = bytearray(open(data, "rb").read())
    raw[:4] = b"XXXX"  # break the embedded zip's first local header
    open(data, "wb").write(bytes(raw))
    with pytest.raises(CheckpointException, match="__0_0.distcp"):
        dcp.load({"a": torch.zeros(64)}, storage_reader=kdcp.StorageReader(path), no_dist=True)


def test_write_into_missing_folder_fails_and_leaves_nothing(tmp_path):
    from ckptkit import _core

    missing = str(tmp_path / "no" / "such")
    buf = torch.ones(4).view(torch.uint8).numpy()
    with pytest.raises(FileNotFoundError, match="no/such"):
        _core.write_dcp_files(missing, "__0_", [[("tensor", "float32", (4,), buf)], [("bytes", None, None, b"xy")]])
    assert not os.path.exists(missing)


def test_write_dcp_files_rejects_mismatched_buffer(tmp_path):
    from ckptkit import _core

    with pytest.raises(ValueError, match="buffer holds 3 bytes"):
        _core.write_dcp_files(str(tmp_path), "__0_", [[("tensor", "float32", (1,), b"abc")]])
    with pytest.raises(ValueError, match="prefix"):
        _core.write_dcp_files(str(tmp_path), "a/b", [[]])
    with pytest.raises(ValueError, match="cannot be saved"):
        _core.write_dcp_files(str(tmp_path), "__0_", [[("tensor", "bits8", (1,), b"a")]])
    assert os.listdir(tmp_path) == []


def test_import_ckptkit_does_not_load_the_plugin():
    import subprocess
    import sys

    code = "import sys, ckptkit; assert 'ckptkit.dcp' not in sys.modules and 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    assert ckptkit.dcp is kdcp
