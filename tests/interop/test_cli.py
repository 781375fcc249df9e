"""The `ckptkit` executable: inspect --json against torch's view, exit codes."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from helpers import dtype_name, flatten, layouts, random_tensor
from test_python_api import _corrupt_pt, _corrupt_safetensors, _hostile_pt


def _torch_table(path):
    out = []
    for k, t in flatten(torch.load(path, weights_only=True)).items():
        out.append({"key": k, "dtype": dtype_name(t.dtype), "shape": list(t.shape),
                    "nbytes": t.numel() * t.element_size()})
    return out


def _cli_table(doc):
    return [{k: t[k] for k in ("key", "dtype", "shape", "nbytes")} for t in doc["tensors"]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float8_e5m2", "complex32", "bool"])
def test_inspect_json_matches_torch(dtype, gen, tmp_path, run_cli):
    path = tmp_path / "m.pt"
    torch.save(layouts(dtype, gen), path)
    r = run_cli("inspect", path, "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["format"] == "torch"
    assert _cli_table(doc) == _torch_table(path)


def test_inspect_json_safetensors(gen, tmp_path, run_cli):
    t = {"b": random_tensor("bfloat16", (2, 3), gen), "a": random_tensor("int32", (4,), gen)}
    path = tmp_path / "m.safetensors"
    save_file(t, path)
    r = run_cli("inspect", path, "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["format"] == "safetensors"
    got = {e["key"]: e for e in _cli_table(doc)}
    assert got == {k: {"key": k, "dtype": dtype_name(v.dtype), "shape": list(v.shape),
                       "nbytes": v.numel() * v.element_size()} for k, v in t.items()}


def test_inspect_text_ok(gen, tmp_path, run_cli):
    path = tmp_path / "m.pt"
    torch.save({"layer.weight": random_tensor("float16", (3, 2), gen)}, path)
    r = run_cli("inspect", path)
    assert r.returncode == 0, r
    assert "layer.weight" in r.stdout and "float16" in r.stdout


@pytest.mark.parametrize("make", [_corrupt_safetensors, _corrupt_pt], ids=["safetensors", "pt"])
def test_corrupt_file_exits_1_naming_file(make, tmp_path, run_cli):
    path = make(tmp_path)
    r = run_cli("inspect", path, "--json")
    assert r.returncode == 1, r
    assert path.name in r.stderr, r


def test_missing_file_exits_2(tmp_path, run_cli):
    r = run_cli("inspect", tmp_path / "absent.pt")
    assert r.returncode == 2, r
    assert "absent.pt" in r.stderr, r


def test_unreadable_file_exits_2(tmp_path, run_cli):
    if os.geteuid() == 0:
        pytest.skip("root can read mode-000 files")
    p = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1)}, p)
    p.chmod(0)
    r = run_cli("inspect", p)
    assert r.returncode == 2, r


@pytest.mark.parametrize("args", [["inspect"], ["no-such-command"], ["inspect", "--no-such-flag", "x"]],
                         ids=["missing-arg", "unknown-command", "unknown-flag"])
def test_usage_errors_exit_2(args, run_cli):
    r = run_cli(*args)
    assert r.returncode == 2, r


def test_inspect_hostile_shows_global_exit_0_runs_nothing(tmp_path, run_cli):
    path, marker = _hostile_pt(tmp_path)
    r = run_cli("inspect", path, "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert [t["key"] for t in doc["tensors"]] == ["w"]
    opaque = [o for o in doc["objects"] if o["opaque"]]
    assert opaque and "system" in json.dumps(opaque), doc["objects"]
    assert not marker.exists(), "ckptkit executed the pickle payload"
