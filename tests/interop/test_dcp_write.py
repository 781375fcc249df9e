"""`ckptkit convert SRC DST --to dcp` loaded back by STOCK torch 2.13.

Sources: real torch.save files (nested dicts/lists, non-tensor values, many
dtypes), real safetensors files, real DCP checkpoints (the goldens and live
ones written by spawned gloo ranks).  Each output must:
  - load with torch.distributed.checkpoint.format_utils.dcp_to_torch_save and
    with dcp.load(..., no_dist=True) into preallocated tensors, bit-equal;
  - load into a DIFFERENT sharding: 2 gloo ranks loading DTensor Shard(0)
    halves;
  - pass `ckptkit verify --deep`;
  - for torch sources: have .distcp files byte-identical to torch's own
    FileSystemWriter output for the same state dict (thread_count 1 and 3),
    and the same metadata (state_dict_metadata, planner_data, storage_data in
    order); for DCP sources: keep the chunk layout, and dcp_to_torch_save of
    the output is byte-identical to dcp_to_torch_save of the source.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import shutil
import tempfile
import time
import traceback
import warnings

import pytest
import torch

import dcp_fixtures as fx

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "dcp")
GOLDEN_DIRS = ["ws1_plain", "ws2_threads2", "ws3_uneven", "ws4_per_item", "ws2_zstd", "all_dtypes",
               "ws1_threads3_empty"]


# ----------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------



# ckptkit writes its checksum manifest beside the data files (docs/format.md 8.10b).
MANIFEST = "ckptkit-manifest__0_.json"

def rich_state_dict(seed: int):
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "layers": [
                {"w": torch.randn(4, 3, generator=g), "b": torch.randn(4, generator=g).half()},
                {"w": torch.randn(2, 2, generator=g).bfloat16()},
            ],
            "head.bias": torch.arange(5, dtype=torch.int32),  # a dotted key inside a dict
        },
        "opt": {"step": 7 + seed, "lr": 0.1, "name": "adam", "betas": (0.9, 0.99), "ids": [1, 2, 3],
                "none": None},
        "tup": (torch.tensor([1.0, 2.0]), 3),  # tuples are bytes items holding tensors
        "cplx": torch.randn(3, dtype=torch.complex64, generator=g),
        "c128": torch.randn(2, 2, dtype=torch.complex128, generator=g),
        "f8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
        "f8b": torch.randn(3, 2, generator=g).to(torch.float8_e5m2),
        "flags": torch.rand(5, generator=g) > 0.5,
        "u8": torch.randint(0, 255, (7,), dtype=torch.uint8, generator=g),
        "scalar": torch.tensor(3.25 + seed, dtype=torch.float64),
        "empty": torch.empty(0, 5),
        "big": torch.randn(64, 33, generator=g),
        "emptyd": {},
        "emptyl": [],
        "args": argparse.Namespace(lr=0.1, name="x"),
        # lists are descended only when they hold tensors / mappings / such lists
        "lists": [[torch.ones(2) * seed], [1, 2], {"k": 3}, "s"],
        "plain_list": [[1, 2], [3]],
        "od": collections.OrderedDict([("x", torch.zeros(3, dtype=torch.int16)), (4, torch.ones(1))]),
        "obj_with_tensor": argparse.Namespace(t=torch.arange(3.0), n=1),
    }


def quiet_dcp_to_torch_save(src, dst):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(os.fspath(src), os.fspath(dst))


def torch_dcp_save(sd, path, thread_count=1):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    if os.path.exists(path):
        shutil.rmtree(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(sd, storage_writer=FileSystemWriter(os.fspath(path), thread_count=thread_count), no_dist=True)


def bits_equal(a, b) -> bool:
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
            and a.shape == b.shape and fx.tensor_bytes(a) == fx.tensor_bytes(b))


def assert_same_tree(a, b, where="root"):
    if isinstance(a, torch.Tensor):
        assert bits_equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a.keys()) == list(b.keys()), f"{where}: keys differ"
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), f"{where}: {type(a)} vs {type(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}.{i}")
    elif isinstance(a, argparse.Namespace):
        assert isinstance(b, argparse.Namespace), where
        assert_same_tree(vars(a), vars(b), where)
    elif hasattr(a, "getvalue"):
        assert a.getvalue() == b.getvalue(), where
    else:
        assert type(a) is type(b) and a == b, f"{where}: {a!r} vs {b!r}"


def load_preallocated(path, reference_flat):
    """dcp.load into zeros of the reference's shapes/dtypes (tensors only)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader

    sd = {k: torch.zeros_like(v) for k, v in reference_flat.items() if isinstance(v, torch.Tensor)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(sd, storage_reader=FileSystemReader(os.fspath(path)), no_dist=True)
    return sd


def metadata(path):
    """The .metadata as stock pickle.load gives it (FileSystemReader would set load_id)."""
    import pickle

    import torch.distributed.checkpoint  # noqa: F401  (the classes it names)

    with open(os.path.join(os.fspath(path), ".metadata"), "rb") as f:
        md = pickle.load(f)
    assert type(md).__module__ == "torch.distributed.checkpoint.metadata" and type(md).__name__ == "Metadata"
    return md


def storage_list(md):
    return [(k.fqn, tuple(k.offset) if k.offset is not None else None, k.index, v.relative_path, v.offset,
             v.length) for k, v in md.storage_data.items()]


def convert(run_cli, src, dst, *extra):
    r = run_cli("convert", src, dst, "--to", "dcp", "-q", *extra)
    assert r.returncode == 0, r
    return r


def verify_deep(run_cli, path):
    r = run_cli("verify", "--deep", path)
    assert r.returncode == 0, r
    assert r.stdout.startswith("OK"), r


# ----------------------------------------------------------------------------
# Loading with a different sharding: 2 gloo ranks, DTensor Shard(0)
# ----------------------------------------------------------------------------


def _shard_rows(n: int, rank: int, world: int):
    size = -(-n // world)  # DTensor's Shard(0): torch.chunk sizes, trailing shards may be empty
    start = min(rank * size, n)
    return start, min(start + size, n)


def _load_rank_main(rank, world, init_file, path, specs, out_dir):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
        try:
            mesh = init_device_mesh("cpu", (world,))
            sd = {}
            for key, (dtype, shape) in specs.items():
                dtype = getattr(torch, dtype)
                start, end = _shard_rows(shape[0], rank, world)
                local = torch.zeros((end - start, *shape[1:]), dtype=dtype)
                stride = torch.empty(shape, dtype=dtype, device="meta").stride()
                sd[key] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                                             shape=torch.Size(shape), stride=stride)
            dcp.load(sd, storage_reader=FileSystemReader(path))
            torch.save({k: v.to_local() for k, v in sd.items()}, os.path.join(out_dir, f"rank{rank}.pt"))
            dist.barrier()
        finally:
            dist.destroy_process_group()
    except (Exception, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 (CheckpointException)
        raise RuntimeError(f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}") from None


def load_sharded_two_ranks(path, reference_flat, tmp_path):
    """Loads every tensor of rank >= 1 as Shard(0) over 2 ranks; checks each half."""
    import torch.multiprocessing as mp

    specs = {k: (fx.dtype_name(v.dtype), list(v.shape)) for k, v in reference_flat.items()
             if isinstance(v, torch.Tensor) and v.dim() >= 1}
    assert specs
    out_dir = tmp_path / "shards"
    out_dir.mkdir()
    with tempfile.TemporaryDirectory(prefix="dcp_pg_") as tmp:
        ctx = mp.start_processes(_load_rank_main,
                                 args=(2, os.path.join(tmp, "pg"), os.fspath(path), specs, os.fspath(out_dir)),
                                 nprocs=2, join=False, start_method="spawn")
        deadline = time.monotonic() + 180
        try:
            while not ctx.join(timeout=0.5):
                assert time.monotonic() < deadline, "sharded load did not finish"
        finally:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
                    p.join(5)
    for rank in range(2):
        got = torch.load(out_dir / f"rank{rank}.pt")
        for key in specs:
            full = reference_flat[key]
            start, end = _shard_rows(full.shape[0], rank, 2)
            assert bits_equal(got[key], full[start:end]), f"rank {rank}: {key}"
    return len(specs)


# ----------------------------------------------------------------------------
# torch.save sources
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("thread_count", [1, 3])
def test_torch_source_matches_torch_filesystem_writer(run_cli, tmp_path, seed, thread_count):
    sd = rich_state_dict(seed)
    src = tmp_path / "model.pt"
    torch.save(sd, src)
    ours, ref = tmp_path / "ours", tmp_path / "ref"
    convert(run_cli, src, ours, "--thread-count", thread_count)
    torch_dcp_save(sd, ref, thread_count)

    # Same data files, byte for byte (chunks are torch.save archives; bytes
    # items torch.save(obj)); no other files than ckptkit's checksum manifest.
    ref_files = sorted(os.listdir(ref))
    assert sorted(os.listdir(ours)) == sorted(ref_files + [MANIFEST])
    for name in ref_files:
        if name.endswith(".distcp"):
            assert (ours / name).read_bytes() == (ref / name).read_bytes(), name
    a, b = metadata(ref), metadata(ours)
    assert b.state_dict_metadata == a.state_dict_metadata
    assert list(b.state_dict_metadata) == list(a.state_dict_metadata)
    assert b.planner_data == a.planner_data
    # storage_data order: torch's is the order its writer threads finish (not
    # deterministic with thread_count > 1); ours is file by file.
    if thread_count == 1:
        assert storage_list(b) == storage_list(a)
    else:
        assert sorted(storage_list(b), key=repr) == sorted(storage_list(a), key=repr)
        assert [x[3] for x in storage_list(b)] == sorted(x[3] for x in storage_list(b))
    assert b.version == "1.0.0"
    assert b.storage_meta.checkpoint_id is None and b.storage_meta.load_id is None
    assert b.storage_meta.modules == [] and isinstance(b.storage_meta.save_id, str)

    # dcp_to_torch_save: the original nested tree back, and the same file torch makes.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quiet_dcp_to_torch_save(ref, tmp_path / "a" / "m.pt")
    quiet_dcp_to_torch_save(ours, tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    back = torch.load(tmp_path / "b" / "m.pt", weights_only=False)
    # torch's own round trip stringifies dict keys, makes OrderedDicts dicts and
    # drops empty dicts; everything else comes back as saved.
    assert_same_tree(torch.load(tmp_path / "a" / "m.pt", weights_only=False), back)
    expected = {k: v for k, v in sd.items() if k not in ("emptyd", "od")}
    assert_same_tree(expected, {k: v for k, v in back.items() if k != "od"})
    assert list(back["od"]) == ["x", "4"] and bits_equal(back["od"]["4"], sd["od"][4])

    flat = fx.flatten(sd)
    loaded = load_preallocated(ours, flat)
    for k, v in loaded.items():
        assert bits_equal(v, flat[k]), k
    verify_deep(run_cli, ours)


def test_torch_source_loads_into_two_rank_shard0(run_cli, tmp_path):
    sd = rich_state_dict(5)
    src = tmp_path / "model.pt"
    torch.save(sd, src)
    out = tmp_path / "out"
    convert(run_cli, src, out, "--thread-count", 2)
    n = load_sharded_two_ranks(out, fx.flatten(sd), tmp_path)
    assert n >= 10


def test_output_is_deterministic(run_cli, tmp_path):
    src = tmp_path / "model.pt"
    torch.save(rich_state_dict(1), src)
    convert(run_cli, src, tmp_path / "x", "--thread-count", 2)
    convert(run_cli, src, tmp_path / "y", "--thread-count", 2)
    names = sorted(os.listdir(tmp_path / "x"))
    assert ".metadata" in names and names == sorted(os.listdir(tmp_path / "y"))
    for name in names:
        assert (tmp_path / "x" / name).read_bytes() == (tmp_path / "y" / name).read_bytes(), name
    # A different tensor value changes save_id (it is derived from the content).
    sd = rich_state_dict(1)
    sd["big"][0, 0] += 1
    torch.save(sd, src)
    convert(run_cli, src, tmp_path / "z", "--thread-count", 2)
    assert metadata(tmp_path / "z").storage_meta.save_id != metadata(tmp_path / "x").storage_meta.save_id


# ----------------------------------------------------------------------------
# safetensors sources
# ----------------------------------------------------------------------------


def test_safetensors_source(run_cli, tmp_path, seed):
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(seed)
    sd = {
        "model.embed.weight": torch.randn(10, 4, generator=g).bfloat16(),
        "model.layers.0.w": torch.randn(3, 5, generator=g),
        "f16": torch.randn(6, generator=g).half(),
        "f64": torch.randn(2, 3, generator=g).double(),
        "e4m3": torch.randn(8, generator=g).to(torch.float8_e4m3fn),
        "e5m2": torch.randn(2, 4, generator=g).to(torch.float8_e5m2),
        "mask": torch.rand(9, generator=g) > 0.3,
        "i64": torch.randint(-1000, 1000, (4,), generator=g),
        "i8": torch.randint(-100, 100, (3, 3), dtype=torch.int8, generator=g),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3, dtype=torch.float16),
    }
    src = tmp_path / "model.safetensors"
    save_file(sd, src)
    out = tmp_path / "out"
    convert(run_cli, src, out)
    ref = tmp_path / "ref"
    torch_dcp_save(load_file(src), ref)
    assert (out / "__0_0.distcp").read_bytes() == (ref / "__0_0.distcp").read_bytes()
    assert storage_list(metadata(out)) == storage_list(metadata(ref))
    assert metadata(out).planner_data == {k: (k,) for k in sd}

    quiet_dcp_to_torch_save(out, tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt")
    assert list(back) == list(load_file(src))  # the file's order (safetensors sorts by dtype, size)
    for k, v in sd.items():
        assert bits_equal(back[k], v), k
    for k, v in load_preallocated(out, sd).items():
        assert bits_equal(v, sd[k]), k
    verify_deep(run_cli, out)
    if seed == 0:
        load_sharded_two_ranks(out, sd, tmp_path)


def test_sharded_safetensors_source(run_cli, tmp_path):
    from safetensors.torch import save_file

    src = tmp_path / "hf"
    src.mkdir()
    a = {"a.weight": torch.randn(4, 4), "a.bias": torch.randn(4)}
    b = {"b.weight": torch.randn(2, 4).bfloat16()}
    save_file(a, src / "model-00001-of-00002.safetensors")
    save_file(b, src / "model-00002-of-00002.safetensors")
    import json

    weight_map = {k: "model-00001-of-00002.safetensors" for k in a}
    weight_map.update({k: "model-00002-of-00002.safetensors" for k in b})
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = tmp_path / "out"
    convert(run_cli, src, out)
    quiet_dcp_to_torch_save(out, tmp_path / "back.pt")
    back = torch.load(tmp_path / "back.pt")
    for k, v in {**a, **b}.items():
        assert bits_equal(back[k], v), k
    verify_deep(run_cli, out)


# ----------------------------------------------------------------------------
# DCP sources: chunk layout kept
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOLDEN_DIRS)
def test_golden_dcp_source_roundtrip(run_cli, tmp_path, name):
    src = os.path.join(GOLDEN, name)
    out = tmp_path / "out"
    convert(run_cli, src, out, "--thread-count", 2)
    a, b = metadata(src), metadata(out)
    # Same entries, same chunk boxes in the same order, same properties.
    assert list(b.state_dict_metadata) == list(a.state_dict_metadata)
    assert b.state_dict_metadata == a.state_dict_metadata
    assert b.planner_data == a.planner_data
    assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp", "__0_1.distcp", MANIFEST]
    # dcp_to_torch_save of both: the same file (hence the same values and objects).
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quiet_dcp_to_torch_save(src, tmp_path / "a" / "m.pt")
    quiet_dcp_to_torch_save(out, tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    ref = fx.load_reference(src)
    tensors = {k: v for k, v in ref.items() if isinstance(v, torch.Tensor)}
    for k, v in load_preallocated(out, tensors).items():
        assert bits_equal(v, tensors[k]), k
    verify_deep(run_cli, out)


def test_live_sharded_dcp_source_loads_resharded(run_cli, tmp_path):
    src = tmp_path / "src"
    fx.write_dcp(src, 2, fx.build_sharded, thread_count=2)
    out = tmp_path / "out"
    convert(run_cli, src, out)
    a, b = metadata(src), metadata(out)
    assert b.state_dict_metadata == a.state_dict_metadata
    ref = fx.load_reference(src)
    tensors = {k: v for k, v in ref.items() if isinstance(v, torch.Tensor)}
    got = fx.load_reference(out)
    assert list(got) == list(ref)
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert bits_equal(got[k], v), k
    load_sharded_two_ranks(out, tensors, tmp_path)
    verify_deep(run_cli, out)


# ----------------------------------------------------------------------------
# Errors and publishing
# ----------------------------------------------------------------------------


def test_rejects_file_destination_and_misplaced_flags(run_cli, tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"a": torch.ones(2)}, src)
    r = run_cli("convert", src, tmp_path / "x.pt", "--to", "dcp")
    assert r.returncode != 0 and "folder" in r.stderr, r
    assert not (tmp_path / "x.pt").exists()
    r = run_cli("convert", src, tmp_path / "y.safetensors", "--to", "safetensors", "--thread-count", "2")
    assert r.returncode != 0 and "--thread-count" in r.stderr, r
    r = run_cli("convert", src, tmp_path / "z", "--to", "dcp", "--thread-count", "0")
    assert r.returncode != 0, r
    assert not (tmp_path / "z" / ".metadata").exists()


def test_rewrite_over_existing_checkpoint(run_cli, tmp_path):
    """Converting into a folder that holds an older checkpoint replaces it."""
    out = tmp_path / "out"
    src1, src2 = tmp_path / "one.pt", tmp_path / "two.pt"
    torch.save({"a": torch.ones(3)}, src1)
    torch.save({"b": torch.zeros(2, dtype=torch.int64)}, src2)
    convert(run_cli, src1, out)
    convert(run_cli, src2, out)
    back = fx.load_reference(out)
    assert list(back) == ["b"] and bits_equal(back["b"], torch.zeros(2, dtype=torch.int64))


# ----------------------------------------------------------------------------
# Streaming: peak memory is bounded by a copy buffer, not the checkpoint
# ----------------------------------------------------------------------------


def _peak_rss_of(cmd) -> int:
    import subprocess
    import sys

    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[1:])\n"
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
               "sys.exit(r.returncode)\n")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True, stdout=subprocess.PIPE, text=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024  # Linux: KiB


