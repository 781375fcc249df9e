#!/usr/bin/env python3
"""`ckptkit convert ROOT OUT --to hf` (Megatron-Core torch_dist -> HuggingFace safetensors)
against the Python route a CPU user has today and against the disk.

    .venv/bin/python bench/bench_hf_convert.py [--size-gib 2 | --quick] [--repeat 2] [--warmup 1]
                                               [--cold-warmup 0]
                                               [--cache warm,cold] [--dir DIR] [--cache-dir DIR]
                                               [--cli PATH] [--json] [--only OPS] [--keep]
                                               [--regen] [--peers PYTHON]
    .venv/bin/python bench/bench_hf_convert.py --render RESULT.json

The checkpoint: a Llama-style GPT (TinyLlama shape at the default size: hidden 2048, 32 heads
in 4 query groups of head dim 64, SwiGLU ffn 5632, RMSNorm, untied embeddings, vocab 32001
padded to 32256 for TP2; 22 layers = 2.05 GiB of bf16) built as a REAL megatron-core GPTModel
(local layer spec) on 4 gloo ranks at TP2 x PP2 and saved with the real
dist_checkpointing.save (torch_dist, fully parallel) as a Megatron-LM root, with the
Megatron-LM `args` (vocab_size recorded) in common.pt: tests/interop/megatron_models.py's
helpers, in bf16. It is cached under --cache-dir (default /tmp/ckptkit-bench) and reused.

Timed, each in its own subprocess (bench_dcp.child_main: peak RSS per run, user/sys CPU, best
of --repeat after --warmup untimed runs), once with the checkpoint's pages warm and once
evicted (--cache):
  * raw copy: every file of the iter_ folder read (16 MiB pieces) and written into one file,
    fsync (bench_dcp's raw copy: the read + write disk bound for the same bytes);
    raw read alone for information;
  * the Python route: torch's dcp_to_torch_save(iter_dir, tmp.pt), then the mapping script
    below (torch.load, split the group-interleaved fused QKV, split fc1 = [gate; up], trim the
    vocab padding, rename to HF Llama names, safetensors.torch.save_file, fsync), in one
    process with torch imported before the clock starts;
  * `ckptkit convert -q ROOT OUT --to hf` (the CLI process, exec included).
Afterwards both outputs are compared tensor by tensor (names, dtypes, shapes, bytes).
See bench/README.md for the measured numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
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
# Module level, so that the forked/spawned ranks and the child processes find them too.
for _p in (HERE, os.path.join(ROOT, "tests", "interop")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

# Shared measuring helpers (never copied): the per-op child loop (VmHWM reset, rusage,
# load average), page-cache warm/evict of a folder, the raw copy/read baselines, the CLI
# runner (ru_maxrss of the CLI process), fsync, host description.
import bench_dcp  # noqa: E402
from bench_dcp import (_cpu_model, _disk_info, _files, _find_cli, _mem_gib,  # noqa: E402
                       _raw_copy, _raw_read, _rm, _run_cli)
from bench_formats import _fsync_path  # noqa: E402

CHILD_FLAG = "--_child"
MIB = 1 << 20
GIB = 1 << 30
ITERATION = 10
TP, PP = 2, 2
CACHE_VERSION = 1  # bump when the checkpoint recipe changes


# --------------------------------------------------------------------------
# The checkpoint: a real GPTModel saved by megatron-core on 4 gloo ranks.
# --------------------------------------------------------------------------

def bench_spec(size_gib: float):
    """A Llama FamilySpec of about size_gib GiB of bf16 weights at TP2 x PP2.

    >= 0.5 GiB: TinyLlama's shape (hidden 2048, 32 heads, 4 groups, head dim 64, ffn 5632);
    smaller: hidden 1024, 16 heads, 4 groups, ffn 2816. Vocab 32001 (Llama-2's 32000 plus a
    pad token, as many fine-tunes have): Megatron-LM pads it to a multiple of 128 x TP = 32256,
    so the conversion has padding to trim. The layer count (even, for PP2) fills the size."""
    import megatron_models as mm

    if size_gib >= 0.5:
        hidden, heads, groups, ffn = 2048, 32, 4, 5632
    else:
        hidden, heads, groups, ffn = 1024, 16, 4, 2816
    hd = hidden // heads
    vocab, divisor = 32001, 128
    padded = int(math.ceil(vocab / (divisor * TP)) * divisor * TP)
    per_layer = 2 * (((heads + 2 * groups) * hd) * hidden + hidden * heads * hd
                     + 3 * ffn * hidden + 2 * hidden)
    emb = 2 * (2 * padded * hidden) + 2 * hidden
    layers = max(2, 2 * round((size_gib * GIB - emb) / per_layer / 2))
    return mm.FamilySpec(
        name=f"bench_llama_h{hidden}_l{layers}", hf_architecture="LlamaForCausalLM",
        hf_model_type="llama", num_layers=layers, hidden=hidden, ffn=ffn, heads=heads,
        groups=groups, vocab=vocab, divisor=divisor, max_positions=2048, rotary_base=10000,
        norm_epsilon=1e-5, swiglu=True, tied=False, record_vocab_size=True, seed=42)


@dataclasses.dataclass
class _GenJob:
    spec: object
    root: str


def _save_rank(job: _GenJob) -> None:
    """Rank body (forked by megatron_models.run_ranks, gloo, CPU shim): the real GPTModel of
    this rank's TP/PP slice, cast to bf16, deterministic random values, Megatron-LM's common
    state (args, iteration, ...), the real dist_checkpointing.save. No forward pass."""
    import megatron_fixtures as mf
    import megatron_models as mm
    import torch
    import torch.distributed as dist

    spec = job.spec
    mm._init(spec, TP, PP, 1)
    md = mm._sharded_metadata()
    _, model = mm.build_model(spec, TP, PP, 1, spec.padded_vocab(TP))
    model.to(torch.bfloat16)  # Megatron-LM --bf16: the params (and so the checkpoint) are bf16
    mm.fill_params(model, spec, md)
    args = mm.megatron_args(spec, TP, PP, 1, dist.get_world_size())
    args.bf16, args.params_dtype = True, torch.bfloat16
    sd = mf.megatron_lm_common(args, ITERATION)
    sd["model"] = model.sharded_state_dict(metadata=dict(md))
    sd["rng_state"] = mf.rng_state_object(args.seed)
    mm.use_in_process_results_queue()
    mf.save_megatron_lm_layout(job.root, ITERATION, sd, content_metadata=md,
                               fully_parallel=True, async_save=False)


def ensure_checkpoint(spec, cache_dir: str, regen: bool, log) -> dict:
    """The cached Megatron-LM root for spec (generated when absent), and how it was made."""
    import megatron_models as mm

    root = os.path.join(cache_dir, f"mc_{spec.name}_tp{TP}pp{PP}_v{CACHE_VERSION}")
    done = os.path.join(root, "bench_done.json")
    if regen:
        shutil.rmtree(root, ignore_errors=True)
    if os.path.exists(done):
        with open(done) as f:
            info = json.load(f)
        info["reused"] = True
        return info
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    log(f"  generating the checkpoint ({spec.name}, real GPTModel, 4 gloo ranks, "
        f"TP{TP} x PP{PP}) into {root} ...")
    t0 = time.perf_counter()
    mm.run_ranks(TP * PP, _save_rank, _GenJob(spec, root))
    info = {"root": root, "iter_dir": os.path.join(root, f"iter_{ITERATION:07d}"),
            "generate_seconds": time.perf_counter() - t0,
            "generated": datetime.datetime.now().isoformat(timespec="seconds"),
            "spec": dataclasses.asdict(spec)}
    with open(done, "w") as f:
        json.dump(info, f, indent=1)
    info["reused"] = False
    return info


def describe_checkpoint(iter_dir: str, num_layers: int) -> dict:
    """From torch's own reader: tensor keys, payload bytes, the largest tensor (a stacked
    `decoder.layers.*` key counts per layer: a converter holds one layer's slice at a time)."""
    import torch
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(iter_dir).read_metadata()
    keys = {}
    for k, v in md.state_dict_metadata.items():
        if isinstance(v, TensorStorageMetadata) and not k.startswith(("optimizer", "rng_state")):
            n = math.prod(v.size) * torch.empty((), dtype=v.properties.dtype).element_size()
            keys[k] = (n, list(v.size), str(v.properties.dtype).replace("torch.", ""))
    per = {k: (n // num_layers if k.startswith("decoder.layers.") else n)
           for k, (n, _, _) in keys.items()}
    big = max(per, key=per.get)
    stacked = max(keys, key=lambda k: keys[k][0])
    files = _files(iter_dir)
    return {"tensor_keys": len(keys), "payload_bytes": sum(n for n, _, _ in keys.values()),
            "largest_key": big, "largest_shape": keys[big][1], "largest_bytes": per[big],
            # the largest key as stored (a stacked key whole, all layers)
            "largest_stacked_key": stacked, "largest_stacked_bytes": keys[stacked][0],
            "dtypes": sorted({d for _, _, d in keys.values()}),
            "files": len(files), "file_bytes": sum(os.path.getsize(f) for f in files),
            "keys": {k: {"shape": s, "dtype": d} for k, (_, s, d) in sorted(keys.items())}}


# --------------------------------------------------------------------------
# The Python route (what a user writes today on CPU): dcp_to_torch_save + a mapping script.
# --------------------------------------------------------------------------

def megatron_pt_to_hf(pt_path: str, common_pt: str, out_dir: str) -> None:
    """A torch.save'd Megatron-Core GPT state dict (dcp_to_torch_save's output, flat DCP keys,
    stacked `decoder.layers.*` with a leading layer axis) -> HF Llama model.safetensors.

    Megatron layout (local spec): linear_qkv rows are grouped by query group, each group
    [its heads/groups q heads; one k head; one v head] x head_dim; linear_fc1 = [gate; up]
    (SwiGLU); embedding / output_layer rows padded to a multiple of 128 x TP."""
    import safetensors.torch
    import torch

    a = vars(torch.load(common_pt, weights_only=False)["args"])
    L, H, nh = a["num_layers"], a["hidden_size"], a["num_attention_heads"]
    ng = a["num_query_groups"] if a.get("group_query_attention") else nh
    hd = a.get("kv_channels") or H // nh
    ffn, V = a["ffn_hidden_size"], a["vocab_size"]
    sd = torch.load(pt_path, weights_only=False)  # the user's own file (objects included)

    def take(*keys):
        """The first of keys present (core 0.16's local spec fuses the norms into the next
        linear, `linear_qkv.layer_norm_weight`, as TE does; older specs: `input_layernorm`)."""
        key = next(k for k in keys if k in sd)
        t = sd.pop(key)
        assert t.shape[0] == L or not key.startswith("decoder.layers."), (key, t.shape)
        return t

    hf = {"model.embed_tokens.weight": take("embedding.word_embeddings.weight")[:V].clone(),
          "model.norm.weight": take("decoder.final_layernorm.weight"),
          "lm_head.weight": take("output_layer.weight")[:V].clone()}
    p = "model.layers.{}."
    for name, keys in (("input_layernorm.weight",
                        ("decoder.layers.self_attention.linear_qkv.layer_norm_weight",
                         "decoder.layers.input_layernorm.weight")),
                       ("post_attention_layernorm.weight",
                        ("decoder.layers.mlp.linear_fc1.layer_norm_weight",
                         "decoder.layers.pre_mlp_layernorm.weight")),
                       ("self_attn.o_proj.weight",
                        ("decoder.layers.self_attention.linear_proj.weight",)),
                       ("mlp.down_proj.weight", ("decoder.layers.mlp.linear_fc2.weight",))):
        t = take(*keys)
        for i in range(L):
            hf[p.format(i) + name] = t[i].clone()  # save_file refuses views of one storage
        del t
    qkv = take("decoder.layers.self_attention.linear_qkv.weight")
    qpg = nh // ng
    for i in range(L):
        g = qkv[i].view(ng, (qpg + 2) * hd, H)
        hf[p.format(i) + "self_attn.q_proj.weight"] = g[:, :qpg * hd].reshape(nh * hd, H)
        hf[p.format(i) + "self_attn.k_proj.weight"] = g[:, qpg * hd:(qpg + 1) * hd].reshape(
            ng * hd, H)
        hf[p.format(i) + "self_attn.v_proj.weight"] = g[:, (qpg + 1) * hd:].reshape(ng * hd, H)
    del qkv, g
    fc1 = take("decoder.layers.mlp.linear_fc1.weight")
    for i in range(L):
        hf[p.format(i) + "mlp.gate_proj.weight"] = fc1[i, :ffn].clone()
        hf[p.format(i) + "mlp.up_proj.weight"] = fc1[i, ffn:].clone()
    del fc1
    left = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and k.startswith(
        ("embedding.", "decoder.", "output_layer."))]
    assert not left, f"unmapped model tensors: {left}"
    del sd
    os.makedirs(out_dir, exist_ok=True)
    out = os.path.join(out_dir, "model.safetensors")
    safetensors.torch.save_file(hf, out, metadata={"format": "pt"})
    _fsync_path(out)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V,
           "hidden_size": H, "intermediate_size": ffn, "num_hidden_layers": L,
           "num_attention_heads": nh, "num_key_value_heads": ng, "head_dim": hd,
           "hidden_act": "silu", "rms_norm_eps": a["norm_epsilon"],
           "max_position_embeddings": a["max_position_embeddings"],
           "rope_parameters": {"rope_type": "default", "rope_theta": float(a["rotary_base"])},
           "tie_word_embeddings": False, "dtype": "bfloat16"}
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def _python_route(p):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    t0 = time.perf_counter()
    dcp_to_torch_save(p["iter_dir"], p["tmp_pt"])
    t1 = time.perf_counter()
    megatron_pt_to_hf(p["tmp_pt"], os.path.join(p["iter_dir"], "common.pt"), p["out_py"])
    t2 = time.perf_counter()
    with open(p["stages"], "a") as f:  # side channel: the two stages' times of this run
        f.write(json.dumps({"dcp_to_torch_save": t1 - t0, "mapping": t2 - t1}) + "\n")


