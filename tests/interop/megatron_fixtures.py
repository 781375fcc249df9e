"""Write REAL Megatron-Core `torch_dist` checkpoints on CPU (gloo), for goldens and interop tests.

This is a fixture *library*, not a test module: it spawns N ranks with torch.multiprocessing,
initializes megatron.core.parallel_state, builds sharded state dicts with Megatron's own classes
(ShardedTensor.from_rank_offsets, ShardedObject, make_sharded_optimizer_tensor, GPTModel) and
calls the real `megatron.core.dist_checkpointing.save`. It works with megatron-core 0.16.x
(python 3.11 venv) and 0.19.x (installed with --ignore-requires-python in a separate venv).

Megatron-LM layout: `megatron/training/checkpointing.py` is NOT part of the megatron-core
wheel, so `save_megatron_lm_layout` reproduces its small directory logic by hand:
`<root>/iter_{iteration:07d}/` is the dist checkpoint and `<root>/latest_checkpointed_iteration.txt`
(ASCII decimal iteration, no newline) is written by rank 0 only after every rank finished
(barrier), exactly like `save_checkpoint` (the tracker is the commit point).

Usage (from a script):
    from megatron_fixtures import run_ranks, HandbuiltSpec, save_handbuilt
    run_ranks(8, save_handbuilt, HandbuiltSpec(root="/tmp/x", tp=2, pp=2, ep=2))

Thread-safety: each call spawns fresh processes; not reentrant within one process group.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import hashlib
import os
import pickle
import random
import signal
import socket
import zlib
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


# --------------------------------------------------------------------------------------------
# CPU shim (fixtures only)
# --------------------------------------------------------------------------------------------
def install_cpu_cuda_shim() -> None:
    """FIXTURE-ONLY shim so megatron-core's *bookkeeping* runs on a CPU-only torch build.

    megatron-core allocates tiny flag tensors on the CUDA device for collectives even when all
    data is on CPU and the process group is gloo, e.g. (0.16.1):
      * strategies/state_dict_saver.py (save_state_dict_async_finalize):
        torch.tensor([...], device=torch.cuda.current_device())  -> broadcast of failure flag
      * strategies/state_dict_saver.py (verify_global_md_reuse): device='cuda' (only with
        cached metadata reuse, not used here)
      * strategies/fully_parallel.py / filesystem_async.py: torch.cuda.synchronize()
      * strategies/async_utils.py: torch.tensor(..., device=torch.cuda.current_device()),
        torch.cuda.synchronize()
    On a CPU build those raise "Torch not compiled with CUDA enabled". We map current_device()
    to the string 'cpu' (valid as a `device=` argument) and make synchronize() a no-op. No tensor
    that is written to the checkpoint is affected: checkpoint data is CPU already.
    Never use this outside fixture generation.
    """
    if torch.cuda.is_available():
        return
    torch.cuda.current_device = lambda: "cpu"  # type: ignore[assignment]
    torch.cuda.synchronize = lambda *a, **k: None  # type: ignore[assignment]


# --------------------------------------------------------------------------------------------
# Process spawning
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, spec: Any) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    os.environ["RANK"] = str(rank)
    os.environ["LOCAL_RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    torch.set_num_threads(1)
    # A parent that finds a rank hung sends SIGUSR1 first: every thread's Python stack goes to
    # stderr (the test's captured output) before the kill.
    faulthandler.register(signal.SIGUSR1, all_threads=True, chain=False)
    install_cpu_cuda_shim()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        fn(spec)
        dist.barrier()
    finally:
        try:
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
        except Exception:  # pragma: no cover - best effort cleanup
            pass
        dist.destroy_process_group()


def run_ranks(world_size: int, fn: Callable, spec: Any) -> None:
    """Runs fn(spec) on `world_size` spawned CPU ranks (gloo). fn must be module-level."""
    mp.spawn(_worker, args=(world_size, _free_port(), fn, spec), nprocs=world_size, join=True)


def init_parallel(tp: int, pp: int, ep: int = 1, etp: Optional[int] = None) -> None:
    """megatron.core.parallel_state.initialize_model_parallel on the gloo world (CPU)."""
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp,
    )


# --------------------------------------------------------------------------------------------
# Megatron-LM directory layout (reproduced by hand: megatron/training is not in megatron-core)
# --------------------------------------------------------------------------------------------
def iter_dir(root: str, iteration: int) -> str:
    """megatron/training/checkpointing.py get_checkpoint_name(..., return_base_dir=True)."""
    return os.path.join(root, "iter_{:07d}".format(iteration))


def save_megatron_lm_layout(
    root: str,
    iteration: int,
    sharded_state_dict: dict,
    *,
    content_metadata: Optional[dict],
    fully_parallel: bool,
    async_save: bool,
    thread_count: int = 1,
) -> None:
    """dist_checkpointing.save into <root>/iter_XXXXXXX, then tracker by rank 0 (commit point)."""
    import inspect

    from megatron.core import dist_checkpointing, parallel_state as ps
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelSaveStrategyWrapper,
    )
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    ckpt = iter_dir(root, iteration)
    if dist.get_rank() == 0:
        os.makedirs(ckpt, exist_ok=True)
    dist.barrier()

    # As megatron/training/checkpointing.py get_save_strategy / save_checkpoint: torch_dist v1,
    # thread_count = 1 for sync save; FPS wrapper over the DP-with-CP group.
    strategy = TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=thread_count)
    if fully_parallel:
        strategy = FullyParallelSaveStrategyWrapper(
            strategy, ps.get_data_parallel_group(with_context_parallel=True), False
        )

    kwargs = dict(
        sharded_strategy=strategy,
        validate_access_integrity=True,
        async_sharded_save=async_save,
    )
    if content_metadata is not None:
        kwargs["content_metadata"] = content_metadata
    if "async_strategy" in inspect.signature(dist_checkpointing.save).parameters:
        # core >= 0.17 defaults to 'nvrx' (nvidia-resiliency-ext); use the built-in one.
        kwargs["async_strategy"] = "mcore"
    req = dist_checkpointing.save(sharded_state_dict, ckpt, **kwargs)
    if async_save:
        # Real async path: AsyncCallsQueue forks a temporal worker process that writes the
        # .distcp files; maybe_finalize_async_calls then runs the finalize fns on all ranks
        # (.metadata by rank 0, then metadata.json). Megatron-LM appends its tracker writer as
        # one more finalize fn; we write the tracker after the barrier below instead.
        from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

        assert req is not None
        queue = AsyncCallsQueue(persistent=False)
        queue.schedule_async_request(req)
        queue.maybe_finalize_async_calls(blocking=True)
        queue.close()
    dist.barrier()
    if dist.get_rank() == 0:
        # megatron/training/checkpointing.py save_checkpoint -> iter_finalize_fn:
        # tracker written last, text = str(iteration).
        with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write(str(iteration))
    dist.barrier()


# --------------------------------------------------------------------------------------------
# Deterministic values
# --------------------------------------------------------------------------------------------
def global_tensor(key: str, shape: Tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The full global tensor for `key`; every rank computes it and slices its shard."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()) & 0x7FFFFFFF)
    return torch.randn(shape, generator=g, dtype=torch.float32).to(dtype)


def make_args(**overrides) -> argparse.Namespace:
    """Megatron-LM-like training args (subset, real field names)."""
    a = dict(
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=2,
        virtual_pipeline_model_parallel_size=None,
        expert_model_parallel_size=1,
        expert_tensor_parallel_size=2,
        context_parallel_size=1,
        data_parallel_size=2,
        world_size=8,
        num_layers=4,
        hidden_size=16,
        ffn_hidden_size=32,
        num_attention_heads=4,
        num_query_groups=2,
        group_query_attention=True,
        kv_channels=4,
        padded_vocab_size=64,
        vocab_size=50,
        make_vocab_size_divisible_by=32,
        seq_length=32,
        max_position_embeddings=32,
        num_experts=None,
        moe_ffn_hidden_size=None,
        normalization="RMSNorm",
        swiglu=True,
        position_embedding_type="rope",
        untie_embeddings_and_output_weights=True,
        add_bias_linear=False,
        bf16=True,
        fp16=False,
        params_dtype=torch.bfloat16,
        use_distributed_optimizer=True,
        ckpt_format="torch_dist",
        ckpt_fully_parallel_save=True,
        lr=3e-4,
        min_lr=3e-5,
        seed=1234,
        iteration=10,
        consumed_train_samples=80,
    )
    a.update(overrides)
    return argparse.Namespace(**a)


def opt_param_scheduler_state(num_steps: int) -> dict:
    """megatron/core/optimizer_param_scheduler.py OptimizerParamScheduler.state_dict() keys."""
    return {
        "max_lr": 3e-4,
        "lr_warmup_steps": 2,
        "num_steps": num_steps,
        "lr_decay_style": "cosine",
        "lr_decay_steps": 100,
        "min_lr": 3e-5,
        "start_wd": 0.01,
        "end_wd": 0.01,
        "wd_incr_style": "constant",
        "wd_incr_steps": 100,
    }


def rng_state_object(seed: int):
    """megatron/training/checkpointing.py get_rng_state(): ShardedObject 'rng_state'.

    data = [ {random_rng_state, np_rng_state, torch_rng_state, cuda_rng_state,
    rng_tracker_states} ], global_shape (PP, TP), offset (pp_rank, tp_rank), replica dp_cp rank.
    On CPU there is no CUDA generator: cuda_rng_state is a uint8 stand-in tensor (same type as
    torch.cuda.get_rng_state() returns) and the tracker states likewise.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    stand_in = torch.arange(16, dtype=torch.uint8)
    state = {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": stand_in.clone(),
        "rng_tracker_states": {"model-parallel-rng": stand_in.clone() + 1},
    }
    return ShardedObject(
        "rng_state",
        [state],
        (ps.get_pipeline_model_parallel_world_size(), ps.get_tensor_model_parallel_world_size()),
        (ps.get_pipeline_model_parallel_rank(), ps.get_tensor_model_parallel_rank()),
        replica_id=ps.get_data_parallel_rank(with_context_parallel=True),
    )


