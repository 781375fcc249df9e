"""REAL megatron-core DistributedOptimizer checkpoints on CPU (gloo): legacy
(`mp_rank_XX[_YYY][_EEE]/model_optim_rng.pt` + `distrib_optim.pt`) and `torch_dist` with
optimizer state, plus exact dumps of the optimizer's buffer layout (layout.json).

This is a fixture *library*, not a test module. It builds on megatron_fixtures.py (gloo
workers, parallel state, Megatron-LM directory layout, content metadata) and megatron_models.py
(FAMILIES, build_config, fork-based run_ranks, megatron_args, the forward shim).

What runs is Megatron's own code path, as Megatron-LM's `get_model` / `setup_model_and_optimizer`
/ `save_checkpoint` / `load_checkpoint` (core_v0.16.1 tag of NVIDIA/Megatron-LM) call it:
  GPTModel chunk(s) (get_gpt_layer_local_spec; one per virtual stage with VPP, vp_stage=i)
  -> Float16Module (bf16 runs only, as get_model does for --bf16)
  -> megatron.core.distributed.DistributedDataParallel(DistributedDataParallelConfig(...),
     disable_bucketing = chunk index > 0)
  -> megatron.core.optimizer.get_megatron_optimizer(OptimizerConfig(optimizer='adam', ...))
     (a ChainedOptimizer; for MoE with EP > 1 it chains a dense and an expert
     DistributedOptimizer; torch.optim.AdamW since neither Apex nor TE is installed).
Training needs no forward/backward: every param's `main_grad` (the DDP grad buffer view) is
filled with deterministic values (seed = crc32(step, checkpoint key, global offset), so TP
replicas and DP replicas hold the same "reduced" gradient) and `optimizer.step()` runs; two
steps, so exp_avg / exp_avg_sq are non-trivial. The model params are then updated by the
optimizer itself (main -> param buffer -> DP all-gather in start_param_sync).

CPU shim (install_optim_shim), on top of megatron_models.install_forward_shim (which adds
megatron_fixtures' `torch.cuda.current_device() -> 'cpu'`, `torch.cuda.synchronize` no-op,
`Tensor.cuda()` identity, `moe_utils.te_general_gemm = None`; reasons there). Every patch is CUDA
*bookkeeping* only; no arithmetic changes:
  1. A torch.overrides.TorchFunctionMode (_CpuCudaMode) that
     a. rewrites a `device=` argument naming CUDA ('cuda', 'cuda:0', torch.device('cuda'))
        to 'cpu' for every torch function: the optimizer allocates small bookkeeping tensors
        there (MixedPrecisionOptimizer.__init__: torch.tensor([0.0], device='cuda') found-inf
        flag and _scale_one; clip_grads.py get_grad_norm_fp32: total_norm tensors;
        DistributedOptimizer.load_state_dict: torch.empty(..., device=current_device()) is
        already covered by current_device()='cpu').
     b. answers the no-argument `Tensor.type()` with the CUDA type name of a CPU tensor
        ('torch.BFloat16Tensor' -> 'torch.cuda.BFloat16Tensor'): distrib_optimizer.py
        _build_model_and_main_param_groups (0.16.1 l.361/420) and __init__ (l.582) classify
        params by exactly these strings and raise otherwise. `Tensor.type(dtype)` (a cast)
        is untouched.
  2. DistributedOptimizer._set_main_param_and_optimizer_states (fix_step_keyerror):
     with torch's AdamW every per-param optimizer state has a 'step' entry (torch AdamW keeps
     it per param; TE/Apex FusedAdam, Megatron's usual optimizer, keeps it in param_groups).
     The method copies every key of the destination state from the source dict, but the
     source dicts built by load_parameter_state_from_dp_zero (legacy distrib_optim.pt and
     'dp_zero_gather_scatter') and load_parameter_state_from_fully_reshardable hold only
     param/exp_avg/exp_avg_sq -> KeyError: 'step'. The wrapper adds the destination's own
     'step' to the source dict (a copy onto itself). The step value itself is restored from
     param_groups by DistributedOptimizer.load_state_dict (it sets state['step'] for every
     param from param_groups[...]['step']), exactly the "handled separately" the megatron
     comments describe. The wrapper always keeps the destination's step, also when the source
     has one: 'dp_reshardable' bucket state carries 'step' as a LocalNonpersistentObject,
     i.e. the value of the FRESH optimizer at load time (1 after
     _init_optimizer_states_with_dummy_values), which would otherwise overwrite the loaded
     step (observed: param_groups step 1.0 instead of 2.0 after a dp_reshardable load without
     the wrapper; tensors were right). With TE/Apex FusedAdam none of this arises.
  Configured, not patched: loading torch_dist into a fresh optimizer first calls each
  DistributedOptimizer's own `_init_optimizer_states_with_dummy_values()` (AdamW step with zero
  grads, overwritten by the load): DistributedOptimizer.sharded_state_dict(is_loading=True)
  calls self.state_dict(), which (no Apex/TE) reads the per-param 'step' and asserts there is
  exactly one value. Legacy loading needs no such call (load_state_dict allocates the state).

Not reproducible on CPU (documented where used): `cuda_rng_state` in rng_state is a CPU
torch.Generator state tensor (torch.cuda.get_rng_state() needs CUDA); rng_tracker_states come
from megatron's inference RNG tracker (model_parallel_cuda_manual_seed needs CUDA).

Entry points (parent process; each spawns/forks the ranks):
  save_legacy(spec, root), save_torch_dist(spec, root, sharding_type), dump_layout(spec),
  trained_state(spec), save_all(spec, root_by_format, layout_path) (one run, every format),
  load_legacy_into_optimizer(spec, root), load_torch_dist_into_optimizer(spec, root),
  compare_states(a, b).
Never use this outside fixture generation / tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import zlib
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_fixtures as mf  # noqa: E402
import megatron_models as mm  # noqa: E402

SHARDING_TYPES = ("fully_reshardable", "dp_reshardable", "dp_zero_gather_scatter",
                  "fully_sharded_model_space")


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class OptimSpec:
    """One training setup. world size = tp * pp * dp; expert DP = tp * dp / (ep * etp)
    (etp = 1 for MoE families, as megatron_models does)."""

    family: str = "llama"
    tp: int = 1
    pp: int = 1
    vpp: Optional[int] = None  # virtual_pipeline_model_parallel_size (needs pp > 1)
    ep: int = 1
    dp: int = 2
    bf16: bool = True  # bf16 params + fp32 main params; False: fp32 params
    overlap_grad_reduce: bool = True
    bucket_size: Optional[int] = 6000  # ddp_bucket_size (elements); None: Megatron default
    iteration: int = 2
    steps: int = 2
    # Steps after `steps` (in train(), and after a load): their gradients are a function of each
    # element's GLOBAL index only (_fill_grads_global), so runs at different layouts step alike.
    extra_steps: int = 0
    lr: float = 1e-2
    weight_decay: float = 0.1
    clip_grad: float = 1.0
    # FamilySpec field overrides (hidden, heads, ffn, vocab, num_layers ...), as a tuple of
    # (name, value) pairs so the spec stays hashable / picklable.
    model_overrides: Tuple[Tuple[str, Any], ...] = ()

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    @property
    def fam(self) -> mm.FamilySpec:
        return dataclasses.replace(mm.FAMILIES[self.family], **dict(self.model_overrides))

    @property
    def etp(self) -> int:
        return 1 if self.fam.is_moe else self.tp

    def describe(self) -> dict:
        d = dataclasses.asdict(self)
        d["model_overrides"] = dict(self.model_overrides)
        d["family_spec"] = dataclasses.asdict(self.fam)
        d["world"] = self.world
        d["etp"] = self.etp
        return d


# --------------------------------------------------------------------------------------------
# Shim
# --------------------------------------------------------------------------------------------
def _is_cuda_device(dev) -> bool:
    if isinstance(dev, torch.device):
        return dev.type == "cuda"
    if isinstance(dev, str):
        return dev.startswith("cuda")
    return False


class _CpuCudaMode(torch.overrides.TorchFunctionMode):
    """See the module docstring, shim 1."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            if name.startswith("torch.") and not name.startswith("torch.cuda."):
                name = "torch.cuda." + name[len("torch."):]
            return name
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = dict(kwargs, device="cpu")
        return func(*args, **kwargs)