def _cli_convert_hf(p):
    return _run_cli([p["cli"], "convert", "-q", p["root"], p["out_cli"], "--to", "hf"])


def _raw_copy_op(p):
    return _raw_copy({"dcp": p["iter_dir"], "raw": p["raw"]})


def _raw_read_op(p):
    return _raw_read({"dcp": p["iter_dir"]})


OPS = {
    "raw_copy": _raw_copy_op,
    "raw_read": _raw_read_op,
    "python_route": _python_route,
    "cli_convert_hf": _cli_convert_hf,
}


def _prep(*outputs):
    """Untimed, before every run: remove the outputs, warm (or evict) the checkpoint."""
    def prep(p):
        for o in outputs:
            _rm(p[o])
        bench_dcp._warm_dir(p["iter_dir"])
    return prep


PREPARE = {
    "raw_copy": _prep("raw"),
    "raw_read": _prep(),
    "python_route": _prep("tmp_pt", "out_py"),
    "cli_convert_hf": _prep("out_cli"),
}

# (op, label, speed baseline op, raw op for "of raw")
ROWS = [
    ("raw_copy", "raw copy: read all files + write 1 file + fsync", None, None),
    ("raw_read", "raw read of all files (info)", None, None),
    ("python_route", "Python: dcp_to_torch_save + mapping + save_file", None, "raw_copy"),
    ("cli_convert_hf", "ckptkit convert --to hf (CLI)", "python_route", "raw_copy"),
]