# --------------------------------------------------------------------------------------------
# Hand-built sharded state dict
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class HandbuiltSpec:
    root: str
    iteration: int = 10
    tp: int = 2
    pp: int = 2
    ep: int = 2
    dp: int = 2  # world size = tp * pp * dp
    num_layers: int = 2
    hidden: int = 8
    heads: int = 4
    groups: int = 2
    head_dim: int = 2
    vocab: int = 32
    num_experts: int = 2
    moe_ffn: int = 4
    # 'fully_reshardable' | 'dp_reshardable' | None (no optimizer state)
    optim: Optional[str] = "fully_reshardable"
    fully_parallel: bool = False
    async_save: bool = False
    thread_count: int = 1


def _split(t: torch.Tensor, axis: int, idx: int, parts: int) -> torch.Tensor:
    return torch.chunk(t, parts, dim=axis)[idx].clone()


def build_handbuilt_model_sd(s: HandbuiltSpec) -> Dict[str, Any]:
    """Model part, key layout of a homogeneous MoE GPT (local spec, SequentialMLP experts).

    Returns {state-dict path: ShardedTensor | ShardedObject | list of them}.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
    ep, ep_rank = ps.get_expert_model_parallel_world_size(), ps.get_expert_model_parallel_rank()
    etp, etp_rank = (
        ps.get_expert_tensor_parallel_world_size(),
        ps.get_expert_tensor_parallel_rank(),
    )
    edp_rank = ps.get_expert_data_parallel_rank()
    L, H, V, E, Fe = s.num_layers, s.hidden, s.vocab, s.num_experts, s.moe_ffn
    qkv_rows = (s.heads + 2 * s.groups) * s.head_dim
    bf16, f32 = torch.bfloat16, torch.float32
    layers_per_stage = L // pp
    local_experts = E // ep
    sd: Dict[str, Any] = {}

    def tp_sharded(key, gshape, axis, dtype, prepend=(), replica=None, **kw):
        """TP-split ShardedTensor (axis counts prepended axes) via from_rank_offsets."""
        full = global_tensor(key, gshape, dtype)
        for _, off, _ in prepend:  # prepended (stacking) axes lead, in order
            full = full.select(0, off)
        local_axis = axis - len(prepend)
        local = _split(full, local_axis, tp_rank, tp)
        return ShardedTensor.from_rank_offsets(
            key,
            local,
            *prepend,
            (axis, tp_rank, tp),
            replica_id=replica if replica is not None else (0, 0, dp_rank),
            prepend_axis_num=len(prepend),
            **kw,
        )

    def replicated(key, gshape, dtype, prepend=()):
        full = global_tensor(key, gshape, dtype)
        idx = tuple(off for _, off, _ in prepend)
        local = full[idx].clone() if idx else full.clone()
        return ShardedTensor.from_rank_offsets(
            key, local, *prepend, replica_id=(0, tp_rank, dp_rank), prepend_axis_num=len(prepend)
        )

    if pp_rank == 0:
        sd["embedding.word_embeddings.weight"] = tp_sharded(
            "embedding.word_embeddings.weight", (V, H), 0, bf16, allow_shape_mismatch=True
        )
    for i in range(layers_per_stage):
        g = pp_rank * layers_per_stage + i  # global layer index
        lay = ((0, g, L),)
        p = f"decoder.layers.{i}."  # state-dict path keeps the *local* index
        # Checkpoint key of input_layernorm: both the TE spec (fused LN) and the local spec
        # (sharded_state_dict_keys_map {'input_layernorm.': 'self_attention.linear_qkv.layer_norm_'})
        # store it as linear_qkv.layer_norm_weight.
        sd[p + "input_layernorm.weight"] = replicated(
            "decoder.layers.self_attention.linear_qkv.layer_norm_weight", (L, H), bf16, lay
        )
        sd[p + "self_attention.linear_qkv.weight"] = tp_sharded(
            "decoder.layers.self_attention.linear_qkv.weight", (L, qkv_rows, H), 1, bf16, lay
        )
        sd[p + "self_attention.linear_qkv._extra_state"] = ShardedObject(
            "decoder.layers.self_attention.linear_qkv._extra_state",
            # recent TE stores extra state as a uint8 tensor of pickled bytes; stand-in content
            torch.frombuffer(bytearray(pickle.dumps({"layer": g}, protocol=2)), dtype=torch.uint8),
            (L,),
            (g,),
            replica_id=(0, tp_rank, dp_rank),
        )
        sd[p + "self_attention.linear_proj.weight"] = tp_sharded(
            "decoder.layers.self_attention.linear_proj.weight",
            (L, H, s.heads * s.head_dim),
            2,
            bf16,
            lay,
        )
        # MoE layers with the TE spec keep a separate pre_mlp_layernorm (the local spec would map
        # it to mlp.linear_fc1.layer_norm_weight).
        sd[p + "pre_mlp_layernorm.weight"] = replicated(
            "decoder.layers.pre_mlp_layernorm.weight", (L, H), bf16, lay
        )
        sd[p + "mlp.router.weight"] = replicated("decoder.layers.mlp.router.weight", (L, E, H), f32, lay)
        for le in range(local_experts):
            e = ep_rank * local_experts + le  # global expert index
            ex = (1, e, E)
            ep_p = f"{p}mlp.experts.local_experts.{le}."
            # SwiGLU fc1 as apply_swiglu_sharded_factory stores it: local [W_r; V_r] split into
            # chunk r and chunk ETP + r of a 2*ETP split of axis 2 -> global [gate; up].
            k1 = "decoder.layers.mlp.experts.experts.linear_fc1.weight"
            full1 = global_tensor(k1, (L, E, 2 * Fe, H), bf16)[g, e]
            w_r = _split(full1, 0, etp_rank, 2 * etp)
            v_r = _split(full1, 0, etp + etp_rank, 2 * etp)
            sd[ep_p + "linear_fc1.weight"] = [
                ShardedTensor.from_rank_offsets(
                    k1, w_r, (0, g, L), ex, (2, etp_rank, 2 * etp),
                    replica_id=(0, 0, edp_rank), prepend_axis_num=2,
                ),
                ShardedTensor.from_rank_offsets(
                    k1, v_r, (0, g, L), ex, (2, etp + etp_rank, 2 * etp),
                    replica_id=(0, 0, edp_rank), prepend_axis_num=2,
                ),
            ]
            k2 = "decoder.layers.mlp.experts.experts.linear_fc2.weight"
            full2 = global_tensor(k2, (L, E, H, Fe), bf16)[g, e]
            sd[ep_p + "linear_fc2.weight"] = ShardedTensor.from_rank_offsets(
                k2, _split(full2, 1, etp_rank, etp), (0, g, L), ex, (3, etp_rank, etp),
                replica_id=(0, 0, edp_rank), prepend_axis_num=2,
            )
    if pp_rank == pp - 1:
        sd["decoder.final_layernorm.weight"] = replicated("decoder.final_layernorm.weight", (H,), bf16)
        sd["output_layer.weight"] = tp_sharded(
            "output_layer.weight", (V, H), 0, bf16, allow_shape_mismatch=True
        )
    return sd


def _flat_sharded(tree) -> List[Any]:
    """ShardedTensor and ShardedTensorFactory leaves in state-dict order."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, ShardedTensorFactory

    out = []
    if isinstance(tree, dict):
        for v in tree.values():
            out += _flat_sharded(v)
    elif isinstance(tree, list):
        for v in tree:
            out += _flat_sharded(v)
    elif isinstance(tree, (ShardedTensor, ShardedTensorFactory)):
        out.append(tree)
    return out


