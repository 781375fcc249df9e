#!/usr/bin/env python3
"""Fully parallel save (Megatron's FPS) on top of ckptkit's engine: bytes per rank.

    .venv/bin/python bench/bench_fps_balance.py [--world 4] [--layers 8] [--hidden 1024]
                                                [--dir DIR] [--json] [--keep]

`world` gloo ranks (CPU; megatron_fixtures' worker and its CUDA-bookkeeping
shim) each hold the same Llama-like model state, every tensor fully replicated
(DP = world, replica_id = rank), as the model weights of a data-parallel job
are. megatron-core's FullyParallelSaveStrategyWrapper spreads the replicated
tensors over the ranks (metadata exchange only, greedy by size) and each rank
writes only what it was given: with ckptkit.megatron.TorchDistSaveStrategy
(the engine) and with stock TorchDistSaveShardedStrategy, into two folders.

Reported per writer: bytes in each rank's `__<rank>_*.distcp` files, their
max/mean (the issue's aim: <= 1.05), the total against one copy of the state
(each replicated byte written once: 1.00) and the save's wall time (the
slowest rank; on 2 cores with `world` processes it is no throughput figure).
Afterwards stock megatron-core loads the ckptkit checkpoint on the same ranks
and every tensor must equal what was saved (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "interop"))

import megatron_fixtures as mf  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402


@dataclasses.dataclass
class Spec:
    root: str
    layers: int
    hidden: int


def _state(spec: Spec, *, fill: bool) -> dict:
    """The model state: per layer QKV, proj, fc1, fc2 (bf16) and two norms (fp32), plus the
    embedding and output layer, every tensor replicated on every rank."""
    from megatron.core.dist_checkpointing import ShardedTensor

    h, f = spec.hidden, spec.hidden * 11 // 4
    shapes = {"embedding": ((8192, h), torch.bfloat16), "output_layer": ((8192, h), torch.bfloat16),
              "final_norm": ((h,), torch.float32)}
    for i in range(spec.layers):
        shapes.update({f"layers.{i}.qkv": ((3 * h, h), torch.bfloat16), f"layers.{i}.proj": ((h, h), torch.bfloat16),
                       f"layers.{i}.fc1": ((2 * f, h), torch.bfloat16), f"layers.{i}.fc2": ((h, f), torch.bfloat16),
                       f"layers.{i}.norm1": ((h,), torch.float32), f"layers.{i}.norm2": ((h,), torch.float32)})
    rank = dist.get_rank()
    out = {}
    for key, (shape, dt) in shapes.items():
        t = mf.global_tensor(key, shape, dt) if fill else torch.zeros(shape, dtype=dt)
        out[key] = ShardedTensor.from_rank_offsets(key, t, replica_id=rank)
    return out


def _save(spec: Spec, name: str, strategy) -> float:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelSaveStrategyWrapper

    path = os.path.join(spec.root, name)
    if dist.get_rank() == 0:
        os.makedirs(path, exist_ok=True)
    dist.barrier()
    sd = _state(spec, fill=True)
    dist.barrier()
    t0 = time.perf_counter()
    dist_checkpointing.save(sd, path, sharded_strategy=FullyParallelSaveStrategyWrapper(strategy, dist.group.WORLD,
                                                                                         False))
    dist.barrier()
    return time.perf_counter() - t0


def _rank_main(spec: Spec) -> None:
    import ckptkit.megatron
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    seconds = {"ckptkit": _save(spec, "ckptkit", ckptkit.megatron.TorchDistSaveStrategy(thread_count=2)),
               "stock": _save(spec, "stock", TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=2))}
    # Stock megatron-core loads the ckptkit checkpoint: every tensor equal.
    got = dist_checkpointing.load(_state(spec, fill=False), os.path.join(spec.root, "ckptkit"))
    want = _state(spec, fill=True)
    bad = [k for k in want if not torch.equal(got[k], want[k].data)]
    report = {"rank": dist.get_rank(), "seconds": seconds, "mismatched": bad}
    with open(os.path.join(spec.root, f"rank{dist.get_rank()}.json"), "w") as f:
        json.dump(report, f)


def _bytes_per_rank(folder: str, world: int) -> list:
    out = [0] * world
    for name in os.listdir(folder):
        if name.endswith(".distcp") and name.startswith("__"):
            out[int(name[2:].split("_")[0])] += os.path.getsize(os.path.join(folder, name))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ckptkit-bench-fps-", dir=args.dir)
    spec = Spec(root, args.layers, args.hidden)
    try:
        mf.run_ranks(args.world, _rank_main, spec)
        reports = [json.load(open(os.path.join(root, f"rank{r}.json"))) for r in range(args.world)]
        rows = {}
        # One copy of the state: the tensors' bytes (torch.bfloat16 2 bytes, float32 4).
        h, f = args.hidden, args.hidden * 11 // 4
        payload = 2 * (2 * 8192 * h) + 4 * h + args.layers * (2 * (3 * h * h + h * h + 2 * f * h + h * f) + 4 * 2 * h)
        for name in ("ckptkit", "stock"):
            per_rank = _bytes_per_rank(os.path.join(root, name), args.world)
            mean = sum(per_rank) / len(per_rank)
            rows[name] = {"bytes_per_rank": per_rank, "max_over_mean": max(per_rank) / mean,
                          "written_over_state": sum(per_rank) / payload,
                          "seconds": max(r["seconds"][name] for r in reports)}
        mismatched = sorted({k for r in reports for k in r["mismatched"]})
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    doc = {"world": args.world, "layers": args.layers, "hidden": args.hidden, "state_bytes": payload,
           "rows": rows, "stock_load_of_ckptkit_values_equal": not mismatched, "mismatched": mismatched}
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(f"FPS over {args.world} gloo ranks, {payload / (1 << 20):.0f} MiB of replicated state "
              f"({args.layers} layers, hidden {args.hidden})")
        print(f"{'writer':10s} {'MiB per rank':40s} {'max/mean':>9s} {'written/state':>14s} {'seconds':>8s}")
        for name, r in rows.items():
            mib = " ".join(f"{b / (1 << 20):.1f}" for b in r["bytes_per_rank"])
            print(f"{name:10s} {mib:40s} {r['max_over_mean']:9.3f} {r['written_over_state']:14.3f} "
                  f"{r['seconds']:8.2f}")
        print(f"check: stock megatron-core loads the ckptkit checkpoint, values equal: "
              f"{'yes' if not mismatched else 'NO: ' + ', '.join(mismatched[:5])}")
    if mismatched:
        sys.exit(1)


if __name__ == "__main__":
    main()