def child_main(op: str, args) -> None:
    """One op, in its own process: bench_dcp's child loop over this file's ops."""
    bench_dcp.OPS[op] = OPS[op]
    bench_dcp.PREPARE[op] = PREPARE[op]
    if op == "python_route":
        import safetensors.torch  # noqa: F401  (import cost not timed)
        import torch  # noqa: F401
        import torch.distributed.checkpoint.format_utils  # noqa: F401
    bench_dcp.child_main(op, args)


def run_child(op, args, paths, cold):
    warmup = args.cold_warmup if cold else args.warmup
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_FLAG, op,
           "--repeat", str(args.repeat), "--warmup", str(warmup),
           "--paths", json.dumps(paths)] + (["--cold"] if cold else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:].strip()}
    return {"results": json.loads(proc.stdout)["results"]}


# --------------------------------------------------------------------------
# Output check (untimed, own process): both outputs tensor for tensor.
# --------------------------------------------------------------------------

def _read_hf_dir(d):
    from safetensors import safe_open

    where = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            with safe_open(os.path.join(d, fn), framework="pt") as f:
                for k in f.keys():
                    where[k] = os.path.join(d, fn)
    return where


def check_main(args) -> None:
    import torch
    from safetensors import safe_open

    p = json.loads(args.paths)
    doc = {}
    a, b = _read_hf_dir(p["out_py"]), _read_hf_dir(p["out_cli"])
    doc["cli_files"] = sorted(f for f in os.listdir(p["out_cli"]))
    doc["names_equal"] = set(a) == set(b)
    doc["only_python"] = sorted(set(a) - set(b))[:10]
    doc["only_ckptkit"] = sorted(set(b) - set(a))[:10]
    bad, nbytes, largest = [], 0, ("", 0)
    handles = {}

    def get(path, k):
        if path not in handles:
            handles[path] = safe_open(path, framework="pt")
        return handles[path].get_tensor(k)

    for k in sorted(set(a) & set(b)):
        x, y = get(a[k], k), get(b[k], k)
        n = x.numel() * x.element_size()
        nbytes += n
        if n > largest[1]:
            largest = (k, n, list(x.shape), str(x.dtype).replace("torch.", ""))
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(
                x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)):
            bad.append(k)
    doc["tensors_compared"] = len(set(a) & set(b))
    doc["hf_bytes"] = nbytes
    doc["largest_hf_tensor"] = {"key": largest[0], "bytes": largest[1],
                                "shape": largest[2] if len(largest) > 2 else None,
                                "dtype": largest[3] if len(largest) > 3 else None}
    doc["mismatches"] = bad[:10]
    doc["bit_identical"] = doc["names_equal"] and not bad and doc["tensors_compared"] > 0
    with open(os.path.join(p["out_cli"], "config.json")) as f:
        cfg = json.load(f)
    doc["ckptkit_config"] = {k: cfg.get(k) for k in (
        "architectures", "vocab_size", "hidden_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "intermediate_size", "dtype",
        "torch_dtype")}
    json.dump(doc, sys.stdout)