def build_fully_reshardable_optim(model_sd: dict) -> dict:
    """DistributedOptimizer 'fully_reshardable' on-disk form built with the REAL helper
    megatron.core.dist_checkpointing.optimizer.make_sharded_optimizer_tensor:
    optimizer.state.{param,exp_avg,exp_avg_sq}.<model key>, model replica ids, fp32.
    Common part: {'optimizer': {'param_groups': [...]}, 'grad_scaler': None,
    'param_state_sharding_type': 'fully_reshardable'}."""
    from megatron.core.dist_checkpointing.optimizer import make_sharded_optimizer_tensor

    param_state = {}
    for idx, sh in enumerate(x for x in _flat_sharded(model_sd) if x.data is not None):
        entry = {}
        for name in ("param", "exp_avg", "exp_avg_sq"):
            val = sh.data.float()
            if name == "exp_avg":
                val = val * 0.1
            elif name == "exp_avg_sq":
                val = val * val * 0.01
            entry[name] = make_sharded_optimizer_tensor(sh, val.contiguous(), f"optimizer.state.{name}")
        param_state[idx] = entry
    return {
        "optimizer": {
            "param_groups": [
                {
                    "lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.01,
                    "amsgrad": False, "step": 10, "wd_mult": 1.0, "lr_mult": 1.0,
                    "is_expert_parallel": False, "is_decoupled_lr": False,
                    "params": list(range(len(param_state))),
                }
            ]
        },
        "grad_scaler": None,
        "param_state": param_state,
        "param_state_sharding_type": "fully_reshardable",
    }


