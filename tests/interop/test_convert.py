"""`ckptkit convert` (CLI and ckptkit.convert): the real libraries load our output."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

import ckptkit
from helpers import (SAFETENSORS_DTYPES, as_bytes, flatten, layouts, load_sharded_index,
                     random_tensor)

# dtypes both torch.save and safetensors hold, and that safetensors.torch can load.
_ST_LOADABLE = [d for d in SAFETENSORS_DTYPES if d not in ("float8_e8m0fnu", "float4_e2m1fn_x2")]


@pytest.fixture(params=["cli", "python"])
def convert(request, run_cli):
    """convert(src, dst, to, max_shard_size=None) via the CLI or the Python API.
    Returns (ok, detail)."""

    def via_cli(src, dst, to, max_shard_size=None):
        args = ["convert", src, dst, "--to", to]
        if max_shard_size is not None:
            args += ["--max-shard-size", str(max_shard_size)]
        r = run_cli(*args)
        return r.returncode == 0, r

    def via_python(src, dst, to, max_shard_size=None):
        try:
            return True, ckptkit.convert(src, dst, to=to, max_shard_size=max_shard_size)
        except Exception as e:  # noqa: BLE001 - the test asserts on it
            return False, e

    return via_cli if request.param == "cli" else via_python


def assert_same_tensors(got: dict, want: dict):
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        g = got[k]
        assert g.dtype == w.dtype, k
        assert tuple(g.shape) == tuple(w.shape), k
        assert as_bytes(g) == as_bytes(w), k


def _pt_for_safetensors(gen, path):
    """Every layout of every safetensors-loadable dtype, nested, torch.save'd."""
    obj = {d: layouts(d, gen) for d in _ST_LOADABLE}
    torch.save(obj, path)
    return flatten(torch.load(path, weights_only=True))


def test_pt_to_safetensors_loads_in_safetensors(convert, gen, tmp_path):
    src, dst = tmp_path / "a.pt", tmp_path / "b.safetensors"
    want = _pt_for_safetensors(gen, src)
    ok, detail = convert(src, dst, "safetensors")
    assert ok, detail
    assert_same_tensors(load_file(dst), want)


def test_safetensors_to_torch_loads_in_torch_weights_only_and_mmap(convert, gen, tmp_path):
    tensors = {f"{d}.w": random_tensor(d, (3, 4), gen) for d in SAFETENSORS_DTYPES}
    tensors.update({f"{d}.s": random_tensor(d, (), gen) for d in _ST_LOADABLE})
    tensors["empty"] = random_tensor("float32", (0, 2), gen)
    src, dst = tmp_path / "x.safetensors", tmp_path / "y.pt"
    save_file(tensors, src)
    ok, detail = convert(src, dst, "torch")
    assert ok, detail
    assert_same_tensors(flatten(torch.load(dst, weights_only=True)), tensors)
    assert_same_tensors(flatten(torch.load(dst, mmap=True, weights_only=True)), tensors)
    # And back through ckptkit's own reader.
    with ckptkit.open(dst) as ckpt:
        assert ckpt.format == "torch"
        assert sorted(ckpt.keys()) == sorted(tensors)


def test_convert_to_safetensors_is_byte_identical_to_save_file(convert, gen, tmp_path):
    """For contiguous, unshared tensors, our writer is safetensors' writer:
    same header order (alignment then name), same padding, same bytes."""
    tensors = {"z.last": random_tensor("int8", (5,), gen),
               "a.first": random_tensor("float32", (3, 3), gen),
               "m.mid": random_tensor("bfloat16", (7,), gen),
               "b.big": random_tensor("float64", (2, 2), gen),
               "s.scalar": random_tensor("int64", (), gen),
               "e.empty": random_tensor("float16", (0,), gen)}
    src = tmp_path / "src.pt"
    torch.save(tensors, src)
    dst = tmp_path / "out.safetensors"
    ok, detail = convert(src, dst, "safetensors")
    assert ok, detail
    ours = dst.read_bytes()
    # The converter writes {"format": "pt"} as transformers expects (format notes §4.2).
    ref = tmp_path / "ref.safetensors"
    save_file(tensors, ref, metadata={"format": "pt"})
    theirs = ref.read_bytes()
    assert ours == theirs, (
        f"header ours: {ours[8:8 + int.from_bytes(ours[:8], 'little')]!r}\n"
        f"header safetensors: {theirs[8:8 + int.from_bytes(theirs[:8], 'little')]!r}")