# --------------------------------------------------------------------------
# Peers (optional): can megatron-bridge / mbridge convert torch_dist -> HF on this CPU box?
# --------------------------------------------------------------------------

_PEER_PROBE = r"""
import json, os, socket, sys, traceback, warnings
warnings.filterwarnings("ignore")
res = {}
def where(e):
    tb = traceback.extract_tb(e.__traceback__)[-1]
    return f"{type(e).__name__}: {str(e)[:160]} ({tb.filename}:{tb.lineno})"
try:
    import torch
    cuda = torch.version.cuda
    res["torch"] = torch.__version__ + (" (CUDA %s)" % cuda if cuda else " (CPU build)")
except Exception as e:
    res["torch"] = where(e)
try:
    import megatron.bridge
    from megatron.bridge import AutoBridge
    res["megatron.bridge"] = "imported"
except Exception as e:
    res["megatron.bridge"] = "import failed: " + where(e)
try:
    import mbridge
    res["mbridge"] = "imported " + mbridge.__version__
    import torch.distributed as dist
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    from megatron.core import parallel_state as ps
    ps.initialize_model_parallel()
    bridge = mbridge.AutoBridge.from_pretrained(sys.argv[1])
    res["mbridge"] += "; AutoBridge.from_pretrained(config) ok: " + type(bridge).__name__
    try:
        bridge.get_model(use_cpu_initialization=True, init_model_with_meta_device=True)
        res["mbridge"] += "; get_model ok"
    except Exception as e:
        res["mbridge"] += "; get_model(use_cpu_initialization, meta device) failed: " + where(e)
except Exception as e:
    res["mbridge"] = res.get("mbridge", "") + " failed: " + where(e)
print(json.dumps(res))
"""


