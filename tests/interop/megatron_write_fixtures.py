"""Loading torch_dist checkpoints with stock megatron-core for test_megatron_write.py (a fixture
library, importable without pytest, so that another interpreter with megatron-core 0.19.x can
run the same loads: see CKPTKIT_MCORE019_PYTHON there).

Thread-safety: each call spawns fresh processes (or needs a fresh one: _load_full_tensors
initializes a 1-rank gloo group).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import pickle

import numpy as np
import torch

import megatron_fixtures as mf


# ---------------------------------------------------------------------------------------------
# Comparable form of whatever megatron's load returns
# ---------------------------------------------------------------------------------------------
def canon(x):
    """Plain, ==-comparable form: tensors and arrays as (dtype, shape, bytes)."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu().contiguous()
        return ("tensor", str(t.dtype), tuple(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if isinstance(x, np.ndarray):
        return ("ndarray", str(x.dtype), x.shape, x.tobytes())
    if isinstance(x, argparse.Namespace):
        return ("Namespace", canon(vars(x)))
    if isinstance(x, dict):
        return ("dict", tuple((repr(k), canon(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(canon(v) for v in x))
    if isinstance(x, io.BytesIO):
        return ("BytesIO", x.getvalue())
    return x


# ---------------------------------------------------------------------------------------------
# Rank bodies (module level: spawned ranks import them by name)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadSpec:
    ckpt_dir: str
    out_dir: str
    tp: int = 2
    pp: int = 1
    ep: int = 1


def zero_request(tree):
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    for sh in mf._flat_sharded(tree):
        if isinstance(sh, ShardedTensor) and sh.data is not None:
            sh.data.zero_()


def load_handbuilt_rank(spec: LoadSpec) -> None:
    """The handbuilt key spec in this world's TP/PP layout, with every rng_state object of the
    checkpoint (its shape depends on the saving layout), loaded by stock dist_checkpointing.load."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing import serialization
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    mf.init_parallel(spec.tp, spec.pp, ep=spec.ep)
    hb = mf.HandbuiltSpec(root="", tp=spec.tp, pp=spec.pp, ep=spec.ep, dp=1)
    model_sd = mf.build_handbuilt_model_sd(hb)
    sd = {"model": model_sd, "optimizer": mf.build_fully_reshardable_optim(model_sd)}
    zero_request(sd)
    meta = serialization.load_sharded_metadata(spec.ckpt_dir)
    sd["rng"] = {k: v for k, v in meta.items() if isinstance(v, ShardedObject) and v.key == "rng_state"}
    assert sd["rng"], sorted(meta)
    loaded = dist_checkpointing.load(sd, spec.ckpt_dir, validate_access_integrity=False)
    with open(os.path.join(spec.out_dir, f"rank{dist.get_rank()}.pkl"), "wb") as f:
        pickle.dump(canon(loaded), f)


def load_full_tensors(ckpt_dir, spec_json):
    """Single process: {path: key} nesting of ShardedTensors of the full tensors (zeros), loaded."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    mf.init_single_process_group()
    spec = json.loads(spec_json)

    def build(node):
        if isinstance(node, dict) and "__key__" in node:
            t = torch.zeros(node["shape"], dtype=getattr(torch, node["dtype"]))
            return ShardedTensor.from_rank_offsets(node["__key__"], t, replica_id=0)
        return {k: build(v) for k, v in node.items()}

    loaded = dist_checkpointing.load(build(spec), ckpt_dir)
    return pickle.dumps(canon(loaded))


def spec_of(sd, prefix=""):
    """The {name: {"__key__": flat key, shape, dtype}} tree of the tensors of a nested dict."""
    out = {}
    for k, v in sd.items():
        key = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            out[k] = {"__key__": key, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        elif isinstance(v, dict):
            sub = spec_of(v, key + ".")
            if sub:
                out[k] = sub
    return out


def load_in_ranks(ckpt_dir, out_dir, world=2):
    os.makedirs(out_dir, exist_ok=True)
    mf.run_ranks(world, load_handbuilt_rank, LoadSpec(ckpt_dir=str(ckpt_dir), out_dir=str(out_dir)))
    res = []
    for r in range(world):
        with open(os.path.join(out_dir, f"rank{r}.pkl"), "rb") as f:
            res.append(pickle.load(f))
    return res