def _dp_reshardable_bucket(params, dt, gbuf_idx, group_idx, dp, dp_rank, instance_id):
    """One dp_reshardable bucket: returns (numel, numel_unpadded, list of per-piece dicts)."""
    import math

    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    # (param ShardedTensor, world start, world end) in buffer order (reverse of params).
    layout = []
    off = 0
    for sh in reversed(params):
        off = int(math.ceil(off / 64) * 64)
        layout.append((sh, off, off + sh.data.numel()))
        off += sh.data.numel()
    numel_unpadded = off
    pad_to = math.lcm(dp, 128)
    numel = int(math.ceil(numel_unpadded / pad_to) * pad_to)
    local_numel = numel // dp
    lo, hi = dp_rank * local_numel, (dp_rank + 1) * local_numel
    bkey = (
        f"optimizer.distributed.dp_group_idx_{group_idx}.gbuf_idx_{gbuf_idx}.dtype_{dt}"
        f".bucket_idx_0"
    )
    # World-space content of each state buffer, deterministic; gaps are zero.
    bufs = {}
    for name in ("param", "exp_avg", "exp_avg_sq"):
        b = torch.zeros(numel, dtype=torch.float32)
        for sh, st, en in layout:
            v = sh.data.float().flatten()
            b[st:en] = v if name == "param" else (v * 0.1 if name == "exp_avg" else v * v * 0.01)
        bufs[name] = b
    # Pieces of this rank's slice [lo, hi): param pieces plus padding pieces between them.
    pieces = []
    cur = lo
    for sh, st, en in layout:
        s, e = max(st, lo), min(en, hi)
        if s >= e:
            continue
        if s > cur:
            pieces.append((cur, s, True))
        pieces.append((s, e, False))
        cur = e
    if cur < hi and cur < numel_unpadded:
        pieces.append((cur, hi, True))
    state = []
    for s, e, is_pad in pieces:
        if is_pad and s >= numel_unpadded:
            continue
        e = min(e, numel_unpadded) if is_pad else e
        entry = {}
        for name, b in bufs.items():
            entry[name] = ShardedTensor(
                f"{bkey}.{name}", b[s:e].clone(), torch.float32, (e - s,), (numel_unpadded,), (s,),
                axis_fragmentations=None, flattened_range=None, allow_shape_mismatch=False,
                replica_id=(instance_id, 0, 0),
            )
        state.append(entry)
    return numel, numel_unpadded, state