def test_convert_to_dcp_streams(cli_path, tmp_path):
    MiB = 1 << 20
    g = torch.Generator().manual_seed(0)
    sd = {f"layer.{i}.weight": torch.randn(16 * MiB // 4, generator=g) for i in range(12)}
    src = tmp_path / "big.pt"
    torch.save(sd, src)
    del sd
    total = 12 * 16 * MiB
    rss = _peak_rss_of([cli_path, "convert", str(src), str(tmp_path / "d1"), "--to", "dcp", "-q",
                        "--thread-count", "2"])
    assert sum(f.stat().st_size for f in (tmp_path / "d1").iterdir()) >= total
    # A DCP source: each chunk re-read and re-written in place.
    rss2 = _peak_rss_of([cli_path, "convert", str(tmp_path / "d1"), str(tmp_path / "d2"), "--to", "dcp", "-q"])
    print(f"peak RSS {rss / MiB:.1f} / {rss2 / MiB:.1f} MiB for a {total / MiB:.0f} MiB checkpoint")
    assert rss < 64 * MiB and rss2 < 64 * MiB


# ----------------------------------------------------------------------------
# Megatron-Core torch_dist sources (golden): the DCP content is kept
# ----------------------------------------------------------------------------

MEGATRON_GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "megatron")


@pytest.mark.parametrize("name", ["mc016_gpt_tp2pp2dp2", "mc016_handbuilt", "mc019_handbuilt"])
def test_megatron_source_keeps_dcp_content(run_cli, tmp_path, name):
    root = os.path.join(MEGATRON_GOLDEN, name)
    out = tmp_path / "out"
    r = run_cli("convert", root, out, "--to", "dcp")
    assert r.returncode == 0, r
    assert "plain DCP folder" in r.stderr, r  # metadata.json / common.pt are not written
    assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp", MANIFEST]
    src = os.path.join(root, "iter_0000010")
    assert metadata(out).state_dict_metadata == metadata(src).state_dict_metadata
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quiet_dcp_to_torch_save(src, tmp_path / "a" / "m.pt")
    quiet_dcp_to_torch_save(out, tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    verify_deep(run_cli, out)


# ----------------------------------------------------------------------------
# --thread-count N: torch's bucketing (_split_by_size_and_type) for sharded
# tensors, whose chunks weigh as the whole tensor
# ----------------------------------------------------------------------------


def torch_buckets(md, bins):
    """torch 2.13's own _split_by_size_and_type over WriteItems built from md in
    plan order (entries in .metadata order; a bytes entry one item, a tensor one
    item per chunk), as FileSystemWriter(thread_count=bins) would bucket them."""
    from torch.distributed.checkpoint.filesystem import _split_by_size_and_type
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex
    from torch.distributed.checkpoint.planner import TensorWriteData, WriteItem, WriteItemType

    items = []
    for fqn, sm in md.state_dict_metadata.items():
        if isinstance(sm, BytesStorageMetadata):
            items.append(WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO))
            continue
        for i, c in enumerate(sm.chunks):
            items.append(WriteItem(index=MetadataIndex(fqn, c.offsets, i), type=WriteItemType.SHARD,
                                   tensor_data=TensorWriteData(chunk=c, properties=sm.properties, size=sm.size)))
    buckets = _split_by_size_and_type(bins, items)
    out = []
    for b in buckets:
        # _write_files_from_queue: bytes items first, then tensors, each in bucket order.
        ordered = [w for w in b if w.type == WriteItemType.BYTE_IO] + [w for w in b if w.type != WriteItemType.BYTE_IO]
        out.append([(w.index.fqn, tuple(w.index.offset) if w.index.offset is not None else None) for w in ordered])
    return out


def our_buckets(md, bins):
    files = [[] for _ in range(bins)]
    ends = {}
    for k, v in md.storage_data.items():
        n = int(v.relative_path[len("__0_"):-len(".distcp")])
        assert v.relative_path == f"__0_{n}.distcp"
        # Items are back to back in write order.
        assert v.offset == ends.get(n, 0), (k, v)
        ends[n] = v.offset + v.length
        files[n].append((k.fqn, tuple(k.offset) if k.offset is not None else None))
    return files


@pytest.mark.parametrize("name", ["ws2_threads2", "ws3_uneven", "ws4_per_item"])
def test_thread_count_3_buckets_as_torch_for_multi_chunk_sources(run_cli, tmp_path, name):
    src = os.path.join(GOLDEN, name)
    out = tmp_path / "out"
    convert(run_cli, src, out, "--thread-count", 3)
    md = metadata(out)
    assert sorted(os.listdir(out)) == [".metadata", "__0_0.distcp", "__0_1.distcp", "__0_2.distcp", MANIFEST]
    assert any(len(sm.chunks) > 1 for sm in md.state_dict_metadata.values() if hasattr(sm, "chunks"))
    want = torch_buckets(md, 3)
    assert our_buckets(md, 3) == want
    for n in range(3):
        assert (out / f"__0_{n}.distcp").stat().st_size == sum(
            v.length for v in md.storage_data.values() if v.relative_path == f"__0_{n}.distcp")
    verify_deep(run_cli, out)


def test_thread_count_3_chunk_weight_rule_matters(run_cli, tmp_path):
    """A live 2-rank DTensor source where weighing chunks by their own bytes
    would bucket differently: the whole tensor's size decides, as in torch."""
    src = tmp_path / "src"
    fx.write_dcp(src, 2, fx.build_sharded, thread_count=1)
    out = tmp_path / "out"
    convert(run_cli, src, out, "--thread-count", 3)
    md = metadata(out)
    want = torch_buckets(md, 3)
    assert our_buckets(md, 3) == want

    # The rule that weighs chunks by their own size gives another assignment
    # for this source (otherwise the test could not tell the two apart).
    from torch.distributed.checkpoint import filesystem as fs

    orig = fs._item_size

    def chunk_size(item):
        n = 1
        for s in item.tensor_data.chunk.sizes:
            n *= s
        return n * torch._utils._element_size(item.tensor_data.properties.dtype)

    fs._item_size = chunk_size
    try:
        by_chunk = torch_buckets(md, 3)
    finally:
        fs._item_size = orig
    assert by_chunk != want

    ref = fx.load_reference(src)
    got = fx.load_reference(out)
    for k, v in ref.items():
        if isinstance(v, torch.Tensor):
            assert bits_equal(got[k], v), k


def test_parallel_writer_threads_are_deterministic(run_cli, tmp_path):
    """--thread-count 4 writes its files concurrently; the bytes never depend on timing."""
    src = tmp_path / "model.pt"
    g = torch.Generator().manual_seed(3)
    torch.save({f"w{i}": torch.randn(64 + 7 * i, 33, generator=g) for i in range(12)}, src)
    convert(run_cli, src, tmp_path / "a", "--thread-count", 4)
    for n in range(3):
        convert(run_cli, src, tmp_path / f"b{n}", "--thread-count", 4)
        for name in sorted(os.listdir(tmp_path / "a")):
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / f"b{n}" / name).read_bytes(), name
    ref = tmp_path / "ref"
    torch_dcp_save(torch.load(src), ref, 4)
    for name in sorted(os.listdir(ref)):
        if name.endswith(".distcp"):
            assert (tmp_path / "a" / name).read_bytes() == (ref / name).read_bytes(), name


