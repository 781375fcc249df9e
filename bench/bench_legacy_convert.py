#!/usr/bin/env python3
"""`ckptkit convert SRC DST --to legacy` (Megatron-Core torch_dist with distributed-optimizer
state -> Megatron-LM's legacy iter_N/mp_rank_XX/model_optim_rng.pt + distrib_optim.pt) and
`ckptkit reshard SRC DST --tp 2*TP --dp DP/2` (to another layout, fully_reshardable or
dp_reshardable out) against reading plus writing the same bytes.

    .venv/bin/python bench/bench_legacy_convert.py [--size-gib 2 | --quick] [--repeat 3]
                                                   [--warmup 1] [--cache warm[,cold]]
                                                   [--layouts dp_reshardable,fully_reshardable]
                                                   [--tp 1] [--pp 1] [--dp 2] [--bucket-size N]
                                                   [--dir CACHE_DIR] [--out-dir DIR] [--regen]
                                                   [--clean] [--cli PATH] [--only OPS]
                                                   [--megatron] [--json] [--keep]
    .venv/bin/python bench/bench_legacy_convert.py --render RESULT.json

The checkpoint is a real one: a Llama-style megatron-core GPTModel (local layer spec, bf16)
wrapped in Float16Module + DistributedDataParallel + the DistributedOptimizer
(get_megatron_optimizer, AdamW), trained two steps on --dp gloo ranks (x TP x PP) and saved
by the real dist_checkpointing.save as torch_dist with the optimizer's sharding type
dp_reshardable and fully_reshardable (one training run, both saves), through
tests/interop/megatron_optim.py. Per parameter: bf16 weight + fp32 main param + exp_avg +
exp_avg_sq = 14 bytes; the default --size-gib 2 is hidden 1024, 16 heads in 4 groups, SwiGLU
ffn 2816, vocab 32000, 8 layers = 156M parameters. DDP buckets are Megatron's default
(bucket_size None -> 40M elements). Generated once into --dir (default /tmp/ckptkit-bench)
and reused; --clean removes it at the end.

Timed, each op in its own subprocess (bench_dcp.child_main: best of --repeat after --warmup
untimed runs, peak RSS, user/sys CPU, load average), per source layout:
  * raw copy: every file of the iter_ folder read (readinto, 16 MiB) and written into one file,
    fsync: reading plus writing the same bytes, the baseline ("of raw");
  * raw read and raw write (+ fsync) of the same number of bytes, alone (information; their sum
    is a second baseline, "of r+w");
  * torch's reader: _load_state_dict(no_dist=True) of the whole torch_dist (the read half of
    dcp_to_torch_save), a reference read cost;
  * `ckptkit convert -q SRC DST --to legacy` (the CLI process, exec included; DST removed
    before every run);
  * --megatron: Megatron's own route, run once: the only one there is, since Megatron-LM has no
    offline torch_dist -> legacy converter (its --ckpt-convert-format torch is a training
    launch at the source's world size): real megatron-core on --dp x TP x PP gloo ranks builds
    the model, DDP and optimizer, dist_checkpointing.load's the source, and writes
    model_optim_rng.pt + distrib_optim.pt (save_parameter_state) as save_checkpoint does;
  * `ckptkit reshard -q SRC DST --tp 2*TP --dp DP/2` (same world), and with
    `--optimizer-sharding dp_reshardable`;
  * --megatron, for resharding: the peer route, run once, fully_reshardable source only (the
    only sharding type megatron loads at another layout): megatron-core at the target layout
    builds the model, DDP and optimizer, loads the source and saves dp_reshardable torch_dist.
After the runs each output is checked once: the mp_rank folders, every distrib_optim.pt
loads with torch.load and holds for every buffer the numel_unpadded megatron's layout gives
(param / exp_avg / exp_avg_sq fp32 of that length), dp_reshardable's world tensors equal the
source's bucket tensors concatenated (read with torch's own reader), every
model_optim_rng.pt loads and holds every named parameter at its shape.
See bench/README.md for the measured numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (HERE, os.path.join(ROOT, "tests", "interop")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import bench_dcp  # noqa: E402
from bench_dcp import (CHUNK, _cpu_model, _disk_info, _files, _find_cli, _mem_gib,  # noqa: E402
                       _raw_copy, _raw_read, _rm, _run_cli, _torch_load_full)
from bench_hf_convert import _cli_snapshot, _pressure, _version  # noqa: E402

CHILD_FLAG = "--_child"
MIB = 1 << 20
GIB = 1 << 30
ITERATION = 10
LAYOUTS = ("dp_reshardable", "fully_reshardable")
CACHE_VERSION = 1  # bump when the checkpoint recipe changes
BYTES_PER_PARAM = 14  # bf16 model + fp32 main param + exp_avg + exp_avg_sq


# --------------------------------------------------------------------------
# The checkpoint: a real GPTModel + DDP + DistributedOptimizer, saved by megatron-core.
# --------------------------------------------------------------------------

def _shape(size_gib: float):
    """(hidden, ffn, heads, groups, vocab, divisor) for a target size."""
    if size_gib >= 1.0:
        return 1024, 2816, 16, 4, 32000, 128
    return 512, 1408, 8, 2, 8000, 128


def params_of(hidden, ffn, heads, groups, vocab, divisor, layers, tp):
    hd = hidden // heads
    padded = -(-vocab // (divisor * tp)) * divisor * tp
    per_layer = ((heads + 2 * groups) * hd * hidden + hidden * heads * hd + 3 * ffn * hidden
                 + 2 * hidden)
    return 2 * padded * hidden + hidden + layers * per_layer, per_layer


def bench_spec(size_gib: float, tp: int, pp: int, dp: int, bucket_size):
    """A megatron_optim.OptimSpec of about size_gib GiB of tensor data (14 bytes/param)."""
    import megatron_optim as mo

    hidden, ffn, heads, groups, vocab, divisor = _shape(size_gib)
    fixed, per_layer = params_of(hidden, ffn, heads, groups, vocab, divisor, 0, tp)
    want = size_gib * GIB / BYTES_PER_PARAM
    layers = max(pp, pp * round((want - fixed) / per_layer / pp))
    ov = (("hidden", hidden), ("ffn", ffn), ("heads", heads), ("groups", groups),
          ("vocab", vocab), ("divisor", divisor), ("num_layers", layers),
          ("max_positions", 64))
    return mo.OptimSpec(family="llama", tp=tp, pp=pp, dp=dp, bucket_size=bucket_size,
                        iteration=ITERATION, model_overrides=ov)


def _spec_name(spec) -> str:
    f = spec.fam
    b = "default" if spec.bucket_size is None else str(spec.bucket_size)
    return (f"legacy_h{f.hidden}_l{f.num_layers}_v{f.vocab}_tp{spec.tp}pp{spec.pp}dp{spec.dp}"
            f"_b{b}_v{CACHE_VERSION}")


def ensure_checkpoint(spec, cache_dir: str, layouts, regen: bool, log) -> dict:
    """The cached roots (one per sharding type) for spec, generated when absent: ONE training
    run of real megatron-core saved once per sharding type, plus layout.json (megatron's own
    buffer layout per rank, for the output check)."""
    import megatron_optim as mo

    base = os.path.join(cache_dir, _spec_name(spec))
    done = os.path.join(base, "bench_done.json")
    if regen:
        shutil.rmtree(base, ignore_errors=True)
    if os.path.exists(done):
        with open(done) as f:
            info = json.load(f)
        if set(layouts) <= set(info["layouts"]):
            info["reused"] = True
            return info
        layouts = sorted(set(layouts) | set(info["layouts"]))
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    roots = {lay: os.path.join(base, lay) for lay in layouts}
    log(f"  generating the checkpoint ({_spec_name(spec)}: real GPTModel + DDP + "
        f"DistributedOptimizer, {spec.world} gloo ranks, 2 AdamW steps, saved as "
        f"{', '.join(layouts)}) into {base} ...")
    t0 = time.perf_counter()
    mo.save_all(spec, roots, layout_path=os.path.join(base, "layout.json"))
    info = {"base": base, "roots": roots,
            "layouts": list(layouts), "generate_seconds": time.perf_counter() - t0,
            "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "spec": spec.describe()}
    with open(done, "w") as f:
        json.dump(info, f, indent=1, default=str)
    info["reused"] = False
    return info


def describe_source(iter_dir: str) -> dict:
    """From torch's own reader: tensor bytes by kind (model, optimizer), the largest tensor."""
    import math

    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(iter_dir).read_metadata()
    model = optim = 0
    n_tensors = n_objects = 0
    largest = ("", 0)
    for k, v in md.state_dict_metadata.items():
        if not isinstance(v, TensorStorageMetadata):
            n_objects += 1
            continue
        n_tensors += 1
        n = math.prod(v.size) * torch.empty((), dtype=v.properties.dtype).element_size()
        if k.startswith("optimizer."):
            optim += n
        else:
            model += n
        if n > largest[1]:
            largest = (k, n)
    files = _files(iter_dir)
    return {"tensor_keys": n_tensors, "object_keys": n_objects, "model_bytes": model,
            "optimizer_bytes": optim, "payload_bytes": model + optim,
            "largest_key": largest[0], "largest_bytes": largest[1],
            "files": len(files), "file_bytes": sum(os.path.getsize(f) for f in files)}