def build_dp_reshardable_optim(model_sd: dict, instance_id: int = 0) -> dict:
    """DistributedOptimizer 'dp_reshardable' on-disk form, by hand with real ShardedTensor /
    ShardedObject, following distrib_optimizer.py sharded_param_state_dp_reshardable:
    one grad buffer per param dtype (gbuf_idx in first-seen order, fp32 grads), one bucket each
    holding its local model params (flattened, in reverse order like Megatron's param buffer),
    param starts aligned to 64,
    bucket padded to a multiple of lcm(DP,128); each DP rank owns a contiguous 1/DP slice.
    Keys: optimizer.distributed.dp_group_idx_{I}.gbuf_idx_0.dtype_(torch.bfloat16,
    torch.float32).bucket_idx_0.{param,exp_avg,exp_avg_sq}, global shape (numel_unpadded,),
    axis_fragmentations=None, replica (instance, 0, 0). Gaps are written as 'padding' pieces.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    dp = ps.get_data_parallel_world_size(with_context_parallel=True)
    dp_rank = ps.get_data_parallel_rank(with_context_parallel=True)
    # data_parallel_group_idx = rank inside the model-parallel group (TP x PP), as in
    # megatron/core/optimizer/__init__.py get_megatron_optimizer.
    group_idx = torch.distributed.get_rank(ps.get_model_parallel_group())
    # One grad buffer per param dtype (grad_reduce_in_fp32: grad dtype float32), one bucket each.
    by_dtype: Dict[torch.dtype, list] = {}
    for sh in _flat_sharded(model_sd):
        by_dtype.setdefault(sh.data.dtype, []).append(sh)
    param_state: Dict[Any, Any] = {}
    per_bucket_numel, per_bucket_numel_unpadded = [], []
    for gbuf_idx, (pdtype, params) in enumerate(by_dtype.items()):
        dt = (pdtype, torch.float32)
        numel, numel_unpadded, state = _dp_reshardable_bucket(
            params, dt, gbuf_idx, group_idx, dp, dp_rank, instance_id
        )
        param_state[gbuf_idx] = {dt: [state]}
        per_bucket_numel.append({dt: [numel]})
        per_bucket_numel_unpadded.append({dt: [numel_unpadded]})
    per_bucket = {
        "per_bucket_numel": per_bucket_numel,
        "per_bucket_numel_unpadded": per_bucket_numel_unpadded,
    }
    out = {
        # non-fully-reshardable types: self.state_dict() entries become per-DP-group objects
        "optimizer": ShardedObject(
            f"optimizer.distributed.dp_group_idx_{group_idx}.optimizer",
            {"param_groups": [{"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8,
                               "weight_decay": 0.01, "step": 10, "params": [0]}]},
            (1,), (0,), replica_id=(instance_id, 0, dp_rank),
        ),
        "grad_scaler": ShardedObject(
            f"optimizer.distributed.dp_group_idx_{group_idx}.grad_scaler",
            None, (1,), (0,), replica_id=(instance_id, 0, dp_rank),
        ),
        "param_state": param_state,
        "param_state_sharding_type": "dp_reshardable",
    }
    for k, v in per_bucket.items():
        out["param_state"][k] = ShardedObject(
            f"optimizer.distributed.dp_group_idx_{group_idx}.{k}", v, (1,), (0,),
            replica_id=(instance_id, 0, dp_rank),
        )
    return out


def megatron_lm_common(args: argparse.Namespace, iteration: int) -> dict:
    """Plain (non-sharded) entries of megatron/training/checkpointing.py generate_state_dict."""
    return {
        "args": args,
        "checkpoint_version": 3.0,
        "iteration": iteration,
        "num_floating_point_operations_so_far": 123456789,
        "opt_param_scheduler": opt_param_scheduler_state(iteration),
    }


def content_metadata_for(optim: Optional[str]) -> dict:
    """megatron/training/checkpointing.py _build_sharded_state_dict_metadata (>= 0.15)."""
    md = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if optim is not None:
        md["distrib_optim_sharding_type"] = optim
        if optim == "fully_reshardable":
            md["distrib_optim_fully_reshardable_mem_efficient"] = False
    return md


def save_handbuilt(s: HandbuiltSpec) -> None:
    """Rank body: hand-built Megatron-LM-style state dict -> real dist_checkpointing.save."""
    init_parallel(s.tp, s.pp, ep=s.ep)
    args = make_args(
        tensor_model_parallel_size=s.tp, pipeline_model_parallel_size=s.pp,
        expert_model_parallel_size=s.ep, expert_tensor_parallel_size=s.tp,
        data_parallel_size=dist.get_world_size() // (s.tp * s.pp), world_size=dist.get_world_size(),
        num_layers=s.num_layers, hidden_size=s.hidden, num_attention_heads=s.heads,
        num_query_groups=s.groups, kv_channels=s.head_dim, padded_vocab_size=s.vocab,
        num_experts=s.num_experts, moe_ffn_hidden_size=s.moe_ffn, iteration=s.iteration,
        use_distributed_optimizer=s.optim is not None, ckpt_fully_parallel_save=s.fully_parallel,
    )
    model_sd = build_handbuilt_model_sd(s)
    sd = megatron_lm_common(args, s.iteration)
    sd["model"] = model_sd
    sd["rng_state"] = rng_state_object(args.seed)
    if s.optim == "fully_reshardable":
        sd["optimizer"] = build_fully_reshardable_optim(model_sd)
    elif s.optim == "dp_reshardable":
        sd["optimizer"] = build_dp_reshardable_optim(model_sd)
    save_megatron_lm_layout(
        s.root, s.iteration, sd, content_metadata=content_metadata_for(s.optim),
        fully_parallel=s.fully_parallel, async_save=s.async_save, thread_count=s.thread_count,
    )


# --------------------------------------------------------------------------------------------
# Reading back with megatron's own loader (single process, gloo world of 1)
# --------------------------------------------------------------------------------------------
def init_single_process_group() -> None:
    """gloo world of size 1 in the current process (for dist_checkpointing.load)."""
    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(_free_port())
    install_cpu_cuda_shim()
    dist.init_process_group("gloo", rank=0, world_size=1)


def load_everything(ckpt_dir: str) -> Tuple[dict, dict, dict]:
    """Loads every DCP key of a Megatron torch_dist checkpoint with megatron's own
    `dist_checkpointing.load` (full global tensors / every ShardedObject).

    Returns (tensors {key: Tensor}, objects {unique_key: object}, common dict).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor

    init_single_process_group()
    from megatron.core.dist_checkpointing import serialization

    meta = serialization.load_sharded_metadata(ckpt_dir)
    req = {}
    for k, v in meta.items():
        if isinstance(v, ShardedTensor):
            v.init_data("cpu")
        req[k] = v
    loaded = dist_checkpointing.load(req, ckpt_dir, validate_access_integrity=False)
    tensors, objects, common = {}, {}, {}
    for k, v in meta.items():
        if isinstance(v, ShardedTensor):
            tensors[k] = loaded[k]
        elif isinstance(v, ShardedObject):
            objects[v.unique_key] = loaded[k]
    for k, v in loaded.items():
        if k not in meta:
            common[k] = v
    return tensors, objects, common


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of the contiguous little-endian raw bytes (bf16 as its 2-byte pattern)."""
    t = t.detach().cpu().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


# --------------------------------------------------------------------------------------------
# Real GPTModel (local spec, no Transformer Engine) on CPU
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GPTSpec:
    root: str
    iteration: int = 10
    tp: int = 2
    pp: int = 2
    num_layers: int = 4
    hidden: int = 64
    heads: int = 4
    groups: int = 2  # GQA
    ffn: int = 176  # Llama-style 172 rounded up to a multiple of 16
    vocab: int = 256
    seq: int = 32
    bf16: bool = True
    # 'fully_reshardable' | None. The REAL DistributedOptimizer cannot be built on a CPU-only
    # torch: megatron/core/optimizer/optimizer.py MixedPrecisionOptimizer.__init__ allocates
    # torch.tensor([1.0], device='cuda') (0.16.1 line 485), and distrib_optimizer.py /
    # optimizer.py assert param.type() in ['torch.cuda.HalfTensor', 'torch.cuda.BFloat16Tensor',
    # 'torch.cuda.FloatTensor'] (distrib_optimizer.py ~361/420, optimizer.py ~671/690); grad
    # scaler, clip_grads also use device='cuda'. DDP (param_and_grad_buffer) does build on CPU.
    optim: Optional[str] = "fully_reshardable"
    fully_parallel: bool = True
    seed: int = 1234


def build_gpt_config(s: GPTSpec):
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=s.num_layers,
        hidden_size=s.hidden,
        num_attention_heads=s.heads,
        num_query_groups=s.groups,
        ffn_hidden_size=s.ffn,
        normalization="RMSNorm",
        gated_linear_unit=True,  # SwiGLU
        activation_func=F.silu,
        add_bias_linear=False,
        tensor_model_parallel_size=s.tp,
        pipeline_model_parallel_size=s.pp,
        use_cpu_initialization=True,
        perform_initialization=True,
        params_dtype=torch.bfloat16 if s.bf16 else torch.float32,
        bf16=s.bf16,
        pipeline_dtype=torch.bfloat16 if s.bf16 else torch.float32,
    )


def build_gpt(s: GPTSpec):
    """GPTModel with get_gpt_layer_local_spec(normalization='RMSNorm') for this PP stage."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    torch.manual_seed(s.seed)  # CPU init draws the full master weight, then slices per TP rank
    config = build_gpt_config(s)
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=s.vocab,
        max_sequence_length=s.seq,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        share_embeddings_and_output_weights=False,
        position_embedding_type="rope",
    )
    if s.bf16:
        model = model.to(torch.bfloat16)
    return config, model


