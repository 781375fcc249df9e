"""`ckptkit convert DCP_FOLDER OUT.pt --to torch` against torch's own
`dcp_to_torch_save(DCP_FOLDER, OUT.pt)`.

Every checkpoint is written live by real torch ranks (dcp_fixtures.write_dcp).
Both outputs are loaded with torch.load(weights_only=False) and compared
value by value (types, dict key order, dtypes, shapes, strides, bits, shared
storages inside objects); the files themselves must be byte-identical
(ckptkit reproduces torch.save's pickle memo, record order and
serialization id).  A peak-RSS test checks that the conversion streams.
"""

from __future__ import annotations

import argparse
import collections
import io
import math
import os
import subprocess
import sys
import warnings

import pytest
import torch

import dcp_fixtures as fx

MiB = 1 << 20


# ----------------------------------------------------------------------------
# Builders (module-level: spawned ranks import them by name)
# ----------------------------------------------------------------------------


def build_rich(rank: int, world_size: int):
    """Nested dicts/lists/tuples, repeated key strings (an optimizer's state),
    CPython singletons in objects, objects holding tensors (shared storage,
    views, a Parameter), and Python objects of many kinds."""
    from torch.distributed.tensor import Shard

    mesh = fx._mesh_1d(world_size)
    base = fx.make_tensor("float32", (3, 4), seed=71)
    sd = {
        "model": {
            "layer.weight": fx._dtensor(fx.make_tensor("bfloat16", (6, 4), seed=72), mesh, [Shard(0)]),
            "layer.bias": fx.make_tensor("float32", (4,), seed=73),
        },
        "ema": {"layer.weight": fx.make_tensor("bfloat16", (6, 4), seed=74)},  # same key object as model's
        "optim": {
            "state": {
                0: {"step": torch.tensor(3.0), "exp_avg": fx.make_tensor("float32", (6, 4), seed=75),
                    "exp_avg_sq": fx.make_tensor("float32", (6, 4), seed=76)},
                1: {"step": torch.tensor(3.0), "exp_avg": fx.make_tensor("float32", (4,), seed=77),
                    "exp_avg_sq": fx.make_tensor("float32", (4,), seed=78)},
            },
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0, 1], "name": "g0"}],
        },
        "args": argparse.Namespace(lr=0.1, name="run", layers=[1, 2], a="é"),
        "args2": argparse.Namespace(lr=0.2, name="again"),  # same attribute names, another item
        "letters": ["a", "b", "é", "", b"", b"x", "a"],
        "letters2": ("a", "é", b"x", "", "bc"),
        "mixed": [torch.ones(2), None, 3, "s", {"k": torch.zeros(1)}],
        "shared_views": (base, base[1:], base.t()),  # one storage inside one item
        "param": torch.nn.Parameter(fx.make_tensor("float16", (2, 2), seed=79)),
        "param_in_obj": (torch.nn.Parameter(torch.ones(2)), torch.ones(1, requires_grad=True)),
        "od": collections.OrderedDict(x=1, y=fx.make_tensor("int16", (3,), seed=80)),
        "int_keys": {1: torch.ones(1), 2: "two"},
        "empty_list": [],
        "nested_list": [[torch.ones(1), torch.arange(3)], [torch.zeros(1)]],
        "big_int": 2**70,
        "neg": -5,
        "nan": float("nan"),
        "cplx": 1 + 2j,
        "a_set": {1, 2},
        "fset": frozenset({3}),
        "barr": bytearray(b"ab\x00"),
        "dtype": torch.float16,
        "size": torch.Size([2, 3]),
        "blob": io.BytesIO(b"\x00\x01\xff"),
        "unicode": "ünï—😀",
        "dotted.key": {"x.y": torch.ones(2)},
    }
    return sd


def build_big(rank: int, world_size: int):
    """~288 MiB: 16 tensors of 16 MiB and one of 32 MiB, row- and column-sharded."""
    from torch.distributed.tensor import Shard

    mesh = fx._mesh_1d(world_size)
    sd = {}
    for i in range(16):
        t = torch.arange(4 * MiB, dtype=torch.float32).reshape(1024, 4096) + i
        sd[f"layers.{i}.weight"] = fx._dtensor(t, mesh, [Shard(i % 2)])
    sd["embed"] = fx._dtensor(torch.arange(8 * MiB, dtype=torch.float32).reshape(2048, 4096), mesh, [Shard(1)])
    sd["step"] = 10
    return sd


# ----------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------


