"""Writes the golden torch.save files read by tests/unit/torch/*_test.cc.

Run with the project venv (torch 2.13, CPython 3.11):
    /work/main/.venv/bin/python tests/golden/torch/make_golden.py

Each <case>.pt gets a <case>.json manifest: torch version, and for every
flattened tensor key (path through dicts/lists/tuples joined by '.'): dtype,
shape, stride, storage_offset, nbytes of the contiguous form, crc32 of the
contiguous bytes, requires_grad, is_parameter, storage key; plus the non-tensor
leaves' Python type names. Outputs are deterministic (fixed seeds, no clocks).
"""
import argparse
import collections
import ctypes
import io
import json
import os
import random
import zipfile
import zlib

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def contiguous_bytes(t):
    c = t.detach().contiguous().clone()
    s = c.untyped_storage()
    return ctypes.string_at(s.data_ptr(), s.nbytes()) if s.nbytes() else b""


def flatten(obj, prefix, tensors, leaves):
    def join(k):
        return f"{prefix}.{k}" if prefix else str(k)
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj
    elif isinstance(obj, dict) and len(obj) > 0:
        for k, v in obj.items():
            flatten(v, join(k), tensors, leaves)
    elif isinstance(obj, (list, tuple)) and not isinstance(obj, torch.Size) and len(obj) > 0:
        for i, v in enumerate(obj):
            flatten(v, join(i), tensors, leaves)
    else:
        leaves[prefix] = type(obj).__module__ + "." + type(obj).__qualname__


def manifest(obj, path):
    tensors, leaves = {}, {}
    flatten(obj, "", tensors, leaves)
    out = {"torch_version": torch.__version__, "file": os.path.basename(path), "tensors": {},
           "leaves": leaves}
    for k, t in tensors.items():
        data = contiguous_bytes(t)
        out["tensors"][k] = {
            "dtype": str(t.dtype).replace("torch.", ""),
            "shape": list(t.shape),
            "stride": list(t.stride()),
            "storage_offset": t.storage_offset(),
            "nbytes": len(data),
            "crc32": zlib.crc32(data),
            "requires_grad": bool(t.requires_grad),
            "is_parameter": isinstance(t, torch.nn.Parameter),
        }
    return out


def save(name, obj, **kw):
    path = os.path.join(HERE, name + ".pt")
    torch.save(obj, path, **kw)
    with open(os.path.join(HERE, name + ".json"), "w") as f:
        json.dump(manifest(obj, path), f, indent=1, sort_keys=True)
        f.write("\n")


def dtypes():
    base = torch.tensor([0.0, 1.0, -2.5, 3.25, 0.5])
    d = {}
    for dt in [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
               torch.uint16, torch.uint32, torch.uint64, torch.float16, torch.bfloat16,
               torch.float32, torch.float64, torch.complex64, torch.complex128,
               torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz,
               torch.float8_e5m2fnuz]:
        name = str(dt).replace("torch.", "")
        if dt.is_complex:
            d[name] = torch.complex(base, -base).to(dt)
        elif dt in (torch.uint16, torch.uint32, torch.uint64):
            d[name] = torch.tensor([0, 1, 2, 65535 if dt == torch.uint16 else 2**31 + 7, 9], dtype=dt)
        else:
            d[name] = base.to(dt)
    d["float8_e8m0fnu"] = torch.tensor([1.0, 2.0, 4.0, 0.5]).to(torch.float8_e8m0fnu)
    d["complex32"] = torch.complex(base, base).to(torch.complex32)
    return d


def views():
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "base": base,
        "transposed": base.t(),
        "step": base[:, ::2],
        "offset": base[1:3, 2:],
        "row": base[2],
        "expanded": torch.arange(3, dtype=torch.int16).expand(4, 3),
        "scalar_view": base[3, 5],
        "neg_free_3d": torch.arange(60, dtype=torch.float64).reshape(3, 4, 5).permute(2, 0, 1),
    }


def small():
    return {
        "zero_dim": torch.tensor(7.5),
        "empty": torch.zeros(0, 3),
        "empty_int": torch.zeros(0, dtype=torch.int64),
        "one": torch.ones(1, dtype=torch.bfloat16),
    }


def nested():
    t = torch.arange(4, dtype=torch.int32)
    return {
        "a": [{"x": t, "y": [torch.ones(2, 2), 3]}, "str"],
        "b": {"c": {"d": torch.full((3,), 2.0)}},
        "tied1": t, "tied2": t,
        "n": 5, "f": 0.25, "none": None, "empty_list": [], "empty_dict": {},
        "size": torch.Size([2, 3]), 7: torch.zeros(1),
    }