def dump_gpt_chunks(s: GPTSpec) -> None:
    """Rank body: every ShardedTensor of the real GPTModel.sharded_state_dict() and of its
    fully_reshardable optimizer state (as save_gpt builds them, factories applied as a save
    applies them), as [key, global_offset, replica_id], to <root>/chunks_<rank>.json: which
    ranks hold which chunk, as Megatron sees it."""
    import json

    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    init_parallel(s.tp, s.pp)
    _, model = build_gpt(s)
    model_sd = model.sharded_state_dict()
    sd = {"model": model_sd}
    if s.optim == "fully_reshardable":
        sd["optimizer"] = build_fully_reshardable_optim(model_sd)
    apply_factories(sd)
    out = []
    for x in _flat_sharded(sd):
        assert isinstance(x, ShardedTensor), x  # factories applied
        rid = x.replica_id if isinstance(x.replica_id, (tuple, list)) else (x.replica_id,)
        out.append([x.key, [int(o) for o in x.global_offset], [int(r) for r in rid]])
    with open(os.path.join(s.root, f"chunks_{dist.get_rank()}.json"), "w") as f:
        json.dump(out, f)


def save_gpt(s: GPTSpec) -> None:
    """Rank body: real GPTModel.sharded_state_dict() (+ DistributedOptimizer) -> save."""
    from megatron.core import parallel_state as ps

    init_parallel(s.tp, s.pp)
    config, model = build_gpt(s)
    args = make_args(
        tensor_model_parallel_size=s.tp, pipeline_model_parallel_size=s.pp,
        expert_tensor_parallel_size=s.tp,
        data_parallel_size=dist.get_world_size() // (s.tp * s.pp), world_size=dist.get_world_size(),
        num_layers=s.num_layers, hidden_size=s.hidden, ffn_hidden_size=s.ffn,
        num_attention_heads=s.heads, num_query_groups=s.groups, kv_channels=s.hidden // s.heads,
        padded_vocab_size=s.vocab, vocab_size=s.vocab, seq_length=s.seq,
        max_position_embeddings=s.seq, iteration=s.iteration, bf16=s.bf16,
        params_dtype=config.params_dtype, use_distributed_optimizer=s.optim is not None,
        ckpt_fully_parallel_save=s.fully_parallel, seed=s.seed,
    )
    sd = megatron_lm_common(args, s.iteration)
    md = content_metadata_for(s.optim)
    # Megatron-LM: state_dict['model'] = model[0].sharded_state_dict() (no 'model.' key prefix).
    model_sd = model.sharded_state_dict()
    sd["model"] = model_sd
    if s.optim == "fully_reshardable":
        # The real DistributedOptimizer cannot be constructed on a CPU-only torch (see
        # GPTSpec.optim); its 'fully_reshardable' output is rebuilt from the REAL model sharded
        # state dict with megatron's make_sharded_optimizer_tensor (factories included).
        sd["optimizer"] = build_fully_reshardable_optim(model_sd)
    elif s.optim is not None:
        raise ValueError(f"GPT fixture supports optim None|'fully_reshardable', got {s.optim}")
    sd["rng_state"] = rng_state_object(s.seed)
    save_megatron_lm_layout(
        s.root, s.iteration, sd, content_metadata=md, fully_parallel=s.fully_parallel,
        async_save=False,
    )
