#!/usr/bin/env python3
"""How long `torch.distributed.checkpoint.async_save` blocks the caller, against
a plain memcpy of the same bytes measured in the same run.

    .venv/bin/python bench/bench_async_save.py [--size-gib 1] [--repeat 3] [--dir DIR] [--json]

One seeded state dict of about --size-gib GiB (bench_formats' tensor mix),
one process (no_dist), passed as {"model": tensors} as training passes a few
top-level entries (--flat: every tensor a top-level key, where torch's
async_save spends ~20 us per key in its logging wrappers before staging).
Rows:

| row | what is timed |
|---|---|
| memcpy | every tensor copied into preallocated, already-touched tensors of the same shapes (`copy_`): the floor for staging |
| ckptkit async_save stall | from the call to its return (ckptkit.dcp.StorageWriter: tensors copied into the engine's staging pool) |
| ckptkit async_save total | from the call until the returned future is done (files written, fsynced, published) |
| torch async_save stall | the same call with torch's FileSystemWriter (its default stager: fresh CPU copies per save) |
| torch async_save stall, cached | FileSystemWriter(cache_staged_state_dict=True): torch reuses its (pinned) staged copies; CUDA machines only (pinning needs it) |

Each save goes to a new folder (the previous one of its writer removed);
writers take turns, one save each per round, so that both meet the same page
cache writeback state (the totals are the disk's: after a few GiB of dirty
pages the kernel throttles every writer to it). The first round is an untimed
warm-up (the staging pool, or torch's cache, is filled then), best of --repeat
after it. Also reported: the process's resident memory added by the saves
(VmRSS after minus before: the pool; torch's copies are freed after each save)
against the pool's capacity, and that each writer's last checkpoint holds the
values of its call (every save is made after the state changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from bench_formats import _status_kib, build_state_dict  # noqa: E402


def _bits(t):
    """The first few elements' bytes (random bits hold NaNs, which compare unequal)."""
    import torch

    head = t.reshape(-1)[:64].clone()
    return head.view(torch.uint8) if head.dtype != torch.bool else head


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the checkpoints go (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--flat", action="store_true",
                    help="pass the tensors as top-level keys (default: under one 'model' key, as training "
                         "scripts pass {'model': ..., 'optimizer': ...})")
    args = ap.parse_args()

    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

    import ckptkit.dcp as kdcp

    warnings.filterwarnings("ignore")
    root = tempfile.mkdtemp(prefix="ckptkit-async-", dir=args.dir)
    sd = build_state_dict(args.size_gib, 1)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    n = [0]

    def folder() -> str:
        n[0] += 1
        return os.path.join(root, f"c{n[0]}")

    # memcpy floor: into touched destinations.
    dst = {k: torch.empty_like(v) for k, v in sd.items()}
    for v in dst.values():
        v.zero_()
    memcpy = []
    for _ in range(args.repeat + 1):
        t0 = time.perf_counter()
        for k, v in sd.items():
            dst[k].copy_(v)
        memcpy.append(time.perf_counter() - t0)
    del dst

    def top(d: dict) -> dict:
        # async_save wraps every top-level key in torch's logging decorator
        # (about 20 us each: 6 ms for 270 keys, before any staging), so a flat
        # dict of every tensor measures that, not staging; training passes a
        # few top-level entries.
        return d if args.flat else {"model": d}

    def bump(i: float) -> None:  # the next "step": every tensor changes
        for v in sd.values():
            if v.is_floating_point():
                v.add_(1.0)
            else:
                v.add_(1)

    def run(writers: dict) -> dict:
        """Interleaved (one save of each writer per round), so that both meet the
        same page-cache writeback state: after a few GiB of dirty pages the kernel
        throttles writers to the disk's speed, which decides the totals."""
        out = {label: ([], [], []) for label in writers}
        for i in range(args.repeat + 1):
            for label, make_writer in writers.items():
                stalls, totals, saved = out[label]
                bump(i)
                want = {k: _bits(v) for k, v in sd.items()}
                path = folder()
                t0 = time.perf_counter()
                fut = dcp.async_save(top(sd), storage_writer=make_writer(path), no_dist=True)
                stall = time.perf_counter() - t0
                fut.result()
                total = time.perf_counter() - t0
                if i:
                    stalls.append(stall)
                    totals.append(total)
                if saved:
                    shutil.rmtree(saved[-1][0], ignore_errors=True)
                saved[:] = [(path, want)]
        return out

    def check(saved, label: str) -> None:
        path, want = saved[-1]
        got = {k: torch.zeros_like(v) for k, v in sd.items()}
        dcp.load(top(got), storage_reader=FileSystemReader(path), no_dist=True)
        bad = [k for k, v in want.items() if not torch.equal(_bits(got[k]), v)]
        if bad:
            raise SystemExit(f"{label}: the checkpoint does not hold the values of its call: {bad[:5]}")
        for p, _ in saved:
            shutil.rmtree(p, ignore_errors=True)

    rss0 = _status_kib("VmRSS") * 1024
    writers = {"ckptkit": lambda p: kdcp.StorageWriter(p, thread_count=2),
               "torch": lambda p: FileSystemWriter(p, thread_count=2)}
    if torch.cuda.is_available():  # torch's cached staging pins its copies: CUDA only
        writers["torch cached"] = lambda p: FileSystemWriter(p, thread_count=2, cache_staged_state_dict=True)
    res = run(writers)
    rss1 = _status_kib("VmRSS") * 1024  # ckptkit's pool and torch's staged copies (freed after each save)
    pool = kdcp._POOL
    for label in writers:
        check(res[label][2], label)
    shutil.rmtree(root, ignore_errors=True)
    ck_stall, ck_total, _ = res["ckptkit"]
    th_stall, th_total, _ = res["torch"]
    tc_stall = res["torch cached"][0] if "torch cached" in res else None

    best = min
    base = best(memcpy)
    rows = [
        ("memcpy", base),
        ("ckptkit async_save stall", best(ck_stall)),
        ("ckptkit async_save total", best(ck_total)),
        ("torch async_save stall", best(th_stall)),
        ("torch async_save total", best(th_total)),
    ]
    if tc_stall:
        rows.append(("torch async_save stall, cached", best(tc_stall)))
    result = {
        "bytes": nbytes,
        "rows": {name: {"seconds": s, "vs_memcpy": s / base} for name, s in rows},
        "pool_capacity": pool.capacity,
        "pool_peak": pool.peak,
        "rss_added_by_the_saves": rss1 - rss0,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"state dict: {nbytes / 2**30:.2f} GiB, {len(sd)} tensors "
          f"({'top-level keys' if args.flat else 'under one top-level key'}); best of {args.repeat} after a warm-up")
    for name, s in rows:
        print(f"  {name:32s} {s * 1000:9.1f} ms   {s / base:6.2f}x memcpy   {nbytes / s / 2**30:6.2f} GiB/s")
    print(f"  staging pool: capacity {pool.capacity / 2**20:.0f} MiB, peak held {pool.peak / 2**20:.0f} MiB; "
          f"resident memory added by the saves {(rss1 - rss0) / 2**20:.0f} MiB (the pool; torch's staged "
          f"copies are freed after each save)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
