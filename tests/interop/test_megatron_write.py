"""`ckptkit convert ... --to torch_dist` against real megatron-core.

A sharded state dict (TP-split tensors, replicas, stacked layers, ShardedObjects, optimizer
state, a common dict) is saved by the REAL `dist_checkpointing.save` from 4 gloo ranks
(megatron_fixtures.save_handbuilt, TP2 x PP2), converted by ckptkit to torch_dist (every rank's
files merged into rank 0's, --thread-count 3), then loaded with stock `dist_checkpointing.load`
on a DIFFERENT world size (2 ranks, TP2 x PP1) with the same key spec: every rank gets exactly
what the same load of the original gives (tensors bit for bit, ShardedObjects, the common dict).
`ckptkit verify` passes on the output and `ckptkit diff` finds it identical to the original.
torch.save and safetensors files converted to torch_dist load with a matching sharded state
dict (ShardedTensor.from_rank_offsets of the full tensors), the torch.save's non-tensor values
coming back through the common dict.

core 0.16.1 runs in this interpreter. The 0.19 layout is checked with megatron-core 0.19.x in
another interpreter (it needs its own venv: `pip install --ignore-requires-python
megatron-core==0.19.2` plus a Python-3.11 numpy wheel): set CKPTKIT_MCORE019_PYTHON to its
python, else those tests skip.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import subprocess

import pytest
import torch

mc = pytest.importorskip("megatron.core")
import megatron_fixtures as mf  # noqa: E402
import megatron_write_fixtures as wf  # noqa: E402
from megatron_write_fixtures import canon  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
MC019_PYTHON = os.environ.get("CKPTKIT_MCORE019_PYTHON", "")
ITER = 10


def _in_child(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(fn, args)



# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A Megatron-LM root written by real megatron-core from 4 ranks (TP2 x PP2)."""
    root = tmp_path_factory.mktemp("mc_orig")
    spec = mf.HandbuiltSpec(root=str(root), tp=2, pp=2, dp=1, ep=1)
    mf.run_ranks(4, mf.save_handbuilt, spec)
    return root


@pytest.fixture(scope="module")
def reference(original, tmp_path_factory):
    return wf.load_in_ranks(mf.iter_dir(str(original), ITER), tmp_path_factory.mktemp("ref_load"))