_MODE: Optional[_CpuCudaMode] = None


def fix_step_keyerror() -> None:
    """See the module docstring, shim 2."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    orig = getattr(DistributedOptimizer, "_set_main_param_and_optimizer_states", None)
    if orig is None:  # core <= 0.6: its loaders copy param / exp_avg / exp_avg_sq by name
        return
    if getattr(orig, "_ckptkit_step_fix", False):
        return

    def _set(self, model_param, tensors):
        if not self.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8:
            gi, go = self.model_param_group_index_map[model_param]
            main = self.optimizer.param_groups[gi]["params"][go]
            st = self.optimizer.state.get(main, {})
            if "step" in st:
                tensors = dict(tensors, step=st["step"])
        return orig(self, model_param, tensors)

    _set._ckptkit_step_fix = True  # type: ignore[attr-defined]
    DistributedOptimizer._set_main_param_and_optimizer_states = _set


def install_optim_shim() -> None:
    global _MODE
    mm.install_forward_shim()
    if torch.cuda.is_available():
        return
    if _MODE is None:
        _MODE = _CpuCudaMode()
        _MODE.__enter__()
    fix_step_keyerror()


# --------------------------------------------------------------------------------------------
# Building model chunks + DDP + optimizer (Megatron-LM get_model / setup_model_and_optimizer)
# --------------------------------------------------------------------------------------------
def _init(spec: OptimSpec) -> None:
    from megatron.core.tensor_parallel import random as mrandom
    from megatron.core import parallel_state as ps

    install_optim_shim()
    torch._dynamo.config.disable = True
    fam = spec.fam
    ps.initialize_model_parallel(
        tensor_model_parallel_size=spec.tp,
        pipeline_model_parallel_size=spec.pp,
        virtual_pipeline_model_parallel_size=spec.vpp,
        expert_model_parallel_size=spec.ep if fam.is_moe else 1,
        expert_tensor_parallel_size=spec.etp if fam.is_moe else None,
    )
    mrandom.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    mm.use_in_process_results_queue()


def _config(spec: OptimSpec):
    fam = spec.fam
    cfg = mm.build_config(fam, spec.tp, spec.pp, spec.ep)
    dt = torch.bfloat16 if spec.bf16 else torch.float32
    return dataclasses.replace(
        cfg, params_dtype=dt, pipeline_dtype=dt, bf16=spec.bf16,
        virtual_pipeline_model_parallel_size=spec.vpp,
    )


def _ddp_config(spec: OptimSpec):
    from megatron.core.distributed import DistributedDataParallelConfig

    # Megatron-LM get_model: grad_reduce_in_fp32 = args.accumulate_allreduce_grads_in_fp32
    # (arguments.py forces it True for --bf16 unless --grad-reduce-in-bf16), bucket_size =
    # args.ddp_bucket_size; DDP itself then applies max(40M, 1M*DP) when None and sets None
    # when not overlap_grad_reduce.
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=spec.overlap_grad_reduce,
        overlap_param_gather=False,
        use_distributed_optimizer=True,
        bucket_size=spec.bucket_size,
        check_for_nan_in_grad=False,
        average_in_collective=False,
    )


def _optimizer_config(spec: OptimSpec):
    from megatron.core.optimizer import OptimizerConfig

    return OptimizerConfig(
        optimizer="adam", lr=spec.lr, min_lr=spec.lr / 10, weight_decay=spec.weight_decay,
        adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, clip_grad=spec.clip_grad,
        bf16=spec.bf16, fp16=False,
        params_dtype=torch.bfloat16 if spec.bf16 else torch.float32,
        use_distributed_optimizer=True,
    )


def build_chunks(spec: OptimSpec):
    """[(unwrapped GPTModel, DDP-wrapped chunk)] for this PP rank (VPP: one per virtual stage),
    then the optimizer. Returns (gpt_chunks, ddp_chunks, optimizer)."""
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import get_megatron_optimizer
    from megatron.core.transformer.module import Float16Module
    from megatron.core import tensor_parallel

    fam = spec.fam
    config = _config(spec)
    layer_spec = get_gpt_layer_local_spec(
        num_experts=fam.num_experts, moe_grouped_gemm=False, qk_layernorm=fam.qk_layernorm,
        normalization=fam.normalization)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    stages = list(range(spec.vpp)) if spec.vpp else [None]
    gpts = []
    torch.manual_seed(1234 + fam.seed)
    for v in stages:
        pre = first and (v is None or v == 0)
        post = last and (v is None or v == spec.vpp - 1)
        m = GPTModel(
            config=config, transformer_layer_spec=layer_spec,
            vocab_size=fam.padded_vocab(spec.tp), max_sequence_length=fam.max_positions,
            pre_process=pre, post_process=post, parallel_output=True,
            share_embeddings_and_output_weights=fam.tied,
            position_embedding_type=fam.position_embedding_type,
            rotary_base=fam.rotary_base, rotary_percent=1.0, vp_stage=v,
        )
        for p in m.parameters():
            tensor_parallel.set_defaults_if_not_set_tensor_model_parallel_attributes(p)
        gpts.append(m)
    _fill_initial(gpts, fam)
    wrapped = [Float16Module(config, m) if spec.bf16 else m for m in gpts]
    ddp_cfg = _ddp_config(spec)
    ddps = [
        DistributedDataParallel(config=config, ddp_config=dataclasses.replace(ddp_cfg),
                                module=w, disable_bucketing=(i > 0))
        for i, w in enumerate(wrapped)
    ]
    opt = get_megatron_optimizer(_optimizer_config(spec), ddps)
    return gpts, ddps, opt


def _md() -> dict:
    from megatron.core import parallel_state as ps

    return {"singleton_local_shards": False, "chained_optim_avoid_prefix": True,
            "dp_cp_group": ps.get_data_parallel_group(with_context_parallel=True)}


def _param_keys(gpts) -> Dict[int, Tuple[str, Tuple[int, ...], Any]]:
    """id(param) -> (checkpoint key, global offset, ShardedTensor/Factory) from each chunk's
    sharded_state_dict (the factory itself for SwiGLU fc1)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    out = {}
    for g in gpts:
        sd = g.sharded_state_dict(metadata=_md())
        stack = [sd]
        while stack:
            o = stack.pop()
            if isinstance(o, dict):
                stack.extend(o.values())
            elif isinstance(o, (list, tuple)):
                stack.extend(o)
            elif isinstance(o, ShardedTensorFactory):
                out[id(o.data)] = (o.key, None, o)
            elif isinstance(o, ShardedTensor):
                out.setdefault(id(o.data), (o.key, tuple(o.global_offset), o))
    return out