@pytest.mark.parametrize("to", ["safetensors", "torch"])
def test_sharded_output_loads_via_index(to, convert, gen, tmp_path):
    tensors = {f"layers.{i}.weight": random_tensor("float32", (16, 16), gen)  # 1 KiB each
               for i in range(10)}
    tensors["big"] = random_tensor("float32", (32, 32), gen)  # 4 KiB > limit: own shard
    src = tmp_path / "src.pt"
    torch.save(tensors, src)
    out = tmp_path / "sharded"
    limit = 3000
    ok, detail = convert(src, out, to, max_shard_size=limit)
    assert ok, detail
    if to == "safetensors":
        index = out / "model.safetensors.index.json"
        load = load_file
    else:
        index = out / "pytorch_model.bin.index.json"
        load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    assert index.exists(), sorted(os.listdir(out))
    got = load_sharded_index(str(index), load)
    assert_same_tensors(got, tensors)
    meta = json.loads(index.read_text())
    assert meta["metadata"]["total_size"] == sum(t.numel() * t.element_size()
                                                  for t in tensors.values())
    shards = sorted(set(meta["weight_map"].values()))
    assert len(shards) >= 4
    for shard in shards:
        keys = [k for k, v in meta["weight_map"].items() if v == shard]
        size = sum(tensors[k].numel() * tensors[k].element_size() for k in keys)
        assert size <= limit or len(keys) == 1, (shard, keys, size)
    # ckptkit reads its own sharded output too.
    with ckptkit.open(index) as ckpt:
        assert sorted(ckpt.keys()) == sorted(tensors)


def test_unsupported_dtype_for_safetensors_fails_and_leaves_no_output(convert, gen, tmp_path):
    src, dst = tmp_path / "c.pt", tmp_path / "c.safetensors"
    torch.save({"ok": torch.ones(2), "c128": random_tensor("complex128", (2,), gen)}, src)
    ok, detail = convert(src, dst, "safetensors")
    assert not ok
    if isinstance(detail, Exception):
        assert isinstance(detail, ckptkit.UnsupportedError), repr(detail)
        assert "complex128" in str(detail)
    else:
        assert detail.returncode == 1, detail
    assert not dst.exists()


def test_hostile_input_refused_unless_allow_opaque(gen, tmp_path):
    from test_python_api import _hostile_pt

    path, marker = _hostile_pt(tmp_path)
    with pytest.raises(ckptkit.UnsupportedError):
        ckptkit.convert(path, tmp_path / "o.safetensors", to="safetensors")
    assert not (tmp_path / "o.safetensors").exists()
    report = ckptkit.convert(path, tmp_path / "o.safetensors", to="safetensors",
                             allow_opaque=True)
    assert load_file(tmp_path / "o.safetensors").keys() == {"w"}
    assert report["warnings"], report
    assert not marker.exists()


# (text, bytes as transformers' convert_file_size_to_int reads it: a final lowercase "b" on a decimal unit
# counts bits; digits alone are bytes, as an int is to transformers).
_SIZES = [("3KB", 3000), ("3kB", 3000), ("24Kb", 3000), ("24kb", 3000), ("3KiB", 3072), ("3kib", 3072),
          ("3000", 3000)]


@pytest.mark.parametrize("text,nbytes", _SIZES)
def test_shard_size_means_the_same_to_cli_python_and_transformers(text, nbytes, run_cli, gen, tmp_path):
    """One parser (ckpt::ParseSize) behind --max-shard-size and max_shard_size=, str or int."""
    from ckptkit import _core

    assert _core.parse_size(text) == nbytes
    try:
        from transformers.utils.hub import convert_file_size_to_int
    except ImportError:
        convert_file_size_to_int = None
    if convert_file_size_to_int is not None and not text.isdigit():
        assert convert_file_size_to_int(text) == nbytes
    tensors = {f"layers.{i}.weight": random_tensor("float32", (16, 16), gen) for i in range(6)}  # 1 KiB each
    src = tmp_path / "src.pt"
    torch.save(tensors, src)
    r = run_cli("convert", src, tmp_path / "cli", "--to", "safetensors", "--max-shard-size", text, "--json")
    assert r.returncode == 0, r
    layouts_seen = [json.loads((tmp_path / "cli" / "model.safetensors.index.json").read_text())["weight_map"]]
    for i, size in enumerate([text, nbytes]):
        ckptkit.convert(src, tmp_path / f"py{i}", to="safetensors", max_shard_size=size)
        index = tmp_path / f"py{i}" / "model.safetensors.index.json"
        layouts_seen.append(json.loads(index.read_text())["weight_map"])
    assert layouts_seen[0] == layouts_seen[1] == layouts_seen[2]
    # 1 KiB tensors: two per shard under 3000 bytes, three under 3072 (transformers' rule: a shard is full
    # when the next tensor would take it past the limit).
    assert len(set(layouts_seen[0].values())) == (3 if nbytes < 3072 else 2)


def test_python_convert_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="safetensors, torch, dcp, torch_dist, hf"):
        ckptkit.convert(tmp_path / "a.pt", tmp_path / "b", to="onnx")
    with pytest.raises(ValueError, match="max_shard_size 'lots'"):
        ckptkit.convert(tmp_path / "a.pt", tmp_path / "b", max_shard_size="lots")
    for bad in (0, -5, "0GB", "5TB", "5 GB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            ckptkit.convert(tmp_path / "a.pt", tmp_path / "b", max_shard_size=bad)
    for bad in (True, 5.0, b"5GB"):
        with pytest.raises(TypeError, match="max_shard_size"):
            ckptkit.convert(tmp_path / "a.pt", tmp_path / "b", max_shard_size=bad)
    with pytest.raises(FileNotFoundError):
        ckptkit.convert(tmp_path / "absent.pt", tmp_path / "b.safetensors")
