#!/usr/bin/env python3
"""Regenerates the DistributedOptimizer goldens in this folder with the REAL megatron-core
(DistributedDataParallel + get_megatron_optimizer + 2 AdamW steps on CPU/gloo, see
tests/interop/megatron_optim.py).

Each golden NAME/ holds ONE training run saved in several formats:
    NAME/legacy/                latest_checkpointed_iteration.txt,
                                iter_0000002/mp_rank_XX[_YYY][_EEE]/{model_optim_rng.pt,
                                distrib_optim.pt}   (Megatron-LM --ckpt-format torch)
    NAME/fully_reshardable/     torch_dist, content metadata distrib_optim_sharding_type
    NAME/dp_reshardable/        torch_dist
    NAME/dp_zero_gather_scatter/ torch_dist (only where listed: deprecated, still saved by 0.16)
    NAME/fully_sharded_model_space/ torch_dist (megatron-core <= 0.15 only)
    NAME/layout.json            megatron_optim.dump_layout: per rank, per chunk, per buffer:
                                dtypes, buckets (offset, numel, numel_unpadded), every param's
                                (start, end, bucket_id) from param_index_map, named_parameters
                                order, and the optimizer's gbuf order + this DP rank's ranges
    NAME/expected.json          sha256 of every tensor in every file (legacy: by nested key
                                path inside each .pt; torch_dist: by DCP key, read back with
                                megatron's own dist_checkpointing.load), key lists, structure,
                                the canonical trained state (sha256 of each full global fp32
                                tensor: param / exp_avg / exp_avg_sq / model), and which
                                formats load back bit-identical to it with real Megatron.

Usage:
  /work/main/.venv/bin/python tests/golden/legacy/make_golden.py [--only NAME ...]
  goldens needing megatron-core 0.19 run under MC019_PYTHON (default .venv-mcore019/bin/python),
  0.15 ones under MC015_PYTHON (default .venv-mcore015/bin/python: a venv with megatron-core==0.15.0
  --no-deps whose site-packages has a .pth line naming .venv's site-packages for torch and the rest;
  not part of scripts/setup.sh: the goldens are committed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))

# A tiny llama / mixtral (the megatron_models FAMILIES with smaller sizes) keeps the whole
# golden set small; vocab 30 is padded to 32 (divisor 16 x TP).
TINY = (("hidden", 8), ("heads", 4), ("groups", 2), ("ffn", 16), ("vocab", 30),
        ("divisor", 16), ("num_layers", 2))
TINY4 = tuple(kv for kv in TINY if kv[0] != "num_layers") + (("num_layers", 4),)
TINY_MOE = TINY + (("moe_ffn", 16),)
BASE_FORMATS = ("legacy", "fully_reshardable", "dp_reshardable")

GOLDENS = {
    # name: (megatron-core minor, OptimSpec kwargs, formats)
    # TP1 PP1 DP2, bucket_size 300 elements: several buckets in the one buffer.
    "mc016_llama_dp2": ("0.16", dict(family="llama", tp=1, pp=1, dp=2, bucket_size=300,
                                     model_overrides=TINY),
                        BASE_FORMATS + ("dp_zero_gather_scatter",)),
    # TP2 PP2 DP2 (world 8); PP rank 1 never buckets (one bucket), PP rank 0 several.
    "mc016_llama_tp2pp2dp2": ("0.16", dict(family="llama", tp=2, pp=2, dp=2, bucket_size=200,
                                           model_overrides=TINY),
                              ("legacy", "fully_reshardable")),
    # PP2 x VPP2 DP2 (world 4), 4 layers: model0 / model1 per file, chunk 1 never buckets.
    "mc016_llama_pp2vpp2dp2": ("0.16", dict(family="llama", tp=1, pp=2, vpp=2, dp=2,
                                            bucket_size=200, model_overrides=TINY4),
                               ("legacy", "fully_reshardable")),
    # fp32 params (no Float16Module, grads fp32): buffer dtype (float32, float32).
    "mc016_llama_fp32_dp2": ("0.16", dict(family="llama", tp=1, pp=1, dp=2, bf16=False,
                                          bucket_size=None, model_overrides=TINY),
                             ("legacy",)),
    # MoE 4 experts, EP2 (ETP1) DP2 (world 2, expert-DP 1): ChainedOptimizer [dense, expert].
    "mc016_mixtral_ep2": ("0.16", dict(family="mixtral", tp=1, pp=1, ep=2, dp=2,
                                       bucket_size=300, model_overrides=TINY_MOE),
                          ("legacy", "fully_reshardable", "dp_reshardable", "dp_zero_gather_scatter")),
    # megatron-core 0.15 (the last that writes flattened_range): fully_sharded_model_space, the
    # 0.8-0.15 default with fully parallel save; TP2 x DP2 with several buckets so that DP
    # slices cut 2-D TP shards mid-row (N-D flattened reformulation, docs/format.md).
    "mc015_llama_tp2dp2": ("0.15", dict(family="llama", tp=2, pp=1, dp=2, bucket_size=200,
                                        model_overrides=TINY),
                           ("legacy", "fully_sharded_model_space")),
    # megatron-core 0.6 (distrib_optim.pt format B: per-bucket tensors, per_bucket_numel lists;
    # no 64-element param alignment, buckets padded to a multiple of DP only). Made by
    # make_golden_mc006.py (a stand-in module for GPTModel, apex stand-ins: see there); the spec
    # here is what the tests load it with.
    "mc006_llama_dp2": ("0.6", dict(family="llama", tp=1, pp=1, dp=2, bucket_size=300,
                                    model_overrides=TINY), ("legacy",)),
    "mc019_llama_dp2": ("0.19", dict(family="llama", tp=1, pp=1, dp=2, bucket_size=300,
                                     model_overrides=TINY), ("legacy", "dp_reshardable")),
}
# Formats are trimmed per golden to keep the set < 3 MB (a torch_dist dp_reshardable copy of
# a world-8 run alone is ~460 kB: one DCP item per param piece and per padding piece).


def _walk(obj, path=""):
    """(path, tensor) for every tensor nested in dicts / lists / tuples."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{path}/{k!s}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def _structure(obj, depth=0):
    """Keys and types, tensors as dtype/shape (what a reader must find)."""
    import argparse as ap

    import torch

    if isinstance(obj, torch.Tensor):
        return f"Tensor[{str(obj.dtype).replace('torch.', '')}]{list(obj.shape)}"
    if isinstance(obj, dict):
        if depth > 6:
            return "dict"
        return {repr(k) if not isinstance(k, str) else k: _structure(v, depth + 1)
                for k, v in obj.items()}
    if isinstance(obj, ap.Namespace):
        return "argparse.Namespace"
    if isinstance(obj, (list, tuple)):
        if len(obj) > 8 and all(not isinstance(x, (dict, list, tuple)) for x in obj):
            return f"{type(obj).__name__}(len={len(obj)})"
        return [_structure(v, depth + 1) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return f"<{type(obj).__module__}.{type(obj).__qualname__}>"


def describe_legacy(root: str) -> dict:
    import torch

    import megatron_fixtures as mf

    files = {}
    for d, _, fs in sorted(os.walk(root)):
        for f in sorted(fs):
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            if not f.endswith(".pt"):
                with open(p) as fh:
                    files[rel] = {"text": fh.read()}
                continue
            obj = torch.load(p, weights_only=False)
            ent = {
                "top_level_keys": list(obj) if isinstance(obj, dict) else None,
                "top_level_type": type(obj).__name__,
                "tensors": {k: {"dtype": str(t.dtype).replace("torch.", ""),
                                "shape": list(t.shape), "sha256": mf.tensor_sha256(t)}
                            for k, t in _walk(obj)},
            }
            if f == "distrib_optim.pt":
                ent["structure"] = _structure(obj)
            else:
                ent["structure"] = {k: _structure(v) for k, v in obj.items()
                                    if k not in ("model", "args") and not k.startswith("model")}
                ent["args"] = {k: str(v) for k, v in sorted(vars(obj["args"]).items())}
                ent["model_keys"] = {k: list(v) for k, v in obj.items()
                                     if k == "model" or (k.startswith("model") and k[5:].isdigit())}
            files[rel] = ent
    return {"files": files}


def describe_torch_dist(root: str) -> dict:
    import megatron_fixtures as mf

    ckpt = os.path.join(root, "iter_0000002")
    tensors, objects, common = mf.load_everything(ckpt)
    with open(os.path.join(ckpt, "metadata.json")) as f:
        mdj = f.read()
    return {
        "files": sorted(os.listdir(ckpt)),
        "metadata_json_text": mdj,
        "tensors": {k: {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                        "sha256": mf.tensor_sha256(t)} for k, t in sorted(tensors.items())},
        "objects": sorted(objects),
        "common_keys": sorted(common),
        "common_structure": {k: _structure(v) for k, v in common.items() if k != "args"},
    }


def _mcore_version() -> str:
    """megatron.core.__version__ (core <= 0.6 keeps it in package_info only)."""
    import megatron.core

    v = getattr(megatron.core, "__version__", None)
    if v is None:
        from megatron.core import package_info

        v = package_info.__version__
    return v


def generate(name: str) -> None:
    import megatron.core
    import torch

    import megatron_fixtures as mf
    import megatron_optim as mo

    need, kw, formats = GOLDENS[name]
    have = ".".join(_mcore_version().split(".")[:2])
    if have != need:
        raise SystemExit(f"{name} needs megatron-core {need}.x, this interpreter has {have}")
    if need == "0.15":
        import numpy as np

        # megatron-core 0.15's dist_checkpointing calls np.product, removed in numpy 2 (the
        # shared .venv's numpy); np.prod is the same function. The ranks are forked: they see it.
        if not hasattr(np, "product"):
            np.product = np.prod
    spec = mo.OptimSpec(**kw)
    base = os.path.join(HERE, name)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    roots = {f: os.path.join(base, f) for f in formats}
    t0 = time.time()
    state_path = os.path.join(base, "_state.pt")
    mo.save_all(spec, roots, layout_path=os.path.join(base, "layout.json"),
                state_path=state_path)
    t_save = time.time() - t0
    ref = torch.load(state_path, weights_only=False)
    os.remove(state_path)
    loads = {}
    for f in formats:
        t1 = time.time()
        st = (mo.load_legacy_into_optimizer(spec, roots[f]) if f == "legacy"
              else mo.load_torch_dist_into_optimizer(spec, roots[f]))
        diffs = mo.compare_states(ref, st)
        loads[f] = {"identical_to_trained": not diffs, "differences": diffs,
                    "seconds": round(time.time() - t1, 2)}
    # torch_dist descriptions need a process group of 1 in THIS process: do them last.
    desc = {}
    for f in formats:
        desc[f] = describe_legacy(roots[f]) if f == "legacy" else describe_torch_dist(roots[f])
    canonical = {
        key: {kind: {"shape": list(t.shape), "sha256": mf.tensor_sha256(t)}
              for kind, t in sorted(d.items())}
        for key, d in sorted(ref["tensors"].items())
    }
    side = {
        "megatron_core": _mcore_version(),
        "torch": torch.__version__.split("+")[0],
        "spec": spec.describe(),
        "iteration": spec.iteration,
        "formats": list(formats),
        "save_seconds": round(t_save, 2),
        "trained_state_sha256": canonical,
        "trained_param_groups_rank0": json.loads(json.dumps(ref["optimizers_by_rank"][0],
                                                            default=str)),
        "load_back": loads,
        "describe": desc,
    }
    with open(os.path.join(base, "expected.json"), "w") as f:
        json.dump(side, f, indent=1, default=str)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(d, x)) for d, _, fs in os.walk(base) for x in fs)
    print(f"{name}: {total} bytes, save {t_save:.1f}s, loads "
          f"{ {k: (v['identical_to_trained'], v['seconds']) for k, v in loads.items()} }")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", action="append")
    a = ap.parse_args()
    names = a.only or list(GOLDENS)
    import megatron.core

    have = ".".join(_mcore_version().split(".")[:2])
    for n in names:
        need = GOLDENS[n][0]
        if need == "0.6":
            py = os.environ.get("MC006_PYTHON", os.path.join(REPO, ".venv-mcore006/bin/python"))
            if not os.path.exists(py):
                print(f"skip {n}: needs megatron-core 0.6 at {py}")
                continue
            subprocess.run([py, "-W", "ignore", os.path.join(HERE, "make_golden_mc006.py")], check=True)
            continue
        if need == have:
            generate(n)
            continue
        py = {"0.19": os.environ.get("MC019_PYTHON", os.path.join(REPO, ".venv-mcore019/bin/python")),
              "0.15": os.environ.get("MC015_PYTHON", os.path.join(REPO, ".venv-mcore015/bin/python")),
              }.get(need)
        if py is None or not os.path.exists(py):
            print(f"skip {n}: needs megatron-core {need}.x (this interpreter has {have})")
            continue
        subprocess.run([py, "-W", "ignore", os.path.abspath(__file__), "--only", n], check=True)


if __name__ == "__main__":
    main()