def _seeded(tag: str, shape, mean=0.0, std=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(tag.encode()) & 0x7FFFFFFF)
    return torch.randn(tuple(shape), generator=g, dtype=torch.float32) * std + mean


def _fill_initial(gpts, fam) -> None:
    """Deterministic initial values per (key, global offset) (megatron_models.fill_params)."""
    for g in gpts:
        mm.fill_params(g, fam, mf.content_metadata_for(None))


def _fill_grads(gpts, step: int) -> None:
    keys = _param_keys(gpts)
    for g in gpts:
        for name, p in g.named_parameters():
            key, off, sh = keys[id(p)]
            tag = f"grad|{step}|{key}|{off if off is not None else _factory_offset(sh)}"
            p.main_grad.copy_(_seeded(tag, p.shape, std=0.05).view(p.main_grad.shape))


def _fill_grads_global(gpts, step: int) -> None:
    """Gradients that do not depend on the parallel layout: 0.05 * sin(12.9898 * flat + c(key,
    step)) of each element's global index (flat over the trailing dims, so a re-padded
    vocabulary keeps every row's values), sliced to this rank's shard (both halves of a gated
    fc1 shard placed by megatron's own factory)."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    keys = _param_keys(gpts)
    for g in gpts:
        for name, p in g.named_parameters():
            key, off, sh = keys[id(p)]
            local = torch.empty(tuple(p.shape), dtype=torch.float32)
            for piece in _place(sh, local):
                if not isinstance(piece, ShardedTensor):
                    continue
                n = piece.prepend_axis_num
                gshape, goff = tuple(piece.global_shape), tuple(piece.global_offset)
                idx = [torch.arange(o, o + k, dtype=torch.float64) for o, k in zip(goff[n:], piece.data.shape)]
                flat = torch.zeros(tuple(piece.data.shape), dtype=torch.float64)
                stride = 1.0
                for d in range(len(idx) - 1, -1, -1):
                    shape = [1] * len(idx)
                    shape[d] = -1
                    flat = flat + idx[d].view(shape) * stride
                    stride *= gshape[n + d]
                for d in reversed(range(n)):  # stacked layers / experts
                    flat = flat + goff[d] * stride
                    stride *= gshape[d]
                c = (zlib.crc32(f"{step}|{piece.key}".encode()) % 1000) / 7.0
                piece.data.copy_((0.05 * torch.sin(12.9898 * flat + c)).float())
            p.main_grad.copy_(local.view(p.main_grad.shape))


def _step(spec, ddps, opt, step: int, global_grads: bool, gpts) -> None:
    for d in ddps:
        d.zero_grad_buffer()
    opt.zero_grad()
    if global_grads:
        _fill_grads_global(gpts, step)
    else:
        _fill_grads(gpts, step)
    ok, _, _ = opt.step()
    assert ok, "optimizer step was skipped"


def _factory_offset(f) -> tuple:
    built = list(mm._iter_sharded(f))
    return tuple(built[0].global_offset) if built else ()


def train(spec: OptimSpec):
    """Build, step `spec.steps` times. Returns (gpts, ddps, optimizer, scheduler)."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    gpts, ddps, opt = build_chunks(spec)
    sched = OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=spec.lr, min_lr=spec.lr / 10, lr_warmup_steps=1,
        lr_decay_steps=100, lr_decay_style="cosine", start_wd=spec.weight_decay,
        end_wd=spec.weight_decay, wd_incr_steps=100, wd_incr_style="constant")
    for step in range(spec.steps + spec.extra_steps):
        _step(spec, ddps, opt, step, step >= spec.steps, gpts)
        sched.step(increment=1)
    return gpts, ddps, opt, sched


