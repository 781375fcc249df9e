#!/usr/bin/env python3
"""ckptkit.dcp.StorageWriter/StorageReader vs torch's FileSystemWriter/FileSystemReader.

    .venv/bin/python bench/bench_dcp_save.py [--size-gib 2] [--thread-count 2] [--repeat 3]
                                             [--warmup 1] [--dir DIR] [--cold] [--json] [--only OPS]

Synchronous `torch.distributed.checkpoint.save` and `load` (no_dist: one
process, the planner and metadata exactly as on rank 0 of a job) of one seeded
state dict of about --size-gib GiB (bench_formats' tensor mix: 529 tensors,
bf16/fp32 matrices, norms, biases, int64 buffers), once with each storage
plug-in, plus the disk's own sequential bandwidth measured in the same run:

| row | what is timed |
|---|---|
| raw write | --thread-count files, each a share of the tensors' bytes written by its own thread with os.write, then fsync (the disk's parallel sequential write through the page cache) |
| raw O_DIRECT write | the same byte count in T files, T threads, each writing one reused page-aligned 16 MiB buffer with O_DIRECT, then fsync (fio's `--direct=1` sequential write) |
| FileSystemWriter | dcp.save(sd, storage_writer=FileSystemWriter(dir, thread_count=T)) (it fsyncs every file) |
| megatron FileSystemWriterAsync | megatron-core's torch_dist writer run as its async save runs it, here synchronously in one process: save_state_dict_async_plan, preload (tensors already on CPU), write_preloaded_data_multiproc (T worker processes, fsync each file), save_state_dict_async_finalize (.metadata); a 1-rank gloo group |
| ckptkit StorageWriter | dcp.save(sd, storage_writer=ckptkit.dcp.StorageWriter(dir, thread_count=T)) (O_DIRECT where the file system allows, fsync, rename, folder fsync) |
| ckptkit StorageWriter, buffered | the same with direct_io=False (through the page cache) |

The disk's write limit D is the faster of the two raw writes in the same run;
"of disk" for a save is D's seconds over the save's (the issue's aim: >= 0.9).
| raw read | every .distcp file read sequentially into a preallocated buffer |
| FileSystemReader | dcp.load(dst, storage_reader=FileSystemReader(dir)) into preallocated tensors |
| ckptkit StorageReader | the same with ckptkit.dcp.StorageReader(dir) |

Every operation runs in its own subprocess, best of --repeat after --warmup
untimed runs. The folder is removed (untimed) before each save; reads use a warm
page cache unless --cold (each file evicted with posix_fadvise before each run).
Afterwards it checks that both writers produced byte-identical .distcp files and
that both loads returned the saved values.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import bench_dcp  # noqa: E402  (_warm_dir: warm or evict a folder's files)
from bench_formats import (  # noqa: E402  (shared harness pieces)
    CHUNK,
    _busy,
    _disk_info,
    _nbytes,
    _reset_peak,
    _status_kib,
    build_state_dict,
    plan_state_dict,
)

CHILD_FLAG = "--_child"
COLD = False


def _distcp_files(d):
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".distcp"))


# --- operations (sd: the state dict, or preallocated destination for loads) ---

def _save(sd, d, writer):
    import torch.distributed.checkpoint as dcp

    dcp.save(sd, storage_writer=writer, no_dist=True)


def _save_torch(sd, p, t):
    from torch.distributed.checkpoint import FileSystemWriter

    _save(sd, p["torch"], FileSystemWriter(p["torch"], thread_count=t))


def _save_ckptkit(sd, p, t):
    import ckptkit.dcp

    _save(sd, p["ckptkit"], ckptkit.dcp.StorageWriter(p["ckptkit"], thread_count=t))


def _save_ckptkit_buffered(sd, p, t):
    import ckptkit.dcp

    _save(sd, p["ckptkit_buffered"], ckptkit.dcp.StorageWriter(p["ckptkit_buffered"], thread_count=t,
                                                                direct_io=False))


def _save_megatron(sd, p, t):
    """megatron-core's FileSystemWriterAsync, driven as its async save drives it, synchronously."""
    import torch.distributed as dist
    from megatron.core.dist_checkpointing.strategies.filesystem_async import FileSystemWriterAsync
    from megatron.core.dist_checkpointing.strategies.state_dict_saver import (
        save_state_dict_async_finalize,
        save_state_dict_async_plan,
    )
    from torch.distributed.checkpoint import DefaultSavePlanner

    # Megatron's finalize asks torch.cuda.current_device() for bookkeeping only;
    # the interop tests' CPU shim answers it (tests/interop/megatron_fixtures.py).
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "interop"))
    import megatron_fixtures

    megatron_fixtures.install_cpu_cuda_shim()
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"file://{p['megatron']}.pg-{os.getpid()}", rank=0, world_size=1)
    os.makedirs(p["megatron"], exist_ok=True)
    writer = FileSystemWriterAsync(p["megatron"], thread_count=t)
    planned = save_state_dict_async_plan(sd, writer, None, 0, planner=DefaultSavePlanner())
    fn, _preload, fn_args = writer.get_save_function_and_args()
    # preload_tensors(non_blocking=True) would call torch.cuda.synchronize(); these are CPU tensors.
    fn_args[1] = writer.preload_tensors(writer.write_buckets, non_blocking=False)
    fn(*fn_args)
    save_state_dict_async_finalize(*planned[0])


