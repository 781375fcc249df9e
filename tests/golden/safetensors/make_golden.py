"""Generates safetensors golden files for tests/unit/safetensors (run with the repo venv).

  /work/main/.venv/bin/python tests/golden/safetensors/make_golden.py

Written by safetensors 0.8.0 (safetensors.torch.save_file) with torch 2.13.0, and
transformers 5.24.0 / huggingface_hub 2.4.0 for the sharded set. Outputs, next to
this script:
  all_dtypes.safetensors  one tensor per dtype safetensors.torch can save, names
                          chosen so that dtype order and name order disagree.
  scalar_empty.safetensors  a 0-dim tensor, empty tensors, {"format": "pt"}.
  no_metadata.safetensors   metadata=None (no "__metadata__" key).
  empty.safetensors         no tensors at all.
  multi_meta.safetensors    several metadata keys (0.8.0 writes them in HashMap
                            order, so only the parsed values are compared).
  sharded/                  LlamaForCausalLM.save_pretrained of a tiny random
                            model with max_shard_size=20000: shards + index json.
  manifest.json             per file: header_size, metadata, and per tensor
                            dtype, shape, data_offsets, crc32 of its bytes; the
                            values used to create each tensor (for writer tests).
"""
import json
import os
import shutil
import struct
import sys
import zlib

import torch
import safetensors
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))


def pattern_bytes(n, seed):
    return bytes(((i * 31 + seed * 7 + 3) & 0xFF) for i in range(n))


def make(dtype, shape, seed):
    """A tensor whose bytes are a deterministic pattern (valid for any dtype)."""
    n = torch.empty(shape, dtype=dtype).untyped_storage().nbytes()
    raw = pattern_bytes(n, seed)
    if dtype == torch.bool:
        raw = bytes(b & 1 for b in raw)
    if n == 0:
        return torch.empty(shape, dtype=dtype), raw
    t = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()
    return t, raw


DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32,
          torch.uint32, torch.int64, torch.uint64, torch.float16, torch.bfloat16,
          torch.float32, torch.float64, torch.complex64, torch.float8_e4m3fn,
          torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz,
          torch.float8_e8m0fnu, torch.float4_e2m1fn_x2]


def describe(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {"header_size": n, "file_size": len(raw),
           "metadata": header.get("__metadata__"), "tensors": {}}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        out["tensors"][k] = {"dtype": v["dtype"], "shape": v["shape"], "data_offsets": [b, e],
                             "crc32": zlib.crc32(raw[8 + n + b:8 + n + e])}
    return out


def main():
    manifest = {"safetensors_version": safetensors.__version__,
                "torch_version": torch.__version__, "files": {}, "inputs": {}}

    def save(fname, tensors_spec, metadata):
        tensors, inputs = {}, []
        for name, dtype, shape, seed in tensors_spec:
            t, raw = make(dtype, shape, seed)
            tensors[name] = t
            inputs.append({"name": name, "dtype": str(dtype).split(".")[-1], "shape": list(shape),
                           "hex": raw.hex()})
        path = os.path.join(HERE, fname)
        save_file(tensors, path, metadata=metadata)
        manifest["files"][fname] = describe(path)
        manifest["inputs"][fname] = {"tensors": inputs, "metadata": metadata}

    # Names run z..a while dtypes run in DTYPES order, so the sort is visible.
    spec = []
    for i, d in enumerate(DTYPES):
        shape = (2, 3) if d != torch.float4_e2m1fn_x2 else (3, 2)
        spec.append((f"{chr(ord('t') - i)}.{str(d).split('.')[-1]}", d, shape, i))
    spec.append(("b.second_f32", torch.float32, (4,), 99))
    save("all_dtypes.safetensors", spec, {"format": "pt"})

    save("scalar_empty.safetensors", [
        ("scalar", torch.float32, (), 1),
        ("empty_f16", torch.float16, (0,), 2),
        ("empty_2d", torch.int64, (3, 0), 3),
        ("after", torch.bfloat16, (5,), 4),
    ], {"format": "pt"})
    save("no_metadata.safetensors", [("w", torch.float32, (2, 2), 5),
                                     ("caf\u00e9 \"q\"\n", torch.int8, (3,), 6)], None)
    save("empty.safetensors", [], None)
    save("multi_meta.safetensors", [("x", torch.float32, (1,), 7)],
         {"format": "pt", "b": "2", "a": "\u00e9\t"})

    # Sharded set via transformers (tiny random Llama, no download).
    from transformers import LlamaConfig, LlamaForCausalLM
    import transformers, huggingface_hub
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    sdir = os.path.join(HERE, "sharded")
    shutil.rmtree(sdir, ignore_errors=True)
    model.save_pretrained(sdir, max_shard_size=20000)
    for f in os.listdir(sdir):
        if not (f.endswith(".safetensors") or f.endswith(".index.json")):
            os.remove(os.path.join(sdir, f))
    # The planner inputs in state_dict order (what split_torch_state_dict_into_shards saw).
    sd = model.state_dict()
    manifest["sharded"] = {
        "transformers_version": transformers.__version__,
        "huggingface_hub_version": huggingface_hub.__version__,
        "max_shard_size": 20000,
        "state_dict": [{"name": k, "nbytes": v.untyped_storage().nbytes()} for k, v in sd.items()],
        "files": {f: describe(os.path.join(sdir, f)) for f in sorted(os.listdir(sdir))
                  if f.endswith(".safetensors")},
    }
    # huggingface_hub's planner on synthetic sizes, incl. an oversized tensor.
    from huggingface_hub import split_state_dict_into_shards_factory
    sizes = [("a", 30), ("b", 50), ("huge", 500), ("c", 40), ("d", 10), ("e", 60), ("f", 100),
             ("g", 101)]
    split = split_state_dict_into_shards_factory(
        dict(sizes), get_storage_size=lambda x: x, filename_pattern="model{suffix}.safetensors",
        max_shard_size=100)
    manifest["planner_cases"] = [{
        "tensors": [{"name": n, "nbytes": s} for n, s in sizes], "max_shard_size": 100,
        "filename_to_tensors": split.filename_to_tensors, "metadata": split.metadata}]
    split1 = split_state_dict_into_shards_factory(
        dict(sizes[:2]), get_storage_size=lambda x: x,
        filename_pattern="pytorch_model{suffix}.bin", max_shard_size=100)
    manifest["planner_cases"].append({
        "tensors": [{"name": n, "nbytes": s} for n, s in sizes[:2]], "max_shard_size": 100,
        "prefix": "pytorch_model", "extension": ".bin",
        "filename_to_tensors": split1.filename_to_tensors, "metadata": split1.metadata})

    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