# --------------------------------------------------------------------------------------------
# Megatron-LM pieces of save_checkpoint / generate_state_dict (core_v0.16.1)
# --------------------------------------------------------------------------------------------
def lm_args(spec: OptimSpec) -> argparse.Namespace:
    fam = spec.fam
    a = mm.megatron_args(fam, spec.tp, spec.pp, spec.ep if fam.is_moe else 1, spec.world)
    d = vars(a)
    d.update(
        virtual_pipeline_model_parallel_size=spec.vpp,
        num_layers_per_virtual_pipeline_stage=(fam.num_layers // (spec.pp * spec.vpp)
                                               if spec.vpp else None),
        data_parallel_size=spec.dp,
        bf16=spec.bf16, fp16=False,
        params_dtype=torch.bfloat16 if spec.bf16 else torch.float32,
        main_params_dtype=torch.float32, main_grads_dtype=torch.float32,
        accumulate_allreduce_grads_in_fp32=True,
        use_distributed_optimizer=True,
        optimizer="adam", lr=spec.lr, min_lr=spec.lr / 10, weight_decay=spec.weight_decay,
        adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, clip_grad=spec.clip_grad,
        overlap_grad_reduce=spec.overlap_grad_reduce, overlap_param_gather=False,
        ddp_bucket_size=spec.bucket_size, ddp_num_buckets=None,
        ddp_pad_buckets_for_high_nccl_busbw=False, ddp_average_in_collective=False,
        overlap_param_gather_with_optimizer_step=False,
        num_distributed_optimizer_instances=1,
        iteration=spec.iteration, train_iters=100, no_save_optim=None, no_save_rng=None,
        dist_ckpt_optim_fully_reshardable=False,
        distrib_optim_fully_reshardable_mem_efficient=False,
        data_parallel_random_init=False,
    )
    return a


