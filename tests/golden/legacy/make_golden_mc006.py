#!/usr/bin/env python3
"""The megatron-core 0.6 golden (mc006_llama_dp2/): distrib_optim.pt in format B, as core 0.6's
own DistributedOptimizer.save_parameter_state writes it (per-bucket tensors of the padded bucket
size, per_bucket_numel / per_bucket_numel_unpadded lists, buckets padded to a multiple of DP and
no 64-element alignment of parameter starts).

What is real: megatron-core 0.6.0's DistributedDataParallel (its _ParamAndGradBuffer decides
the layout), get_megatron_optimizer / DistributedOptimizer, two AdamW steps, and
save_parameter_state; model_optim_rng.pt is built as Megatron-LM's save_checkpoint of that time
builds it (args, checkpoint_version 3.0, iteration, model, optimizer.state_dict(),
opt_param_scheduler, rng_state).

What is not, and why: core 0.6's GPTModel imports Transformer Engine (CUDA only) at import
time, even for the local layer spec, so the model is a stand-in module with GPTModel's exact
parameter names, shapes, dtypes and registration order for the same tiny llama at TP1 PP1
(read from mc016_llama_dp2/layout.json, the real 0.16.1 GPTModel's named_parameters; core
0.6's attention.py / transformer_layer.py / gpt_model.py register their submodules in that same
order). DDP and the optimizer see nothing else of a model. Apex is not installed: apex_shim/
stands in for apex.optimizers.FusedAdam (adam_w_mode=True, i.e. torch AdamW, the optimizer
every other golden runs) and apex's amp_C multi-tensor kernels (scale, l2norm) on CPU. The CUDA
bookkeeping shim is megatron_optim's (_CpuCudaMode: device='cuda' -> cpu, Tensor.type() CUDA
names).

Usage (a venv with megatron-core==0.6.0 --no-deps and a .pth naming .venv's site-packages):
  .venv-mcore006/bin/python tests/golden/legacy/make_golden_mc006.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(HERE, "apex_shim"))
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

NAME = "mc006_llama_dp2"
DP = 2
BUCKET = 300
ITERATION = 2
STEPS = 2
REFERENCE = os.path.join(HERE, "mc016_llama_dp2", "layout.json")


def _params():
    with open(REFERENCE) as f:
        ref = json.load(f)
    return ref["ranks"][0]["chunks"][0]["named_parameters"]


def _sha(t: torch.Tensor) -> str:
    t = t.detach().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


class StandIn(torch.nn.Module):
    """Nested modules named like GPTModel's, parameters registered in its order."""

    def __init__(self, params):
        super().__init__()
        for p in params:
            *path, leaf = p["name"].split(".")
            mod = self
            for part in path:
                if not hasattr(mod, part):
                    mod.add_module(part, torch.nn.Module())
                mod = getattr(mod, part)
            mod.register_parameter(leaf, torch.nn.Parameter(torch.zeros(p["shape"], dtype=torch.bfloat16)))