@pytest.fixture(scope="module")
def converted016(original, tmp_path_factory, cli_path):
    out = tmp_path_factory.mktemp("conv016") / "root"
    r = subprocess.run([cli_path, "convert", str(original), str(out), "--to", "torch_dist",
                        "--megatron-version", "0.16", "--thread-count", "3", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------
# core 0.16.1
# ---------------------------------------------------------------------------------------------
def test_convert_merges_ranks_into_rank0_files(original, converted016):
    out, report = converted016
    it = mf.iter_dir(str(out), ITER)
    assert sorted(os.listdir(out)) == ["iter_0000010", "latest_checkpointed_iteration.txt"]
    assert sorted(os.listdir(it)) == [".metadata", "__0_0.distcp", "__0_1.distcp", "__0_2.distcp",
                                      "ckptkit-manifest__0_.json", "common.pt", "metadata.json"]
    with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "rb") as f:
        assert f.read() == b"10"
    orig_it = mf.iter_dir(str(original), ITER)
    for name in ("metadata.json", "common.pt"):
        with open(os.path.join(it, name), "rb") as a, open(os.path.join(orig_it, name), "rb") as b:
            assert a.read() == b.read(), name
    assert report["files"][-1].endswith("latest_checkpointed_iteration.txt")
    assert report["files"][-2].endswith("metadata.json")


def test_stock_load_into_another_world_size_matches_the_original(original, converted016, reference,
                                                                 tmp_path):
    out, _ = converted016
    got = wf.load_in_ranks(mf.iter_dir(str(out), ITER), tmp_path / "load")
    assert len(got) == len(reference) == 2
    for rank, (g, want) in enumerate(zip(got, reference)):
        assert g == want, f"rank {rank}"
    # The reference is not the request: it was zeroed before loading.
    flat = dict(reference[0][1])
    assert "'model'" in flat and "'rng'" in flat and "'args'" in flat


def test_verify_and_diff(original, converted016, run_cli):
    out, _ = converted016
    r = run_cli("verify", out)
    assert r.returncode == 0, r
    r = run_cli("diff", original, out)
    assert r.returncode == 0, r


def test_torch_save_state_dict_loads_back_whole(tmp_path, run_cli):
    g = torch.Generator().manual_seed(5)
    sd = {
        "w": torch.randn(4, 6, generator=g),
        "nested": {"b": torch.randn(3, generator=g).to(torch.bfloat16), "deep": {"c": torch.arange(5)}},
        "iteration": 3,
        "note": "run é",
        "args": argparse.Namespace(lr=0.1, layers=2),
        "hparams": {"lr": 0.5, "betas": (0.9, 0.99)},
    }
    torch.save(sd, tmp_path / "sd.pt")
    r = run_cli("convert", tmp_path / "sd.pt", tmp_path / "out", "--to", "torch_dist", "--megatron-version", "0.16")
    assert r.returncode == 0, r
    got = pickle.loads(_in_child(wf.load_full_tensors, str(tmp_path / "out"), json.dumps(wf.spec_of(sd))))
    want = canon(sd)
    # megatron's merge appends the loaded keys after the common ones: compare as dicts.
    assert dict(got[1]) == dict(want[1])


def test_safetensors_loads_back(tmp_path, run_cli):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(6)
    sd = {"a.weight": torch.randn(8, 4, generator=g).to(torch.float16), "a.bias": torch.randn(8, generator=g),
          "emb": torch.randint(0, 100, (3, 3), generator=g)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    r = run_cli("convert", tmp_path / "m.safetensors", tmp_path / "out", "--to", "torch_dist",
                "--megatron-version", "0.16", "--iteration", "7")
    assert r.returncode == 0, r
    with open(tmp_path / "out" / "latest_checkpointed_iteration.txt") as f:
        assert f.read() == "7"
    spec = {k: {"__key__": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
            for k, v in sd.items()}
    got = pickle.loads(_in_child(wf.load_full_tensors, str(mf.iter_dir(str(tmp_path / "out"), 7)), json.dumps(spec)))
    assert dict(got[1]) == dict(canon(sd)[1])


# ---------------------------------------------------------------------------------------------
# core 0.19 (another interpreter)
# ---------------------------------------------------------------------------------------------
needs_019 = pytest.mark.skipif(
    not MC019_PYTHON,
    reason="CKPTKIT_MCORE019_PYTHON is not set: point it at a python with megatron-core 0.19.x "
           "(pip install --ignore-requires-python megatron-core==0.19.2) to check the 0.19 layout",
)

_LOAD_019 = r"""
import json, os, pickle, sys
sys.path.insert(0, sys.argv[1])
import megatron.core
import megatron_write_fixtures as wf
assert megatron.core.__version__.startswith("0.19"), megatron.core.__version__
mode, ckpt, arg, out = sys.argv[2:6]
if mode == "full":
    res = wf.load_full_tensors(ckpt, arg)
    open(out, "wb").write(res)
else:
    res = wf.load_in_ranks(ckpt, arg)
    open(out, "wb").write(pickle.dumps(res))
"""


def _run_019(mode, ckpt, arg, out):
    r = subprocess.run([MC019_PYTHON, "-c", _LOAD_019, HERE, mode, str(ckpt), str(arg), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    with open(out, "rb") as f:
        return pickle.loads(f.read())


@needs_019
def test_core019_layout_loads_in_core019_like_the_original(original, reference, tmp_path, cli_path):
    out = tmp_path / "root"
    r = subprocess.run([cli_path, "convert", str(original), str(out), "--to", "torch_dist",
                        "--megatron-version", "0.19", "--thread-count", "2"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    it = mf.iter_dir(str(out), ITER)
    assert "common.pt" not in os.listdir(it)
    with open(os.path.join(it, "metadata.json")) as f:
        assert f.read() == '{"sharded_backend": "torch_dist", "sharded_backend_version": 1}'
    got = _run_019("ranks", it, tmp_path / "load", tmp_path / "res.pkl")
    assert got == reference


@needs_019
def test_core019_layout_of_a_torch_save_loads_back_whole(tmp_path, run_cli):
    sd = {"w": torch.arange(12.0).reshape(3, 4), "sub": {"v": torch.ones(2, dtype=torch.int32)}, "step": 9}
    torch.save(sd, tmp_path / "sd.pt")
    r = run_cli("convert", tmp_path / "sd.pt", tmp_path / "out", "--to", "torch_dist")  # default 0.19
    assert r.returncode == 0, r
    got = _run_019("full", tmp_path / "out", json.dumps(wf.spec_of(sd)), tmp_path / "res.pkl")
    assert dict(got[1]) == dict(canon(sd)[1])