def rng_state_dict(seed: int) -> dict:
    """megatron/training/checkpointing.py get_rng_state: one dict. cuda_rng_state: a CPU
    torch.Generator state (uint8 tensor) stands in for torch.cuda.get_rng_state()."""
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.Generator().manual_seed(seed).get_state(),
        "rng_tracker_states": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def rng_state_torch_dist(seed: int, ep: int):
    """get_rng_state(ckpt_format='torch_dist'): ShardedObject, (PP, TP, DP) form when EP > 1."""
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    lst = [rng_state_dict(seed)]
    pp, pp_r = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    tp, tp_r = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    if ps.get_expert_model_parallel_world_size() > 1:
        dp_r = ps.get_data_parallel_rank(with_context_parallel=True)
        dp = ps.get_data_parallel_world_size(with_context_parallel=True)
        return ShardedObject("rng_state", lst, (pp, tp, dp), (pp_r, tp_r, dp_r), replica_id=0)
    return ShardedObject("rng_state", lst, (pp, tp), (pp_r, tp_r),
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def checkpoint_dir_name(tp_rank: int, pp_rank: int, pp_size: int, ep_rank: int,
                        ep_size: int) -> str:
    """get_checkpoint_name: mp_rank_{TP:02d}[_{PP:03d}][_{EP:03d}]."""
    s = f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return s + (f"_{ep_rank:03d}" if ep_size > 1 else "")


def _rank_ckpt_dir(root: str, iteration: int) -> str:
    from megatron.core import parallel_state as ps

    return os.path.join(root, "iter_{:07d}".format(iteration), checkpoint_dir_name(
        ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
        ps.get_pipeline_model_parallel_world_size(), ps.get_expert_model_parallel_rank(),
        ps.get_expert_model_parallel_world_size()))


def _rerun_state(ckpt_format: str):
    """save_checkpoint: rerun_state_machine.state_dict(data_iterator=None, ckpt_format); a
    freshly initialized machine (and a real one between iterations) is NOT_RUNNING_YET and
    returns None, so generate_state_dict writes no 'rerun_state_machine' key."""
    from megatron.core.rerun_state_machine import get_rerun_state_machine

    return get_rerun_state_machine().state_dict(data_iterator=None, ckpt_format=ckpt_format)


def _write_legacy(spec, root, gpts, opt, sched) -> None:
    from megatron.core import parallel_state as ps

    args = lm_args(spec)
    d = _rank_ckpt_dir(root, spec.iteration)
    # save_checkpoint: every rank calls optimizer.save_parameter_state(distrib_optim.pt);
    # megatron writes it on the DP rank 0 of each (sub-)optimizer.
    os.makedirs(d, exist_ok=True)
    opt.save_parameter_state(os.path.join(d, "distrib_optim.pt"))
    rerun = _rerun_state("torch")
    if ps.get_expert_data_parallel_rank() == 0:  # 0.16.1 writer rule (legacy)
        sd = {"args": args, "checkpoint_version": 3.0, "iteration": spec.iteration}
        for i, g in enumerate(gpts):
            sd["model" if len(gpts) == 1 else f"model{i}"] = g.state_dict_for_save_checkpoint()
        sd["optimizer"] = opt.state_dict()
        sd["opt_param_scheduler"] = sched.state_dict()
        if rerun:
            sd["rerun_state_machine"] = rerun
        sd["rng_state"] = [rng_state_dict(args.seed)]
        sd["num_floating_point_operations_so_far"] = 123456789
        torch.save(sd, os.path.join(d, "model_optim_rng.pt"))
    dist.barrier()
    if dist.get_rank() == 0:
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(spec.iteration))
    dist.barrier()


def _content_metadata(sharding_type: str) -> dict:
    """_build_sharded_state_dict_metadata for --use-distributed-optimizer."""
    md = {"distrib_optim_sharding_type": sharding_type}
    if sharding_type == "fully_reshardable":
        md["distrib_optim_fully_reshardable_mem_efficient"] = False
    md["singleton_local_shards"] = False
    md["chained_optim_avoid_prefix"] = True
    return md


def _write_torch_dist(spec, root, gpts, opt, sched, sharding_type: str) -> None:
    from megatron.core import parallel_state as ps
    try:
        from megatron.core.dist_checkpointing.utils import _clean_metadata_for_serialization
    except ImportError:  # megatron-core <= 0.15: no dp_cp_group in the metadata to drop
        def _clean_metadata_for_serialization(m):
            return {k: v for k, v in m.items() if k != "dp_cp_group"}

    args = lm_args(spec)
    args.ckpt_format = "torch_dist"
    args.dist_ckpt_optim_fully_reshardable = sharding_type == "fully_reshardable"
    md = _content_metadata(sharding_type)
    md["dp_cp_group"] = ps.get_data_parallel_group(with_context_parallel=True)
    sd = {"args": args, "checkpoint_version": 3.0, "iteration": spec.iteration}
    for i, g in enumerate(gpts):
        sd["model" if len(gpts) == 1 else f"model{i}"] = g.sharded_state_dict(metadata=dict(md))
    sd["optimizer"] = opt.sharded_state_dict(sd, is_loading=False, metadata=dict(md))
    sd["opt_param_scheduler"] = sched.state_dict()
    rerun = _rerun_state("torch_dist")
    if rerun:
        sd["rerun_state_machine"] = rerun
    sd["rng_state"] = rng_state_torch_dist(args.seed, spec.ep)
    sd["num_floating_point_operations_so_far"] = 123456789
    mf.save_megatron_lm_layout(root, spec.iteration, sd,
                               content_metadata=_clean_metadata_for_serialization(md),
                               fully_parallel=True, async_save=False)


# --------------------------------------------------------------------------------------------
# Layout dump
# --------------------------------------------------------------------------------------------
def _dt(d: torch.dtype) -> str:
    return str(d).replace("torch.", "")


