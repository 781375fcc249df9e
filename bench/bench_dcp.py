#!/usr/bin/env python3
"""ckptkit vs torch on PyTorch DCP (Megatron torch_dist) checkpoints: convert, inspect, verify.

    .venv/bin/python bench/bench_dcp.py [--size-gib 2] [--repeat 3] [--warmup 1] [--dir DIR]
                                        [--json] [--cold] [--cli PATH] [--world-size 2]
                                        [--md-keys 1000 --md-chunks 100] [--only OPS] [--keep]

Three parts, every operation in its own subprocess (peak RSS per operation, no
allocator state shared), best of --repeat after --warmup untimed runs:

 1. convert: a real ~N GiB DCP checkpoint written by torch.distributed.checkpoint.save
    from --world-size gloo ranks (tests/interop/dcp_fixtures.write_dcp, thread_count 2,
    so 2 files per rank) holding bench_formats' seeded tensor mix, with the
    embeddings and half of the layers DTensor-sharded (Shard(0) column-parallel,
    Shard(1) row-parallel) and the rest replicated, plus a few Python objects.
    Timed: torch's dcp_to_torch_save(dir, out.pt) + os.fsync(out.pt);
    `ckptkit convert DIR out.pt --to torch`; `ckptkit convert DIR x.safetensors
    --to safetensors`; and the disk's own baseline: a plain copy (16 MiB read,
    write) of all the checkpoint's files into one file + fsync.
 2. inspect: a synthetic `.metadata` with --md-keys x --md-chunks chunks made by
    tests/golden/dcp/make_synthetic_metadata.py (sparse data files of the right
    sizes next to it, so the folder is a complete-looking checkpoint). Timed:
    `ckptkit inspect DIR --json` and `ckptkit inspect DIR` (stdout to /dev/null)
    against torch's FileSystemReader(DIR).read_metadata() (a pickle.load), in a
    warm Python process, and as a whole `python -c` process (information).
 3. verify: `ckptkit verify DIR` and `ckptkit verify --deep DIR` on the part-1
    checkpoint against torch loading it fully (_load_state_dict with
    _EmptyStateDictLoadPlanner, no_dist=True) and a plain sequential read of
    every file (the read limit).

Fairness rules are printed with the results and described in bench/README.md.
Files live in a fresh folder under --dir and are removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import functools
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

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# Module level, so that the spawned DCP ranks (which re-import this file) find them too.
for _p in (HERE, os.path.join(ROOT, "tests", "interop")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

CHILD_FLAG = "--_child"
CHUNK = 16 << 20
MIB = 1 << 20


# --------------------------------------------------------------------------
# The DCP checkpoint (runs inside each spawned rank).
# --------------------------------------------------------------------------

def _placement(key: str):
    """Shard dim for `key`, or None (a plain tensor, replicated on every rank).
    Embeddings/lm_head: vocab-parallel Shard(0). Even layers: column-parallel
    Shard(0) for q/k/v/gate/up (+ the q bias), row-parallel Shard(1) for o/down.
    Odd layers, the projector, norms and buffers: replicated."""
    if key in ("model.embed_tokens.weight", "lm_head.weight"):
        return 0
    parts = key.split(".")
    if len(parts) > 3 and parts[1] == "layers" and int(parts[2]) % 2 == 0:
        name = ".".join(parts[3:])
        if name in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
            return 1
        if name.endswith("proj.weight") or name == "self_attn.q_proj.bias":
            return 0
    return None


def rank_state_dict(size_gib: float, seed: int, rank: int, world_size: int):
    """This rank's state dict: bench_formats' seeded mix (identical on every rank),
    selected tensors turned into DTensors holding this rank's torch.chunk piece."""
    import torch
    from bench_formats import build_state_dict
    from dcp_fixtures import _mesh_1d
    from torch.distributed.tensor import DTensor, Shard

    sd = build_state_dict(size_gib, seed)
    mesh = _mesh_1d(world_size)
    model = {}
    for key in list(sd):
        t = sd.pop(key)
        dim = _placement(key)
        if dim is None or t.dim() <= dim or t.shape[dim] < world_size:
            model[key] = t
            continue
        local = t.chunk(world_size, dim)[rank].clone(memory_format=torch.contiguous_format)
        model[key] = DTensor.from_local(local, mesh, [Shard(dim)], run_check=False,
                                        shape=t.shape, stride=t.stride())
        del t
    return {"model": model, "iteration": 1000,
            "args": {"lr": 3e-4, "seq_length": 4096, "name": "bench_dcp"}}


