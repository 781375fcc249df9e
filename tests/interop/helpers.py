"""Shared helpers: random tensors of every dtype/layout, flattening, byte comparison.

All comparisons are on bytes (NaN-safe, -0.0-safe), after making the torch
tensor contiguous: ckptkit promises contiguous, row-major, little-endian bytes.
"""

from __future__ import annotations

import json
import os
from typing import Dict

import numpy as np
import torch

# Every dtype torch.save can store as a plain tensor (quantized ones excluded).
TORCH_SAVE_DTYPES = [
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "complex32", "complex64", "complex128",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "bits8", "bits16",
]

# Every dtype safetensors.torch.save_file accepts (0.8.0), with its header name.
SAFETENSORS_DTYPES = {
    "bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "int32": "I32",
    "int64": "I64", "uint16": "U16", "uint32": "U32", "uint64": "U64", "float16": "F16",
    "bfloat16": "BF16", "float32": "F32", "float64": "F64", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "float8_e4m3fnuz": "F8_E4M3FNUZ",
    "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
    "float4_e2m1fn_x2": "F4",
}

# The numpy dtype ckptkit.numpy() returns for dtypes numpy has.
NUMPY_DTYPES = {
    "bool": np.bool_, "uint8": np.uint8, "int8": np.int8, "int16": np.int16,
    "int32": np.int32, "int64": np.int64, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "complex64": np.complex64, "complex128": np.complex128,
}
RAW_BY_SIZE = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tdtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def random_tensor(name: str, shape, gen: torch.Generator) -> torch.Tensor:
    """Random bits of dtype `name` (floats include NaN/Inf/-0 patterns), bool 0/1."""
    dt = tdtype(name)
    numel = 1
    for s in shape:
        numel *= s
    if dt == torch.bool:
        return torch.randint(0, 2, tuple(shape), generator=gen, dtype=torch.uint8).bool()
    raw = torch.randint(0, 256, (numel * dt.itemsize,), generator=gen, dtype=torch.uint8)
    return raw.view(dt).reshape(tuple(shape))


def as_bytes(t: torch.Tensor) -> bytes:
    """The contiguous little-endian bytes of t (what ckptkit's readers produce)."""
    t = t.detach()
    if t.numel() == 0:
        return b""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def layouts(name: str, gen: torch.Generator) -> Dict[str, torch.Tensor]:
    """One tensor per storage layout torch.save preserves."""
    r = lambda *shape: random_tensor(name, shape, gen)  # noqa: E731
    base_shared = r(6, 4)
    out = {
        "contiguous": r(3, 4),
        "transposed": r(4, 3).t(),
        "step_slice": r(6, 8)[::2, 1::3],
        "expanded": r(1, 5).expand(3, 5),
        "offset": r(20)[7:15],
        "permuted_3d": r(2, 3, 4).permute(2, 0, 1),
        "scalar": r(),
        "empty": r(0, 3),
        "empty_view": r(5, 4)[2:2],
        "one_elem": r(1, 1, 1),
        # Two tensors viewing one storage: saved once, read twice.
        "shared_a": base_shared,
        "shared_b": base_shared[1:, ::2],
        "nested": {"deep": {"w": r(2, 2)}, "list": [r(3), r(2, 1)]},
    }
    out["param"] = torch.nn.Parameter(r(2, 3), requires_grad=False)
    return out


def flatten(obj, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Tensors of a nested dict/list/tuple, keys joined by '.' (ckptkit's key rule)."""
    out: Dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}" if prefix else str(i)))
    return out


def assert_tensor_equal(ckpt, key: str, expected: torch.Tensor, *, check_numpy=True,
                        check_torch=True):
    """ckptkit's view of `key` equals torch's `expected`: dtype, shape, nbytes, bytes."""
    name = dtype_name(expected.dtype)
    info = ckpt.info(key)
    where = f"tensor {key!r}"
    assert info.dtype == name, f"{where}: dtype {info.dtype} != torch {name}"
    assert tuple(info.shape) == tuple(expected.shape), \
        f"{where}: shape {info.shape} != torch {tuple(expected.shape)}"
    assert info.nbytes == expected.numel() * expected.element_size(), f"{where}: nbytes"
    want = as_bytes(expected)
    got = ckpt.read_bytes(key).tobytes()
    assert len(got) == len(want), f"{where}: {len(got)} bytes != torch {len(want)}"
    if got != want:
        first = next(i for i in range(len(got)) if got[i] != want[i])
        raise AssertionError(f"{where}: bytes differ first at byte {first} of {len(got)}")
    if check_numpy:
        arr = ckpt.numpy(key)
        np_dt = NUMPY_DTYPES.get(name) or RAW_BY_SIZE.get(expected.element_size())
        assert arr.dtype == np.dtype(np_dt), f"{where}: numpy dtype {arr.dtype}"
        assert info.raw == (name not in NUMPY_DTYPES)
        if np.dtype(np_dt).itemsize == expected.element_size():
            assert arr.shape == tuple(expected.shape), f"{where}: numpy shape {arr.shape}"
        assert arr.tobytes() == want, f"{where}: numpy() bytes differ"
    if check_torch:
        t = ckpt.torch(key)
        assert t.dtype == expected.dtype, f"{where}: torch() dtype {t.dtype}"
        assert tuple(t.shape) == tuple(expected.shape), f"{where}: torch() shape {t.shape}"
        assert as_bytes(t) == want, f"{where}: torch() bytes differ"


def assert_checkpoint_equal(ckpt, expected: Dict[str, torch.Tensor], **kw):
    keys = ckpt.keys()
    assert len(keys) == len(set(keys)), f"duplicate keys: {keys}"
    missing = sorted(set(expected) - set(keys))
    extra = sorted(set(keys) - set(expected))
    assert not missing and not extra, f"missing keys {missing}, unexpected keys {extra}"
    assert len(ckpt) == len(expected)
    for key, t in expected.items():
        assert key in ckpt
        assert_tensor_equal(ckpt, key, t, **kw)


def load_sharded_index(index_path: str, load_shard) -> Dict[str, torch.Tensor]:
    """Loads a transformers-style sharded checkpoint the way transformers does:
    read the index's weight_map, load each shard file once, keep its tensors."""
    with open(index_path) as f:
        index = json.load(f)
    assert "weight_map" in index, f"{index_path}: no weight_map"
    folder = os.path.dirname(index_path)
    out: Dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = load_shard(os.path.join(folder, shard))
        for k, v in part.items():
            assert index["weight_map"].get(k) == shard, f"{k} in {shard} but index says " \
                                                        f"{index['weight_map'].get(k)}"
            assert k not in out, f"{k} in two shards"
            out[k] = v
    assert set(out) == set(index["weight_map"]), "index lists tensors no shard holds"
    return out