def probe_peers(python: str, hf_dir: str) -> dict:
    proc = subprocess.run([python, "-c", _PEER_PROBE, hf_dir], capture_output=True, text=True,
                          timeout=600)
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        out = {"error": proc.stderr[-1500:]}
    out["python"] = python
    return out


# --------------------------------------------------------------------------
# Parent side.
# --------------------------------------------------------------------------

def _cli_snapshot(cli, base):
    """A private copy of the CLI for this run (the shared build/ may be relinked mid-run)."""
    dst = os.path.join(base, "ckptkit")
    shutil.copy2(cli, dst)
    st = os.stat(cli)
    ver = subprocess.run([dst, "--version"], capture_output=True, text=True).stdout.strip()
    return dst, {"path": cli, "mtime": datetime.datetime.fromtimestamp(st.st_mtime).isoformat(
        timespec="seconds"), "version": ver}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gib", type=float, default=2.0, help="checkpoint size (bf16 weights)")
    ap.add_argument("--quick", action="store_true", help="smoke run: ~0.2 GiB, --repeat 1")
    ap.add_argument("--repeat", type=int, default=None, help="timed runs per op (default 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs of each op first "
                    "(warm page cache; the first touch of fresh memory in this VM is slow)")
    ap.add_argument("--cold-warmup", type=int, default=0, help="the same for the cold runs "
                    "(default 0: they follow the warm ones, and it keeps the default run "
                    "under ~10 minutes on 2 busy cores)")
    ap.add_argument("--cache", default="warm,cold",
                    help="page cache states to measure: warm, cold or both (default)")
    ap.add_argument("--dir", default=None, help="folder for the outputs (a fresh subfolder is "
                    "made and removed; default: --cache-dir)")
    ap.add_argument("--cache-dir", default="/tmp/ckptkit-bench",
                    help="where the generated checkpoint is cached and reused")
    ap.add_argument("--regen", action="store_true", help="regenerate the cached checkpoint")
    ap.add_argument("--cli", default=None, help="ckptkit executable (default: build/ckptkit)")
    ap.add_argument("--only", default=None, help="comma-separated ops: " + ",".join(OPS))
    ap.add_argument("--peers", default=None, metavar="PYTHON",
                    help="also probe megatron-bridge / mbridge with this interpreter "
                    "(a scratch venv, see bench/README.md)")
    ap.add_argument("--json", action="store_true", help="print a JSON document instead")
    ap.add_argument("--keep", action="store_true", help="keep the outputs (debugging)")
    ap.add_argument("--render", default=None, metavar="FILE.json",
                    help="print the text report of an earlier --json run and exit")
    ap.add_argument(CHILD_FLAG, dest="child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_check", dest="check", action="store_true", help=argparse.SUPPRESS)
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
    if args.quick:
        args.size_gib = 0.2
        args.repeat = args.repeat or 1
    args.repeat = args.repeat or 2
    caches = [c for c in args.cache.split(",") if c]
    if not caches or set(caches) - {"warm", "cold"}:
        sys.exit("--cache: warm, cold or warm,cold")
    ops = [r[0] for r in ROWS]
    if args.only:
        wanted = set(args.only.split(","))
        if wanted - set(ops):
            sys.exit(f"--only: unknown {sorted(wanted - set(ops))}; known: {ops}")
        ops = [o for o in ops if o in wanted]

    import torch

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr, flush=True))
    cli = _find_cli(args.cli)
    if not cli:
        sys.exit("ckptkit CLI not found: pass --cli PATH")
    os.makedirs(args.cache_dir, exist_ok=True)
    spec = bench_spec(args.size_gib)
    load_start = os.getloadavg()
    pressure_start = _pressure()
    t_start = time.perf_counter()
    ckpt = ensure_checkpoint(spec, args.cache_dir, args.regen, log)
    desc = describe_checkpoint(ckpt["iter_dir"], spec.num_layers)
    base = tempfile.mkdtemp(prefix="run-hf-", dir=args.dir or args.cache_dir)
    cli_copy, cli_info = _cli_snapshot(cli, base)
    paths = {"root": ckpt["root"], "iter_dir": ckpt["iter_dir"], "cli": cli_copy,
             "raw": os.path.join(base, "raw.bin"), "tmp_pt": os.path.join(base, "tmp.pt"),
             "out_py": os.path.join(base, "hf_python"), "out_cli": os.path.join(base, "hf_cli"),
             "stages": os.path.join(base, "stages.jsonl")}
    results, checks, stages, peers = {}, {}, {}, None
    try:
        for cache in caches:
            for op in ops:
                log(f"  [{cache}] running {op} ...")
                _rm(paths["stages"])
                results[(cache, op)] = run_child(op, args, paths, cache == "cold")
                if "error" in results[(cache, op)]:
                    log(f"    FAILED: {results[(cache, op)]['error'].splitlines()[-1:]}")
                if op == "python_route" and os.path.exists(paths["stages"]):
                    with open(paths["stages"]) as f:
                        stages[cache] = [json.loads(x) for x in f][
                            args.cold_warmup if cache == "cold" else args.warmup:]
        if os.path.isdir(paths["out_py"]) and os.path.isdir(paths["out_cli"]):
            log("  comparing the two outputs tensor by tensor ...")
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_check",
                                   "--paths", json.dumps(paths)], capture_output=True, text=True)
            checks = json.loads(proc.stdout) if proc.returncode == 0 else {
                "error": proc.stderr[-2000:]}
        if args.peers and os.path.isdir(paths["out_cli"]):
            log(f"  probing megatron-bridge / mbridge with {args.peers} ...")
            peers = probe_peers(args.peers, paths["out_cli"])
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    load_end = os.getloadavg()
    pressure_end = _pressure()

    payload = desc["payload_bytes"]
    aim = 2 * desc["largest_bytes"] + 256 * MIB
    rows = []
    for cache in caches:
        def best(op):
            r = results.get((cache, op), {}).get("results")
            return min(x["seconds"] for x in r) if r else None

        for op, label, base_op, raw_op in ROWS:
            if (cache, op) not in results:
                continue
            res = results[(cache, op)]
            row = {"cache": cache, "op": op, "label": label}
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
            if base_op and best(base_op):
                row["speedup_vs"] = base_op
                row["speedup"] = best(base_op) / b["seconds"]
            if raw_op and best(raw_op):
                row["fraction_of_raw"] = best(raw_op) / b["seconds"]
            if op in ("python_route", "cli_convert_hf"):
                row["rss_vs_aim"] = row["peak_rss_mib"] * MIB / aim
            if op == "python_route" and stages.get(cache):
                fastest = min(stages[cache], key=lambda s: s["dcp_to_torch_save"] + s["mapping"])
                row["stages"] = fastest
            rows.append(row)

    doc = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - t_start,
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu_model(),
                 "mem_gib": round(_mem_gib(), 1), "python": platform.python_version(),
                 "disk": _disk_info(args.dir or args.cache_dir)},
        "versions": {"torch": torch.__version__, "megatron_core": _version("megatron-core"),
                     "safetensors": _version("safetensors"), "cli": cli_info},
        "command": " ".join([os.path.relpath(sys.executable, ROOT)
                             if sys.executable.startswith(ROOT) else sys.executable,
                             os.path.relpath(os.path.abspath(__file__), ROOT)] + sys.argv[1:]),
        "checkpoint": {**{k: v for k, v in desc.items() if k != "keys"},
                       "root": ckpt["root"], "reused": ckpt["reused"],
                       "generate_seconds": ckpt.get("generate_seconds"),
                       "layers": spec.num_layers, "hidden": spec.hidden, "ffn": spec.ffn,
                       "heads": spec.heads, "groups": spec.groups, "vocab": spec.vocab,
                       "padded_vocab": spec.padded_vocab(TP), "tp": TP, "pp": PP,
                       "writer": "real megatron-core GPTModel (local spec), bf16, "
                                 "dist_checkpointing.save torch_dist, 4 gloo ranks, "
                                 "fully parallel, Megatron-LM root (tracker + iter_0000010)"},
        "aim_rss_mib": aim / MIB,
        "repeat": args.repeat, "warmup": args.warmup, "cold_warmup": args.cold_warmup,
        "loadavg_start": load_start, "loadavg_end": load_end,
        "pressure_start": pressure_start, "pressure_end": pressure_end,
        "output_checks": checks,
        "peers": peers,
        "rows": rows,
        "notes": [
            "every output is fsynced inside the timed region (ckptkit's writer fsyncs itself; "
            "the Python route and the raw copy call os.fsync); the Python route's tmp.pt is "
            "not fsynced (a temporary) and is removed untimed",
            "warm: every checkpoint file read once, untimed, before each run; cold: evicted "
            "(fsync + posix_fadvise DONTNEED) before each run, the hypervisor may still cache",
            "raw copy = all files of the iter_ folder read in 16 MiB pieces and written into one "
            "file + fsync (the read + write disk bound for the same bytes); 'of raw' = raw copy "
            "s / op s",
            "GB/s: the checkpoint's model tensor bytes (1e9) per second; speedup = Python route "
            "s / ckptkit s",
            "peak RSS: the CLI process's own ru_maxrss; the Python route's process VmHWM (reset "
            "just before the run; the interpreter with torch imported included, as for a user's "
            "script); 'extra' = peak minus RSS before the run, which understates the route's "
            "need after a warmup run (freed heap stays resident); 'vs aim' uses the peak for both",
            f"RSS aim: 2 x largest tensor ({desc['largest_key']}, "
            f"{desc['largest_bytes'] / MIB:.0f} MiB; stacked layer keys count per layer) "
            f"+ 256 MiB = {aim / MIB:.0f} MiB",
            "the Python route runs in a warm interpreter (torch import not timed); the CLI is "
            "timed as a whole process (exec included)",
        ],
    }
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        print()
        return
    print_report(doc)