def plan_summary(size_gib: float, seed: int):
    from bench_formats import _nbytes, plan_state_dict

    plan = plan_state_dict(size_gib, seed)
    sizes = [_nbytes(d, s) for _, d, s in plan]
    sharded = sum(1 for k, _, _ in plan if _placement(k) is not None)
    return {"tensors": len(plan), "bytes": sum(sizes), "largest_bytes": max(sizes),
            "sharded_tensors": sharded,
            "dtypes": sorted({d for _, d, _ in plan})}


# --------------------------------------------------------------------------
# Child side: one operation, R repeats.
# --------------------------------------------------------------------------

from bench_formats import _fsync_path, _reset_peak, _status_kib  # noqa: E402  (shared measuring helpers)


def _files(d):
    """Every regular file of a checkpoint folder, sorted (data files and .metadata)."""
    return [os.path.join(d, n) for n in sorted(os.listdir(d))
            if os.path.isfile(os.path.join(d, n))]


COLD = False


def _warm_dir(d):
    """Default: read every file once (untimed), so the timed run finds the page
    cache warm. --cold: evict them instead (fsync + POSIX_FADV_DONTNEED, no root
    needed; the hypervisor's cache of the disk may still help)."""
    buf = bytearray(CHUNK)
    for p in _files(d):
        if COLD:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        else:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass


def _rm(path):
    if os.path.isdir(path):
        shutil.rmtree(path)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _run_cli(argv, ok_codes=(0,)):
    """Runs the CLI with stdout to /dev/null; returns wall/CPU/peak RSS of that process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if code not in ok_codes:
        raise RuntimeError(f"{' '.join(argv)} exited {code}: {err[-3000:]}")
    return {"cli": True, "seconds": wall, "user_s": ru.ru_utime, "sys_s": ru.ru_stime,
            "peak_rss_kib": ru.ru_maxrss}


# --- part 1: convert --------------------------------------------------------

def _raw_copy(p):
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    fd = os.open(p["raw"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for src in _files(p["dcp"]):
            with open(src, "rb", buffering=0) as f:
                while True:
                    n = f.readinto(buf)
                    if not n:
                        break
                    off = 0
                    while off < n:
                        off += os.write(fd, mv[off:n])
        os.fsync(fd)
    finally:
        os.close(fd)


def _dcp_to_torch_save(p):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(p["dcp"], p["torch_pt"])
    _fsync_path(p["torch_pt"])


def _cli_convert_torch(p):
    return _run_cli([p["cli"], "convert", "-q", "--to", "torch", p["dcp"], p["cli_pt"]])


def _cli_convert_st(p):
    return _run_cli([p["cli"], "convert", "-q", "--to", "safetensors", p["dcp"], p["cli_st"]])


# --- part 2: inspect --------------------------------------------------------

def _py_read_metadata(p):
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(p["md"]).read_metadata()
    return len(md.storage_data)


def _py_read_metadata_proc(p):
    code = ("import sys; from torch.distributed.checkpoint import FileSystemReader; "
            "FileSystemReader(sys.argv[1]).read_metadata()")
    return _run_cli([sys.executable, "-c", code, p["md"]])


def _cli_inspect_json(p):
    return _run_cli([p["cli"], "inspect", "--json", p["md"]])


def _cli_inspect_text(p):
    return _run_cli([p["cli"], "inspect", p["md"]])


# --- part 3: verify ---------------------------------------------------------

def _raw_read(p):
    buf = bytearray(CHUNK)
    n = 0
    for src in _files(p["dcp"]):
        with open(src, "rb", buffering=0) as f:
            while True:
                k = f.readinto(buf)
                if not k:
                    break
                n += k
    return n


def _torch_load_full(p):
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    sd = {}
    _load_state_dict(sd, storage_reader=FileSystemReader(p["dcp"]),
                     planner=_EmptyStateDictLoadPlanner(), no_dist=True)
    return sd


def _cli_verify(p):
    return _run_cli([p["cli"], "verify", p["dcp"]])


def _cli_verify_deep(p):
    return _run_cli([p["cli"], "verify", "--deep", p["dcp"]])


OPS = {
    "raw_copy": _raw_copy,
    "dcp_to_torch_save": _dcp_to_torch_save,
    "cli_convert_torch": _cli_convert_torch,
    "cli_convert_st": _cli_convert_st,
    "py_read_metadata": _py_read_metadata,
    "py_read_metadata_proc": _py_read_metadata_proc,
    "cli_inspect_json": _cli_inspect_json,
    "cli_inspect_text": _cli_inspect_text,
    "raw_read": _raw_read,
    "torch_load_full": _torch_load_full,
    "cli_verify": _cli_verify,
    "cli_verify_deep": _cli_verify_deep,
}

# Untimed, before each repeat: remove the output, warm (or evict) the input.
PREPARE = {
    "raw_copy": lambda p: (_rm(p["raw"]), _warm_dir(p["dcp"])),
    "dcp_to_torch_save": lambda p: (_rm(p["torch_pt"]), _warm_dir(p["dcp"])),
    "cli_convert_torch": lambda p: (_rm(p["cli_pt"]), _warm_dir(p["dcp"])),
    "cli_convert_st": lambda p: (_rm(p["cli_st"]), _warm_dir(p["dcp"])),
    "py_read_metadata": lambda p: _warm_dir(p["md"]),
    "py_read_metadata_proc": lambda p: _warm_dir(p["md"]),
    "cli_inspect_json": lambda p: _warm_dir(p["md"]),
    "cli_inspect_text": lambda p: _warm_dir(p["md"]),
    "raw_read": lambda p: _warm_dir(p["dcp"]),
    "torch_load_full": lambda p: _warm_dir(p["dcp"]),
    "cli_verify": lambda p: _warm_dir(p["dcp"]),
    "cli_verify_deep": lambda p: _warm_dir(p["dcp"]),
}


def child_main(op: str, args) -> None:
    global COLD
    COLD = args.cold
    paths = json.loads(args.paths)
    if op in ("dcp_to_torch_save", "py_read_metadata", "torch_load_full"):
        import torch  # noqa: F401  (import cost not timed)
        import torch.distributed.checkpoint  # noqa: F401
        import torch.distributed.checkpoint.format_utils  # noqa: F401
    results = []
    for i in range(args.warmup + args.repeat):
        PREPARE[op](paths)
        gc.collect()
        load1 = os.getloadavg()[0]
        rss_before = _status_kib("VmRSS")
        reset_ok = _reset_peak()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        out = OPS[op](paths)
        dt = time.perf_counter() - t0
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        if isinstance(out, dict) and out.get("cli"):
            rec = {k: out[k] for k in ("seconds", "user_s", "sys_s", "peak_rss_kib")}
            rec["extra_rss_kib"] = out["peak_rss_kib"]  # the whole CLI process
        else:
            peak = _status_kib("VmHWM") if reset_ok else ru1.ru_maxrss
            rec = {"seconds": dt, "user_s": ru1.ru_utime - ru0.ru_utime,
                   "sys_s": ru1.ru_stime - ru0.ru_stime, "peak_rss_kib": peak,
                   "extra_rss_kib": max(0, peak - rss_before)}
        rec["loadavg_1m"] = load1
        if i >= args.warmup:
            results.append(rec)
        del out
        gc.collect()
    json.dump({"op": op, "results": results}, sys.stdout)


def check_main(args) -> None:
    """Untimed: compares the converted files with torch's (values, dtypes, shapes, objects)."""
    import filecmp

    import torch

    paths = json.loads(args.paths)
    doc = {}

    def flat(obj, prefix=""):
        out = {}
        if isinstance(obj, dict):
            for k, v in obj.items():
                out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                out.update(flat(v, f"{prefix}{i}."))
        else:
            out[prefix[:-1]] = obj
        return out

    if os.path.exists(paths["torch_pt"]) and os.path.exists(paths["cli_pt"]):
        doc["pt_bytes_identical"] = filecmp.cmp(paths["torch_pt"], paths["cli_pt"], shallow=False)
        a = flat(torch.load(paths["torch_pt"], weights_only=False, mmap=True))
        b = flat(torch.load(paths["cli_pt"], weights_only=False, mmap=True))
        bad = []
        for k in sorted(set(a) | set(b)):
            x, y = a.get(k), b.get(k)
            if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
                if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(
                        x.view(-1).view(torch.uint8), y.view(-1).view(torch.uint8)):
                    bad.append(k)
            elif x != y or type(x) is not type(y):
                bad.append(k)
        doc["pt_entries"] = len(a)
        doc["pt_mismatches"] = bad[:10]
        doc["pt_equal"] = not bad
    st = paths["cli_st"]
    if os.path.exists(st):
        from safetensors import safe_open

        files = [st] if os.path.isfile(st) else [os.path.join(st, n) for n in os.listdir(st)
                                                 if n.endswith(".safetensors")]
        n = 0
        for f in files:
            with safe_open(f, "pt") as g:
                n += len(list(g.keys()))
        doc["safetensors_tensors"] = n
    json.dump(doc, sys.stdout)


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------