def _rank(rank: int, port: int, out: str) -> None:
    import megatron_optim as mo
    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.transformer.transformer_config import TransformerConfig

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=DP)
    torch.cuda.current_device = lambda: "cpu"  # bookkeeping only (buffers are allocated there)
    mode = mo._CpuCudaMode()
    mode.__enter__()
    ps.initialize_model_parallel(1, 1)
    tensor_parallel.model_parallel_cuda_manual_seed  # noqa: B018 (RNG tracker: not needed)

    spec = mo.OptimSpec(family="llama", tp=1, pp=1, dp=DP, bucket_size=BUCKET,
                        model_overrides=(("hidden", 8), ("heads", 4), ("groups", 2), ("ffn", 16),
                                         ("vocab", 30), ("divisor", 16), ("num_layers", 2)))
    params = _params()
    model = StandIn(params)
    for p in params:  # deterministic initial values, as every golden: per checkpoint key + layer
        t = model.get_parameter(p["name"])
        t.data.copy_(mo._seeded(f"init|{p['name']}", p["shape"], std=0.02))
        tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(t)
    config = TransformerConfig(num_layers=2, hidden_size=8, num_attention_heads=4, bf16=True,
                               params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16)
    ddp = DistributedDataParallel(config, model, ps.get_data_parallel_group(),
                                  accumulate_allreduce_grads_in_fp32=True, overlap_grad_reduce=True,
                                  use_distributed_optimizer=True, bucket_size=BUCKET)
    opt = get_megatron_optimizer(
        OptimizerConfig(optimizer="adam", lr=spec.lr, min_lr=spec.lr / 10, weight_decay=spec.weight_decay,
                        adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, clip_grad=spec.clip_grad,
                        bf16=True, fp16=False, params_dtype=torch.bfloat16, use_distributed_optimizer=True,
                        overlap_grad_reduce=True),
        [ddp])
    # The LR scheduler lived in Megatron-LM (not core) at 0.6: a constant LR, and the state dict
    # its OptimizerParamScheduler.state_dict() had (keys as of that version).
    sched_state = {"max_lr": spec.lr, "lr_warmup_steps": 0, "num_steps": STEPS, "lr_decay_style": "constant",
                   "lr_decay_steps": 100, "min_lr": spec.lr / 10, "start_wd": spec.weight_decay,
                   "end_wd": spec.weight_decay, "wd_incr_style": "constant", "wd_incr_steps": 100}
    for step in range(STEPS):
        ddp.zero_grad_buffer()
        opt.zero_grad()
        for p in params:  # the same "reduced" gradient on both DP ranks
            t = model.get_parameter(p["name"])
            t.main_grad.copy_(mo._seeded(f"grad|{step}|{p['name']}", p["shape"], std=0.05).view(t.main_grad.shape))
        ok, _, _ = opt.step()
        assert ok, "optimizer step was skipped"

    root = os.path.join(out, "legacy")
    d = os.path.join(root, f"iter_{ITERATION:07d}", "mp_rank_00")
    os.makedirs(d, exist_ok=True)
    opt.save_parameter_state(os.path.join(d, "distrib_optim.pt"))
    if ps.get_data_parallel_rank() == 0:
        args = mo.lm_args(spec)
        sd = {"args": args, "checkpoint_version": 3.0, "iteration": ITERATION,
              "model": model.state_dict(), "optimizer": opt.state_dict(),
              "opt_param_scheduler": sched_state,
              "rng_state": [mo.rng_state_dict(args.seed)],
              "num_floating_point_operations_so_far": 123456789}
        torch.save(sd, os.path.join(d, "model_optim_rng.pt"))
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(ITERATION))

    # The trained state from megatron's own per-parameter ranges (no buffer arithmetic).
    pieces = {}
    for gbuf in opt.gbuf_ranges:
        for per_bucket in gbuf.values():
            for rm in per_bucket:
                for p, r in rm["param_map"].items():
                    gi, go = opt.model_param_group_index_map[p]
                    main = opt.optimizer.param_groups[gi]["params"][go]
                    st = {"param": main, **opt.optimizer.state[main]}
                    name = next(n for n, q in model.named_parameters() if q is p)
                    pieces[name] = (r["param"].start, r["param"].end,
                                    {k: st[k].detach().float().clone() for k in ("param", "exp_avg", "exp_avg_sq")})
    layout = []
    for b in ddp.buffers:
        layout.append({
            "param_dtype": str(b.param_dtype), "grad_dtype": str(b.grad_dtype), "numel": b.numel,
            "buckets": [[s, e] for s, e in b.bucket_indices],
            "buckets_numel_unpadded": [bk.numel_unpadded for bk in b.buckets],
            "params": {next(n for n, q in model.named_parameters() if q is p): list(v)
                       for p, v in b.param_index_map.items()},
        })
    gathered = [None] * DP if rank == 0 else None
    dist.gather_object(pieces, gathered, dst=0)
    if rank == 0:
        state = {}
        for p in params:
            full = {k: torch.full((int(torch.tensor(p["shape"]).prod()),), float("nan")) for k in
                    ("param", "exp_avg", "exp_avg_sq")}
            for g in gathered:
                if p["name"] in g:
                    s, e, ts = g[p["name"]]
                    for k, t in ts.items():
                        full[k][s:e] = t
            assert not any(torch.isnan(t).any() for t in full.values()), p["name"]
            state[p["name"]] = {k: t.view(p["shape"]) for k, t in full.items()}
            state[p["name"]]["model"] = model.get_parameter(p["name"]).detach().float().clone()
        torch.save({"state": state, "layout": layout}, os.path.join(out, "_state.pt"))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    from megatron.core import package_info

    base = os.path.join(HERE, NAME)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_rank, args=(port, base), nprocs=DP, start_method="fork")
    got = torch.load(os.path.join(base, "_state.pt"), weights_only=False)
    os.remove(os.path.join(base, "_state.pt"))
    # Canonical state keyed as torch_dist keys: decoder layers stacked on a leading axis.
    canon = {}
    for p in _params():
        name, key = p["name"], p["key"]
        for kind, t in got["state"][name].items():
            parts = name.split(".")
            if parts[:2] == ["decoder", "layers"] and parts[2].isdigit():
                canon.setdefault(key, {}).setdefault(kind, {})[int(parts[2])] = t
            else:
                canon.setdefault(key, {})[kind] = t
    out = {}
    for key, kinds in sorted(canon.items()):
        out[key] = {}
        for kind, t in sorted(kinds.items()):
            if isinstance(t, dict):
                t = torch.stack([t[i] for i in sorted(t)])
            out[key][kind] = {"shape": list(t.shape), "sha256": _sha(t)}
    side = {"megatron_core": package_info.__version__, "torch": torch.__version__.split("+")[0],
            "formats": ["legacy"], "iteration": ITERATION, "dp": DP, "bucket_size": BUCKET,
            "trained_state_sha256": out, "ddp_buffers": got["layout"]}
    with open(os.path.join(base, "expected.json"), "w") as f:
        json.dump(side, f, indent=1)
        f.write("\n")
    print(NAME, sum(os.path.getsize(os.path.join(dp, x)) for dp, _, fs in os.walk(base) for x in fs), "bytes")


if __name__ == "__main__":
    main()