def _rank_layout(spec, gpts, ddps, opt) -> dict:
    from megatron.core import parallel_state as ps

    keys = _param_keys(gpts)
    chunk_of_buffer = {}
    chunks = []
    for ci, (g, d) in enumerate(zip(gpts, ddps)):
        names = {id(p): n for n, p in g.named_parameters()}
        chunk = {
            "chunk": ci,
            "vp_stage": g.vp_stage,
            "pre_process": g.pre_process,
            "post_process": g.post_process,
            "ddp_bucket_size": d.bucket_size,
            "named_parameters": [
                {"name": n, "ddp_name": dn, "shape": list(p.shape), "dtype": _dt(p.dtype),
                 "numel": p.numel(), "key": keys[id(p)][0],
                 "allreduce": bool(getattr(p, "allreduce", True)),
                 "shared_embedding": bool(getattr(p, "shared_embedding", False))}
                for (n, p), (dn, _) in zip(g.named_parameters(), d.module.named_parameters())
            ],
            "buffers": [],
        }
        for kind in ("buffers", "expert_parallel_buffers"):
            for bi, buf in enumerate(getattr(d, kind)):
                chunk_of_buffer[id(buf)] = (ci, kind, bi)
                params = []
                for p, (s, e, b) in buf.param_index_map.items():
                    sh = keys[id(p)][2]
                    params.append({
                        "name": names[id(p)], "key": keys[id(p)][0], "start": s, "end": e,
                        "bucket_id": b, "numel": p.numel(), "shape": list(p.shape),
                        "swiglu_factory": type(sh).__name__ == "ShardedTensorFactory",
                        "global_offset": (list(keys[id(p)][1]) if keys[id(p)][1] is not None
                                          else None),
                    })
                chunk["buffers"].append({
                    "kind": kind, "index": bi,
                    "param_dtype": _dt(buf.param_dtype), "grad_dtype": _dt(buf.grad_dtype),
                    "dp_size": buf.data_parallel_world_size,
                    "bucket_size": d.bucket_size,
                    "numel": buf.numel, "numel_unpadded": buf.numel_unpadded,
                    "buckets": [{"offset": bk.offset, "numel": bk.grad_data.numel(),
                                 "numel_unpadded": bk.numel_unpadded,
                                 "bucket_indices": list(buf.bucket_indices[i])}
                                for i, bk in enumerate(buf.buckets)],
                    "params_in_index_order": params,
                })
        chunks.append(chunk)
    optimizers = []
    for oi, o in enumerate(opt.chained_optimizers):
        names = {}
        for ci, g in enumerate(gpts):
            for n, p in g.named_parameters():
                names[id(p)] = (ci, n)
        gbufs = []
        for gi, buf in enumerate(o.buffers):
            ci, kind, bi = chunk_of_buffer[id(buf)]
            ranges = []
            for dtk, per_bucket in o.gbuf_ranges[gi].items():
                for b, rm in enumerate(per_bucket):
                    for p, r in rm["param_map"].items():
                        ranges.append({
                            "bucket": b, "chunk": names[id(p)][0], "name": names[id(p)][1],
                            "gbuf_world": [r["gbuf_world"].start, r["gbuf_world"].end],
                            "gbuf_world_in_bucket": [r["gbuf_world_in_bucket"].start,
                                                     r["gbuf_world_in_bucket"].end],
                            "gbuf_local": [r["gbuf_local"].start, r["gbuf_local"].end],
                            "param": [r["param"].start, r["param"].end],
                        })
            gbufs.append({"gbuf_idx": gi, "chunk": ci, "ddp_attr": kind, "index_in_chunk": bi,
                          "dtype_key": str((buf.param_dtype, buf.grad_dtype)),
                          "this_dp_rank_param_ranges": ranges})
        is_expert = any(k == "expert_parallel_buffers" for k in
                        (chunk_of_buffer[id(b)][1] for b in o.buffers))
        optimizers.append({
            "index": oi, "kind": "expert" if is_expert else "dense",
            "class": type(o).__name__,
            "data_parallel_group_idx": o.data_parallel_group_idx,
            "dp_size": o.data_parallel_group.size(), "dp_rank": o.data_parallel_group.rank(),
            "per_bucket_numel": [{str(k): v for k, v in x.items()} for x in o.per_bucket_numel],
            "per_bucket_numel_unpadded": [{str(k): v for k, v in x.items()}
                                          for x in o.per_bucket_numel_unpadded],
            "gbufs": gbufs,
        })
    return {
        "rank": dist.get_rank(),
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "dp_rank": ps.get_data_parallel_rank(with_context_parallel=True),
        "ep_rank": ps.get_expert_model_parallel_rank(),
        "expert_dp_rank": ps.get_expert_data_parallel_rank(),
        "expert_tp_rank": ps.get_expert_tensor_parallel_rank(),
        "ckpt_dir": checkpoint_dir_name(
            ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
            ps.get_pipeline_model_parallel_world_size(), ps.get_expert_model_parallel_rank(),
            ps.get_expert_model_parallel_world_size()),
        "chained_optimizer_len": len(opt.chained_optimizers),
        "chunks": chunks,
        "optimizers": optimizers,
    }


# --------------------------------------------------------------------------------------------
# Canonical state (full global tensors)
# --------------------------------------------------------------------------------------------
def _place(sh, data: torch.Tensor):
    """Global-coordinate pieces of `data` (a tensor of the local param's shape) placed like the
    model's ShardedTensor / ShardedTensorFactory `sh` (SwiGLU fc1 factories split [W; V])."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensorFactory

    if isinstance(sh, ShardedTensorFactory):
        return list(mm._iter_sharded(dataclasses.replace(sh, data=data)))
    return [dataclasses.replace(sh, data=data, dtype=data.dtype)]


def _local_pieces(gpts, opt) -> Tuple[list, dict]:
    """This rank's (kind, key, global_shape, global_offset, prepend, tensor) pieces: every
    model ShardedTensor, and every optimizer state this DP rank owns. The optimizer pieces use
    only megatron's per-param ranges (gbuf_ranges[...]["param_map"][p]["param"], the sub-range
    of the flattened TP-local param this DP rank updates) and
    _get_main_param_and_optimizer_states: NO buffer-offset arithmetic, so the canonical state
    does not depend on the layout being documented (and not on 0.16/0.19's
    sharded_param_state_fully_reshardable, which mis-slices multi-bucket buffers, see
    fully_reshardable_bucket_shift). Elements this rank does not own are NaN; _assemble merges.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    keys = _param_keys(gpts)
    md = _md()
    model_sd = {f"model{i}": g.sharded_state_dict(metadata=dict(md)) for i, g in enumerate(gpts)}
    pieces = []

    def add(kind, sh):
        pieces.append((kind, sh.key, tuple(sh.global_shape), tuple(sh.global_offset),
                       sh.prepend_axis_num, sh.data.detach().float().clone()))

    for sh in mm._iter_sharded(model_sd):
        if isinstance(sh, ShardedTensor):
            add("model", sh)
    for o in opt.chained_optimizers:
        for per_dtype in o.gbuf_ranges:
            for per_bucket in per_dtype.values():
                for rm in per_bucket:
                    for p, r in rm["param_map"].items():
                        tensors = o._get_main_param_and_optimizer_states(p)
                        for kind in ("param", "exp_avg", "exp_avg_sq"):
                            flat = torch.full((p.numel(),), float("nan"))
                            flat[r["param"].start:r["param"].end] = tensors[kind].detach().float()
                            for sh in _place(keys[id(p)][2], flat.view(p.shape)):
                                add(kind, sh)
    groups = []
    for o in opt.chained_optimizers:
        s = o.state_dict()
        groups.append({"param_groups": s["optimizer"]["param_groups"],
                       "grad_scaler": s.get("grad_scaler")})
    return pieces, {"optimizers": groups}


