#!/usr/bin/env python3
"""ckptkit vs torch.save/torch.load vs safetensors, on one ~N GiB state dict.

    .venv/bin/python bench/bench_formats.py [--size-gib 2] [--repeat 3] [--dir DIR] [--json]
                                            [--cold] [--cli PATH]

Every operation runs in its own subprocess (so its peak RSS can be measured and
no allocator state leaks between operations) and is timed best-of-R. Files live
in a fresh folder under --dir (default: the system temp dir) and are deleted at
the end. See bench/README.md for what each number means and measured results.

Fairness rules (printed with the results):
  * every write pays an fsync of its file: ckptkit's writers fsync (and rename
    and fsync the folder); torch.save and safetensors' save_file do not, so the
    harness calls os.fsync on their file inside the timed region; the raw
    baseline does the same. "no fsync" rows are informational.
  * reads run with a warm page cache for everybody (the file was just written
    and is read once, untimed, before each timed read): memory-bound numbers.
    Dropping all caches needs root and a quiet machine; --cold instead evicts
    just the file being read (fsync + posix_fadvise DONTNEED) before each run.
  * every copying loader produces fresh private memory (page faults included);
    the raw read baseline reads into a freshly allocated buffer too.
    torch.load(mmap=True) and safetensors.torch.load_file (0.8 maps the file
    copy-on-write) read nothing until touched: they are timed with one byte of
    every 4 KiB page touched.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHILD_FLAG = "--_child"
PAGE = 4096
CHUNK = 64 << 20


# --------------------------------------------------------------------------
# The state dict: seeded, realistic mix of sizes and dtypes.
# --------------------------------------------------------------------------

def plan_state_dict(size_gib: float, seed: int):
    """[(key, dtype name, shape)] totalling about size_gib GiB: a few big
    matrices (embeddings, lm_head), many mid-size transformer weights, small
    norms/biases and int64 buffers."""
    import numpy as np

    rng = np.random.default_rng(seed)
    total = int(size_gib * (1 << 30))
    hidden = 4096 if size_gib >= 1 else 1024
    plan = []
    # Big: ~35% of bytes in 2 bf16 [vocab, hidden] + 1 fp32 matrix.
    vocab = max(1, int(total * 0.14) // (hidden * 2))
    plan.append(("model.embed_tokens.weight", "bfloat16", (vocab, hidden)))
    plan.append(("lm_head.weight", "bfloat16", (vocab, hidden)))
    rows = max(1, int(total * 0.07) // (hidden * 4))
    plan.append(("model.projector.weight", "float32", (rows, hidden)))
    used = sum(_nbytes(d, s) for _, d, s in plan)
    # Mid: layers of attention/MLP weights, 8-128 MiB each, mostly bf16, some fp32.
    layer = 0
    while used < total * 0.97:
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            dtype = "float32" if rng.random() < 0.2 else "bfloat16"
            out = int(rng.choice([hidden // 4, hidden // 2, hidden, 2 * hidden]))
            shape = (out, hidden)
            if used + _nbytes(dtype, shape) > total * 0.97:
                break
            plan.append((f"model.layers.{layer}.{name}.weight", dtype, shape))
            used += _nbytes(dtype, shape)
        # Small: norms (fp32), a bias, an int64 buffer.
        plan.append((f"model.layers.{layer}.input_layernorm.weight", "float32", (hidden,)))
        plan.append((f"model.layers.{layer}.post_attention_layernorm.weight", "float32", (hidden,)))
        plan.append((f"model.layers.{layer}.self_attn.q_proj.bias", "bfloat16", (hidden,)))
        plan.append((f"model.layers.{layer}.rotary_emb.positions", "int64",
                     (int(rng.integers(16, 2048)),)))
        used = sum(_nbytes(d, s) for _, d, s in plan)
        layer += 1
    plan.append(("model.norm.weight", "float32", (hidden,)))
    plan.append(("model.step", "int64", ()))
    return plan


_ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4, "int64": 8}


def _nbytes(dtype, shape):
    n = _ITEMSIZE[dtype]
    for s in shape:
        n *= s
    return n


def build_state_dict(size_gib: float, seed: int):
    """The planned tensors, filled from a 16 MiB random pool at random offsets
    (random bits: no compressible runs; NaN patterns are fine, nothing computes)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    pool = np.frombuffer(rng.bytes(16 << 20), dtype=np.uint8)
    sd = {}
    for key, dtype, shape in plan_state_dict(size_gib, seed):
        t = torch.empty(shape, dtype=getattr(torch, dtype))
        dst = t.reshape(-1).view(torch.uint8).numpy()
        off = 0
        start = int(rng.integers(0, len(pool) // 2))
        while off < len(dst):
            n = min(len(dst) - off, len(pool) - start)
            dst[off:off + n] = pool[start:start + n]
            off += n
            start = 0
        sd[key] = t
    return sd


def tensor_bytes(sd) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


# --------------------------------------------------------------------------
# Child side: one operation, R repeats, peak RSS per repeat.
# --------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Resets VmHWM (peak RSS) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _fsync_path(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


COLD = False  # set by --cold in the child


def _warm(path):
    """Before a timed read. Default: reads the file once (untimed) so the timed
    read finds it in the page cache. --cold: evicts the file's pages instead
    (fsync, then POSIX_FADV_DONTNEED: no root needed, only this file is
    affected; the hypervisor's cache of the disk may still help)."""
    if COLD:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(CHUNK)
        while f.readinto(buf):
            pass


def _rm(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def child_main(op: str, args) -> None:
    import numpy as np  # noqa: F401

    global COLD
    COLD = args.cold

    paths = json.loads(args.paths)
    needs_sd = op.startswith("save_") or op == "raw_write"
    sd = build_state_dict(args.size_gib, args.seed) if needs_sd else None
    if op.startswith("save_") or op.startswith("load_") or op.startswith("convert_py"):
        import torch  # noqa: F401  (import cost not timed)
        import safetensors.torch  # noqa: F401
    if "ckptkit" in op:
        import ckptkit  # noqa: F401
    gc.collect()
    results = []
    for i in range(args.warmup + args.repeat):
        prep = PREPARE.get(op)
        if prep:
            prep(paths)
        gc.collect()
        rss_before = _status_kib("VmRSS")
        reset_ok = _reset_peak()
        t0 = time.perf_counter()
        out = OPS[op](sd, paths)
        dt = time.perf_counter() - t0
        peak = _status_kib("VmHWM") if reset_ok else resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss
        if isinstance(out, dict) and "child_maxrss_kib" in out:  # the CLI's own process
            peak, rss_before = out["child_maxrss_kib"], 0
        if i >= args.warmup:
            results.append({"seconds": dt, "peak_rss_kib": peak,
                            "extra_rss_kib": max(0, peak - rss_before)})
        del out
        gc.collect()
    json.dump({"op": op, "results": results}, sys.stdout)


# --- saves (the file is removed, untimed, before each repeat) ---------------

def _save_torch(sd, p, fsync=True):
    import torch

    torch.save(sd, p["torch_pt"])
    if fsync:
        _fsync_path(p["torch_pt"])


def _save_ckptkit_torch(sd, p):
    import ckptkit

    ckptkit.save_file(sd, p["ckptkit_pt"], format="torch")  # fsyncs file and folder


def _save_st(sd, p, fsync=True):
    import safetensors.torch

    safetensors.torch.save_file(sd, p["st"])
    if fsync:
        _fsync_path(p["st"])


def _save_ckptkit_st(sd, p):
    import ckptkit

    ckptkit.save_file(sd, p["ckptkit_st"])


def _raw_write(sd, p):
    fd = os.open(p["raw"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for t in sd.values():
            mv = memoryview(t.reshape(-1).view(__import__("torch").uint8).numpy())
            off = 0
            while off < len(mv):
                off += os.write(fd, mv[off:off + (1 << 30)])
        os.fsync(fd)
    finally:
        os.close(fd)


# --- loads (warm cache: the file is read once, untimed, before each repeat) --

def _load_torch(sd, p):
    import torch

    return torch.load(p["torch_pt"], weights_only=True)


def _touch_pages(sd):
    import torch

    s = 0
    for t in sd.values():
        b = t.reshape(-1).view(torch.uint8)
        if b.numel():
            s += int(b[::PAGE].sum())  # one byte per page: every page is faulted in
    return s


def _load_torch_mmap(sd, p):
    import torch

    out = torch.load(p["torch_pt"], weights_only=True, mmap=True)
    _touch_pages(out)
    return out


def _load_st(sd, p):
    import safetensors.torch

    # safetensors >= 0.6 maps the file copy-on-write: nothing is read until
    # touched, so touch every page, as for torch.load(mmap=True).
    out = safetensors.torch.load_file(p["st"])
    _touch_pages(out)
    return out


def _load_st_notouch(sd, p):
    import safetensors.torch

    return safetensors.torch.load_file(p["st"])


def _load_ckptkit(path):
    import ckptkit

    with ckptkit.open(path) as ck:
        return {k: ck.torch(k) for k in ck.keys()}


def _load_ckptkit_pt(sd, p):
    return _load_ckptkit(p["ckptkit_pt"])


def _load_ckptkit_st(sd, p):
    return _load_ckptkit(p["ckptkit_st"])


def _raw_read(sd, p):
    import numpy as np

    path = p["ckptkit_st"]
    size = os.path.getsize(path)
    buf = np.empty(size, dtype=np.uint8)  # fresh memory, as a loader's tensors are
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        off = 0
        while off < size:
            n = f.readinto(mv[off:off + CHUNK])
            if not n:
                raise IOError(f"{path}: short read at {off}")
            off += n
    return buf


# --- convert .pt -> .safetensors ---------------------------------------------

def _convert_cli(sd, p):
    proc = subprocess.Popen([p["cli"], "convert", "--to", "safetensors", "-q",
                             p["torch_pt"], p["convert_cli"]],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"ckptkit convert failed ({proc.returncode}): {err}")
    return {"child_maxrss_kib": rusage.ru_maxrss}


def _convert_py(sd, p):
    import safetensors.torch
    import torch

    loaded = torch.load(p["torch_pt"], weights_only=True)
    # The CLI writes transformers' {"format": "pt"} metadata; so does the baseline.
    safetensors.torch.save_file(loaded, p["convert_py"], metadata={"format": "pt"})
    _fsync_path(p["convert_py"])


OPS = {
    "raw_write": _raw_write,
    "save_torch": _save_torch,
    "save_torch_nofsync": lambda sd, p: _save_torch(sd, p, fsync=False),
    "save_ckptkit_torch": _save_ckptkit_torch,
    "save_st": _save_st,
    "save_st_nofsync": lambda sd, p: _save_st(sd, p, fsync=False),
    "save_ckptkit_st": _save_ckptkit_st,
    "raw_read": _raw_read,
    "load_torch": _load_torch,
    "load_torch_mmap": _load_torch_mmap,
    "load_st": _load_st,
    "load_st_notouch": _load_st_notouch,
    "load_ckptkit_pt": _load_ckptkit_pt,
    "load_ckptkit_st": _load_ckptkit_st,
    "convert_cli": _convert_cli,
    "convert_py": _convert_py,
}

# Untimed preparation before each repeat.
PREPARE = {
    "raw_write": lambda p: _rm(p["raw"]),
    "save_torch": lambda p: _rm(p["torch_pt"]),
    "save_torch_nofsync": lambda p: (_rm(p["torch_pt"])),
    "save_ckptkit_torch": lambda p: _rm(p["ckptkit_pt"]),
    "save_st": lambda p: _rm(p["st"]),
    "save_st_nofsync": lambda p: _rm(p["st"]),
    "save_ckptkit_st": lambda p: _rm(p["ckptkit_st"]),
    "raw_read": lambda p: _warm(p["ckptkit_st"]),
    "load_torch": lambda p: _warm(p["torch_pt"]),
    "load_torch_mmap": lambda p: _warm(p["torch_pt"]),
    "load_st": lambda p: _warm(p["st"]),
    "load_st_notouch": lambda p: _warm(p["st"]),
    "load_ckptkit_pt": lambda p: _warm(p["ckptkit_pt"]),
    "load_ckptkit_st": lambda p: _warm(p["ckptkit_st"]),
    "convert_cli": lambda p: (_rm(p["convert_cli"]), _warm(p["torch_pt"])),
    "convert_py": lambda p: (_rm(p["convert_py"]), _warm(p["torch_pt"])),
}

# The op whose output file another op reads.
NEEDS = {
    "raw_read": "save_ckptkit_st",
    "load_torch": "save_torch",
    "load_torch_mmap": "save_torch",
    "load_ckptkit_pt": "save_ckptkit_torch",
    "load_st": "save_st",
    "load_st_notouch": "save_st",
    "load_ckptkit_st": "save_ckptkit_st",
    "convert_py": "save_torch",
    "convert_cli": "save_torch",
}

# (op, label, fsync?, baseline op for the speed ratio, raw baseline op)
ROWS = [
    ("raw_write", "raw sequential write (os.write + fsync)", "yes", None, None),
    ("save_torch", "torch.save", "yes (harness)", None, "raw_write"),
    ("save_torch_nofsync", "torch.save, no fsync (info)", "no", None, None),
    ("save_ckptkit_torch", "ckptkit.save_file(format='torch')", "yes", "save_torch",
     "raw_write"),
    ("save_st", "safetensors.torch.save_file", "yes (harness)", None, "raw_write"),
    ("save_st_nofsync", "safetensors save_file, no fsync (info)", "no", None, None),
    ("save_ckptkit_st", "ckptkit.save_file (safetensors)", "yes", "save_st", "raw_write"),
    ("raw_read", "raw sequential read into new buffer", "-", None, None),
    ("load_torch", "torch.load(weights_only=True)", "-", None, "raw_read"),
    ("load_torch_mmap", "torch.load(mmap=True) + touch pages", "-", None, None),
    ("load_ckptkit_pt", "ckptkit.open(.pt) + torch(k) for all", "-", "load_torch", "raw_read"),
    ("load_st_notouch", "safetensors load_file, untouched (info)", "-", None, None),
    ("load_st", "safetensors.torch.load_file + touch pages", "-", None, "raw_read"),
    ("load_ckptkit_st", "ckptkit.open(.safetensors) + torch(k)", "-", "load_st", "raw_read"),
    ("convert_py", "torch.load + save_file (Python)", "yes (harness)", None, None),
    ("convert_cli", "ckptkit convert .pt -> .safetensors (CLI)", "yes", "convert_py", None),
]


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------

def _busy() -> str:
    try:
        out = subprocess.run(["pgrep", "-f", r"\.ci/run|scripts/test\.sh|fuzz"],
                             capture_output=True, text=True).stdout.split()
        mine = {str(os.getpid())}
        out = [p for p in out if p not in mine]
        return f"{len(out)} CI/test/fuzz processes running" if out else ""
    except OSError:
        return ""


def _find_cli(arg):
    if arg:
        return arg
    here = os.path.join(os.path.dirname(sys.executable), "ckptkit")
    return here if os.access(here, os.X_OK) else shutil.which("ckptkit")


def _disk_info(path):
    try:
        dev = subprocess.run(["df", "-h", "--output=source,fstype,size,avail", path],
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        return " ".join(dev.split())
    except (OSError, IndexError):
        return "?"


def run_child(op, args, paths):
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, op,
           "--size-gib", str(args.size_gib), "--repeat", str(args.repeat), "--warmup", str(args.warmup),
           "--seed", str(args.seed), "--paths", json.dumps(paths)] + (["--cold"] if args.cold
                                                                          else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{op} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout)["results"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each operation "
                    "before the timed ones (the first touch of fresh memory in a VM is slow)")
    ap.add_argument("--dir", default=None, help="folder for the temporary files "
                    "(default: system temp dir); a fresh subfolder is made and removed")
    ap.add_argument("--json", action="store_true", help="print a JSON document instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cold", action="store_true", help="evict each file from the page cache "
                    "before each timed read (posix_fadvise DONTNEED) instead of warming it")
    ap.add_argument("--cli", default=None, help="ckptkit executable (default: next to python)")
    ap.add_argument("--only", default=None, help="comma-separated op names (debugging)")
    ap.add_argument("--keep", action="store_true", help="keep the files (debugging)")
    ap.add_argument(CHILD_FLAG, dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--paths", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args)
        return

    import ckptkit
    import numpy as np
    import safetensors
    import torch

    cli = _find_cli(args.cli)
    if not cli:
        sys.exit("ckptkit CLI not found: pass --cli or pip install . into this venv")
    if not hasattr(ckptkit, "save_file"):
        sys.exit(f"{ckptkit.__file__} has no save_file: reinstall (pip install .)")
    base = tempfile.mkdtemp(prefix="ckptkit-bench-", dir=args.dir)
    for sub in ("torch", "ckptkit", "py", "cli"):
        os.makedirs(os.path.join(base, sub))
    # Same basenames in different folders: torch.save names the archive folder
    # after the file, so equal inputs give equal bytes and can be compared.
    paths = {
        "torch_pt": os.path.join(base, "torch", "model.pt"),
        "ckptkit_pt": os.path.join(base, "ckptkit", "model.pt"),
        "st": os.path.join(base, "torch", "model.safetensors"),
        "ckptkit_st": os.path.join(base, "ckptkit", "model.safetensors"),
        "raw": os.path.join(base, "raw.bin"),
        "convert_cli": os.path.join(base, "cli", "model.safetensors"),
        "convert_py": os.path.join(base, "py", "model.safetensors"),
        "cli": cli,
    }
    plan = plan_state_dict(args.size_gib, args.seed)
    nbytes = sum(_nbytes(d, s) for _, d, s in plan)
    busy_start = _busy()
    load_start = os.getloadavg()
    ops = [r[0] for r in ROWS]
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - set(ops)
        if unknown:
            sys.exit(f"--only: unknown operations {sorted(unknown)}; known: {ops}")
        wanted |= {NEEDS[o] for o in wanted if o in NEEDS}  # the op that writes its input
        ops = [o for o in ops if o in wanted]
    results = {}
    checks = {}
    try:
        for op in ops:
            if not args.json:
                print(f"  running {op} ...", file=sys.stderr, flush=True)
            results[op] = run_child(op, args, paths)
        # Same bytes as the reference writers (the comparison is apples to apples).
        import filecmp

        for a, b in [("torch_pt", "ckptkit_pt"), ("st", "ckptkit_st"),
                     ("convert_py", "convert_cli")]:
            if os.path.exists(paths[a]) and os.path.exists(paths[b]):
                checks[f"{b} == {a}"] = filecmp.cmp(paths[a], paths[b], shallow=False)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    busy_end = _busy()

    def best(op):
        return min(r["seconds"] for r in results[op]) if op in results else None

    rows = []
    for op, label, fsync, base_op, raw_op in ROWS:
        if op not in results:
            continue
        t = best(op)
        row = {
            "op": op, "label": label, "fsync": fsync, "seconds": t,
            "all_seconds": [r["seconds"] for r in results[op]],
            "median_seconds": statistics.median(r["seconds"] for r in results[op]),
            "gb_per_s": nbytes / t / 1e9,
            "peak_rss_mib": max(r["peak_rss_kib"] for r in results[op]) / 1024,
            "extra_rss_mib": max(r["extra_rss_kib"] for r in results[op]) / 1024,
        }
        if base_op and base_op in results:
            row["speedup_vs"] = base_op
            row["speedup"] = best(base_op) / t
        if raw_op and raw_op in results:
            row["fraction_of_raw"] = best(raw_op) / t
        rows.append(row)

    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "disk": _disk_info(base if args.keep
                                                                          else (args.dir or tempfile.gettempdir()))},
        "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__,
                     "numpy": np.__version__, "ckptkit": ckptkit.__version__},
        "state_dict": {"tensors": len(plan), "bytes": nbytes, "size_gib": nbytes / (1 << 30),
                       "seed": args.seed},
        "repeat": args.repeat,
        "warmup": args.warmup,
        "page_cache": "cold (evicted before each read)" if args.cold else "warm",
        "load": {"busy_at_start": busy_start, "busy_at_end": busy_end,
                 "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "identical_outputs": checks,
        "rows": rows,
        "caveats": [
            "every write is timed with an fsync of its file (ckptkit's own; os.fsync added for "
            "torch.save, save_file and the raw write); 'no fsync' rows are for information",
            ("reads start with the file evicted from the page cache (fsync + "
             "posix_fadvise DONTNEED before each run): disk-bound; the hypervisor may still "
             "cache the disk" if args.cold else
             "reads use a warm page cache for all (file read once, untimed, before each run): "
             "they measure CPU and memory bandwidth, not the disk (--cold evicts instead)"),
            "torch.load(mmap=True) and safetensors.torch.load_file (0.8: a copy-on-write mmap) map "
    "the page cache instead of copying; they are timed touching one byte per 4 KiB page. "
    "ckptkit's reads and torch.load without mmap copy into fresh private memory",
            "seconds and GB/s are best-of-R (GB = 1e9 bytes of tensor data); median shows the "
            "noise. speedup = baseline seconds / ckptkit seconds (>1: ckptkit faster); "
            "'of raw' = raw seconds / ckptkit seconds (ckptkit's share of raw throughput)",
            "peak RSS is per operation in its own process (VmHWM reset before the run); extra = "
            "peak minus RSS before the run (for the CLI: the CLI process's whole peak)",
        ],
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    print(f"ckptkit bench_formats  {doc['date']}  {doc['host']['cpus']} CPUs  "
          f"disk: {doc['host']['disk']}")
    print(f"torch {torch.__version__}, safetensors {safetensors.__version__}, "
          f"ckptkit {ckptkit.__version__}; state dict: {len(plan)} tensors, "
          f"{nbytes / (1 << 30):.2f} GiB; best of {args.repeat} after {args.warmup} untimed")
    print(f"page cache for reads: {doc['page_cache']}; load average {load_start[0]:.2f} "
          f"at start, {doc['load']['loadavg_end'][0]:.2f} at end")
    if busy_start or busy_end or load_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: measured under load ({busy_start or busy_end or 'other processes'}); "
              "timings are noisy, rerun on a quiet machine")
    print()
    hdr = (f"{'operation':44s} {'fsync':>13s} {'seconds':>8s} {'median':>7s} {'GB/s':>6s} "
           f"{'speedup':>18s} {'of raw':>7s} {'peak RSS':>9s} {'extra':>8s}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        sp = f"{r['speedup']:.2f}x {r['speedup_vs']}" if "speedup" in r else ""
        fr = f"{r['fraction_of_raw']:.2f}" if "fraction_of_raw" in r else ""
        print(f"{r['label']:44s} {r['fsync']:>13s} {r['seconds']:8.3f} "
              f"{r['median_seconds']:7.3f} {r['gb_per_s']:6.2f} "
              f"{sp:>18s} {fr:>7s} {r['peak_rss_mib']:8.0f}M {r['extra_rss_mib']:7.0f}M")
    print()
    for k, v in checks.items():
        print(f"identical bytes: {k}: {'yes' if v else 'NO'}")
    print("Notes:")
    for c in doc["caveats"]:
        print(f"  - {c}")


if __name__ == "__main__":
    main()