def _assert_same(a, b, path="root", storages=None):
    """Deep equality with exact types, key order, dtypes and bits."""
    assert type(a) is type(b), f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype, f"{path}: dtype {a.dtype} vs {b.dtype}"
        assert a.shape == b.shape, f"{path}: shape {a.shape} vs {b.shape}"
        assert a.stride() == b.stride(), f"{path}: stride {a.stride()} vs {b.stride()}"
        assert a.storage_offset() == b.storage_offset(), path
        assert a.requires_grad == b.requires_grad, path
        assert fx.tensor_bytes(a) == fx.tensor_bytes(b), f"{path}: bits differ"
        if storages is not None:
            # Storage sharing must match: map a's storages onto b's one to one.
            ka, kb = a.untyped_storage().data_ptr(), b.untyped_storage().data_ptr()
            if a.untyped_storage().nbytes() and storages.setdefault(("a", ka), kb) != kb:
                raise AssertionError(f"{path}: storage sharing differs")
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)} vs {list(b)}"
        for k in a:
            _assert_same(a[k], b[k], f"{path}[{k!r}]", storages)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: len {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]", storages)
    elif isinstance(a, io.BytesIO):
        assert a.getvalue() == b.getvalue() and a.tell() == b.tell(), path
    elif isinstance(a, argparse.Namespace):
        _assert_same(vars(a), vars(b), path + ".__dict__", storages)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, f"{path}: {a!r} vs {b!r}"


def _torch_reference(folder, out):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp_to_torch_save(os.fspath(folder), os.fspath(out))


def _convert_and_compare(run_cli, folder, tmp_path, *extra):
    ref = tmp_path / "ref" / "out.pt"
    ours = tmp_path / "ours" / "out.pt"  # same stem: same archive folder name
    ref.parent.mkdir()
    ours.parent.mkdir()
    _torch_reference(folder, ref)
    r = run_cli("convert", folder, ours, "--to", "torch", "-q", *extra)
    assert r.returncode == 0, r
    a = torch.load(ref, weights_only=False)
    b = torch.load(ours, weights_only=False)
    _assert_same(a, b, storages={})
    return ref.read_bytes(), ours.read_bytes()


