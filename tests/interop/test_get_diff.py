"""`ckptkit get` and `ckptkit diff` against real torch, numpy and safetensors.

get: every output (.npy via np.load, .safetensors via load_file, .pt via
torch.load(weights_only=True)) must equal torch indexing bit for bit.
diff: known perturbations of torch.save files are reported exactly; a .pt
and its converted .safetensors are identical.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import NUMPY_DTYPES, dtype_name, random_tensor

# (--slice spec, the same index in Python) for a tensor of shape (4, 6, 8).
SLICES = [
    (None, ()),
    ("0:2,:,5", (slice(0, 2), slice(None), 5)),
    (":, -3:", (slice(None), slice(-3, None))),
    ("-1", (-1,)),
    ("1:3, ..., -2", (slice(1, 3), Ellipsis, -2)),
    ("-100:100, 1, 2:7", (slice(-100, 100), 1, slice(2, 7))),
    ("3:1", (slice(3, 1),)),
    ("2, 3, 4", (2, 3, 4)),
]


def _bytes(t: torch.Tensor) -> bytes:
    """Contiguous little-endian bytes of t (NaN- and -0.0-safe comparison)."""
    t = t.contiguous()
    if t.numel() == 0:
        return b""
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def _assert_same(got: torch.Tensor, want: torch.Tensor):
    assert got.dtype == want.dtype
    assert tuple(got.shape) == tuple(want.shape)
    assert _bytes(got) == _bytes(want)


def _load(path, fmt: str, key: str) -> torch.Tensor:
    if fmt == "npy":
        return torch.from_numpy(np.load(path, allow_pickle=False))
    if fmt == "safetensors":
        d = load_file(path)
    else:
        d = torch.load(path, weights_only=True)
    assert list(d) == [key]
    return d[key]


def _save(sd, path):
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    else:
        torch.save(sd, path)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int64", "complex64", "bool", "float8_e4m3fn"])
@pytest.mark.parametrize("src", ["pt", "safetensors"])
def test_get_equals_torch_indexing(dtype, src, tmp_path, run_cli):
    # ~50 CLI runs per case: one fixed seed rather than the seed matrix.
    gen = torch.Generator()
    gen.manual_seed(1234)
    base = random_tensor(dtype, (4, 6, 8), gen)
    # In the .pt, "view" is a strided view (a permutation of a bigger storage).
    view = random_tensor(dtype, (8, 4, 6), gen).permute(1, 2, 0)
    sd = {"w": base, "view": view}
    path = tmp_path / f"m.{src}"
    _save(sd, path)
    outs = ["safetensors", "pt"] + (["npy"] if dtype in NUMPY_DTYPES else [])
    for key, t in sd.items():
        for spec, idx in SLICES:
            want = t[idx]
            for fmt in outs:
                out = tmp_path / f"out.{fmt}"
                args = ["get", path, key, "-o", out, "--json"]
                if spec is not None:
                    args += ["--slice", spec]
                r = run_cli(*args)
                assert r.returncode == 0, (key, spec, fmt, r)
                doc = json.loads(r.stdout)
                assert doc["key"] == key and doc["format"] == fmt
                assert doc["dtype"] == dtype_name(t.dtype)
                assert doc["shape"] == list(want.shape), (spec, doc)
                assert doc["nbytes"] == want.numel() * want.element_size()
                assert (doc["slice"] is None) == (spec is None)
                _assert_same(_load(out, fmt, key), want)


def test_get_npy_header_loads_with_numpy_metadata(tmp_path, run_cli):
    t = torch.arange(24, dtype=torch.float16).reshape(2, 3, 4)
    path = tmp_path / "m.pt"
    torch.save({"x": t}, path)
    r = run_cli("get", path, "x", "--slice", "1", "-o", tmp_path / "x.npy")
    assert r.returncode == 0, r
    arr = np.load(tmp_path / "x.npy")
    assert arr.dtype == np.float16 and arr.shape == (3, 4) and arr.flags.c_contiguous
    np.testing.assert_array_equal(arr, t[1].numpy())
    # Same bytes as numpy.save of the same array (header included).
    np.save(tmp_path / "ref.npy", t[1].numpy())
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()


def test_get_unknown_key_suggests_and_exits_2(tmp_path, run_cli):
    path = tmp_path / "m.pt"
    torch.save({"decoder.weight": torch.ones(2), "decoder.bias": torch.ones(2)}, path)
    r = run_cli("get", path, "decoder.weigth", "-o", tmp_path / "x.npy")
    assert r.returncode == 2, r
    assert "no tensor named 'decoder.weigth'" in r.stderr and "'decoder.weight'" in r.stderr, r
    assert not (tmp_path / "x.npy").exists()


def test_get_refusals_exit_2(tmp_path, run_cli):
    path = tmp_path / "m.pt"
    torch.save({"h": torch.ones(2, 3, dtype=torch.bfloat16)}, path)
    r = run_cli("get", path, "h", "-o", tmp_path / "h.npy")
    assert r.returncode == 2, r
    assert "bfloat16" in r.stderr and ".safetensors" in r.stderr, r
    assert not (tmp_path / "h.npy").exists()
    for spec in ["0:2:2", "5", "1,2,3", "a"]:
        r = run_cli("get", path, "h", "--slice", spec, "-o", tmp_path / "h.pt")
        assert r.returncode == 2, (spec, r)
    r = run_cli("get", path, "h", "-o", tmp_path / "h.txt")
    assert r.returncode == 2 and "--format" in r.stderr, r
    r = run_cli("get", path, "h", "-o", tmp_path / "h.txt", "--format", "pt")
    assert r.returncode == 0, r
    _assert_same(torch.load(tmp_path / "h.txt", weights_only=True)["h"], torch.ones(2, 3, dtype=torch.bfloat16))


# ------------------------------------------------------------------ diff


def _pair(tmp_path, gen):
    a = {
        "same": random_tensor("float32", (16, 8), gen),
        "bumped": torch.randn(64, 32, generator=gen),
        "halfbump": torch.randn(10, generator=gen).to(torch.bfloat16),
        "nan_both": torch.tensor([1.0, float("nan"), float("inf"), -0.0]),
        "ints": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "removed": torch.zeros(3),
        "retyped": torch.ones(4),
        "reshaped": torch.ones(2, 6),
    }
    b = {k: v.clone() for k, v in a.items()}
    b["bumped"][7, 3] += 0.25
    b["bumped"][60, 0] -= 0.125
    b["halfbump"][4] = b["halfbump"][4] * 2 + 1
    b["nan_both"][3] = 0.0  # -0.0 vs 0.0: equal
    b["ints"][2, 1] = -100
    del b["removed"]
    b["added"] = torch.ones(1)
    b["retyped"] = b["retyped"].half()
    b["reshaped"] = b["reshaped"].reshape(3, 4)
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(a, pa)
    torch.save(b, pb)
    return a, b, pa, pb


def _max_abs(x: torch.Tensor, y: torch.Tensor) -> float:
    return (x.double() - y.double()).abs().max().item()


def test_diff_reports_exactly_the_perturbations(gen, tmp_path, run_cli):
    a, b, pa, pb = _pair(tmp_path, gen)
    r = run_cli("diff", pa, pb, "--json")
    assert r.returncode == 1, r
    doc = json.loads(r.stdout)
    assert doc["identical"] is False
    assert doc["only_in_a"] == ["removed"]
    assert doc["only_in_b"] == ["added"]
    assert doc["dtype_changed"] == [{"key": "retyped", "a": "float32", "b": "float16"}]
    assert doc["shape_changed"] == [{"key": "reshaped", "a": "[2, 6]", "b": "[3, 4]"}]
    assert doc["objects_changed"] == []
    tensors = {t["key"]: t for t in doc["tensors"]}
    assert sorted(tensors) == ["bumped", "halfbump", "ints", "nan_both", "same"]
    differing = sorted(k for k, t in tensors.items() if not t["equal"])
    assert differing == ["bumped", "halfbump", "ints"]
    for k in ("bumped", "halfbump", "ints"):
        assert tensors[k]["max_abs"] == _max_abs(a[k], b[k]), k
        assert tensors[k]["numel"] == a[k].numel()
        assert tensors[k]["dtype"] == dtype_name(a[k].dtype)
        assert tensors[k]["shape"] == list(a[k].shape)
    assert tensors["bumped"]["mismatched"] == 2
    assert tensors["halfbump"]["mismatched"] == 1
    assert tensors["ints"]["mismatched"] == 1 and tensors["ints"]["max_abs"] == 109
    assert tensors["nan_both"]["equal"] and tensors["nan_both"]["max_abs"] == 0


def test_diff_tolerance_and_text_output(gen, tmp_path, run_cli):
    a = {"w": torch.randn(100, generator=gen, dtype=torch.float64)}
    b = {"w": a["w"].clone()}
    b["w"][10] += 0.25
    pa, pb = tmp_path / "a.pt", tmp_path / "b.safetensors"
    torch.save(a, pa)
    save_file(b, pb)
    r = run_cli("diff", pa, pb)
    assert r.returncode == 1, r
    assert "values" in r.stdout and "1 of 100 differ" in r.stdout, r
    assert r.stdout.strip().splitlines()[-1].startswith("different:"), r
    assert r.stderr == "", r  # no progress: stderr is not a terminal
    want = _max_abs(a["w"], b["w"])
    assert run_cli("diff", pa, pb, "--atol", str(want)).returncode == 0
    assert run_cli("diff", pa, pb, "--atol", str(want / 2)).returncode == 1
    # numpy.allclose(a, b, rtol, atol=0) agrees with the exit code.
    for rtol in (1e-3, 1.0):
        expect_close = np.allclose(a["w"].numpy(), b["w"].numpy(), rtol=rtol, atol=0)
        rc = run_cli("diff", pa, pb, "--rtol", str(rtol)).returncode
        assert rc == (0 if expect_close else 1), rtol
    assert run_cli("diff", pa, pb, "--keys-only").returncode == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float8_e5m2", "complex64", "int8", "bool"])
def test_diff_pt_vs_converted_safetensors_is_identical(dtype, gen, tmp_path, run_cli):
    sd = {"a.w": random_tensor(dtype, (5, 7), gen), "b": random_tensor(dtype, (3,), gen),
          "view": random_tensor(dtype, (7, 5), gen).t()}
    pt = tmp_path / "m.pt"
    torch.save(sd, pt)
    st = tmp_path / "m.safetensors"
    r = run_cli("convert", pt, st, "--to", "safetensors", "-q")
    assert r.returncode == 0, r
    r = run_cli("diff", pt, st, "--json")
    assert r.returncode == 0, r
    doc = json.loads(r.stdout)
    assert doc["identical"] is True
    assert sorted(t["key"] for t in doc["tensors"]) == ["a.w", "b", "view"]
    assert all(t["equal"] and t["mismatched"] == 0 for t in doc["tensors"])


def test_diff_objects_and_errors(tmp_path, run_cli):
    pa, pb = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.ones(2), "iteration": 10, "lr": 0.5}, pa)
    torch.save({"w": torch.ones(2), "iteration": 11, "lr": "0.5"}, pb)
    r = run_cli("diff", pa, pb, "--json")
    assert r.returncode == 1, r
    changed = {c["key"]: c["change"] for c in json.loads(r.stdout)["objects_changed"]}
    assert changed == {"iteration": "repr", "lr": "type"}
    assert run_cli("diff", pa, tmp_path / "absent.pt").returncode == 2
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04garbage")
    assert run_cli("diff", pa, tmp_path / "junk.pt").returncode == 2
    assert run_cli("diff", pa, pb, "--atol", "-1").returncode == 2