# (op, part, label, baseline op for the speed ratio, raw op for "of raw")
ROWS = [
    ("raw_copy", "convert", "raw copy of all files (16 MiB read/write + fsync)", None, None),
    ("dcp_to_torch_save", "convert", "torch dcp_to_torch_save + fsync", None, "raw_copy"),
    ("cli_convert_torch", "convert", "ckptkit convert --to torch (CLI)", "dcp_to_torch_save",
     "raw_copy"),
    ("cli_convert_st", "convert", "ckptkit convert --to safetensors (CLI)", "dcp_to_torch_save",
     "raw_copy"),
    ("py_read_metadata", "inspect", "torch FileSystemReader.read_metadata (in process)", None,
     None),
    ("py_read_metadata_proc", "inspect", "python -c read_metadata (whole process, info)", None,
     None),
    ("cli_inspect_json", "inspect", "ckptkit inspect --json (CLI)", "py_read_metadata", None),
    ("cli_inspect_text", "inspect", "ckptkit inspect (CLI, table)", "py_read_metadata", None),
    ("raw_read", "verify", "raw sequential read of all files (16 MiB)", None, None),
    ("torch_load_full", "verify", "torch _load_state_dict(no_dist) full load", None, "raw_read"),
    ("cli_verify", "verify", "ckptkit verify (CLI)", "torch_load_full", "raw_read"),
    ("cli_verify_deep", "verify", "ckptkit verify --deep (CLI)", "torch_load_full", "raw_read"),
]
PARTS = {"convert": "dcp", "inspect": "md", "verify": "dcp"}


def _find_cli(arg):
    for c in ([arg] if arg else []) + [os.path.join(ROOT, "build", "ckptkit"),
                                       os.path.join(os.path.dirname(sys.executable), "ckptkit"),
                                       shutil.which("ckptkit") or ""]:
        if c and os.access(c, os.X_OK):
            return os.path.abspath(c)
    return None


def _disk_info(path):
    try:
        out = subprocess.run(["df", "-h", "--output=source,fstype,size,avail", path],
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        return " ".join(out.split())
    except (OSError, IndexError):
        return "?"


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_gib():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError):
        return 0.0


def run_child(op, args, paths):
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, op,
           "--repeat", str(args.repeat), "--warmup", str(args.warmup),
           "--paths", json.dumps(paths)] + (["--cold"] if args.cold else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:].strip()}
    return {"results": json.loads(proc.stdout)["results"]}


def build_dcp(args, path):
    from dcp_fixtures import write_dcp

    t0 = time.perf_counter()
    write_dcp(path, args.world_size,
              functools.partial(rank_state_dict, args.size_gib, args.seed),
              thread_count=2, timeout_s=1800)
    return time.perf_counter() - t0