# ----------------------------------------------------------------------------
# .metadata layouts for older torch (dcp::MetadataLayout): the golden outputs
# of tests/unit/dcp/writer_test.cc (OutputMatchesTheGoldenFilesTorchLoads)
# ----------------------------------------------------------------------------

LAYOUTS = os.path.join(os.path.dirname(__file__), "..", "unit", "dcp", "testdata", "metadata_layouts")


def _layout_copy(tmp_path, layout):
    dst = tmp_path / layout
    shutil.copytree(os.path.join(LAYOUTS, layout), dst)
    return dst


@pytest.mark.parametrize("layout", ["torch2.3", "torch2.0"])
def test_older_metadata_layouts_load_in_torch_2_13(run_cli, tmp_path, layout):
    new, old = _layout_copy(tmp_path, "torch2.13"), _layout_copy(tmp_path, layout)
    a, b = metadata(new), metadata(old)
    assert getattr(b, "storage_meta", None) is None and getattr(b, "version", None) is None
    assert a.storage_meta is not None and a.version == "1.0.0"
    assert list(b.state_dict_metadata) == list(a.state_dict_metadata)
    for k, sa in a.state_dict_metadata.items():
        sb = b.state_dict_metadata[k]
        assert (sb.size, sb.chunks) == (sa.size, sa.chunks), k
        pa, pb = sa.properties, sb.properties
        assert (pb.dtype, pb.layout, pb.requires_grad, pb.memory_format, pb.pin_memory) == \
            (pa.dtype, pa.layout, pa.requires_grad, pa.memory_format, pa.pin_memory), k
        if layout == "torch2.0":
            assert type(pb).__module__ == "torch.distributed._shard.sharded_tensor.metadata"
    assert b.planner_data == a.planner_data
    assert storage_list(b) == storage_list(a)

    # FileSystemReader fills in a StorageMeta for a checkpoint without one.
    from torch.distributed.checkpoint import FileSystemReader

    rmd = FileSystemReader(os.fspath(old)).read_metadata()
    assert rmd.storage_meta is not None and rmd.storage_meta.load_id

    # dcp_to_torch_save and dcp.load give what the default layout gives.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quiet_dcp_to_torch_save(new, tmp_path / "a" / "m.pt")
    quiet_dcp_to_torch_save(old, tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    flat = fx.flatten(torch.load(tmp_path / "a" / "m.pt"))
    assert len(flat) == 5
    for k, v in load_preallocated(old, flat).items():
        assert bits_equal(v, flat[k]), k
    verify_deep(run_cli, old)


_OLD_TORCH_SIM = r"""
import pickle, sys
import torch.distributed.checkpoint.metadata as m
# What an older torch lacks (see dcp::MetadataLayout): StorageMeta (< 2.4);
# DCP's own _MEM_FORMAT_ENCODING (< 2.3, where checkpoint.metadata only
# re-exported ShardedTensor's TensorProperties).
del m.StorageMeta
if sys.argv[2] == "2.2":
    del m._MEM_FORMAT_ENCODING
with open(sys.argv[1], "rb") as f:
    try:
        pickle.load(f)
    except AttributeError as e:
        print("AttributeError:", e)
        sys.exit(3)
print("loaded")
"""


@pytest.mark.parametrize("torch_version,loads", [
    ("2.3", {"torch2.13": False, "torch2.3": True, "torch2.0": True}),
    ("2.2", {"torch2.13": False, "torch2.3": False, "torch2.0": True}),
])
def test_older_layouts_unpickle_without_the_classes_older_torch_lacks(tmp_path, torch_version, loads):
    """A simulation: torch 2.13 with the classes removed that older torch does not have."""
    import subprocess
    import sys

    for layout, ok in loads.items():
        r = subprocess.run([sys.executable, "-c", _OLD_TORCH_SIM, os.path.join(LAYOUTS, layout, ".metadata"),
                            torch_version], capture_output=True, text=True)
        assert (r.returncode == 0) == ok, (layout, r.stdout, r.stderr)
        if not ok:
            assert r.returncode == 3 and "AttributeError" in r.stdout, (layout, r.stdout, r.stderr)


@pytest.mark.parametrize("layout", ["torch2.3", "torch2.0"])
def test_cli_dcp_metadata_layout_flag(run_cli, tmp_path, layout):
    """`convert --dcp-metadata-layout` writes the older layout; torch 2.13 still loads it."""
    sd = rich_state_dict(5)
    src = tmp_path / "src.pt"
    torch.save(sd, src)
    convert(run_cli, src, tmp_path / "new")
    convert(run_cli, src, tmp_path / "old", "--dcp-metadata-layout", layout)
    a, b = metadata(tmp_path / "new"), metadata(tmp_path / "old")
    assert getattr(b, "storage_meta", None) is None and getattr(b, "version", None) is None
    assert a.storage_meta is not None
    if layout == "torch2.0":
        assert all(type(v.properties).__module__ == "torch.distributed._shard.sharded_tensor.metadata"
                   for v in b.state_dict_metadata.values() if hasattr(v, "properties"))
    for f in sorted(os.listdir(tmp_path / "new")):
        if f.endswith(".distcp"):
            assert (tmp_path / "new" / f).read_bytes() == (tmp_path / "old" / f).read_bytes(), f
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    quiet_dcp_to_torch_save(tmp_path / "new", tmp_path / "a" / "m.pt")
    quiet_dcp_to_torch_save(tmp_path / "old", tmp_path / "b" / "m.pt")
    assert (tmp_path / "a" / "m.pt").read_bytes() == (tmp_path / "b" / "m.pt").read_bytes()
    r = run_cli("convert", src, tmp_path / "x.safetensors", "--to", "safetensors", "--dcp-metadata-layout", layout)
    # The library's message names the option as ConvertOptions / Python spell it.
    assert r.returncode == 2 and 'dcp_metadata_layout applies only with to="dcp"' in r.stderr, r