def _on_threads(t, work, errors):
    """work(i) for i in range(t), one thread each; re-raises the first error collected."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(t)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


def _raw_write_direct(sd, p, t):
    """The state dict's byte count in t files, t threads, O_DIRECT from one reused aligned buffer, fsync."""
    import mmap

    total = sum(v.numel() * v.element_size() for v in sd.values())
    block = 16 << 20
    os.makedirs(p["raw"], exist_ok=True)
    errors = []

    def work(i):
        try:
            buf = mmap.mmap(-1, block)  # page-aligned
            buf.write(os.urandom(1 << 20) * (block >> 20))
            share = total // t + (1 if i < total % t else 0)
            fd = os.open(os.path.join(p["raw"], f"direct_{i}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT,
                         0o644)
            try:
                left = (share + 4095) // 4096 * 4096
                while left > 0:
                    n = min(left, block)
                    os.write(fd, memoryview(buf)[:n])
                    left -= n
                os.fsync(fd)
            finally:
                os.close(fd)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    _on_threads(t, work, errors)


def _raw_write(sd, p, t):
    """The tensors' bytes split over t files (round-robin by tensor), one thread each, fsync."""
    import torch

    os.makedirs(p["raw"], exist_ok=True)
    tensors = list(sd.values())
    errors = []

    def work(i):
        try:
            fd = os.open(os.path.join(p["raw"], f"raw_{i}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for t_ in tensors[i::t]:
                    mv = memoryview(t_.reshape(-1).view(torch.uint8).numpy())
                    off = 0
                    while off < len(mv):
                        off += os.write(fd, mv[off:off + (1 << 30)])
                os.fsync(fd)
            finally:
                os.close(fd)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    _on_threads(t, work, errors)


def _load(dst, d, reader):
    import torch.distributed.checkpoint as dcp

    dcp.load(dst, storage_reader=reader, no_dist=True)
    return dst


def _load_torch(dst, p, t):
    from torch.distributed.checkpoint import FileSystemReader

    return _load(dst, p["torch"], FileSystemReader(p["torch"]))


def _load_ckptkit(dst, p, t):
    import ckptkit.dcp

    return _load(dst, p["ckptkit"], ckptkit.dcp.StorageReader(p["ckptkit"]))


def _raw_read(bufs, p, t):
    """Every .distcp file read sequentially into a preallocated (touched) buffer, as the loads
    read into preallocated tensors."""
    for path, buf in zip(_distcp_files(p["torch"]), bufs):
        mv = memoryview(buf)
        size = len(mv)
        with open(path, "rb", buffering=0) as f:
            off = 0
            while off < size:
                n = f.readinto(mv[off:off + CHUNK])
                if not n:
                    raise IOError(f"{path}: short read at {off}")
                off += n
    return bufs


OPS = {"raw_write": _raw_write, "raw_write_direct": _raw_write_direct, "save_torch": _save_torch,
       "save_megatron": _save_megatron, "save_ckptkit": _save_ckptkit, "save_ckptkit_buffered": _save_ckptkit_buffered,
       "raw_read": _raw_read, "load_torch": _load_torch, "load_ckptkit": _load_ckptkit}
SAVES = ("save_torch", "save_megatron", "save_ckptkit", "save_ckptkit_buffered")

# (op, label, baseline op for the speedup, raw op for the share of disk bandwidth)
# "disk": the faster raw write of the run.
ROWS = [
    ("raw_write", "raw write (T files, T threads, fsync)", None, None),
    ("raw_write_direct", "raw O_DIRECT write (T files/threads)", None, None),
    ("save_torch", "dcp.save + FileSystemWriter", None, "disk"),
    ("save_megatron", "megatron FileSystemWriterAsync", None, "disk"),
    ("save_ckptkit", "dcp.save + ckptkit StorageWriter", "save_torch", "disk"),
    ("save_ckptkit_buffered", "ckptkit StorageWriter, direct_io=False", "save_torch", "disk"),
    ("raw_read", "raw read of the .distcp files", None, None),
    ("load_torch", "dcp.load + FileSystemReader", None, "raw_read"),
    ("load_ckptkit", "dcp.load + ckptkit.dcp.StorageReader", "load_torch", "raw_read"),
]


def _digest(sd) -> str:
    import torch

    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(memoryview(sd[k].detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def child_main(op, args):
    global COLD
    COLD = args.cold
    import torch

    paths = json.loads(args.paths)
    t = args.thread_count
    sd = build_state_dict(args.size_gib, args.seed) if op != "raw_read" else None
    if op == "raw_read":
        import numpy as np

        sd = [np.ones(os.path.getsize(f), dtype=np.uint8) for f in _distcp_files(paths["torch"])]  # touched
    elif op.startswith("load_"):
        dst = {k: torch.empty_like(v) for k, v in sd.items()}
        expected = _digest(sd)
        del sd
        sd = dst
    if "ckptkit" in op:
        import ckptkit.dcp  # noqa: F401  (import cost not timed)
    import torch.distributed.checkpoint  # noqa: F401
    gc.collect()
    results, check = [], None
    for i in range(args.warmup + args.repeat):
        if op.startswith("save_") or op.startswith("raw_write"):
            target = paths[op.removeprefix("save_") if not op.startswith("raw_write") else "raw"]
            shutil.rmtree(target, ignore_errors=True)
            os.sync()
        elif op.startswith("load_") or op == "raw_read":
            bench_dcp.COLD = COLD
            bench_dcp._warm_dir(paths["ckptkit" if op == "load_ckptkit" else "torch"])
            if op.startswith("load_"):
                for v in sd.values():
                    v.zero_()
        gc.collect()
        rss_before = _status_kib("VmRSS")
        reset_ok = _reset_peak()
        t0 = time.perf_counter()
        out = OPS[op](sd, paths, t)
        dt = time.perf_counter() - t0
        peak = _status_kib("VmHWM") if reset_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if op.startswith("load_"):
            check = _digest(out) == expected
        if i >= args.warmup:
            results.append({"seconds": dt, "peak_rss_kib": peak, "extra_rss_kib": max(0, peak - rss_before)})
        del out
        gc.collect()
    json.dump({"op": op, "results": results, "values_equal": check}, sys.stdout)


def run_child(op, args, paths):
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, op, "--size-gib", str(args.size_gib),
           "--repeat", str(args.repeat), "--warmup", str(args.warmup), "--seed", str(args.seed),
           "--thread-count", str(args.thread_count), "--paths", json.dumps(paths)] + (["--cold"] if args.cold else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--thread-count", type=int, default=2, help="writer threads / files (both writers)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds of the writes (each --repeat runs)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dir", default=None, help="folder for the temporary files (a fresh subfolder is made)")
    ap.add_argument("--cold", action="store_true", help="evict files from the page cache before each read")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--only", default=None, help="comma-separated ops (saves run anyway when loads need them)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument(CHILD_FLAG, dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--paths", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args)
        return

    import ckptkit
    import torch

    base = tempfile.mkdtemp(prefix="ckptkit-bench-dcp-save-", dir=args.dir)
    paths = {k: os.path.join(base, k) for k in ("torch", "ckptkit", "ckptkit_buffered", "megatron", "raw")}
    plan = plan_state_dict(args.size_gib, args.seed)
    nbytes = sum(_nbytes(d, s) for _, d, s in plan)
    ops = [r[0] for r in ROWS]
    if args.only:
        wanted = set(args.only.split(","))
        if wanted - set(ops):
            sys.exit(f"--only: unknown {sorted(wanted - set(ops))}; known: {ops}")
        if wanted & {"load_torch", "raw_read"}:
            wanted.add("save_torch")
        if "load_ckptkit" in wanted:
            wanted.add("save_ckptkit")
        ops = [o for o in ops if o in wanted]
    busy_start, load_start = _busy(), os.getloadavg()
    results, values_equal, checks = {}, {}, {}
    try:
        # Rounds interleave the operations (rotated each round), so a noisy
        # stretch of the VM's disk hits every row alike.
        save_ops = [o for o in ops if o in SAVES or o.startswith("raw_write")]
        other_ops = [o for o in ops if o not in save_ops]
        for rnd in range(args.rounds):
            k = rnd % max(1, len(save_ops))
            for op in save_ops[k:] + save_ops[:k] + (other_ops if rnd == args.rounds - 1 else []):
                if not args.json:
                    print(f"  round {rnd + 1}: {op} ...", file=sys.stderr, flush=True)
                r = run_child(op, args, paths)
                results.setdefault(op, []).extend(r["results"])
                if r["values_equal"] is not None:
                    values_equal[op] = r["values_equal"]
        import filecmp

        for other in ("ckptkit", "ckptkit_buffered", "megatron"):
            if os.path.isdir(paths["torch"]) and os.path.isdir(paths[other]):
                a = [os.path.basename(f) for f in _distcp_files(paths["torch"])]
                b = [os.path.basename(f) for f in _distcp_files(paths[other])]
                if other == "megatron":  # its own split of items over files: same bytes in all
                    checks["megatron: same total .distcp bytes"] = (
                        sum(os.path.getsize(f) for f in _distcp_files(paths["torch"]))
                        == sum(os.path.getsize(f) for f in _distcp_files(paths[other])))
                    continue
                checks[f"{other}: same .distcp file names"] = a == b
                checks[f"{other}: .distcp files byte-identical"] = a == b and all(
                    filecmp.cmp(os.path.join(paths["torch"], f), os.path.join(paths[other], f), shallow=False)
                    for f in a)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    def best(op):
        return min(r["seconds"] for r in results[op])

    raw_ops = [o for o in ("raw_write", "raw_write_direct") if o in results]
    disk_seconds = min(best(o) for o in raw_ops) if raw_ops else None
    rows = []
    for op, label, base_op, raw_op in ROWS:
        if op not in results:
            continue
        row = {"op": op, "label": label, "seconds": best(op),
               "median_seconds": statistics.median(r["seconds"] for r in results[op]),
               "gb_per_s": nbytes / best(op) / 1e9,
               "peak_rss_mib": max(r["peak_rss_kib"] for r in results[op]) / 1024,
               "extra_rss_mib": max(r["extra_rss_kib"] for r in results[op]) / 1024}
        if base_op in results:
            row["speedup_vs"], row["speedup"] = base_op, best(base_op) / best(op)
        if raw_op == "disk" and disk_seconds:
            row["fraction_of_raw"] = disk_seconds / best(op)
        elif raw_op in results:
            row["fraction_of_raw"] = best(raw_op) / best(op)
        rows.append(row)
    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "disk": _disk_info(args.dir or tempfile.gettempdir())},
        "versions": {"torch": torch.__version__, "ckptkit": ckptkit.__version__},
        "state_dict": {"tensors": len(plan), "bytes": nbytes, "size_gib": nbytes / (1 << 30)},
        "thread_count": args.thread_count, "repeat": args.repeat, "warmup": args.warmup, "rounds": args.rounds,
        "disk_write_limit_gb_per_s": nbytes / disk_seconds / 1e9 if disk_seconds else None,
        "page_cache": "cold" if args.cold else "warm",
        "load": {"busy_at_start": busy_start, "busy_at_end": _busy(), "loadavg_start": load_start,
                 "loadavg_end": os.getloadavg()},
        "values_equal": values_equal, "checks": checks, "rows": rows,
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
    else:
        print(f"ckptkit bench_dcp_save  {doc['date']}  {doc['host']['cpus']} CPUs  disk: {doc['host']['disk']}")
        print(f"torch {torch.__version__}, ckptkit {ckptkit.__version__}; {len(plan)} tensors, "
              f"{nbytes / (1 << 30):.2f} GiB; thread_count {args.thread_count}; best of {args.repeat} after "
              f"{args.warmup} untimed; reads: {doc['page_cache']} page cache")
        if busy_start or doc["load"]["busy_at_end"] or load_start[0] > 0.5 * (os.cpu_count() or 1):
            print(f"WARNING: measured under load (load average {load_start[0]:.2f}); rerun on a quiet machine")
        hdr = (f"{'operation':42s} {'seconds':>8s} {'median':>7s} {'GB/s':>6s} {'speedup':>20s} "
               f"{'of disk':>8s} {'peak RSS':>9s} {'extra':>8s}")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            sp = f"{r['speedup']:.2f}x {r['speedup_vs']}" if "speedup" in r else ""
            fr = f"{r['fraction_of_raw']:.2f}" if "fraction_of_raw" in r else ""
            print(f"{r['label']:42s} {r['seconds']:8.3f} {r['median_seconds']:7.3f} {r['gb_per_s']:6.2f} "
                  f"{sp:>20s} {fr:>8s} {r['peak_rss_mib']:8.0f}M {r['extra_rss_mib']:7.0f}M")
        for k, v in {**{f"{op} values equal": v for op, v in values_equal.items()}, **checks}.items():
            print(f"check: {k}: {'yes' if v else 'NO'}")
    if not all(values_equal.values()) or not all(checks.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
