#!/usr/bin/env python3
"""Regenerates the Megatron-Core torch_dist goldens in this folder with the REAL megatron-core.

Each golden NAME is a Megatron-LM save root:
    NAME/latest_checkpointed_iteration.txt
    NAME/iter_0000010/{metadata.json, .metadata, __X_Y.distcp, [common.pt]}
plus a sidecar NAME.expected.json describing what a correct reader must report, computed by
reading the checkpoint back with megatron's own `dist_checkpointing.load`.

Goldens (CPU/gloo; world size 8 = TP2 x PP2 x DP2 unless noted):
  mc016_handbuilt            core 0.16.x, hand-built MoE-GPT layout (EP2, ETP2, SwiGLU experts,
                             stacked layers, _extra_state and rng_state ShardedObjects),
                             DistributedOptimizer 'fully_reshardable' form, sync save, no FPS.
  mc016_handbuilt_dpresh     core 0.16.x, TP2 PP1 DP2 (world 4), 1 layer, EP1, 1 expert, 'dp_reshardable',
                             FullyParallelSaveStrategyWrapper, async save (AsyncCallsQueue),
                             thread_count=2 (several __X_Y files per rank).
  mc016_gpt_tp2pp2dp2        core 0.16.x, real GPTModel(local spec, RMSNorm, SwiGLU, GQA, bf16)
                             .sharded_state_dict(), optimizer 'fully_reshardable' form built
                             from it with make_sharded_optimizer_tensor, FPS, sync save.
  mc019_handbuilt            core 0.19.x, as mc016_handbuilt: no common.pt, 'common_state'
                             ShardedObject inside DCP, two-field metadata.json.

Usage:
  /work/main/.venv/bin/python tests/golden/megatron/make_golden.py            # all
  ... make_golden.py --only mc016_handbuilt
  MC019_PYTHON=/tmp/venv-mc19/bin/python (default) selects the interpreter with core 0.19.x;
  goldens whose interpreter/megatron version is missing are skipped with a message.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickletools
import shutil
import subprocess
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))

ITERATION = 10
GOLDENS = {
    # name: (required megatron-core minor, kind, options)
    "mc016_handbuilt": ("0.16", "handbuilt", dict(optim="fully_reshardable")),
    "mc016_handbuilt_dpresh": (
        "0.16",
        "handbuilt",
        dict(optim="dp_reshardable", fully_parallel=True, async_save=True, thread_count=2,
             pp=1, ep=1, num_experts=1, num_layers=1),
    ),
    "mc016_gpt_tp2pp2dp2": (
        "0.16",
        "gpt",
        dict(num_layers=2, hidden=16, heads=4, groups=2, ffn=48, vocab=64, seq=16,
             optim="fully_reshardable", fully_parallel=True),
    ),
    "mc019_handbuilt": ("0.19", "handbuilt", dict(optim="fully_reshardable")),
}


# ---------------------------------------------------------------------------------------------
# Pickle GLOBAL inventory (static: never executes the pickle)
# ---------------------------------------------------------------------------------------------
def pickle_globals(data: bytes) -> list:
    """module.name of every GLOBAL / STACK_GLOBAL in one pickle stream (static scan)."""
    out, strings, memo = set(), [], {}
    last = None
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name == "GLOBAL":
            mod, qual = arg.split(" ", 1)
            out.add(f"{mod}.{qual}")
            last = None
        elif name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(arg)
            last = arg
        elif name in ("MEMOIZE",):
            memo[len(memo)] = last
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = last
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(arg)
            strings.append(last)
        elif name == "STACK_GLOBAL":
            out.add(f"{strings[-2]}.{strings[-1]}")
            last = None
        else:
            last = None
    return sorted(out)


def torch_save_globals(blob: bytes) -> list:
    """GLOBALs of the data.pkl inside a torch.save zip blob."""
    with zipfile.ZipFile(io.BytesIO(blob)) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        return pickle_globals(z.read(pkl[0]))


# ---------------------------------------------------------------------------------------------
# Sidecar
# ---------------------------------------------------------------------------------------------
def _summ(v, depth=0):
    """Type summary of a common-state value (keys and types, no big payloads)."""
    import argparse as ap

    import torch

    if isinstance(v, dict):
        if depth > 3:
            return "dict"
        return {str(k): _summ(x, depth + 1) for k, x in v.items()}
    if isinstance(v, ap.Namespace):
        return {"__type__": "argparse.Namespace", "fields": sorted(vars(v))}
    if isinstance(v, (list, tuple)):
        return {"__type__": type(v).__name__, "len": len(v),
                "items": [_summ(x, depth + 1) for x in v[:4]]}
    if isinstance(v, torch.Tensor):
        return {"__type__": "torch.Tensor", "dtype": str(v.dtype), "shape": list(v.shape)}
    if isinstance(v, (bool, int, float, str)) or v is None:
        return {"__type__": type(v).__name__, "value": v}
    return {"__type__": f"{type(v).__module__}.{type(v).__qualname__}"}


def describe(root: str, extra: dict) -> dict:
    import hashlib

    import megatron.core
    import torch

    import megatron_fixtures as mf

    ckpt = mf.iter_dir(root, ITERATION)
    tensors, objects, common = mf.load_everything(ckpt)
    import pickle

    with open(os.path.join(ckpt, ".metadata"), "rb") as f:
        meta_bytes = f.read()
    md = pickle.loads(meta_bytes)
    keys = {}
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    payload_globals = set()
    for k, v in sorted(md.state_dict_metadata.items()):
        if isinstance(v, BytesStorageMetadata):
            (idx,) = [i for i in md.storage_data if i.fqn == k]
            info = md.storage_data[idx]
            with open(os.path.join(ckpt, info.relative_path), "rb") as f:
                f.seek(info.offset)
                blob = f.read(info.length)
            g = torch_save_globals(blob)
            payload_globals.update(g)
            obj = objects.get(k)
            if k.startswith("common_state/"):
                obj = "(common state, see common_state)"
            keys[k] = {
                "kind": "ShardedObject",
                "file": info.relative_path,
                "payload_len": info.length,
                "payload_sha256": hashlib.sha256(blob).hexdigest(),
                "payload_globals": g,
                "value_summary": _summ(obj),
            }
        else:
            t = tensors[k]
            assert tuple(t.shape) == tuple(v.size), (k, t.shape, v.size)
            keys[k] = {
                "kind": "ShardedTensor",
                "dtype": str(v.properties.dtype).replace("torch.", ""),
                "global_shape": list(v.size),
                "chunks": len(v.chunks),
                "chunk_list": sorted([list(c.offsets), list(c.sizes)] for c in v.chunks),
                "sha256": mf.tensor_sha256(t),
            }
    files = sorted(os.listdir(ckpt))
    with open(os.path.join(ckpt, "metadata.json")) as f:
        metadata_json_text = f.read()
    common_pt = os.path.join(ckpt, "common.pt")
    common_globals = []
    if os.path.exists(common_pt):
        with open(common_pt, "rb") as f:
            common_globals = torch_save_globals(f.read())
    with open(os.path.join(root, "latest_checkpointed_iteration.txt")) as f:
        tracker = f.read()
    return {
        "megatron_core": megatron.core.__version__,
        "torch": torch.__version__.split("+")[0],
        "iteration": ITERATION,
        "tracker_text": tracker,
        "iter_dir": os.path.basename(ckpt),
        **extra,
        "files": files,
        "metadata_json_text": metadata_json_text,
        "metadata_json": json.loads(metadata_json_text),
        "dcp_metadata_class": f"{type(md).__module__}.{type(md).__qualname__}",
        "dcp_metadata_extra_attrs": sorted(
            a for a in vars(md) if a not in ("state_dict_metadata", "planner_data",
                                            "storage_data", "storage_meta", "version")
        ),
        "dcp_metadata_version": getattr(md, "version", None),
        "dcp_metadata_globals": pickle_globals(meta_bytes),
        "common_pt_globals": common_globals,
        "sharded_object_payload_globals": sorted(payload_globals),
        "common_state": _summ(common),
        "common_state_keys": sorted(common),
        "content_metadata": common.get("content_metadata"),
        "keys": keys,
    }


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
def generate(name: str) -> None:
    import megatron.core

    import megatron_fixtures as mf

    need, kind, opts = GOLDENS[name]
    have = ".".join(megatron.core.__version__.split(".")[:2])
    if have != need:
        raise SystemExit(f"{name} needs megatron-core {need}.x, this interpreter has {have}")
    root = os.path.join(HERE, name)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    if kind == "handbuilt":
        spec = mf.HandbuiltSpec(root=root, iteration=ITERATION, **opts)
        world = spec.tp * spec.pp * spec.dp
        mf.run_ranks(world, mf.save_handbuilt, spec)
        extra = {
            "world_size": world, "tp": spec.tp, "pp": spec.pp, "dp": spec.dp,
            "ep": spec.ep, "etp": spec.tp, "optimizer_form": spec.optim,
            "fully_parallel_save": spec.fully_parallel, "async_save": spec.async_save,
            "thread_count": spec.thread_count,
        }
    elif kind == "gpt":
        spec = mf.GPTSpec(root=root, iteration=ITERATION, **opts)
        mf.run_ranks(8, mf.save_gpt, spec)
        extra = {"world_size": 8, "tp": spec.tp, "pp": spec.pp, "dp": 8 // (spec.tp * spec.pp),
                 "model": dataclass_dict(spec), "fully_parallel_save": spec.fully_parallel,
                 "async_save": False, "thread_count": 1, "optimizer_form": spec.optim}
    else:
        raise AssertionError(kind)
    side = describe(root, extra)
    with open(os.path.join(HERE, f"{name}.expected.json"), "w") as f:
        json.dump(side, f, indent=1, sort_keys=False, default=str)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, x)) for d, _, fs in os.walk(root) for x in fs)
    print(f"{name}: {total} bytes, {len(side['keys'])} DCP keys")


def dataclass_dict(spec):
    import dataclasses

    d = dataclasses.asdict(spec)
    d.pop("root", None)
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append")
    a = ap.parse_args()
    names = a.only or list(GOLDENS)
    import megatron.core

    have = ".".join(megatron.core.__version__.split(".")[:2])
    for n in names:
        need = GOLDENS[n][0]
        if need == have:
            generate(n)
            continue
        py = os.environ.get("MC019_PYTHON", "/tmp/venv-mc19/bin/python") if need == "0.19" else None
        if py is None or not os.path.exists(py):
            print(f"skip {n}: needs megatron-core {need}.x (this interpreter has {have})")
            continue
        subprocess.run([py, "-W", "ignore", os.path.abspath(__file__), "--only", n], check=True)


if __name__ == "__main__":
    main()
