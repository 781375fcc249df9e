"""Megatron-Core torch_dist checkpoints written live by real megatron-core (PyPI, CPU, gloo),
read by ckptkit: `inspect --json`, `get`, `verify` and the Python API agree with
megatron's own `dist_checkpointing.load` bit for bit.

Saving runs megatron's real strategies (TorchDistSaveShardedStrategy, the fully-parallel
wrapper, the async queue); tests/interop/megatron_fixtures.py installs a small CUDA shim
for bookkeeping tensors only (see that file).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

mc = pytest.importorskip("megatron.core")
import megatron_fixtures as mf  # noqa: E402

import ckptkit  # noqa: E402


def _save(root, **kw):
    spec = mf.HandbuiltSpec(root=str(root), **kw)
    mf.run_ranks(spec.tp * spec.pp * spec.dp, mf.save_handbuilt, spec)
    return root


@pytest.fixture(scope="module", params=["sync", "fps_async_threads2"])
def ckpt(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"mc_{request.param}")
    if request.param == "sync":
        _save(root, tp=2, pp=2, dp=1, ep=1)
    else:
        _save(root, tp=2, pp=1, dp=2, ep=2, optim="dp_reshardable", fully_parallel=True, async_save=True,
              thread_count=2)
    return root


@pytest.fixture(scope="module")
def reference(ckpt):
    # megatron's loader in a child process: it initializes torch.distributed.
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_load_reference, (str(mf.iter_dir(str(ckpt), 10)),))


def _load_reference(iter_dir):
    tensors, objects, common = mf.load_everything(iter_dir)
    raw = {k: (str(v.dtype).replace("torch.", ""), list(v.shape), v.contiguous().view(torch.uint8).numpy().tobytes()
               if v.numel() else b"") for k, v in tensors.items()}
    return raw, sorted(objects), sorted(common)


def test_inspect_json_matches_megatron(ckpt, reference, run_cli):
    tensors, objects, _ = reference
    r = run_cli("inspect", ckpt, "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["format"] == "megatron-torch_dist"
    assert doc["iteration"] == 10
    got = {t["key"]: (t["dtype"], t["shape"]) for t in doc["tensors"]}
    assert got == {k: (d, s) for k, (d, s, _) in tensors.items()}
    files = sorted(f for f in os.listdir(mf.iter_dir(str(ckpt), 10)) if f.endswith(".distcp"))
    assert sorted(f["name"] for f in doc["files"]) == files
    for f in doc["files"]:
        rank, writer = f["name"][2:-len(".distcp")].split("_")
        assert (f["rank"], f["writer"]) == (int(rank), int(writer))
        assert f["bytes"] == os.path.getsize(os.path.join(mf.iter_dir(str(ckpt), 10), f["name"]))
    summary = doc["details"]["megatron"]["summary"]
    assert json.dumps(summary)  # present and serializable
    obj_keys = {o["key"] for o in doc["objects"]}
    for k in objects:
        if k != "common_state/shard_0_1":
            assert k in obj_keys


def test_python_api_reads_every_tensor_bit_exact(ckpt, reference):
    tensors, _, _ = reference
    with ckptkit.open(ckpt, mode="inspect") as c:
        assert set(c.keys()) == set(tensors)
        for k, (dtype, shape, raw) in tensors.items():
            assert c.info(k).dtype == dtype
            assert c.read_bytes(k).tobytes() == raw, k


def test_get_slice_of_a_stacked_layer_tensor(ckpt, reference, run_cli, tmp_path):
    tensors, _, _ = reference
    key = next(k for k, (_, s, _) in tensors.items() if k.startswith("decoder.layers.") and len(s) == 3)
    dtype, shape, raw = tensors[key]
    full = torch.frombuffer(bytearray(raw), dtype=getattr(torch, dtype)).reshape(shape)
    out = tmp_path / "layer1.pt"
    r = run_cli("get", ckpt, key, "--slice", "1", "-o", out)
    assert r.returncode == 0, r
    got = torch.load(out, weights_only=True)
    got = next(iter(got.values())) if isinstance(got, dict) else got
    assert torch.equal(got, full[1])


def test_verify_deep_is_clean(ckpt, run_cli):
    r = run_cli("verify", ckpt, "--deep", "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["ok"] and doc["format"] == "megatron-torch_dist" and doc["bytes_read"] > 0


def test_bundled_sample_matches_megatron_load():
    """examples/torch_dist (real GPTModel, TP2/PP2/DP2) read by ckptkit equals megatron's load."""
    import multiprocessing as mp

    here = os.path.dirname(os.path.abspath(__file__))
    sample = os.path.join(here, "..", "..", "examples", "torch_dist")
    with mp.get_context("spawn").Pool(1) as pool:
        tensors, _, _ = pool.apply(_load_reference, (os.path.join(sample, "iter_0000010"),))
    with ckptkit.open(sample, mode="inspect") as c:
        assert set(c.keys()) == set(tensors)
        for k, (dtype, shape, raw) in tensors.items():
            assert c.read_bytes(k).tobytes() == raw, k