CASES = [
    # (id, world_size, builder, thread_count, single_file_per_rank, zstd)
    ("plain-ws1", 1, fx.build_plain, 1, True, False),
    ("rich-ws1", 1, build_rich, 1, True, False),
    ("rich-ws2-t3", 2, build_rich, 3, True, False),
    ("rich-ws3-per-item", 3, build_rich, 1, False, False),
    ("rich-ws2-zstd", 2, build_rich, 2, True, True),
    ("sharded-ws2-t2", 2, fx.build_sharded, 2, True, False),
    ("sharded-ws4-t4", 4, fx.build_sharded, 4, False, False),
    ("uneven-ws3", 3, fx.build_uneven, 1, True, False),
    ("per-item-ws4", 4, fx.build_per_item, 2, False, False),
    ("all-dtypes-ws1", 1, fx.build_all_dtypes, 2, True, False),
    ("zstd-ws2", 2, fx.build_zstd, 1, True, True),
    ("tiny-ws1-t3", 1, fx.build_tiny, 3, True, False),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_convert_matches_dcp_to_torch_save_byte_for_byte(run_cli, tmp_path, case):
    _, world_size, builder, threads, per_rank, zstd = case
    extensions = None
    if zstd:
        pytest.importorskip("zstandard")
        from torch.distributed.checkpoint._extension import ZStandard

        extensions = [ZStandard()]
    folder = tmp_path / "ckpt"
    fx.write_dcp(folder, world_size, builder, thread_count=threads, single_file_per_rank=per_rank,
                 extensions=extensions)
    ref, ours = _convert_and_compare(run_cli, folder, tmp_path, "--allow-opaque")
    assert ours == ref, f"{len(ours)} vs {len(ref)} bytes: loads equal but the files differ"


class OffTheAllowlist:
    """A user class: pickled by reference (test_dcp_convert.OffTheAllowlist), not on ckptkit's allowlist."""

    def __init__(self, v=0):
        self.v = v


def build_with_user_object(rank: int, world_size: int):
    sd = fx.build_plain(rank, world_size)
    sd["custom"] = OffTheAllowlist(3)
    return sd


def test_strict_mode_refuses_an_object_off_the_allowlist_and_leaves_no_file(run_cli, tmp_path):
    folder = tmp_path / "ckpt"
    fx.write_dcp(folder, 1, build_with_user_object)
    out = tmp_path / "out.pt"
    r = run_cli("convert", folder, out, "--to", "torch", "-q")
    assert r.returncode == 1, r
    assert "OffTheAllowlist" in r.stderr and "custom" in r.stderr, r
    assert not out.exists()
    # With --allow-opaque it travels as an opaque record that torch loads back as the object.
    r = run_cli("convert", folder, out, "--to", "torch", "-q", "--allow-opaque")
    assert r.returncode == 0, r
    got = torch.load(out, weights_only=False)
    assert isinstance(got["custom"], OffTheAllowlist) and got["custom"].v == 3


def test_safetensors_target_still_flattens_and_drops_objects(run_cli, tmp_path):
    from safetensors.torch import load_file

    folder = tmp_path / "ckpt"
    fx.write_dcp(folder, 2, fx.build_sharded)
    out = tmp_path / "out.safetensors"
    r = run_cli("convert", folder, out, "--to", "safetensors")
    assert r.returncode == 0, r
    got = load_file(out)
    ref = {k: v for k, v in fx.load_reference(folder).items() if isinstance(v, torch.Tensor)}
    assert sorted(got) == sorted(ref)
    for k in ref:
        assert fx.tensor_bytes(got[k]) == fx.tensor_bytes(ref[k]), k
    assert "step" in r.stderr + r.stdout  # the dropped object is named in a warning


def _peak_rss_of(cmd) -> int:
    """Peak RSS (bytes) of cmd alone: its ru_maxrss from os.wait4, taken in a
    small wrapper interpreter (a child forked from this torch-laden process
    would start with this process's resident pages and report those)."""
    wrapper = (
        "import os, subprocess, sys\n"
        "p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "_, status, ru = os.wait4(p.pid, 0)\n"
        "print(ru.ru_maxrss)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    out = subprocess.run([sys.executable, "-S", "-c", wrapper, *cmd], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1]) * 1024  # Linux: KiB


def test_convert_peak_rss_is_bounded_by_the_largest_tensor(cli_path, tmp_path):
    folder = tmp_path / "big"
    fx.write_dcp(folder, 2, build_big, thread_count=2, timeout_s=300)
    total = sum(f.stat().st_size for f in folder.iterdir())
    assert total > 256 * MiB
    out = tmp_path / "out.pt"
    rss = _peak_rss_of([cli_path, "convert", str(folder), str(out), "--to", "torch", "-q"])
    print(f"ckptkit convert DCP -> torch: peak RSS {rss / MiB:.1f} MiB for a {total / MiB:.0f} MiB checkpoint")
    assert out.stat().st_size > 256 * MiB
    # The 32 MiB column-sharded tensor is assembled in memory once, plus copy
    # buffers and the binary itself; a quarter of the checkpoint at most.
    assert rss < 96 * MiB, f"peak RSS {rss / MiB:.1f} MiB"
    # And the result is what torch writes.
    ref = tmp_path / "ref" / "out.pt"  # same stem: same archive folder name
    ref.parent.mkdir()
    _torch_reference(folder, ref)
    assert ref.stat().st_size == out.stat().st_size
    with open(ref, "rb") as fa, open(out, "rb") as fb:
        while True:
            x, y = fa.read(8 * MiB), fb.read(8 * MiB)
            assert x == y
            if not x:
                break


@pytest.mark.parametrize("paths,why", [
    ({"a": ("x",), "b": ("x", "y")}, "goes through element 0"),     # through a tensor leaf
    ({"a": ("x", 0), "b": ("x", "y")}, "indexes a list with a str"),  # str index into a list
    ({"a": ("x", -1)}, "list index -1"),                               # negative index
    ({"a": ("x", 1 << 40)}, "out of range"),                           # absurd padding
], ids=["through-leaf", "str-into-list", "negative-index", "huge-index"])
def test_conflicting_planner_paths_are_refused_and_leave_no_file(run_cli, tmp_path, paths, why):
    import pickle

    folder = tmp_path / "ckpt"
    fx.write_dcp(folder, 1, _build_two)
    md_path = folder / ".metadata"
    with open(md_path, "rb") as f:
        md = pickle.load(f)
    md.planner_data = {k: v for k, v in paths.items()}
    for k in ("a", "b"):
        md.planner_data.setdefault(k, (k,))
    with open(md_path, "wb") as f:
        pickle.dump(md, f)
    out = tmp_path / "out.pt"
    r = run_cli("convert", folder, out, "--to", "torch", "-q")
    assert r.returncode != 0, r
    assert "planner_data path" in r.stderr and why in r.stderr, r
    assert not out.exists()


def _build_two(rank: int, world_size: int):
    return {"a": torch.ones(2), "b": torch.zeros(3)}