def build_metadata(args, folder):
    """The synthetic .metadata plus sparse data files as long as it says they are."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "golden", "dcp",
                                                 "make_synthetic_metadata.py"),
                    os.path.join(folder, ".metadata"), "--keys", str(args.md_keys),
                    "--chunks", str(args.md_chunks)], check=True, capture_output=True)
    import io
    import pickle

    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, MetadataIndex

    md = FileSystemReader(folder).read_metadata()
    # inspect shows the non-tensor objects, so they must be real: the script only
    # records a length for them. Append a real torch.save archive per object to the
    # first data file (as DCP writes BYTE_IO items) and point the index at it.
    ends = {}
    for info in md.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0),
                                       info.offset + info.length)
    first = min(ends, key=lambda n: (len(n), n))
    blobs = []
    for fqn, meta in md.state_dict_metadata.items():
        if isinstance(meta, BytesStorageMetadata):
            buf = io.BytesIO()
            torch.save({"fqn": fqn, "step": 1000, "note": "synthetic"}, buf)
            md.storage_data[MetadataIndex(fqn)] = _StorageInfo(first, ends[first],
                                                               len(buf.getvalue()))
            ends[first] += len(buf.getvalue())
            blobs.append(buf.getvalue())
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(md, f)  # as _FileSystemWriter.finish does
    with open(os.path.join(folder, first), "wb") as f:
        f.truncate(ends[first] - sum(map(len, blobs)))
        f.seek(0, os.SEEK_END)
        for b in blobs:
            f.write(b)
    ends = {}
    for info in md.storage_data.values():
        ends[info.relative_path] = max(ends.get(info.relative_path, 0),
                                       info.offset + info.length)
    for name, end in ends.items():
        with open(os.path.join(folder, name), "r+b" if name == first else "wb") as f:
            f.truncate(end)  # sparse: tensor chunks are never read by inspect
    chunks = sum(len(getattr(v, "chunks", ())) for v in md.state_dict_metadata.values())
    return {"chunks": chunks, "keys": len(md.state_dict_metadata),
            "storage_items": len(md.storage_data), "data_files": len(ends),
            "metadata_bytes": os.path.getsize(os.path.join(folder, ".metadata")),
            "build_seconds": time.perf_counter() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed runs of each operation before the timed ones")
    ap.add_argument("--dir", default=None, help="folder for the temporary files (default: "
                    "system temp dir); a fresh subfolder is made and removed")
    ap.add_argument("--json", action="store_true", help="print a JSON document instead")
    ap.add_argument("--cold", action="store_true", help="evict the input files from the page "
                    "cache before each timed run (posix_fadvise DONTNEED) instead of warming")
    ap.add_argument("--cli", default=None,
                    help="ckptkit executable (default: build/ckptkit, else next to python)")
    ap.add_argument("--world-size", type=int, default=2, help="gloo ranks writing the DCP")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--md-keys", type=int, default=1000, help="synthetic .metadata: tensors")
    ap.add_argument("--md-chunks", type=int, default=100,
                    help="synthetic .metadata: chunks per tensor (keys x chunks in all)")
    ap.add_argument("--only", default=None,
                    help="comma-separated op names or parts (convert, inspect, verify)")
    ap.add_argument("--keep", action="store_true", help="keep the files (debugging)")
    ap.add_argument(CHILD_FLAG, dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_check", dest="check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--paths", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--render", default=None, metavar="FILE.json",
                    help="print the text report of an earlier --json run and exit")
    args = ap.parse_args()
    if args.render:
        with open(args.render) as f:
            print_report(json.load(f))
        return
    if args.child:
        child_main(args.child, args)
        return
    if args.check:
        check_main(args)
        return

    import torch

    cli = _find_cli(args.cli)
    if not cli:
        sys.exit("ckptkit CLI not found: pass --cli PATH")
    ops = [r[0] for r in ROWS]
    if args.only:
        wanted = set(args.only.split(","))
        wanted |= {r[0] for r in ROWS if r[1] in wanted}
        unknown = wanted - set(ops) - set(PARTS)
        if unknown:
            sys.exit(f"--only: unknown {sorted(unknown)}; known: {ops} or {sorted(PARTS)}")
        ops = [o for o in ops if o in wanted]
    parts = {r[1] for r in ROWS if r[0] in ops}

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    base = tempfile.mkdtemp(prefix="ckptkit-bench-dcp-", dir=args.dir)
    paths = {"dcp": os.path.join(base, "dcp"), "md": os.path.join(base, "md"),
             "raw": os.path.join(base, "raw.bin"),
             # Same basename in different folders (torch.save names the archive folder
             # after the file), so equal content can give equal bytes.
             "torch_pt": os.path.join(base, "torch", "model.pt"),
             "cli_pt": os.path.join(base, "cli", "model.pt"),
             "cli_st": os.path.join(base, "cli", "model.safetensors"),
             "cli": cli}
    for sub in ("md", "torch", "cli"):
        os.makedirs(os.path.join(base, sub))
    summary = plan_summary(args.size_gib, args.seed)
    load_start = os.getloadavg()
    setup = {}
    results = {}
    checks = {}
    try:
        if parts & {"convert", "verify"}:
            log(f"  writing the DCP checkpoint ({summary['bytes'] / (1 << 30):.2f} GiB, "
                f"{args.world_size} gloo ranks, thread_count 2) ...")
            setup["dcp_save_seconds"] = build_dcp(args, paths["dcp"])
            files = _files(paths["dcp"])
            setup["dcp_files"] = len(files)
            setup["dcp_file_bytes"] = sum(os.path.getsize(f) for f in files)
        if "inspect" in parts:
            log(f"  writing a synthetic .metadata ({args.md_keys} x {args.md_chunks} chunks) ...")
            setup["metadata"] = build_metadata(args, paths["md"])
        for op in ops:
            log(f"  running {op} ...")
            results[op] = run_child(op, args, paths)
            if "error" in results[op]:
                log(f"    FAILED: {results[op]['error'].splitlines()[-1:]}")
        if "convert" in parts:
            log("  comparing outputs ...")
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_check",
                                   "--paths", json.dumps(paths)], capture_output=True, text=True)
            checks = json.loads(proc.stdout) if proc.returncode == 0 else {
                "error": proc.stderr[-2000:]}
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    load_end = os.getloadavg()

    def best(op, field="seconds"):
        r = results.get(op, {}).get("results")
        return min(x[field] for x in r) if r else None

    payload = summary["bytes"]
    aim_rss = 2 * summary["largest_bytes"] + 256 * MIB
    rows = []
    for op, part, label, base_op, raw_op in ROWS:
        if op not in results:
            continue
        row = {"op": op, "part": part, "label": label}
        if "error" in results[op]:
            row["error"] = results[op]["error"]
            rows.append(row)
            continue
        rs = results[op]["results"]
        b = min(rs, key=lambda x: x["seconds"])
        row.update({
            "seconds": b["seconds"], "all_seconds": [x["seconds"] for x in rs],
            "median_seconds": statistics.median(x["seconds"] for x in rs),
            "user_s": b["user_s"], "sys_s": b["sys_s"],
            "peak_rss_mib": max(x["peak_rss_kib"] for x in rs) / 1024,
            "extra_rss_mib": max(x["extra_rss_kib"] for x in rs) / 1024,
            "loadavg_1m": [x["loadavg_1m"] for x in rs],
        })
        if part != "inspect" and op != "cli_verify":  # verify reads metadata only
            row["gb_per_s"] = payload / b["seconds"] / 1e9
        if base_op and best(base_op):
            row["speedup_vs"] = base_op
            row["speedup"] = best(base_op) / b["seconds"]
        if raw_op and best(raw_op):
            row["fraction_of_raw"] = best(raw_op) / b["seconds"]
        if part == "convert" and op != "raw_copy":
            row["rss_vs_aim"] = row["extra_rss_mib"] * MIB / aim_rss
        rows.append(row)

    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
                 "mem_gib": round(_mem_gib(), 1), "python": platform.python_version(),
                 "disk": _disk_info(args.dir or tempfile.gettempdir())},
        "versions": {"torch": torch.__version__, "cli": cli},
        "checkpoint": {**summary, "size_gib": summary["bytes"] / (1 << 30),
                       "world_size": args.world_size, "thread_count": 2,
                       "writer": "tests/interop/dcp_fixtures.write_dcp (dcp.save, gloo ranks, "
                                 "FileSystemWriter single_file_per_rank, sync_files=False)",
                       "seed": args.seed, **setup},
        "aim_rss_mib": aim_rss / MIB,
        "repeat": args.repeat, "warmup": args.warmup,
        "page_cache": "cold (inputs evicted before each run)" if args.cold else "warm",
        "loadavg_start": load_start, "loadavg_end": load_end,
        "output_checks": checks,
        "rows": rows,
        "fairness": [
            "convert: every output is fsynced inside the timed region (ckptkit's writer fsyncs "
            "file and folder itself; os.fsync is added after dcp_to_torch_save and the raw copy)",
            ("inputs are evicted from the page cache before each run (fsync + posix_fadvise "
             "DONTNEED); the hypervisor may still cache the disk" if args.cold else
             "inputs are warm for everybody (every file read once, untimed, before each run): "
             "CPU- and memory-bound numbers; --cold evicts them instead"),
            "raw copy = the same files read in 16 MiB pieces and written to one file + fsync "
            "(the read+write disk bound); raw read = the same reads into a reused buffer",
            "GB/s use the tensor payload (1e9 bytes); speedup = baseline s / ckptkit s (>1: "
            "ckptkit faster); 'of raw' = raw s / op s",
            "peak RSS: Python ops in their own process with VmHWM reset just before the run "
            "('extra' = peak minus RSS before, i.e. without the interpreter and torch import); "
            "CLI ops: the CLI process's own ru_maxrss (whole process, = extra)",
            f"RSS aim for conversion: 2 x largest tensor + 256 MiB = {aim_rss / MIB:.0f} MiB "
            "(perf-anchors' stricter target: 1.2 x largest + 256 MiB)",
            "inspect: the CLI is timed as a whole process (exec, parse, print) against torch's "
            "read_metadata in an already-running Python with torch imported; the whole "
            "'python -c' process is shown for information",
            "user/sys = CPU seconds of the best run (Python ops: the whole child process, "
            "torch's threads included)",
        ],
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    print_report(doc)


def print_report(doc) -> None:
    """The text report of a result document (also: --render FILE.json)."""
    h = doc["host"]
    cli = doc["versions"]["cli"]
    load_start, load_end = doc["loadavg_start"], doc["loadavg_end"]
    c = doc["checkpoint"]
    print(f"ckptkit bench_dcp  {doc['date']}  {h['cpus']} CPUs ({h['cpu']}), "
          f"{h['mem_gib']} GiB RAM, disk: {h['disk']}")
    print(f"torch {doc['versions']['torch']}; CLI {cli}; best of {doc['repeat']} after "
          f"{doc['warmup']} untimed; page cache: {doc['page_cache']}")
    print(f"load average (1 min) {load_start[0]:.2f} at start, {load_end[0]:.2f} at end "
          f"(per-op values in --json)")
    if max(load_start[0], load_end[0]) > 0.5 * (h["cpus"] or 1):
        print("WARNING: the machine is busy (load average above half the CPUs): timings "
              "are noisy")
    if "dcp_save_seconds" in c:
        print(f"DCP checkpoint: {c['tensors']} tensors ({c['sharded_tensors']} DTensor-sharded), "
              f"{c['size_gib']:.2f} GiB payload, largest {c['largest_bytes'] / MIB:.0f} MiB, "
              f"{c['dcp_files']} files {c['dcp_file_bytes'] / (1 << 30):.2f} GiB; written by "
              f"{c['world_size']} gloo ranks x 2 threads in {c['dcp_save_seconds']:.1f}s")
    if "metadata" in c:
        m = c["metadata"]
        print(f"synthetic .metadata: {m['keys']} keys, {m['chunks']} chunks, "
              f"{m['metadata_bytes'] / MIB:.1f} MiB, {m['data_files']} (sparse) data files")
    for part in ("convert", "inspect", "verify"):
        prow = [r for r in doc["rows"] if r["part"] == part]
        if not prow:
            continue
        print()
        hdr = (f"{part + ':':52s} {'s':>7s} {'median':>7s} {'user':>6s} {'sys':>5s} "
               f"{'GB/s':>5s} {'speedup':>24s} {'of raw':>6s} {'peak RSS':>9s} {'extra':>8s} "
               f"{'load':>4s}" + ("  vs aim" if part == "convert" else ""))
        print(hdr)
        print("-" * len(hdr))
        for r in prow:
            if "error" in r:
                print(f"{r['label']:52s} FAILED: {r['error'].splitlines()[-1][:100]}")
                continue
            sp = f"{r['speedup']:.2f}x {r['speedup_vs']}" if "speedup" in r else ""
            fr = f"{r['fraction_of_raw']:.2f}" if "fraction_of_raw" in r else ""
            gb = f"{r['gb_per_s']:.2f}" if "gb_per_s" in r else ""
            aim = f"  {r['rss_vs_aim']:.2f}x" if "rss_vs_aim" in r else ""
            print(f"{r['label']:52s} {r['seconds']:7.3f} {r['median_seconds']:7.3f} "
                  f"{r['user_s']:6.2f} {r['sys_s']:5.2f} {gb:>5s} {sp:>24s} {fr:>6s} "
                  f"{r['peak_rss_mib']:8.0f}M {r['extra_rss_mib']:7.0f}M "
                  f"{max(r['loadavg_1m']):4.1f}{aim}")
    if doc["output_checks"]:
        print()
        print(f"output checks: {json.dumps(doc['output_checks'])}")
    print("Notes:")
    for n in doc["fairness"]:
        print(f"  - {n}")


if __name__ == "__main__":
    main()