def _assemble(all_pieces: List[list]) -> Dict[str, Dict[str, torch.Tensor]]:
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for pieces in all_pieces:
        for kind, key, gshape, goff, prepend, t in pieces:
            full = out.setdefault(key, {}).get(kind)
            if full is None:
                full = torch.full(gshape, float("nan"), dtype=torch.float32)
                out[key][kind] = full
            idx = tuple(goff[:prepend]) + tuple(
                slice(goff[prepend + i], goff[prepend + i] + n) for i, n in enumerate(t.shape))
            dst = full[idx]
            new = ~torch.isnan(t)
            both = new & ~torch.isnan(dst)
            if both.any():
                assert torch.equal(dst[both], t[both]), f"replicas of {kind} {key} differ"
            dst[new] = t[new]
    for key, d in out.items():
        for kind, t in d.items():
            assert not torch.isnan(t).any(), f"{kind} {key} not fully covered"
    return out


def _gather_canonical(gpts, opt) -> Optional[dict]:
    pieces, groups = _local_pieces(gpts, opt)
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object((pieces, groups), gathered, dst=0)
    if dist.get_rank() != 0:
        return None
    tensors = _assemble([g[0] for g in gathered])
    # param_groups per (rank) and sub-optimizer: identical within each sub-optimizer kind
    return {"tensors": tensors, "optimizers_by_rank": [g[1]["optimizers"] for g in gathered]}


def compare_states(a: dict, b: dict, what: str = "") -> List[str]:
    """Differences between two canonical states (empty list = identical, bit-exact)."""
    diffs = []
    ta, tb = a["tensors"], b["tensors"]
    if set(ta) != set(tb):
        diffs.append(f"{what} keys differ: {sorted(set(ta) ^ set(tb))}")
    for k in sorted(set(ta) & set(tb)):
        if set(ta[k]) != set(tb[k]):
            diffs.append(f"{what} {k}: kinds {sorted(ta[k])} vs {sorted(tb[k])}")
        for kind in sorted(set(ta[k]) & set(tb[k])):
            x, y = ta[k][kind], tb[k][kind]
            if x.shape != y.shape or not torch.equal(x, y):
                diffs.append(f"{what} {k}.{kind} differs")
    pa = _norm_groups(a["optimizers_by_rank"])
    pb = _norm_groups(b["optimizers_by_rank"])
    if pa != pb:
        diffs.append(f"{what} param_groups differ: {pa} vs {pb}")
    return diffs


def _norm_groups(x):
    return json.loads(json.dumps(x, default=str, sort_keys=True))


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def _load_legacy(spec, root, gpts, opt) -> None:
    """megatron/training/checkpointing.py load_checkpoint, legacy branch: torch.load of this
    rank's model_optim_rng.pt, model[i].load_state_dict(sd['model' | f'model{i}'], strict),
    optimizer.load_state_dict(sd['optimizer']), optimizer.load_parameter_state(distrib_optim)."""
    with open(os.path.join(root, "latest_checkpointed_iteration.txt")) as f:
        it = int(f.read().strip())
    d = _rank_ckpt_dir(root, it)
    sd = torch.load(os.path.join(d, "model_optim_rng.pt"), weights_only=False)
    for i, g in enumerate(gpts):
        g.load_state_dict(sd["model" if len(gpts) == 1 else f"model{i}"], strict=True)
    opt.load_state_dict(sd["optimizer"])
    opt.load_parameter_state(os.path.join(d, "distrib_optim.pt"))


def _load_torch_dist(spec, root, gpts, opt) -> None:
    """load_checkpoint, torch_dist branch: content metadata from the checkpoint,
    generate_state_dict(is_loading=True) -> dist_checkpointing.load -> load_state_dict."""
    from megatron.core import dist_checkpointing, parallel_state as ps

    ckpt = mm.resolve_iter_dir(root)
    md = dist_checkpointing.load_content_metadata(ckpt) or {}
    md["dp_cp_group"] = ps.get_data_parallel_group(with_context_parallel=True)
    for o in opt.chained_optimizers:
        o._init_optimizer_states_with_dummy_values()
    sd = {}
    for i, g in enumerate(gpts):
        sd["model" if len(gpts) == 1 else f"model{i}"] = g.sharded_state_dict(metadata=dict(md))
    sd["optimizer"] = opt.sharded_state_dict(sd, is_loading=True, metadata=dict(md))
    # MO_LOAD_STRATEGY=ckptkit: read through ckptkit.megatron.TorchDistLoadStrategy (which
    # reshards a checkpoint of another layout); unset: megatron-core's own.
    strategy = None
    if os.environ.get("MO_LOAD_STRATEGY") == "ckptkit":
        import ckptkit.megatron

        strategy = ckptkit.megatron.TorchDistLoadStrategy()
    loaded = dist_checkpointing.load(sd, ckpt, sharded_strategy=strategy)
    for i, g in enumerate(gpts):
        g.load_state_dict(loaded["model" if len(gpts) == 1 else f"model{i}"], strict=True)
    opt.load_state_dict(loaded["optimizer"])


