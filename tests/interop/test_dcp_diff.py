"""`ckptkit diff` across formats with a real torch DCP checkpoint on one side:
DCP vs torch's own dcp_to_torch_save output, vs ckptkit's safetensors, and a
perturbed DCP checkpoint whose difference must be reported exactly."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

import dcp_fixtures as fx


def build_sharded_perturbed(rank: int, world_size: int):
    sd = fx.build_sharded(rank, world_size)
    from torch.distributed.tensor import DTensor, Shard

    full = fx.make_tensor("float32", (8, 3), seed=21).clone()
    full[5, 1] += 0.25  # one element of a row-sharded tensor, held by the last rank
    sd["row_sharded"] = DTensor.from_local(
        full.chunk(world_size, 0)[rank].clone(), sd["row_sharded"].device_mesh, [Shard(0)], run_check=False,
        shape=full.shape, stride=full.stride())
    return sd


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("dcpdiff")
    a, b = root / "a", root / "b"
    fx.write_dcp(a, 2, fx.build_sharded, thread_count=2)
    fx.write_dcp(b, 2, build_sharded_perturbed, thread_count=1)
    ref = root / "ref" / "a.pt"
    ref.parent.mkdir()
    dcp_to_torch_save(a, ref)
    return a, b, ref


def test_dcp_vs_torchs_own_conversion_is_identical(pair, run_cli):
    a, _, ref = pair
    r = run_cli("diff", a, ref, "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["identical"] and len(doc["tensors"]) == 7


def test_dcp_vs_safetensors_tensors_only(pair, run_cli, tmp_path):
    a, _, _ = pair
    out = tmp_path / "a.safetensors"
    assert run_cli("convert", a, out, "--to", "safetensors", "-q").returncode == 0
    assert run_cli("diff", a, out).returncode == 1  # safetensors drops the two objects
    r = run_cli("diff", a, out, "--tensors-only")
    assert r.returncode == 0, r


def test_perturbed_dcp_reports_the_one_element(pair, run_cli):
    a, b, _ = pair
    r = run_cli("diff", a, b, "--json")
    assert r.returncode == 1, r
    doc = json.loads(r.stdout)
    changed = [t for t in doc["tensors"] if not t["equal"]]
    assert [t["key"] for t in changed] == ["row_sharded"]
    assert changed[0]["mismatched"] == 1
    assert changed[0]["max_abs"] == pytest.approx(0.25, rel=1e-6)
    r = run_cli("diff", a, b, "--atol", "0.3")
    assert r.returncode == 0, r