# --------------------------------------------------------------------------
# Ops (each in a child process; bench_dcp.child_main runs PREPARE + the op)
# --------------------------------------------------------------------------

def _raw_write(p):
    """os.write of as many bytes as the source's files hold (16 MiB pieces) + fsync."""
    buf = bytes(range(256)) * (CHUNK // 256)
    mv = memoryview(buf)
    left = p["src_bytes"]
    fd = os.open(p["raw"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while left > 0:
            n = os.write(fd, mv[:min(left, CHUNK)])
            left -= n
        os.fsync(fd)
    finally:
        os.close(fd)


def _cli_legacy(p):
    return _run_cli([p["cli"], "convert", "-q", p["root"], p["out_cli"], "--to", "legacy"])


def _target_flags(p):
    """reshard's target: TP doubled, DP halved (the same world), as a user moves TP1/DP2 -> TP2/DP1."""
    spec = p["spec"]
    return ["--tp", str(spec["tp"] * 2), "--dp", str(max(1, spec["dp"] // 2))]


def _cli_reshard(p):
    return _run_cli([p["cli"], "reshard", "-q", p["root"], p["out_reshard"], *_target_flags(p)])


def _cli_reshard_dp(p):
    return _run_cli([p["cli"], "reshard", "-q", p["root"], p["out_reshard"], *_target_flags(p),
                     "--optimizer-sharding", "dp_reshardable"])


def _megatron_reshard_rank(job) -> None:
    """Rank body of the peer route for resharding: megatron-core at the TARGET layout builds the
    model + DDP + DistributedOptimizer, loads the source (only a fully_reshardable one loads at
    another layout), and saves dp_reshardable torch_dist, as a resumed Megatron-LM run would."""
    import megatron_optim as mo

    _megatron_build_load_save(job, lambda spec, gpts, opt, sched: mo._write_torch_dist(
        spec, job.out, gpts, opt, sched, "dp_reshardable"))


def _megatron_reshard(p):
    import resource

    import megatron_models as mm

    spec = _spec_from_json(p["spec"])
    spec = dataclasses.replace(spec, tp=spec.tp * 2, dp=max(1, spec.dp // 2))
    mm.run_ranks(spec.world, _megatron_reshard_rank,
                 _MegatronJob(spec, p["root"], p["out_mg_reshard"], p["stages"]))
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(p["stages"], "a") as f:
        f.write(json.dumps({"ranks_peak_rss_kib": ru.ru_maxrss, "ranks_user_s": ru.ru_utime,
                            "ranks_sys_s": ru.ru_stime}) + "\n")


@dataclasses.dataclass
class _MegatronJob:
    spec: object
    root: str
    out: str
    stages: str


def _megatron_build_load_save(job, save) -> None:
    """Builds the model chunks + DDP + DistributedOptimizer at job.spec (get_model /
    setup_model_and_optimizer), loads job.root (load_checkpoint's torch_dist branch), then
    save(spec, gpts, opt, sched); rank 0 records the three stages' seconds."""
    import megatron_optim as mo
    import torch
    import torch.distributed as dist
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    spec = job.spec
    t0 = time.perf_counter()
    mo._init(spec)
    gpts, ddps, opt = mo.build_chunks(spec)
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=spec.lr, min_lr=spec.lr / 10, lr_warmup_steps=1,
        lr_decay_steps=100, lr_decay_style="cosine", start_wd=spec.weight_decay,
        end_wd=spec.weight_decay, wd_incr_steps=100, wd_incr_style="constant")
    dist.barrier()
    t1 = time.perf_counter()
    with torch.no_grad():
        mo._load_torch_dist(spec, job.root, gpts, opt)
    dist.barrier()
    t2 = time.perf_counter()
    save(spec, gpts, opt, sched)
    t3 = time.perf_counter()
    if dist.get_rank() == 0:
        with open(job.stages, "a") as f:
            f.write(json.dumps({"build": t1 - t0, "load": t2 - t1, "save": t3 - t2}) + "\n")


def _megatron_rank(job: _MegatronJob) -> None:
    """Rank body: what Megatron-LM's --ckpt-convert-format torch launch does at the source's
    world size: build, load the torch_dist checkpoint, save the legacy files (save_checkpoint's
    torch branch: save_parameter_state on every rank, torch.save of the rank's state dict by
    expert-DP rank 0)."""
    import megatron_optim as mo

    _megatron_build_load_save(job, lambda spec, gpts, opt, sched: mo._write_legacy(spec, job.out, gpts, opt, sched))


def _megatron_online(p):
    import resource

    import megatron_models as mm

    spec = _spec_from_json(p["spec"])
    mm.run_ranks(spec.world, _megatron_rank,
                 _MegatronJob(spec, p["root"], p["out_mg"], p["stages"]))
    # The forked ranks' peak RSS (the largest rank's); the parent's is reported as usual.
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(p["stages"], "a") as f:
        f.write(json.dumps({"ranks_peak_rss_kib": ru.ru_maxrss, "ranks_user_s": ru.ru_utime,
                            "ranks_sys_s": ru.ru_stime}) + "\n")


def _spec_from_json(d):
    import megatron_optim as mo

    d = dict(d)
    mo_ = d["model_overrides"]
    d["model_overrides"] = tuple(mo_.items()) if isinstance(mo_, dict) else tuple(
        tuple(x) for x in mo_)
    fields = {f.name for f in dataclasses.fields(mo.OptimSpec)}
    return mo.OptimSpec(**{k: v for k, v in d.items() if k in fields})


OPS = {
    "raw_copy": lambda p: _raw_copy({"dcp": p["iter_dir"], "raw": p["raw"]}),
    "raw_read": lambda p: _raw_read({"dcp": p["iter_dir"]}),
    "raw_write": _raw_write,
    "torch_read": lambda p: len(_torch_load_full({"dcp": p["iter_dir"]})),
    "cli_legacy": _cli_legacy,
    "megatron_online": _megatron_online,
    "cli_reshard": _cli_reshard,
    "cli_reshard_dp": _cli_reshard_dp,
    "megatron_reshard": _megatron_reshard,
}


def _prep(*outputs):
    """Untimed, before every run: remove the outputs, warm (or evict) the source."""
    def prep(p):
        for o in outputs:
            _rm(p[o])
        bench_dcp._warm_dir(p["iter_dir"])
    return prep


PREPARE = {
    "raw_copy": _prep("raw"),
    "raw_read": _prep("raw"),
    "raw_write": _prep("raw"),
    "torch_read": _prep("raw"),
    "cli_legacy": _prep("raw", "out_cli"),
    "megatron_online": _prep("raw", "out_mg"),
    "cli_reshard": _prep("raw", "out_reshard"),
    "cli_reshard_dp": _prep("raw", "out_reshard"),
    "megatron_reshard": _prep("raw", "out_mg_reshard"),
}

# (op, label, baseline op for "of raw")
ROWS = [
    ("raw_copy", "raw copy: read all files + write 1 file + fsync", None),
    ("raw_read", "raw read of all files (info)", None),
    ("raw_write", "raw write of as many bytes + fsync (info)", None),
    ("torch_read", "torch: _load_state_dict of everything (info)", "raw_copy"),
    ("cli_legacy", "ckptkit convert --to legacy (CLI)", "raw_copy"),
    ("megatron_online", "megatron-core: build + load + save legacy", "raw_copy"),
    ("cli_reshard", "ckptkit reshard --tp 2x --dp /2 (fully_reshardable out)", "raw_copy"),
    ("cli_reshard_dp", "ckptkit reshard ... --optimizer-sharding dp_reshardable", "raw_copy"),
    ("megatron_reshard", "megatron-core at the target: build + load fully_reshardable + save", "raw_copy"),
]
DEFAULT_OPS = ("raw_copy", "raw_read", "raw_write", "torch_read", "cli_legacy", "cli_reshard", "cli_reshard_dp")


def child_main(op: str, args) -> None:
    bench_dcp.OPS[op] = OPS[op]
    bench_dcp.PREPARE[op] = PREPARE[op]
    if op in ("torch_read", "megatron_online", "megatron_reshard"):
        import torch  # noqa: F401  (import cost not timed)
        import torch.distributed.checkpoint  # noqa: F401
        import torch.distributed.checkpoint.state_dict_loader  # noqa: F401
    if op in ("megatron_online", "megatron_reshard"):
        import megatron_models as mm

        mm.preload_megatron()
    bench_dcp.child_main(op, args)


def run_child(op, args, paths, cold, repeat, warmup):
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, op,
           "--repeat", str(repeat), "--warmup", str(warmup),
           "--paths", json.dumps(paths)] + (["--cold"] if cold else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:].strip()}
    return {"results": json.loads(proc.stdout)["results"]}


# --------------------------------------------------------------------------
# Output check (untimed, own process): structure, numel_unpadded, bytes vs the source.
# --------------------------------------------------------------------------

def _expected_ranks(layout: dict) -> dict:
    """mp_rank folder -> (named parameters per chunk, [numel_unpadded per gbuf_idx]), from
    megatron's own layout dump (DP rank 0 of each model-parallel rank)."""
    out = {}
    for r in layout["ranks"]:
        if r["dp_rank"] != 0:
            continue
        chunks = [[(x["name"], x["shape"], x["dtype"]) for x in c["named_parameters"]]
                  for c in r["chunks"]]
        gbufs = {}
        for o in r["optimizers"]:
            for g in o["gbufs"]:
                c = r["chunks"][g["chunk"]]
                bufs = [b for b in c["buffers"] if b["kind"] == g["ddp_attr"]]
                b = bufs[g["index_in_chunk"]]
                gbufs[g["gbuf_idx"]] = {"numel_unpadded": b["numel_unpadded"],
                                        "buckets": [x["numel_unpadded"] for x in b["buckets"]],
                                        "dp_group_idx": o["data_parallel_group_idx"]}
        out[r["ckpt_dir"]] = (chunks, [gbufs[i] for i in sorted(gbufs)])
    return out


def _bucket_tensors(iter_dir: str) -> dict:
    """key -> every dp_reshardable bucket tensor of the source, read by torch's own reader
    (FileSystemReader + _load_state_dict, no_dist)."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    reader = FileSystemReader(iter_dir)
    md = reader.read_metadata()
    keys = [k for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata) and ".bucket_idx_" in k]
    sd = {k: torch.empty(tuple(md.state_dict_metadata[k].size),
                         dtype=md.state_dict_metadata[k].properties.dtype) for k in keys}
    _load_state_dict(sd, storage_reader=reader, no_dist=True)
    return sd


def check_main(args) -> None:
    import torch

    p = json.loads(args.paths)
    with open(p["layout"]) as f:
        layout = json.load(f)
    expected = _expected_ranks(layout)
    out = p["out_cli"]
    doc = {"layout": p["layout_name"], "problems": []}
    bad = doc["problems"]
    with open(os.path.join(out, "latest_checkpointed_iteration.txt")) as f:
        it = int(f.read().strip())
    iter_dir = os.path.join(out, f"iter_{it:07d}")
    folders = sorted(os.listdir(iter_dir))
    doc["mp_rank_folders"] = folders
    if folders != sorted(expected):
        bad.append(f"mp_rank folders {folders}, megatron's layout has {sorted(expected)}")
    buckets = None
    if p["layout_name"] == "dp_reshardable":
        buckets = _bucket_tensors(p["iter_dir"])
    doc["output_bytes"] = 0
    doc["distrib_optim"] = {}
    doc["model_tensors"] = 0
    for folder in folders:
        if folder not in expected:
            continue
        chunks, gbufs = expected[folder]
        d = os.path.join(iter_dir, folder)
        for fn in os.listdir(d):
            doc["output_bytes"] += os.path.getsize(os.path.join(d, fn))
        # distrib_optim.pt: {"buckets_coalesced": True, gbuf_idx: {(dtype, dtype): {param,
        # exp_avg, exp_avg_sq, numel_unpadded}}}
        opt = torch.load(os.path.join(d, "distrib_optim.pt"), weights_only=True, mmap=True)
        got = []
        if opt.get("buckets_coalesced") is not True:
            bad.append(f"{folder}: buckets_coalesced is {opt.get('buckets_coalesced')!r}")
        for gi, want in enumerate(gbufs):
            if gi not in opt or len(opt[gi]) != 1:
                bad.append(f"{folder}: gbuf {gi} missing or not one dtype key")
                continue
            (dkey, states), = opt[gi].items()
            n = states.get("numel_unpadded")
            got.append(n)
            if n != want["numel_unpadded"]:
                bad.append(f"{folder} gbuf {gi}: numel_unpadded {n}, megatron's layout "
                           f"{want['numel_unpadded']}")
            for st in ("param", "exp_avg", "exp_avg_sq"):
                t = states.get(st)
                if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or \
                        list(t.shape) != [want["numel_unpadded"]]:
                    bad.append(f"{folder} gbuf {gi} {st}: "
                               f"{getattr(t, 'dtype', t)} {list(getattr(t, 'shape', []))}")
                    continue
                if buckets is not None:
                    group = want["dp_group_idx"]
                    parts = []
                    for b in range(len(want["buckets"])):
                        k = [x for x in buckets if x.startswith(
                            f"optimizer.distributed.dp_group_idx_{group}.gbuf_idx_{gi}.")
                            and x.endswith(f".bucket_idx_{b}.{st}")]
                        if len(k) != 1:
                            bad.append(f"{folder} gbuf {gi} bucket {b} {st}: source keys {k}")
                            break
                        parts.append(buckets[k[0]])
                    else:
                        if not torch.equal(torch.cat(parts).view(torch.int32),
                                           t.view(torch.int32)):
                            bad.append(f"{folder} gbuf {gi} {st}: world tensor != the source's "
                                       "buckets concatenated")
        doc["distrib_optim"][folder] = {"numel_unpadded": got,
                                        "keys": [k for k in opt if k != "buckets_coalesced"]}
        del opt
        # model_optim_rng.pt: every named parameter at its shape, bf16
        sd = torch.load(os.path.join(d, "model_optim_rng.pt"), weights_only=False, mmap=True)
        for ci, params in enumerate(chunks):
            m = sd["model" if len(chunks) == 1 else f"model{ci}"]
            for name, shape, dtype in params:
                t = m.get(name)
                if not isinstance(t, torch.Tensor) or list(t.shape) != shape or \
                        str(t.dtype).replace("torch.", "") != dtype:
                    bad.append(f"{folder} model{ci} {name}: {getattr(t, 'shape', t)}")
                doc["model_tensors"] += 1
        for k in ("args", "iteration", "optimizer", "opt_param_scheduler", "rng_state"):
            if k not in sd:
                bad.append(f"{folder}: model_optim_rng.pt has no {k!r}")
        del sd
    doc["bucket_bytes_checked"] = buckets is not None
    doc["ok"] = not bad
    json.dump(doc, sys.stdout)


def compare_main(args) -> None:
    """distrib_optim.pt of two outputs (dp_reshardable vs fully_reshardable source, same
    training run): byte-identical files? If not, where the world tensors differ, by bucket."""
    import torch

    p = json.loads(args.paths)
    a_root, b_root = p["a"], p["b"]
    with open(p["layout"]) as f:
        expected = _expected_ranks(json.load(f))
    doc = {"files": {}}
    for folder, (_, gbufs) in sorted(expected.items()):
        fa = os.path.join(a_root, f"iter_{ITERATION:07d}", folder, "distrib_optim.pt")
        fb = os.path.join(b_root, f"iter_{ITERATION:07d}", folder, "distrib_optim.pt")
        same = _same_bytes(fa, fb)
        ent = {"byte_identical": same}
        if not same:
            a = torch.load(fa, weights_only=True, mmap=True)
            b = torch.load(fb, weights_only=True, mmap=True)
            diff_buckets = set()
            for gi, want in enumerate(gbufs):
                (sa,), (sb,) = a[gi].values(), b[gi].values()
                start = 0
                for bi, n in enumerate(want["buckets"]):
                    for st in ("param", "exp_avg", "exp_avg_sq"):
                        if not torch.equal(sa[st][start:start + n].view(torch.int32),
                                           sb[st][start:start + n].view(torch.int32)):
                            diff_buckets.add((gi, bi))
                    start += n
            ent["differing (gbuf, bucket)"] = sorted(diff_buckets)
        doc["files"][folder] = ent
    json.dump(doc, sys.stdout)


def _same_bytes(a, b) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def _run_check(flag, paths):
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), flag,
                           "--paths", json.dumps(paths)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0,
                    help="tensor data of the source (bf16 model + fp32 main params + Adam "
                    "moments, 14 bytes/param; default 2)")
    ap.add_argument("--quick", action="store_true", help="smoke run: ~0.25 GiB, --repeat 1")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per op (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each op first")
    ap.add_argument("--cache", default="warm",
                    help="page cache states: warm (default), cold or warm,cold")
    ap.add_argument("--layouts", default=",".join(LAYOUTS),
                    help="optimizer sharding types of the source to convert (comma-separated; "
                    "default both, one training run saves both)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--pp", type=int, default=1)
    ap.add_argument("--dp", type=int, default=2)
    ap.add_argument("--bucket-size", type=int, default=None,
                    help="DDP bucket size in elements (default: Megatron's, 40M)")
    ap.add_argument("--dir", "--cache-dir", dest="dir", default="/tmp/ckptkit-bench",
                    help="where the generated source is cached and reused")
    ap.add_argument("--out-dir", default=None, help="folder for the outputs (a fresh "
                    "subfolder is made and removed; default: --dir)")
    ap.add_argument("--regen", action="store_true", help="regenerate the cached source")
    ap.add_argument("--clean", action="store_true",
                    help="remove the generated source at the end (no cache left behind)")
    ap.add_argument("--cli", default=None, help="ckptkit executable (default: build/ckptkit)")
    ap.add_argument("--only", default=None, help="comma-separated ops: " + ",".join(OPS))
    ap.add_argument("--megatron", action="store_true",
                    help="also time megatron-core's own route once per layout (build + "
                    "dist_checkpointing.load + legacy save; ~2x the checkpoint in RAM per rank)")
    ap.add_argument("--json", action="store_true", help="print a JSON document instead")
    ap.add_argument("--keep", action="store_true", help="keep the outputs (debugging)")
    ap.add_argument("--render", default=None, metavar="FILE.json",
                    help="print the text report of an earlier --json run and exit")
    ap.add_argument(CHILD_FLAG, dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_check", dest="check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--_compare", dest="compare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cold", action="store_true", help=argparse.SUPPRESS)  # child side
    ap.add_argument("--paths", default="{}", help=argparse.SUPPRESS)
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
    if args.compare:
        compare_main(args)
        return
    if args.quick:
        args.size_gib = 0.25
        args.repeat = args.repeat or 1
    args.repeat = args.repeat or 3
    caches = [c for c in args.cache.split(",") if c]
    if not caches or set(caches) - {"warm", "cold"}:
        sys.exit("--cache: warm, cold or warm,cold")
    layouts = [x for x in args.layouts.split(",") if x]
    if not layouts or set(layouts) - set(LAYOUTS):
        sys.exit(f"--layouts: {', '.join(LAYOUTS)}")
    ops = [r[0] for r in ROWS if r[0] in DEFAULT_OPS or (args.megatron and r[0] in
                                                         ("megatron_online", "megatron_reshard"))]
    if args.only:
        wanted = set(args.only.split(","))
        if wanted - set(OPS):
            sys.exit(f"--only: unknown {sorted(wanted - set(OPS))}; known: {list(OPS)}")
        ops = [r[0] for r in ROWS if r[0] in wanted]

    import torch

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    cli = _find_cli(args.cli)
    if not cli:
        sys.exit("ckptkit CLI not found: pass --cli PATH")
    os.makedirs(args.dir, exist_ok=True)
    spec = bench_spec(args.size_gib, args.tp, args.pp, args.dp, args.bucket_size)
    load_start = os.getloadavg()
    pressure_start = _pressure()
    t_start = time.perf_counter()
    ckpt = ensure_checkpoint(spec, args.dir, layouts, args.regen, log)
    base = tempfile.mkdtemp(prefix="run-legacy-", dir=args.out_dir or args.dir)
    results, checks, stages, sources, compare = {}, {}, {}, {}, {}
    try:
        cli_copy, cli_info = _cli_snapshot(cli, base)
        for lay in layouts:
            root = ckpt["roots"][lay]
            iter_dir = os.path.join(root, f"iter_{ITERATION:07d}")
            sources[lay] = describe_source(iter_dir)
            paths = {"root": root, "iter_dir": iter_dir, "cli": cli_copy,
                     "raw": os.path.join(base, "raw.bin"),
                     "out_cli": os.path.join(base, f"legacy_cli_{lay}"),
                     "out_mg": os.path.join(base, f"legacy_megatron_{lay}"),
                     "out_reshard": os.path.join(base, f"reshard_cli_{lay}"),
                     "out_mg_reshard": os.path.join(base, f"reshard_megatron_{lay}"),
                     "stages": os.path.join(base, "stages.jsonl"),
                     "src_bytes": sources[lay]["file_bytes"],
                     "spec": spec.describe(), "layout": os.path.join(ckpt["base"], "layout.json"),
                     "layout_name": lay}
            for cache in caches:
                for op in ops:
                    log(f"  [{lay}, {cache}] running {op} ...")
                    _rm(paths["stages"])
                    rep, warm = args.repeat, args.warmup
                    if op in ("megatron_online", "megatron_reshard"):
                        rep, warm = 1, 0
                    if op == "megatron_reshard" and lay != "fully_reshardable":
                        continue  # megatron loads only fully_reshardable at another layout
                    results[(lay, cache, op)] = run_child(op, args, paths, cache == "cold",
                                                          rep, warm)
                    if "error" in results[(lay, cache, op)]:
                        log(f"    FAILED: {results[(lay, cache, op)]['error'][-600:]}")
                    if op in ("megatron_online", "megatron_reshard") and os.path.exists(paths["stages"]):
                        with open(paths["stages"]) as f:
                            st = {}
                            for x in f:  # the last run's stages, then its ranks' peak RSS
                                st.update(json.loads(x))
                            stages[(lay, cache, op)] = st
            _rm(paths["raw"])
            if os.path.isdir(paths["out_cli"]):
                log(f"  [{lay}] checking the output ...")
                checks[lay] = _run_check("--_check", paths)
                if not checks[lay].get("ok"):
                    log(f"    CHECK FAILED: {json.dumps(checks[lay])[:1500]}")
            if os.path.isdir(paths["out_reshard"]):
                # The resharded output (the last reshard op's) reads back whole; from a
                # dp_reshardable source (megatron's fully_reshardable save of several buckets is
                # shifted, see verify --deep) its fp32 main params also round to the weights.
                deep = ["--deep"] if lay == "dp_reshardable" else []
                r = subprocess.run([cli, "verify", *deep, paths["out_reshard"]], capture_output=True, text=True)
                checks[f"reshard ({lay} source)"] = {"ok": r.returncode == 0, "verify": r.stdout.strip()[-400:]}
                log(f"  [{lay}] reshard output verify: {'ok' if r.returncode == 0 else r.stdout[-400:]}")
                _rm(paths["out_reshard"])
            if os.path.isdir(paths["out_cli"]) and os.path.isdir(paths["out_mg"]):
                log(f"  [{lay}] comparing distrib_optim.pt with megatron-core's own ...")
                compare[f"ckptkit vs megatron-core's own save ({lay} source)"] = _run_check(
                    "--_compare", {"a": paths["out_cli"], "b": paths["out_mg"],
                                   "layout": paths["layout"]})
            _rm(paths["out_mg"])
        outs = [os.path.join(base, f"legacy_cli_{x}") for x in LAYOUTS]
        if all(os.path.isdir(o) for o in outs):
            log("  comparing distrib_optim.pt of the two layouts ...")
            compare["from dp_reshardable vs from fully_reshardable"] = _run_check(
                "--_compare", {"a": outs[0], "b": outs[1], "layout":
                               os.path.join(ckpt["base"], "layout.json")})
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        if args.clean:
            shutil.rmtree(ckpt["base"], ignore_errors=True)
    load_end = os.getloadavg()
    pressure_end = _pressure()

    rows = []
    for lay in layouts:
        src = sources[lay]
        payload = src["payload_bytes"]
        for cache in caches:
            def best(op):
                r = results.get((lay, cache, op), {}).get("results")
                return min(x["seconds"] for x in r) if r else None

            rw = (best("raw_read") + best("raw_write")
                  if best("raw_read") and best("raw_write") else None)
            for op, label, raw_op in ROWS:
                if (lay, cache, op) not in results:
                    continue
                res = results[(lay, cache, op)]
                row = {"layout": lay, "cache": cache, "op": op, "label": label}
                if "error" in res:
                    row["error"] = res["error"]
                    rows.append(row)
                    continue
                rs = res["results"]
                b = min(rs, key=lambda x: x["seconds"])
                row.update({
                    "seconds": b["seconds"], "all_seconds": [x["seconds"] for x in rs],
                    "median_seconds": statistics.median(x["seconds"] for x in rs),
                    "user_s": b["user_s"], "sys_s": b["sys_s"],
                    "peak_rss_mib": max(x["peak_rss_kib"] for x in rs) / 1024,
                    "extra_rss_mib": max(x["extra_rss_kib"] for x in rs) / 1024,
                    "loadavg_1m": [x["loadavg_1m"] for x in rs],
                    "gb_per_s": payload / b["seconds"] / 1e9,
                })
                if raw_op and best(raw_op):
                    row["fraction_of_raw"] = best(raw_op) / b["seconds"]
                if raw_op and rw:
                    row["fraction_of_rw"] = rw / b["seconds"]
                if op in ("megatron_online", "megatron_reshard") and (lay, cache, op) in stages:
                    # The work runs in the forked ranks: their CPU, the largest rank's peak.
                    st = row["stages"] = stages[(lay, cache, op)]
                    st["parent_peak_rss_mib"] = row["peak_rss_mib"]
                    row["user_s"] = st.get("ranks_user_s", 0.0)
                    row["sys_s"] = st.get("ranks_sys_s", 0.0)
                    row["peak_rss_mib"] = st.get("ranks_peak_rss_kib", 0) / 1024
                    row["peak_rss_per_rank_of"] = spec.world
                rows.append(row)

    f = spec.fam
    nparams = params_of(f.hidden, f.ffn, f.heads, f.groups, f.vocab, f.divisor,
                        f.num_layers, 1)[0]
    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t_start,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
                 "mem_gib": round(_mem_gib(), 1), "python": platform.python_version(),
                 "disk": _disk_info(args.out_dir or args.dir)},
        "versions": {"torch": torch.__version__, "megatron_core": _version("megatron-core"),
                     "cli": cli_info},
        "command": " ".join([os.path.relpath(sys.executable, ROOT)
                             if sys.executable.startswith(ROOT) else sys.executable,
                             os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:]),
        "checkpoint": {"base": ckpt["base"], "reused": ckpt["reused"],
                       "generate_seconds": ckpt.get("generate_seconds"),
                       "layers": f.num_layers, "hidden": f.hidden, "ffn": f.ffn,
                       "heads": f.heads, "groups": f.groups, "vocab": f.vocab,
                       "padded_vocab": f.padded_vocab(spec.tp), "params": nparams,
                       "tp": spec.tp, "pp": spec.pp, "dp": spec.dp,
                       "bucket_size": spec.bucket_size, "sources": sources,
                       "writer": "real megatron-core GPTModel (local spec, bf16) + Float16Module "
                                 "+ DDP + DistributedOptimizer (AdamW), 2 steps, "
                                 "dist_checkpointing.save torch_dist, fully parallel"},
        "repeat": args.repeat, "warmup": args.warmup,
        "loadavg_start": load_start, "loadavg_end": load_end,
        "pressure_start": pressure_start, "pressure_end": pressure_end,
        "output_checks": checks, "compare": compare,
        "rows": rows,
        "notes": [
            "GB/s: the source's tensor bytes (model + optimizer state, 1e9) per second",
            "of raw = raw copy s / op s (raw copy: every source file read in 16 MiB pieces and "
            "written into one file + fsync: reading plus writing the same bytes); of r+w = "
            "(raw read s + raw write s) / op s",
            "every output is fsynced inside the timed region (ckptkit's writer fsyncs each file "
            "and folder itself; the raw write and copy call os.fsync)",
            "warm: every source file read once, untimed, before each run; cold: evicted (fsync "
            "+ posix_fadvise DONTNEED) before each run, the hypervisor may still cache",
            "peak RSS: the CLI process's own ru_maxrss; Python ops: the process VmHWM (reset "
            "before the run, the interpreter with torch imported included); megatron-core: "
            "the largest forked rank's ru_maxrss (one of tp x pp x dp ranks; pages shared with "
            "the parent after fork count in each), CPU = all ranks' user/sys",
            "the CLI is timed as a whole process (exec included), copied into the run folder "
            "first (build/ may be relinked by others)",
        ],
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2, default=str)
        print()
        return
    print_report(doc)


def print_report(doc) -> None:
    h, c = doc["host"], doc["checkpoint"]
    cli = doc["versions"]["cli"]
    print(f"ckptkit bench_legacy_convert  {doc['date']}  {h['cpus']} CPUs ({h['cpu']}), "
          f"{h['mem_gib']} GiB RAM, disk: {h['disk']}")
    print(f"torch {doc['versions']['torch']}, megatron-core {doc['versions']['megatron_core']}; "
          f"CLI {cli['path']} ({cli['version']}, built {cli['mtime']}); best of {doc['repeat']} "
          f"after {doc['warmup']} untimed")
    print(f"command: {doc['command']}  (total {doc['wall_seconds']:.0f} s)")
    ls, le = doc["loadavg_start"][0], doc["loadavg_end"][0]
    ps_, pe = doc.get("pressure_start", {}), doc.get("pressure_end", {})
    print(f"load average (1 min) {ls:.2f} at start, {le:.2f} at end; PSI some avg60 cpu "
          f"{ps_.get('cpu', '?')}% / io {ps_.get('io', '?')}% at start, cpu {pe.get('cpu', '?')}% "
          f"/ io {pe.get('io', '?')}% at end")
    loads = [max(r.get("loadavg_1m", [0])) for r in doc["rows"] if "loadavg_1m" in r]
    if max([ls, le] + loads) > 0.5 * (h["cpus"] or 1):
        print("WARNING: the machine was busy (load average above half the CPUs): timings noisy")
    gen = (f"reused from {c['base']}" if c["reused"] else
           f"generated in {c['generate_seconds']:.0f} s into {c['base']}")
    print(f"checkpoint: Llama GPT {c['params'] / 1e6:.0f}M params, {c['layers']} layers, hidden "
          f"{c['hidden']}, ffn {c['ffn']}, {c['heads']} heads / {c['groups']} groups, vocab "
          f"{c['vocab']} (padded {c['padded_vocab']}), TP{c['tp']} x PP{c['pp']} x DP{c['dp']}, "
          f"DDP bucket {c['bucket_size'] or 'default (40M elements)'}; {gen}")
    for lay, s in c["sources"].items():
        print(f"  {lay}: {s['tensor_keys']} tensor keys ({s['model_bytes'] / GIB:.2f} GiB model, "
              f"{s['optimizer_bytes'] / GIB:.2f} GiB optimizer), {s['object_keys']} objects, "
              f"{s['files']} files {s['file_bytes'] / GIB:.2f} GiB; largest tensor "
              f"{s['largest_key']} {s['largest_bytes'] / MIB:.0f} MiB")
    for lay in c["sources"]:
        for cache in ("warm", "cold"):
            rows = [r for r in doc["rows"] if r["layout"] == lay and r["cache"] == cache]
            if not rows:
                continue
            print()
            hdr = (f"{lay + ', ' + cache + ' page cache:':50s} {'s':>7s} {'median':>7s} "
                   f"{'user':>6s} {'sys':>5s} {'GB/s':>5s} {'of raw':>6s} {'of r+w':>6s} "
                   f"{'peak RSS':>9s} {'load':>4s}")
            print(hdr)
            print("-" * len(hdr))
            for r in rows:
                if "error" in r:
                    print(f"{r['label']:50s} FAILED: {r['error'].splitlines()[-1][:100]}")
                    continue
                fr = f"{r['fraction_of_raw']:.2f}" if "fraction_of_raw" in r else ""
                frw = f"{r['fraction_of_rw']:.2f}" if "fraction_of_rw" in r else ""
                print(f"{r['label']:50s} {r['seconds']:7.2f} {r['median_seconds']:7.2f} "
                      f"{r['user_s']:6.2f} {r['sys_s']:5.2f} {r['gb_per_s']:5.2f} {fr:>6s} "
                      f"{frw:>6s} {r['peak_rss_mib']:8.0f}M {max(r['loadavg_1m']):4.1f}")
                if "stages" in r:
                    s = r["stages"]
                    print(f"{'  of which build / load / save (rank 0)':50s} {s['build']:7.2f} "
                          f"{s['load']:7.2f} {s['save']:7.2f}  (CPU and peak RSS: all ranks' "
                          f"CPU, the largest rank's peak, x {r['peak_rss_per_rank_of']} ranks)")
    print()
    for lay, oc in (doc.get("output_checks") or {}).items():
        if "error" in oc:
            print(f"output check ({lay}) FAILED to run: {oc['error'][-500:]}")
            continue
        if "verify" in oc:  # a reshard output: ckptkit verify of it
            print(f"output check ({lay}): {'OK' if oc['ok'] else 'FAILED'}; verify: {oc['verify'][-300:]}")
            continue
        nu = {k: v["numel_unpadded"] for k, v in oc["distrib_optim"].items()}
        print(f"output check ({lay}): {'OK' if oc['ok'] else 'FAILED'}; "
              f"{len(oc['mp_rank_folders'])} mp_rank folders, {oc['output_bytes'] / GIB:.2f} GiB; "
              f"distrib_optim.pt numel_unpadded per gbuf {nu} as megatron's layout; "
              f"{oc['model_tensors']} model tensors at their shapes"
              + ("; world tensors == the source's buckets concatenated (torch's reader)"
                 if oc.get("bucket_bytes_checked") else ""))
        for prob in oc["problems"][:10]:
            print(f"    {prob}")
    for what, cmpd in (doc.get("compare") or {}).items():
        if "error" in cmpd:
            print(f"comparison {what} FAILED to run: {cmpd['error'][-500:]}")
            continue
        for folder, ent in cmpd["files"].items():
            print(f"distrib_optim.pt {folder}, {what}: "
                  + ("byte-identical" if ent["byte_identical"] else
                     f"differ in (gbuf, bucket) {ent['differing (gbuf, bucket)']}"))
    print("Notes:")
    for n in doc["notes"]:
        print(f"  - {n}")


if __name__ == "__main__":
    main()