def _pressure():
    """Linux PSI 'some' avg60 (% of time at least one task waited) for cpu and io."""
    out = {}
    for res in ("cpu", "io"):
        try:
            with open(f"/proc/pressure/{res}") as f:
                out[res] = float(f.readline().split("avg60=")[1].split()[0])
        except (OSError, IndexError, ValueError):
            pass
    return out


def _version(dist_name):
    try:
        from importlib.metadata import version

        return version(dist_name)
    except Exception:  # noqa: BLE001
        return "?"


def print_report(doc) -> None:
    h, c = doc["host"], doc["checkpoint"]
    cli = doc["versions"]["cli"]
    print(f"ckptkit bench_hf_convert  {doc['date']}  {h['cpus']} CPUs ({h['cpu']}), "
          f"{h['mem_gib']} GiB RAM, disk: {h['disk']}")
    print(f"torch {doc['versions']['torch']}, megatron-core {doc['versions']['megatron_core']}, "
          f"safetensors {doc['versions']['safetensors']}; CLI {cli['path']} ({cli['version']}, "
          f"built {cli['mtime']}); best of {doc['repeat']} after {doc['warmup']} untimed "
          f"(cold: {doc.get('cold_warmup', doc['warmup'])})")
    print(f"command: {doc['command']}  (total {doc['wall_seconds']:.0f} s)")
    ls, le = doc["loadavg_start"][0], doc["loadavg_end"][0]
    ps_, pe = doc.get("pressure_start", {}), doc.get("pressure_end", {})
    print(f"load average (1 min) {ls:.2f} at start, {le:.2f} at end; PSI some avg60 cpu "
          f"{ps_.get('cpu', '?')}% / io {ps_.get('io', '?')}% at start, cpu {pe.get('cpu', '?')}% "
          f"/ io {pe.get('io', '?')}% at end")
    if max(ls, le, *[max(r.get("loadavg_1m", [0])) for r in doc["rows"]]) > 0.5 * (h["cpus"] or 1):
        print("WARNING: the machine was busy (load average above half the CPUs): timings noisy")
    gen = (f"reused from {c['root']}" if c["reused"] else
           f"generated in {c['generate_seconds']:.0f} s into {c['root']}")
    print(f"checkpoint: Llama GPT, {c['layers']} layers, hidden {c['hidden']}, ffn {c['ffn']}, "
          f"{c['heads']} heads / {c['groups']} groups, vocab {c['vocab']} (padded "
          f"{c['padded_vocab']}), TP{c['tp']} x PP{c['pp']}, {'/'.join(c['dtypes'])}; "
          f"{c['tensor_keys']} tensor keys, {c['payload_bytes'] / GIB:.2f} GiB payload, "
          f"{c['files']} files {c['file_bytes'] / GIB:.2f} GiB; {gen}")
    print(f"largest tensor: {c['largest_key']} {c['largest_shape']} "
          f"{c['largest_bytes'] / MIB:.0f} MiB (largest key as stored {c['largest_stacked_key']} "
          f"{c['largest_stacked_bytes'] / MIB:.0f} MiB); RSS aim 2 x largest + 256 MiB = "
          f"{doc['aim_rss_mib']:.0f} MiB")
    for cache in ("warm", "cold"):
        rows = [r for r in doc["rows"] if r["cache"] == cache]
        if not rows:
            continue
        print()
        hdr = (f"{cache + ' page cache:':50s} {'s':>7s} {'median':>7s} {'user':>6s} {'sys':>5s} "
               f"{'GB/s':>5s} {'speedup':>8s} {'of raw':>6s} {'peak RSS':>9s} {'extra':>7s} "
               f"{'vs aim':>6s} {'load':>4s}")
        print(hdr)
        print("-" * len(hdr))
        for r in rows:
            if "error" in r:
                print(f"{r['label']:50s} FAILED: {r['error'].splitlines()[-1][:100]}")
                continue
            sp = f"{r['speedup']:.2f}x" if "speedup" in r else ""
            fr = f"{r['fraction_of_raw']:.2f}" if "fraction_of_raw" in r else ""
            aim = f"{r['rss_vs_aim']:.2f}x" if "rss_vs_aim" in r else ""
            print(f"{r['label']:50s} {r['seconds']:7.2f} {r['median_seconds']:7.2f} "
                  f"{r['user_s']:6.2f} {r['sys_s']:5.2f} {r['gb_per_s']:5.2f} {sp:>8s} {fr:>6s} "
                  f"{r['peak_rss_mib']:8.0f}M {r['extra_rss_mib']:6.0f}M {aim:>6s} "
                  f"{max(r['loadavg_1m']):4.1f}")
            if "stages" in r:
                s = r["stages"]
                print(f"{'  of which dcp_to_torch_save / mapping script':50s} "
                      f"{s['dcp_to_torch_save']:7.2f} {s['mapping']:7.2f}")
    oc = doc["output_checks"]
    if oc:
        print()
        if "error" in oc:
            print(f"output check FAILED to run: {oc['error'][-500:]}")
        else:
            lt = oc["largest_hf_tensor"]
            print(f"outputs: {oc['tensors_compared']} tensors, {oc['hf_bytes'] / GIB:.2f} GiB; "
                  f"ckptkit == Python route bit for bit: "
                  f"{'YES' if oc['bit_identical'] else 'NO'}"
                  + ("" if oc["bit_identical"] else
                     f" (mismatches {oc['mismatches']}, only Python {oc['only_python']}, "
                     f"only ckptkit {oc['only_ckptkit']})"))
            print(f"largest HF tensor: {lt['key']} {lt['shape']} {lt['bytes'] / MIB:.0f} MiB; "
                  f"ckptkit wrote {oc['cli_files']}; config {json.dumps(oc['ckptkit_config'])}")
    if doc.get("peers"):
        print()
        print(f"peers ({doc['peers'].get('python')}):")
        for k, v in doc["peers"].items():
            if k != "python":
                print(f"  {k}: {v}")
    print("Notes:")
    for n in doc["notes"]:
        print(f"  - {n}")


if __name__ == "__main__":
    main()
