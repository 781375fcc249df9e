"""ckptkit.save_file against the real writers: byte-identical to
safetensors.torch.save_file and torch.save, and loadable by safetensors.load_file
and torch.load (weights_only=True, mmap=True)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

import ckptkit
from helpers import SAFETENSORS_DTYPES, TORCH_SAVE_DTYPES, as_bytes, random_tensor, tdtype


def _read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _assert_same_file(got_path, want_path):
    got, want = _read(got_path), _read(want_path)
    assert len(got) == len(want), f"{got_path}: {len(got)} bytes, reference {len(want)}"
    if got != want:
        first = next(i for i in range(len(got)) if got[i] != want[i])
        raise AssertionError(f"{got_path}: differs from the reference first at byte {first}: "
                             f"{got[max(0, first - 16):first + 16]!r} vs "
                             f"{want[max(0, first - 16):first + 16]!r}")


def _owned(sd):
    """What save_file writes for each tensor: its elements, contiguous, in a storage of its own
    (torch.save would otherwise write the whole storage a view looks into)."""
    return {k: v.detach().clone(memory_format=torch.contiguous_format) for k, v in sd.items()}


def _assert_loaded_equal(loaded, expected):
    assert list(loaded) == list(expected) or set(loaded) == set(expected), \
        f"keys {sorted(loaded)} != {sorted(expected)}"
    for k, want in expected.items():
        got = loaded[k]
        assert got.dtype == want.dtype, f"{k}: dtype {got.dtype} != {want.dtype}"
        assert tuple(got.shape) == tuple(want.shape), f"{k}: shape {tuple(got.shape)}"
        assert as_bytes(got) == as_bytes(want), f"{k}: bytes differ"


def _layouts(name, gen):
    """Every input layout save_file must flatten: contiguous, 0-dim, empty, views."""
    r = lambda *shape: random_tensor(name, shape, gen)  # noqa: E731
    return {
        "contiguous": r(3, 4),
        "scalar": r(),
        "empty": r(0, 3),
        "empty_view": r(5, 4)[2:2],
        "transposed": r(4, 3).t(),
        "step_slice": r(6, 8)[::2, 1::3],
        "expanded": r(1, 5).expand(3, 5),
        "offset_view": r(20)[7:15],
        "one_elem": r(1, 1, 1),
    }


# --- safetensors --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAFETENSORS_DTYPES))
@pytest.mark.parametrize("metadata", [None, {"format": "pt"}], ids=["nometa", "meta"])
def test_safetensors_bytes_equal_save_file_for_every_dtype_and_layout(tmp_path, gen, name,
                                                                      metadata):
    sd = _layouts(name, gen)
    ours, ref = tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
    if name == "float4_e2m1fn_x2":
        # safetensors counts F4 in 4-bit elements: a 0-dim pair has no shape; both refuse it.
        scalar = {"s": sd.pop("scalar")}
        with pytest.raises(ValueError, match="at least one dim"):
            ckptkit.save_file(scalar, ours)
        with pytest.raises(Exception, match="byte boundary"):
            safetensors.torch.save_file(scalar, ref)
        assert not ours.exists()
    ckptkit.save_file(sd, ours, metadata=metadata)
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()}, ref, metadata=metadata)
    _assert_same_file(ours, ref)
    _assert_loaded_equal(safetensors.torch.load_file(ours), sd)
    with ckptkit.open(ours) as ck:
        for k, v in sd.items():
            assert ck.info(k).dtype == name
            assert ck.read_bytes(k).tobytes() == as_bytes(v)


def test_safetensors_mixed_dtypes_sorted_as_save_file(tmp_path, gen):
    sd = {f"t{i:02d}.{n}": random_tensor(n, (i % 4 + 1, 3), gen)
          for i, n in enumerate(sorted(SAFETENSORS_DTYPES))}
    sd["z.empty"] = random_tensor("float32", (0,), gen)
    sd["a.scalar"] = random_tensor("bfloat16", (), gen)
    ours, ref = tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
    ckptkit.save_file(sd, ours)
    safetensors.torch.save_file(sd, ref)
    _assert_same_file(ours, ref)


def test_safetensors_empty_dict_and_empty_metadata_match_save_file(tmp_path):
    for tensors, metadata in [({}, None), ({}, {"k": "v"}), ({"a": torch.zeros(2)}, {})]:
        ours, ref = tmp_path / "ours.safetensors", tmp_path / "ref.safetensors"
        ckptkit.save_file(tensors, ours, metadata=metadata)
        safetensors.torch.save_file(tensors, ref, metadata=metadata)
        _assert_same_file(ours, ref)


def test_safetensors_many_metadata_keys_round_trip(tmp_path):
    # safetensors' own order for >1 key varies between runs; the values must survive.
    metadata = {"format": "pt", "b": "2", "a": "1", "unicode": "é✓"}
    path = tmp_path / "m.safetensors"
    ckptkit.save_file({"w": torch.arange(3.0)}, path, metadata=metadata)
    with safetensors.safe_open(str(path), "pt") as f:
        assert f.metadata() == metadata
        assert torch.equal(f.get_tensor("w"), torch.arange(3.0))


# --- torch.save ---------------------------------------------------------------


@pytest.mark.parametrize("name", TORCH_SAVE_DTYPES)
def test_torch_bytes_equal_torch_save_for_every_dtype_and_layout(tmp_path, gen, name):
    sd = _layouts(name, gen)
    (tmp_path / "ours").mkdir()
    (tmp_path / "ref").mkdir()
    # Same basename: torch.save names the archive's folder after the file.
    ours, ref = tmp_path / "ours" / "model.pt", tmp_path / "ref" / "model.pt"
    ckptkit.save_file(sd, ours, format="torch")
    torch.save(_owned(sd), ref)
    _assert_same_file(ours, ref)
    _assert_loaded_equal(torch.load(ours, weights_only=True), sd)
    _assert_loaded_equal(torch.load(ours, weights_only=True, mmap=True), sd)
    with ckptkit.open(ours) as ck:
        assert ck.keys() == list(sd)
        for k, v in sd.items():
            assert ck.read_bytes(k).tobytes() == as_bytes(v)


def test_torch_keeps_dict_order_and_matches_torch_save_mixed(tmp_path, gen):
    names = list(reversed(TORCH_SAVE_DTYPES))
    sd = {f"layer.{i}.{n}": random_tensor(n, (i % 3 + 1, 5), gen) for i, n in enumerate(names)}
    (tmp_path / "ours").mkdir()
    (tmp_path / "ref").mkdir()
    ours, ref = tmp_path / "ours" / "ckpt.bin", tmp_path / "ref" / "ckpt.bin"
    ckptkit.save_file(sd, ours, format="torch")
    torch.save(_owned(sd), ref)
    _assert_same_file(ours, ref)
    assert list(torch.load(ours, weights_only=True)) == list(sd)


def test_torch_parameters_and_requires_grad_are_saved_as_plain_tensors(tmp_path, gen):
    p = torch.nn.Parameter(random_tensor("float32", (2, 3), gen))
    g = random_tensor("float32", (4,), gen).requires_grad_(True)
    path = tmp_path / "p.pt"
    ckptkit.save_file({"p": p, "g": g * 2}, path, format="torch")
    loaded = torch.load(path, weights_only=True)
    assert type(loaded["p"]) is torch.Tensor and not loaded["p"].requires_grad
    assert torch.equal(loaded["p"], p.detach())
    assert torch.equal(loaded["g"], (g * 2).detach())


def test_conj_and_neg_views_are_resolved(tmp_path, gen):
    c = torch.complex(torch.randn(3, generator=gen), torch.randn(3, generator=gen))
    sd = {"conj": c.conj(), "neg": torch._neg_view(torch.randn(4, generator=gen))}
    for fmt in ("safetensors", "torch"):
        path = tmp_path / f"x.{fmt}"
        ckptkit.save_file(sd, path, format=fmt)
        loaded = (safetensors.torch.load_file(path) if fmt == "safetensors"
                  else torch.load(path, weights_only=True))
        assert torch.equal(loaded["conj"], sd["conj"].resolve_conj())
        assert torch.equal(loaded["neg"], sd["neg"].resolve_neg())


# --- numpy inputs -------------------------------------------------------------

NUMPY_INPUTS = ["bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
                "float16", "float32", "float64", "complex64", "complex128"]


def _numpy_layouts(name, seed):
    rng = np.random.default_rng(seed)
    dt = np.dtype(name)

    def r(*shape):
        n = int(np.prod(shape, dtype=np.int64))
        if dt == np.bool_:
            return rng.integers(0, 2, n).astype(bool).reshape(shape)
        return np.frombuffer(rng.bytes(n * dt.itemsize), dtype=dt).reshape(shape).copy()

    out = {
        "contiguous": r(3, 4),
        "scalar": r(),
        "empty": r(0, 3),
        "transposed": r(4, 3).T,
        "step_slice": r(6, 8)[::2, 1::3],
        "fortran": np.asfortranarray(r(3, 5)),
        "numpy_scalar": r()[()],  # an np.generic, not an ndarray
    }
    if dt.itemsize > 1:
        out["big_endian"] = r(2, 3).astype(dt.newbyteorder(">"))
    return out


@pytest.mark.parametrize("name", NUMPY_INPUTS)
def test_numpy_inputs_equal_torch_inputs(tmp_path, seed, name):
    arrays = _numpy_layouts(name, seed)
    # np.array, not np.ascontiguousarray (which makes 0-dim arrays 1-dim).
    as_torch = {k: torch.from_numpy(np.array(v, dtype=np.dtype(v.dtype).newbyteorder("<"),
                                             order="C"))
                for k, v in arrays.items()}
    assert as_torch["scalar"].dim() == 0
    fmts = ["torch"] + (["safetensors"] if name != "complex128" else [])
    for fmt in fmts:
        (tmp_path / fmt / "ours").mkdir(parents=True)
        (tmp_path / fmt / "ref").mkdir()
        ours, ref = tmp_path / fmt / "ours" / "m.bin", tmp_path / fmt / "ref" / "m.bin"
        ckptkit.save_file(arrays, ours, format=fmt)
        if fmt == "torch":
            torch.save(_owned(as_torch), ref)
        else:
            safetensors.torch.save_file(as_torch, ref)
        _assert_same_file(ours, ref)
    with ckptkit.open(tmp_path / "torch" / "ours" / "m.bin") as ck:
        for k, v in arrays.items():
            got = ck.numpy(k)
            assert got.dtype == np.dtype(name) and got.shape == np.shape(v), k
            np.testing.assert_array_equal(got, v, err_msg=k)


def test_numpy_only_call_does_not_import_torch(tmp_path):
    code = ("import sys, numpy as np, ckptkit\n"
            f"ckptkit.save_file({{'a': np.arange(6, dtype=np.int16).reshape(2, 3)}}, "
            f"{str(tmp_path / 'a.safetensors')!r})\n"
            f"ckptkit.save_file({{'a': np.ones(3)}}, {str(tmp_path / 'a.pt')!r}, format='torch')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(safetensors.torch.load_file(tmp_path / "a.safetensors")["a"],
                       torch.arange(6, dtype=torch.int16).reshape(2, 3))
    assert torch.equal(torch.load(tmp_path / "a.pt", weights_only=True)["a"],
                       torch.ones(3, dtype=torch.float64))


def test_numpy_dtypes_without_torch_equivalent_are_refused(tmp_path):
    for bad in [np.array(["a"]), np.array([1], dtype=object), np.zeros(2, dtype="M8[s]"),
                np.zeros(2, dtype=np.longdouble) if np.dtype(np.longdouble).itemsize > 8 else
                np.zeros(2, dtype="V4")]:
        with pytest.raises(TypeError, match="'x'"):
            ckptkit.save_file({"x": bad}, tmp_path / "bad.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


# --- errors -------------------------------------------------------------------


def test_errors_are_typed_and_leave_existing_file_untouched(tmp_path):
    path = tmp_path / "keep.safetensors"
    path.write_bytes(b"old content")
    cases = [
        (TypeError, dict(tensors={1: torch.zeros(1)})),
        (TypeError, dict(tensors={"a": [1.0, 2.0]})),
        (TypeError, dict(tensors=[("a", torch.zeros(1))])),
        (ValueError, dict(tensors={"a": torch.zeros(1)}, format="pickle")),
        (ValueError, dict(tensors={"a": torch.zeros(1)}, format="torch", metadata={"a": "b"})),
        (TypeError, dict(tensors={"a": torch.zeros(1)}, metadata={"a": 1})),
        (ValueError, dict(tensors={"a": torch.zeros(2, dtype=torch.complex128)})),
        (ValueError, dict(tensors={"a": torch.zeros(2, device="meta")})),
        (ValueError, dict(tensors={"a": torch.zeros(2).to_sparse()})),
    ]
    for exc, kwargs in cases:
        with pytest.raises(exc):
            ckptkit.save_file(path=path, **kwargs)
        assert path.read_bytes() == b"old content", kwargs
    assert sorted(os.listdir(tmp_path)) == ["keep.safetensors"], "temporary file left behind"


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")
def test_quantized_tensor_is_unsupported(tmp_path):
    q = torch.quantize_per_tensor(torch.zeros(2), 0.1, 0, torch.qint8)
    with pytest.raises(ckptkit.UnsupportedError, match="quantized"):
        ckptkit.save_file({"q": q}, tmp_path / "q.pt", format="torch")


def test_missing_directory_is_file_not_found_naming_path(tmp_path):
    path = tmp_path / "no" / "such" / "x.safetensors"
    with pytest.raises(FileNotFoundError, match="no/such"):
        ckptkit.save_file({"a": torch.zeros(1)}, path)


def test_core_checks_buffer_size_against_shape(tmp_path):
    with pytest.raises(ValueError, match="buffer holds 8 bytes"):
        ckptkit._core.save_file(str(tmp_path / "x"), "safetensors",
                                [("a", "float32", (3,), b"\0" * 8)])
    with pytest.raises(ValueError, match="overflow"):
        ckptkit._core.save_file(str(tmp_path / "x"), "torch",
                                [("a", "float32", (2**62, 2**62), b"")])
    with pytest.raises(ckptkit.UnsupportedError, match="float7"):
        ckptkit._core.save_file(str(tmp_path / "x"), "torch", [("a", "float7", (1,), b"\0")])
    with pytest.raises(ValueError, match="duplicate"):
        ckptkit._core.save_file(str(tmp_path / "x"), "torch",
                                [("a", "uint8", (1,), b"\0"), ("a", "uint8", (1,), b"\0")])
    with pytest.raises(BufferError):  # a non-contiguous buffer is refused, never misread
        ckptkit._core.save_file(str(tmp_path / "x"), "torch",
                                [("a", "uint8", (2,), memoryview(b"abcd")[::2])])
    assert not (tmp_path / "x").exists()


def test_contiguous_inputs_reach_the_core_without_copies(tmp_path, monkeypatch, gen):
    t = random_tensor("bfloat16", (64, 32), gen)
    a = np.arange(100, dtype=np.float32)
    seen = {}

    def fake_save_file(path, fmt, entries, metadata):
        for key, dtype, shape, buf in entries:
            seen[key] = (dtype, shape, np.asarray(buf).ctypes.data)

    monkeypatch.setattr(ckptkit._core, "save_file", fake_save_file)
    ckptkit.save_file({"t": t, "a": a, "s": t[0, 0]}, tmp_path / "x.safetensors")
    assert seen["t"] == ("bfloat16", (64, 32), t.data_ptr())
    assert seen["a"] == ("float32", (100,), a.ctypes.data)
    assert seen["s"] == ("bfloat16", (), t.data_ptr())