def params():
    torch.manual_seed(0)
    return {"p": torch.nn.Parameter(torch.randn(2, 3)),
            "frozen": torch.nn.Parameter(torch.randn(3), requires_grad=False),
            "grad": torch.randn(2).requires_grad_(True)}


def state_dict():
    torch.manual_seed(1)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.BatchNorm1d(3))
    return m.state_dict()


def megatron_legacy():
    torch.manual_seed(2)
    random.seed(3)
    np.random.seed(4)
    args = argparse.Namespace(num_layers=2, hidden_size=8, params_dtype=torch.bfloat16,
                              tensor_model_parallel_size=1, lr=1e-4, data_path=["a", "b"])
    model = {"language_model": {"embedding": {"word_embeddings": {"weight": torch.randn(10, 8)}},
                                "encoder": {"layers.0.mlp.dense_h_to_4h.weight": torch.randn(16, 8),
                                            "layers.0.mlp.dense_h_to_4h._extra_state": None}}}
    return {
        "args": args, "checkpoint_version": 3.0, "iteration": 100, "model": model,
        "rng_state": [{"random_rng_state": random.getstate(),
                       "np_rng_state": np.random.get_state(),
                       "torch_rng_state": torch.get_rng_state()}],
        "num_floating_point_operations_so_far": 12345,
    }


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def hostile():
    return {"weight": torch.ones(2), "payload": Evil()}


def bigendian(src_name, dst_name):
    """Rewrites src as a byteorder=big archive (storages byte-swapped per dtype)."""
    src = os.path.join(HERE, src_name + ".pt")
    obj = torch.load(src, weights_only=True)
    sizes = {}
    tensors, _ = {}, {}
    flatten(obj, "", tensors, {})
    zin = zipfile.ZipFile(src)
    # element size per storage key, from the pickle (one dtype per storage here)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            rec = info.filename.split("/", 1)[1]
            if rec == "byteorder":
                data = b"big"
            elif rec.startswith("data/"):
                es = ELEMENT_SIZE_BY_KEY[rec[5:]]
                if es > 1:
                    a = np.frombuffer(data, dtype=f"<u{es}")
                    data = a.astype(f">u{es}").tobytes()
            zout.writestr(info.filename.replace(src_name, dst_name, 1), data)
    dst = os.path.join(HERE, dst_name + ".pt")
    with open(dst, "wb") as f:
        f.write(buf.getvalue())
    back = torch.load(dst, weights_only=True)
    for k in obj:
        assert torch.equal(back[k], obj[k]), k
    with open(os.path.join(HERE, dst_name + ".json"), "w") as f:
        m = manifest(obj, dst)
        json.dump(m, f, indent=1, sort_keys=True)
        f.write("\n")


ELEMENT_SIZE_BY_KEY = {}


def main():
    save("dtypes", dtypes())
    save("views", views())
    save("small", small())
    save("nested", nested())
    save("params", params())
    save("state_dict", state_dict())
    save("megatron_legacy", megatron_legacy())
    save("hostile", hostile())
    # Byte-identity target for the C++ writer: a plain dict state dict.
    torch.manual_seed(5)
    sd = {"embed.weight": torch.randn(4, 3), "norm.weight": torch.ones(3, dtype=torch.bfloat16),
          "fp8": torch.randn(6).to(torch.float8_e4m3fn), "count": torch.tensor(3),
          "empty": torch.zeros(0), "u16": torch.tensor([1, 2], dtype=torch.uint16)}
    save("writer_target", sd)
    # big-endian copy of a small file: one float32, one int16 storage, one float64.
    be = {"f32": torch.tensor([1.5, -2.0, 3.0]), "i16": torch.tensor([1, -2, 300], dtype=torch.int16),
          "f64": torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).t()}
    save("little_src", be)
    ELEMENT_SIZE_BY_KEY.update({"0": 4, "1": 2, "2": 8})
    bigendian("little_src", "bigendian")
    os.remove(os.path.join(HERE, "little_src.pt"))
    os.remove(os.path.join(HERE, "little_src.json"))
    # Legacy (pre-1.6) stream: detected and refused.
    torch.save({"w": torch.ones(2)}, os.path.join(HERE, "legacy.pt"),
               _use_new_zipfile_serialization=False)
    # Sanity: everything but hostile/legacy loads with weights_only=True where expected.
    for n in ["dtypes", "views", "small", "nested", "params", "state_dict", "writer_target"]:
        torch.load(os.path.join(HERE, n + ".pt"), weights_only=True)
    torch.load(os.path.join(HERE, "megatron_legacy.pt"), weights_only=False)


if __name__ == "__main__":
    main()