# --------------------------------------------------------------------------------------------
# Rank bodies and parent-side entry points
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Job:
    spec: OptimSpec
    action: str  # 'save' | 'load_legacy' | 'load_torch_dist'
    roots: Dict[str, str]  # format -> root ('legacy', sharding types)
    out: Optional[str] = None  # canonical state (.pt) output
    layout_out: Optional[str] = None


def _rank_main(job: _Job) -> None:
    spec = job.spec
    _init(spec)
    if job.action == "save":
        gpts, ddps, opt, sched = train(spec)
        if job.layout_out:
            lay = _rank_layout(spec, gpts, ddps, opt)
            allr = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
            dist.gather_object(lay, allr, dst=0)
            if dist.get_rank() == 0:
                with open(job.layout_out, "w") as f:
                    json.dump({"spec": spec.describe(), "megatron_core": _mcore_version(),
                               "ranks": allr}, f, indent=1)
        for fmt, root in job.roots.items():
            if fmt == "legacy":
                _write_legacy(spec, root, gpts, opt, sched)
            else:
                _write_torch_dist(spec, root, gpts, opt, sched, fmt)
    else:
        gpts, ddps, opt = build_chunks(spec)
        (root,) = job.roots.values()
        # no_grad: with fp32 params the DistributedOptimizer's main param shards are views of
        # the (requires_grad) model params (distrib_optimizer.py l.421, no detach), and
        # load_parameter_state_from_dp_zero (not @torch.no_grad, unlike the fully_reshardable
        # loader) copies into them in place -> "a view of a leaf Variable that requires grad is
        # being used in an in-place operation" (observed, legacy load of an fp32 run).
        with torch.no_grad():
            if job.action == "load_legacy":
                _load_legacy(spec, root, gpts, opt)
            else:
                _load_torch_dist(spec, root, gpts, opt)
        # Resume: the extra steps (the learning rate is the loaded param groups'). Megatron's
        # DistributedOptimizer.load_state_dict gives every parameter's state the SAME 'step'
        # tensor (from param_groups); torch's AdamW (the fallback without Apex/TE, which keep the
        # step per param group) increments it in place once per parameter, so a shared tensor
        # would count one step as 27. Each parameter gets its own copy first.
        if spec.extra_steps:
            for o in opt.chained_optimizers:
                for st in o.optimizer.state.values():
                    if torch.is_tensor(st.get("step")):
                        st["step"] = st["step"].clone()
        for k in range(spec.extra_steps):
            _step(spec, ddps, opt, spec.steps + k, True, gpts)
    if job.out:
        st = _gather_canonical(gpts, opt)
        if dist.get_rank() == 0:
            torch.save(st, job.out)


def _mcore_version() -> str:
    import megatron.core

    v = getattr(megatron.core, "__version__", None)
    if v is None:  # core <= 0.6 keeps it in package_info only
        from megatron.core import package_info

        v = package_info.__version__
    return v


def _run(job: _Job) -> Optional[dict]:
    mm.run_ranks(job.spec.world, _rank_main, job)
    if job.out:
        return torch.load(job.out, weights_only=False)
    return None


def _with_tmp_out(fn):
    with tempfile.TemporaryDirectory() as tmp:
        return fn(os.path.join(tmp, "state.pt"))


def save_all(spec: OptimSpec, roots: Dict[str, str], layout_path: Optional[str] = None,
             state_path: Optional[str] = None) -> None:
    """One training run, saved in every format of `roots` ({'legacy' | sharding type: root});
    optionally layout.json and the live canonical state (torch.save) too."""
    for r in roots.values():
        os.makedirs(r, exist_ok=True)
    _run(_Job(spec, "save", dict(roots), out=state_path, layout_out=layout_path))


def save_legacy(spec: OptimSpec, root: str) -> None:
    save_all(spec, {"legacy": root})


def save_torch_dist(spec: OptimSpec, root: str, sharding_type: str) -> None:
    assert sharding_type in SHARDING_TYPES, sharding_type
    save_all(spec, {sharding_type: root})


def dump_layout(spec: OptimSpec) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "layout.json")
        _run(_Job(spec, "save", {}, layout_out=p))
        with open(p) as f:
            return json.load(f)


def trained_state(spec: OptimSpec) -> dict:
    """Canonical state straight from the live run after `spec.steps` steps (the reference):
    {'tensors': {global key: {'param', 'exp_avg', 'exp_avg_sq', 'model'}: fp32 full global
    tensor}, 'optimizers_by_rank': [[{'param_groups', 'grad_scaler'} per sub-optimizer]]}."""
    return _with_tmp_out(lambda out: _run(_Job(spec, "save", {}, out=out)))


def load_legacy_into_optimizer(spec: OptimSpec, root: str) -> dict:
    return _with_tmp_out(lambda out: _run(_Job(spec, "load_legacy", {"legacy": root}, out=out)))


def load_torch_dist_into_optimizer(spec: OptimSpec, root: str) -> dict:
    return _with_tmp_out(lambda out: _run(_Job(spec, "load_torch_dist", {"td": root}, out=out)))
