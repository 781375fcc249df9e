"""Tiny REAL models of several families on both sides: Megatron-Core `GPTModel` (torch_dist,
Megatron-LM layout) and HuggingFace transformers, for the `ckptkit convert --to hf` /
`--to torch_dist` interop tests (tests/interop/test_hf_convert.py).

This is a fixture *library*, not a test module. It builds on megatron_fixtures.py (spawned gloo
ranks, parallel state, the Megatron-LM directory layout, the common-state entries).

Megatron side
-------------
* FAMILIES: tiny fp32 configs (hidden 64, 4 layers, vocab that needs padding) for llama,
  llama_tied, mistral, qwen2, qwen3, mixtral, qwen3_moe, gpt2.
* save_family(spec, root): 4 ranks (dense TP2 x PP2, MoE TP2 x PP2 x EP2 with ETP1), a real
  GPTModel with get_gpt_layer_local_spec, every parameter set to deterministic random values,
  saved with the real dist_checkpointing.save as root/iter_0000010/ + tracker, with a Megatron-LM
  `args` Namespace in the common state. Then Megatron's OWN forward (stage by stage across PP,
  full-vocab fp32 logits over the PADDED vocab) -> root/reference.pt {"tokens", "logits"}.
* megatron_forward_from_checkpoint(path, spec, tp, pp, ep): builds the same GPTModel at another
  parallelism, loads a torch_dist checkpoint with the real dist_checkpointing.load +
  load_state_dict(strict=True), runs the same forward, returns the logits.

HF side
-------
* hf_config(spec, vocab_size): the transformers config dict of the same model.
* make_hf_model(spec, out_dir, seed): a tiny HF model from that config, random weights (norms
  and biases too), save_pretrained(safe_serialization=True).
* hf_logits(model_dir, tokens): from_pretrained (fp32, eager), asserting no missing / unexpected
  / mismatched keys, returns fp32 logits.

CPU shim for the forward pass (install_forward_shim), on top of megatron_fixtures'
install_cpu_cuda_shim (torch.cuda.current_device() -> 'cpu': rotary embedding / collectives
bookkeeping allocate on it; torch.cuda.synchronize() no-op). Each patch replaces CUDA
*bookkeeping* only; no arithmetic of the model changes. Each was checked to be NEEDED (the save
fails without it) and nothing else was patched:
  1. `Tensor.cuda()` returns the tensor itself: LanguageModule.setup_embeddings_and_output_layer
     (0.16.1) does `weight.data = weight.data.cuda()` before the embedding-group all_reduce that
     copies the tied embedding to the last PP stage (tied, PP > 1). A device move, not a value
     change. Without it: "Torch not compiled with CUDA enabled" (llama_tied).
  2. `megatron.core.transformer.moe.moe_utils.te_general_gemm = None`: without Transformer
     Engine 0.16.1 never defines the name, but router_gating_linear tests
     `te_general_gemm is not None` before falling back to torch matmul. None selects exactly
     that fallback. Without it: NameError (mixtral, qwen3_moe).
  No `device='cuda'` factory mapping is needed: the only such call on our path,
  transformer/utils.py get_default_causal_mask (torch.ones(..., device="cuda")), is skipped
  because the forward passes Megatron-LM's explicit causal mask; MoE aux-loss trackers
  (torch.zeros(..., device="cuda")) only run in training. Checked: every family saves and
  reloads without it.
  Configured, not patched: MoE token dispatcher 'allgather' ('alltoall' wants CUDA streams);
  Megatron's own inference RNG tracker
  (tensor_parallel.random.initialize_rng_tracker(inference_rng_tracker=True)), whose fork()
  is a null context (dropout is 0, eval mode); masked-softmax / bias / rope fusions off (CUDA
  kernels); torch._dynamo disabled in the ranks so megatron.core.jit.jit_fuser
  (= torch.compile) runs openai_gelu eagerly instead of building an inductor C++ kernel per
  rank (~35 s; same formula).
  Speed only: use_in_process_results_queue (see there) and run_ranks with the 'fork' start
  method (megatron-core imported once in the parent).
Never use this outside fixtures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
import zlib
from typing import Any, Dict, Optional, Tuple

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import megatron_fixtures as mf  # noqa: E402

ITERATION = 10
BATCH, SEQ = 2, 12


# --------------------------------------------------------------------------------------------
# Families
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One tiny model, described with Megatron-LM's vocabulary (args names in comments)."""

    name: str
    hf_architecture: str
    hf_model_type: str
    num_layers: int = 4
    hidden: int = 64  # hidden_size
    ffn: int = 128  # ffn_hidden_size
    heads: int = 8  # num_attention_heads
    groups: int = 2  # num_query_groups (== heads: MHA, group_query_attention False)
    kv_channels: Optional[int] = None  # None: hidden // heads
    vocab: int = 250  # the real (unpadded) vocab = HF vocab_size
    divisor: int = 64  # make_vocab_size_divisible_by
    max_positions: int = 64  # max_position_embeddings (= seq_length)
    position_embedding_type: str = "rope"  # or "learned_absolute"
    rotary_base: int = 10000
    normalization: str = "RMSNorm"  # or "LayerNorm"
    norm_epsilon: float = 1e-5
    swiglu: bool = True
    openai_gelu: bool = False  # only when not swiglu: tanh GeLU (HF gelu_new) vs erf GeLU
    add_bias_linear: bool = False
    add_qkv_bias: bool = False
    qk_layernorm: bool = False
    tied: bool = False  # not untie_embeddings_and_output_weights
    num_experts: Optional[int] = None
    topk: int = 2  # moe_router_topk
    moe_ffn: Optional[int] = None  # moe_ffn_hidden_size
    moe_router_pre_softmax: bool = False
    record_vocab_size: bool = True  # False: args.vocab_size = None (HF tokenizer runs)
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.kv_channels if self.kv_channels is not None else self.hidden // self.heads

    @property
    def is_moe(self) -> bool:
        return bool(self.num_experts)

    def padded_vocab(self, tp: int) -> int:
        """megatron/training/tokenizer vocab_size_with_padding: multiple of divisor * TP."""
        m = self.divisor * tp
        return int(math.ceil(self.vocab / m) * m)

    def default_parallel(self) -> Tuple[int, int, int]:
        """(tp, pp, ep) the fixtures save with: 4 ranks."""
        return (2, 2, 2) if self.is_moe else (2, 2, 1)


def _families() -> Dict[str, FamilySpec]:
    f = {}
    f["llama"] = FamilySpec(
        "llama", "LlamaForCausalLM", "llama", heads=8, groups=2, rotary_base=500000,
        vocab=250, divisor=64, record_vocab_size=True, seed=11)
    f["llama_tied"] = dataclasses.replace(
        f["llama"], name="llama_tied", tied=True, vocab=200, record_vocab_size=False, seed=12)
    f["mistral"] = FamilySpec(
        "mistral", "MistralForCausalLM", "mistral", heads=8, groups=8, rotary_base=1000000,
        ffn=96, vocab=250, divisor=32, record_vocab_size=False, seed=13)
    f["qwen2"] = FamilySpec(
        "qwen2", "Qwen2ForCausalLM", "qwen2", heads=8, groups=2, add_qkv_bias=True,
        norm_epsilon=1e-6, tied=True, rotary_base=1000000, vocab=250, divisor=64,
        record_vocab_size=True, seed=14)
    f["qwen3"] = FamilySpec(
        "qwen3", "Qwen3ForCausalLM", "qwen3", heads=8, groups=4, kv_channels=16,
        qk_layernorm=True, norm_epsilon=1e-6, rotary_base=1000000, vocab=240, divisor=64,
        record_vocab_size=False, seed=15)
    f["mixtral"] = FamilySpec(
        "mixtral", "MixtralForCausalLM", "mixtral", heads=8, groups=2, ffn=96, moe_ffn=96,
        num_experts=4, topk=2, moe_router_pre_softmax=False, rotary_base=1000000, vocab=250,
        divisor=64, record_vocab_size=True, seed=16)
    f["qwen3_moe"] = FamilySpec(
        "qwen3_moe", "Qwen3MoeForCausalLM", "qwen3_moe", heads=8, groups=2, kv_channels=16,
        qk_layernorm=True, ffn=128, moe_ffn=32, num_experts=4, topk=2,
        moe_router_pre_softmax=False, norm_epsilon=1e-6, rotary_base=1000000, vocab=250,
        divisor=64, record_vocab_size=False, seed=17)
    f["gpt2"] = FamilySpec(
        "gpt2", "GPT2LMHeadModel", "gpt2", heads=4, groups=4, ffn=256,
        position_embedding_type="learned_absolute", normalization="LayerNorm", swiglu=False,
        openai_gelu=True, add_bias_linear=True, tied=True, vocab=250, divisor=64,
        record_vocab_size=True, seed=18)
    return f


FAMILIES: Dict[str, FamilySpec] = _families()


# --------------------------------------------------------------------------------------------
# Shim (forward pass on a CPU-only torch)
# --------------------------------------------------------------------------------------------
def preload_megatron() -> None:
    """Imports what the rank bodies use, in the parent, so that forked ranks inherit it (a module
    an older megatron-core lacks is skipped: preloading only saves time)."""
    import importlib

    for name in ("megatron.core.dist_checkpointing", "megatron.core.dist_checkpointing.strategies.fully_parallel",
                 "megatron.core.dist_checkpointing.strategies.torch", "megatron.core.models.gpt",
                 "megatron.core.models.gpt.gpt_layer_specs", "megatron.core.parallel_state",
                 "megatron.core.transformer.moe.moe_utils", "megatron.core.transformer.transformer_config"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def run_ranks(world_size: int, fn, job) -> None:
    """megatron_fixtures.run_ranks, but with the 'fork' start method when possible: megatron-core
    is imported once in the parent (about 15 s of CPU per process on this machine) instead of
    once per spawned rank. Falls back to spawn when the parent already has a process group or
    MM_START_METHOD=spawn. Each rank runs megatron_fixtures._worker (gloo, CPU shim)."""
    import multiprocessing as mp

    method = os.environ.get("MM_START_METHOD", "fork")
    if method != "fork" or dist.is_initialized():
        mf.run_ranks(world_size, fn, job)
        return
    preload_megatron()
    ctx = mp.get_context("fork")
    port = mf._free_port()
    procs = [ctx.Process(target=mf._worker, args=(r, world_size, port, fn, job), daemon=False)
             for r in range(world_size)]
    for p in procs:
        p.start()
    failed = []
    for r, p in enumerate(procs):
        p.join()
        if p.exitcode != 0:
            failed.append((r, p.exitcode))
    if failed:
        for p in procs:
            if p.is_alive():
                p.kill()
        raise RuntimeError(f"ranks failed (rank, exit code): {failed}")


def use_in_process_results_queue() -> None:
    """Speed only (no effect on what is written): for a SYNC save, megatron-core 0.16.1
    FileSystemWriterAsync hands the list of WriteResult from write_preloaded_data_multiproc back
    to retrieve_write_results in the SAME process through `_results_queue`, which
    _get_write_results_queue creates as a spawn-context multiprocessing.Manager().Queue(): one
    fresh server process per rank that must import torch to unpickle the results (10-70 s per
    save on 2 busy cores). A plain queue.Queue carries the same objects within the process."""
    import queue

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is None:
        filesystem_async._results_queue = queue.Queue()


def install_forward_shim() -> None:
    """See the module docstring: which CUDA bookkeeping each patch replaces and why."""
    mf.install_cpu_cuda_shim()
    if torch.cuda.is_available():
        return
    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[assignment]
    from megatron.core.transformer.moe import moe_utils

    if not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


# --------------------------------------------------------------------------------------------
# Megatron model
# --------------------------------------------------------------------------------------------
def megatron_args(spec: FamilySpec, tp: int, pp: int, ep: int, world: int) -> argparse.Namespace:
    """The Megatron-LM `args` Namespace (real argument names) as saved in the common state."""
    etp = 1 if spec.is_moe else tp
    return mf.make_args(
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=None,
        expert_model_parallel_size=ep,
        expert_tensor_parallel_size=etp,
        context_parallel_size=1,
        data_parallel_size=world // (tp * pp),
        world_size=world,
        transformer_impl="local",
        num_layers=spec.num_layers,
        hidden_size=spec.hidden,
        ffn_hidden_size=spec.ffn,
        num_attention_heads=spec.heads,
        group_query_attention=spec.groups != spec.heads,
        # Megatron-LM: --num-query-groups defaults to 1 and stays 1 without
        # --group-query-attention (transformer_config_from_args then passes None = MHA).
        num_query_groups=spec.groups if spec.groups != spec.heads else 1,
        kv_channels=spec.head_dim,
        padded_vocab_size=spec.padded_vocab(tp),
        vocab_size=spec.vocab if spec.record_vocab_size else None,
        tokenizer_type="GPT2BPETokenizer" if spec.record_vocab_size else "HuggingFaceTokenizer",
        make_vocab_size_divisible_by=spec.divisor,
        max_position_embeddings=spec.max_positions,
        seq_length=spec.max_positions,
        position_embedding_type=spec.position_embedding_type,
        rotary_base=spec.rotary_base,
        rotary_percent=1.0,
        rotary_interleaved=False,
        rotary_seq_len_interpolation_factor=None,
        use_rope_scaling=False,
        rope_scaling_factor=8.0,
        normalization=spec.normalization,
        norm_epsilon=spec.norm_epsilon,
        apply_layernorm_1p=False,
        swiglu=spec.swiglu,
        openai_gelu=spec.openai_gelu,
        squared_relu=False,
        add_bias_linear=spec.add_bias_linear,
        add_qkv_bias=spec.add_qkv_bias,
        qk_layernorm=spec.qk_layernorm,
        untie_embeddings_and_output_weights=not spec.tied,
        window_size=None,
        num_experts=spec.num_experts,
        moe_router_topk=spec.topk if spec.is_moe else 2,
        moe_ffn_hidden_size=spec.moe_ffn if spec.is_moe else None,
        moe_router_pre_softmax=spec.moe_router_pre_softmax,
        moe_router_score_function="softmax",
        moe_router_topk_scaling_factor=None,
        moe_router_load_balancing_type="aux_loss",
        moe_grouped_gemm=False,
        moe_shared_expert_intermediate_size=None,
        moe_layer_freq=1,
        moe_token_dispatcher_type="allgather",
        decoder_first_pipeline_num_layers=None,
        decoder_last_pipeline_num_layers=None,
        account_for_embedding_in_pipeline_split=False,
        account_for_loss_in_pipeline_split=False,
        pipeline_model_parallel_layout=None,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=0.02,
        params_dtype=torch.float32,
        bf16=False,
        fp16=False,
        use_distributed_optimizer=False,
        ckpt_format="torch_dist",
        ckpt_fully_parallel_save=True,
        seed=1234 + spec.seed,
        iteration=ITERATION,
    )


def build_config(spec: FamilySpec, tp: int, pp: int, ep: int):
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.transformer.utils import openai_gelu

    if spec.swiglu:
        act = F.silu
    elif spec.openai_gelu:
        act = openai_gelu
    else:
        act = F.gelu
    kw = dict(
        num_layers=spec.num_layers,
        hidden_size=spec.hidden,
        num_attention_heads=spec.heads,
        num_query_groups=spec.groups,
        kv_channels=spec.head_dim,
        ffn_hidden_size=spec.ffn,
        normalization=spec.normalization,
        layernorm_epsilon=spec.norm_epsilon,
        gated_linear_unit=spec.swiglu,
        activation_func=act,
        add_bias_linear=spec.add_bias_linear,
        add_qkv_bias=spec.add_qkv_bias,
        qk_layernorm=spec.qk_layernorm,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=tp,
        pipeline_model_parallel_size=pp,
        expert_model_parallel_size=ep if spec.is_moe else 1,
        expert_tensor_parallel_size=1 if spec.is_moe else tp,
        use_cpu_initialization=True,
        perform_initialization=False,
        params_dtype=torch.float32,
        pipeline_dtype=torch.float32,
        bf16=False,
        fp16=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        persist_layer_norm=False,
    )
    if spec.is_moe:
        kw.update(
            num_moe_experts=spec.num_experts,
            moe_router_topk=spec.topk,
            moe_ffn_hidden_size=spec.moe_ffn,
            moe_router_pre_softmax=spec.moe_router_pre_softmax,
            moe_router_score_function="softmax",
            moe_token_dispatcher_type="allgather",
            moe_grouped_gemm=False,
            moe_aux_loss_coeff=0.0,
            moe_router_dtype="fp32",
        )
    return TransformerConfig(**kw)


def build_model(spec: FamilySpec, tp: int, pp: int, ep: int, vocab_rows: int):
    """GPTModel (local spec) for this rank's PP stage; parameters filled with NaN."""
    from megatron.core import parallel_state as ps
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    config = build_config(spec, tp, pp, ep)
    layer_spec = get_gpt_layer_local_spec(
        num_experts=spec.num_experts, moe_grouped_gemm=False, qk_layernorm=spec.qk_layernorm,
        normalization=spec.normalization)
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec,
        vocab_size=vocab_rows,
        max_sequence_length=spec.max_positions,
        pre_process=ps.is_pipeline_first_stage(),
        post_process=ps.is_pipeline_last_stage(),
        parallel_output=False,  # full (padded) vocab logits on every TP rank
        share_embeddings_and_output_weights=spec.tied,
        position_embedding_type=spec.position_embedding_type,
        rotary_base=spec.rotary_base,
        rotary_percent=1.0,
    )
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    return config, model


def _iter_sharded(obj):
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor, \
        ShardedTensorFactory

    if isinstance(obj, dict):
        for v in obj.values():
            yield from _iter_sharded(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _iter_sharded(v)
    elif isinstance(obj, (ShardedTensor, ShardedObject)):
        yield obj
    elif isinstance(obj, ShardedTensorFactory):
        yield from _iter_sharded(obj.build())


def value_scale(key: str, global_shape) -> Tuple[float, float]:
    """(mean, std) of the deterministic random values of a ShardedTensor key."""
    last = key.rsplit(".", 1)[-1]
    is_norm = "norm" in key  # layernorm / layer_norm_weight / final_layernorm / q,k_layernorm
    if is_norm and last in ("weight", "layer_norm_weight"):
        return 1.0, 0.1
    if last in ("bias", "layer_norm_bias"):
        return 0.0, 0.1
    if key.endswith("router.weight"):
        return 0.0, 2.0 / math.sqrt(global_shape[-1])
    return 0.0, 1.0 / math.sqrt(global_shape[-1])


def fill_params(model, spec: FamilySpec, metadata: dict) -> None:
    """Every parameter gets deterministic random values, chunk by chunk of the sharded state dict.

    Seed = crc32(family seed, checkpoint key, global offset): replicas (TP-replicated norms,
    biases, router; the tied last-stage output layer, keyed like the embedding) get identical
    values, every distinct chunk distinct values. Asserts that no parameter is left NaN.
    """
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    sd = model.sharded_state_dict(metadata=dict(metadata))
    with torch.no_grad():
        for sh in _iter_sharded(sd):
            if not isinstance(sh, ShardedTensor):
                continue
            assert sh.flattened_range is None
            tag = f"{spec.seed}|{sh.key}|{tuple(sh.global_offset)}"
            g = torch.Generator().manual_seed(zlib.crc32(tag.encode()) & 0x7FFFFFFF)
            mean, std = value_scale(sh.key, sh.global_shape)
            vals = torch.randn(tuple(sh.data.shape), generator=g, dtype=torch.float32)
            sh.data.copy_(vals * std + mean)
        for n, p in model.named_parameters():
            assert not torch.isnan(p).any(), f"parameter {n} not covered by sharded_state_dict"


def causal_mask(s: int) -> torch.Tensor:
    """Megatron-LM get_ltor_masks_and_position_ids: [1, 1, s, s] bool, True = masked."""
    return torch.tril(torch.ones(1, 1, s, s)) < 0.5


def pipeline_forward(model, tokens: torch.Tensor, hidden: int) -> Optional[torch.Tensor]:
    """Megatron's own forward, stage by stage (dist.send/recv of [s, b, h] hidden states,
    model.set_input_tensor). Returns full padded-vocab fp32 logits [b, s, V] on the last stage,
    None elsewhere."""
    from megatron.core import parallel_state as ps

    b, s = tokens.shape
    position_ids = torch.arange(s).unsqueeze(0).expand(b, s).contiguous()
    mask = causal_mask(s)
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    with torch.no_grad():
        if not first:
            buf = torch.empty(s, b, hidden, dtype=torch.float32)
            dist.recv(buf, src=ps.get_pipeline_model_parallel_prev_rank())
            model.set_input_tensor(buf)
        out = model(tokens, position_ids, mask)
        if not last:
            dist.send(out.float().contiguous(), dst=ps.get_pipeline_model_parallel_next_rank())
            return None
        return out.float()


def _sharded_metadata() -> dict:
    # megatron/training/checkpointing.py _build_sharded_state_dict_metadata, no optimizer
    return mf.content_metadata_for(None)


def fixed_tokens(spec: FamilySpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 + spec.seed)
    return torch.randint(0, spec.vocab, (BATCH, SEQ), generator=g)


def _world(tp: int, pp: int, ep: int) -> int:
    """Smallest world with TP x PP x DP where tp * dp is a multiple of ep (ETP 1)."""
    dp = ep // math.gcd(tp, ep) if ep > 1 else 1
    return tp * pp * dp


def _init(spec: FamilySpec, tp: int, pp: int, ep: int) -> None:
    from megatron.core.tensor_parallel import random as mrandom

    install_forward_shim()
    # megatron.core.jit.jit_fuser is torch.compile on torch >= 2.2 (openai_gelu, erf_gelu, ...):
    # on CPU that means an inductor C++ build per rank (~35 s). Run those functions eagerly.
    torch._dynamo.config.disable = True
    mf.init_parallel(tp, pp, ep=ep if spec.is_moe else 1, etp=1 if spec.is_moe else None)
    mrandom.initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)


def _is_writer() -> bool:
    from megatron.core import parallel_state as ps

    return (ps.is_pipeline_last_stage() and ps.get_tensor_model_parallel_rank() == 0
            and ps.get_data_parallel_rank() == 0)


@dataclasses.dataclass
class _SaveJob:
    spec: FamilySpec
    root: str
    tp: int
    pp: int
    ep: int
    dump_chunks: bool = False  # also write <root>/chunks_<rank>.json (see save_family)


_T0 = time.time()


def _tick(what: str) -> None:
    """MM_TIMING=1: per-rank phase timestamps (seconds since this module was imported)."""
    if os.environ.get("MM_TIMING"):
        print(f"[rank {dist.get_rank()}] {time.time() - _T0:7.2f}s {what}", flush=True)


def _save_rank(job: _SaveJob) -> None:
    spec, tp, pp, ep = job.spec, job.tp, job.pp, job.ep
    _tick("start")
    _init(spec, tp, pp, ep)
    _tick("init")
    md = _sharded_metadata()
    _, model = build_model(spec, tp, pp, ep, spec.padded_vocab(tp))
    fill_params(model, spec, md)
    _tick("built")
    args = megatron_args(spec, tp, pp, ep, dist.get_world_size())
    sd = mf.megatron_lm_common(args, ITERATION)
    # Megatron-LM generate_state_dict: state_dict['model'] = model[0].sharded_state_dict(metadata)
    sd["model"] = model.sharded_state_dict(metadata=dict(md))
    if job.dump_chunks:
        from megatron.core.dist_checkpointing.mapping import ShardedTensor

        chunks = [[t.key, [int(o) for o in t.global_offset]] for t in _iter_sharded(sd["model"])
                  if isinstance(t, ShardedTensor)]
        with open(os.path.join(job.root, f"chunks_{dist.get_rank()}.json"), "w") as f:
            json.dump(chunks, f)
    sd["rng_state"] = mf.rng_state_object(args.seed)
    use_in_process_results_queue()
    mf.save_megatron_lm_layout(job.root, ITERATION, sd, content_metadata=md,
                               fully_parallel=True, async_save=False)
    _tick("saved")
    tokens = fixed_tokens(spec)
    logits = pipeline_forward(model, tokens, spec.hidden)
    _tick("forward")
    if _is_writer():
        torch.save({"tokens": tokens, "logits": logits, "family": spec.name,
                    "parallel": (tp, pp, ep)}, os.path.join(job.root, "reference.pt"))


def save_family(spec: FamilySpec, root: str, tp: Optional[int] = None, pp: Optional[int] = None,
                ep: Optional[int] = None, dump_chunks: bool = False) -> str:
    """Real GPTModel -> real dist_checkpointing.save (Megatron-LM root) + reference.pt.

    Defaults: dense TP2 x PP2 (4 ranks), MoE TP2 x PP2 x EP2 with ETP1 (the same 4 ranks).
    dump_chunks: each rank also writes <root>/chunks_<rank>.json, [key, global_offset] of every
    ShardedTensor of its model's sharded_state_dict (factories built): who holds which chunk.
    Returns root.
    """
    dtp, dpp, dep = spec.default_parallel()
    tp, pp, ep = tp or dtp, pp or dpp, ep or dep
    os.makedirs(root, exist_ok=True)
    run_ranks(_world(tp, pp, ep), _save_rank, _SaveJob(spec, str(root), tp, pp, ep, dump_chunks))
    return str(root)


def load_reference(root: str) -> dict:
    return torch.load(os.path.join(root, "reference.pt"), weights_only=True)


# --------------------------------------------------------------------------------------------
# Reverse check: load a torch_dist checkpoint into GPTModel and run it
# --------------------------------------------------------------------------------------------
def resolve_iter_dir(path: str) -> str:
    """A Megatron-LM root (tracker) or an iter_XXXXXXX / dist checkpoint folder."""
    tracker = os.path.join(path, "latest_checkpointed_iteration.txt")
    if os.path.exists(tracker):
        with open(tracker) as f:
            it = f.read().strip()
        return os.path.join(path, "release" if it == "release" else "iter_{:07d}".format(int(it)))
    return path


def checkpoint_tensor_shapes(ckpt_dir: str) -> Dict[str, Tuple[int, ...]]:
    """Global shapes of every tensor key, from the DCP .metadata (torch's own reader)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    md = FileSystemReader(ckpt_dir).read_metadata()
    return {k: tuple(v.size) for k, v in md.state_dict_metadata.items()
            if isinstance(v, TensorStorageMetadata)}


@dataclasses.dataclass
class _LoadJob:
    spec: FamilySpec
    ckpt_dir: str
    tp: int
    pp: int
    ep: int
    vocab_rows: int
    tokens: Any
    out: str


def _load_rank(job: _LoadJob) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.validation import StrictHandling

    spec = job.spec
    _init(spec, job.tp, job.pp, job.ep)
    _, model = build_model(spec, job.tp, job.pp, job.ep, job.vocab_rows)
    md = _sharded_metadata()
    # Megatron-LM load_checkpoint: sharded state dict {'model': ...} -> dist_checkpointing.load.
    # RETURN_ALL only to name the keys; megatron's vocabulary: "unexpected" = requested by this
    # rank but absent from the checkpoint (Megatron-LM's default strictness then fails in the
    # strategy), "missing" = in the checkpoint but requested by no rank (global).
    sharded = {"model": model.sharded_state_dict(metadata=dict(md))}
    loaded, not_requested, absent = dist_checkpointing.load(
        sharded, job.ckpt_dir, strict=StrictHandling.RETURN_ALL)
    assert not absent, (f"rank {dist.get_rank()}: keys the GPTModel needs are absent from "
                        f"the checkpoint: {sorted(absent)}")
    model.load_state_dict(loaded["model"], strict=True)
    for n, p in model.named_parameters():
        assert not torch.isnan(p).any(), f"parameter {n} NaN after load"
    logits = pipeline_forward(model, job.tokens, spec.hidden)
    if _is_writer():
        stray = sorted(k for k in not_requested if not k.startswith(("optimizer", "rng_state")))
        torch.save({"logits": logits, "not_requested": stray}, job.out)


def megatron_forward_from_checkpoint(ckpt_path: str, spec: FamilySpec, tp: int = 1, pp: int = 1,
                                     ep: int = 1, tokens: Optional[torch.Tensor] = None,
                                     return_unexpected: bool = False):
    """Builds the family's GPTModel at (tp, pp, ep), loads the torch_dist checkpoint with the
    real dist_checkpointing.load (missing keys fail) + load_state_dict(strict=True), runs the
    forward on `tokens` (default fixed_tokens(spec)) and returns [b, s, padded V] fp32 logits.
    The padded vocab is the checkpoint's embedding row count (it must divide by tp).
    Every key the model requests must be in the checkpoint (tensors AND the `_extra_state`
    ShardedObjects of the local spec), as for Megatron-LM's default load.
    return_unexpected=True also returns the checkpoint keys no rank requested (optimizer.* and
    rng_state excluded): tensors a converter wrote that GPTModel does not have.
    """
    ckpt_dir = resolve_iter_dir(str(ckpt_path))
    shapes = checkpoint_tensor_shapes(ckpt_dir)
    emb = "embedding.word_embeddings.weight"
    assert emb in shapes, f"{ckpt_dir}: no {emb} (keys: {sorted(shapes)[:8]}...)"
    vocab_rows = shapes[emb][0]
    if tokens is None:
        tokens = fixed_tokens(spec)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "logits.pt")
        job = _LoadJob(spec, ckpt_dir, tp, pp, ep if spec.is_moe else 1, vocab_rows, tokens, out)
        run_ranks(_world(tp, pp, job.ep), _load_rank, job)
        res = torch.load(out, weights_only=True)
    return (res["logits"], res["not_requested"]) if return_unexpected else res["logits"]


# --------------------------------------------------------------------------------------------
# Checkpoint description (for /work/notes/megatron_keys.md)
# --------------------------------------------------------------------------------------------
def describe_checkpoint(root: str, max_chunks: int = 16) -> str:
    """Markdown: every tensor key (dtype, global shape, chunks), every object key, the args."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, TensorStorageMetadata

    ckpt_dir = resolve_iter_dir(root)
    md = FileSystemReader(ckpt_dir).read_metadata()
    files: Dict[Tuple[str, Tuple[int, ...]], str] = {}
    for idx, info in md.storage_data.items():
        files[(idx.fqn, tuple(idx.offset) if idx.offset is not None else ())] = \
            info.relative_path
    lines = ["| key | dtype | global shape | chunks (offsets / sizes -> file) |",
             "|---|---|---|---|"]
    objs = []
    for k in sorted(md.state_dict_metadata):
        v = md.state_dict_metadata[k]
        if isinstance(v, BytesStorageMetadata):
            objs.append(k)
            continue
        if k.startswith("optimizer") or k.startswith("rng_state"):
            continue
        assert isinstance(v, TensorStorageMetadata)
        chunks = sorted(v.chunks, key=lambda c: tuple(c.offsets))
        cs = []
        for c in chunks[:max_chunks]:
            fn = files.get((k, tuple(c.offsets)), "?")
            cs.append(f"{list(c.offsets)}/{list(c.sizes)}->{fn.split('.')[0]}")
        if len(chunks) > max_chunks:
            cs.append(f"... ({len(chunks)} chunks)")
        dt = str(v.properties.dtype).replace("torch.", "")
        lines.append(f"| `{k}` | {dt} | {list(v.size)} | {'; '.join(cs)} |")
    out = "\n".join(lines)
    out += "\n\nObject (BytesStorageMetadata) keys: " + (
        ", ".join(f"`{o}`" for o in objs) if objs else "none") + "\n"
    return out


def saved_args(root: str) -> dict:
    """The common-state `args` as a dict (core 0.16: iter_dir/common.pt)."""
    ckpt_dir = resolve_iter_dir(root)
    common = torch.load(os.path.join(ckpt_dir, "common.pt"), weights_only=False)
    return {"args": vars(common["args"]),
            "other": {k: v for k, v in common.items() if k != "args"}}


# --------------------------------------------------------------------------------------------
# HF side
# --------------------------------------------------------------------------------------------
def hf_config(spec: FamilySpec, vocab_size: Optional[int] = None) -> Dict[str, Any]:
    """transformers (5.x) config.json dict of the same model. Field names verified against
    transformers 5.23 configuration_*.py (see /work/notes/megatron_keys.md)."""
    V = spec.vocab if vocab_size is None else vocab_size
    common = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.hf_model_type,
        "vocab_size": V,
        "tie_word_embeddings": spec.tied,
        "dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    if spec.hf_model_type == "gpt2":
        assert spec.heads == spec.groups and spec.head_dim * spec.heads == spec.hidden
        cfg = dict(common, n_embd=spec.hidden, n_layer=spec.num_layers, n_head=spec.heads,
                   n_inner=spec.ffn, n_positions=spec.max_positions,
                   activation_function="gelu_new" if spec.openai_gelu else "gelu",
                   layer_norm_epsilon=spec.norm_epsilon, resid_pdrop=0.0, embd_pdrop=0.0,
                   attn_pdrop=0.0, scale_attn_weights=True,
                   scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                   initializer_range=0.02)
        return cfg
    cfg = dict(
        common,
        hidden_size=spec.hidden,
        intermediate_size=spec.ffn,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.groups,
        head_dim=spec.head_dim,
        hidden_act="silu",
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=spec.norm_epsilon,
        rope_parameters={"rope_type": "default", "rope_theta": float(spec.rotary_base)},
        attention_dropout=0.0,
        initializer_range=0.02,
        use_cache=True,
    )
    t = spec.hf_model_type
    if t == "llama":
        cfg.update(attention_bias=spec.add_qkv_bias, mlp_bias=False, pretraining_tp=1)
    elif t == "mistral":
        cfg.update(sliding_window=None)
    elif t == "qwen2":
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=spec.num_layers)
    elif t == "qwen3":
        cfg.update(attention_bias=False, use_sliding_window=False, sliding_window=None,
                   max_window_layers=spec.num_layers)
    elif t == "mixtral":
        assert spec.moe_ffn == spec.ffn
        cfg.update(num_local_experts=spec.num_experts, num_experts_per_tok=spec.topk,
                   router_aux_loss_coef=0.0, router_jitter_noise=0.0, sliding_window=None,
                   output_router_logits=False)
    elif t == "qwen3_moe":
        cfg.update(num_experts=spec.num_experts, num_experts_per_tok=spec.topk,
                   moe_intermediate_size=spec.moe_ffn,
                   # Megatron pre_softmax False (top-k logits, softmax over k) == renormalized
                   norm_topk_prob=not spec.moe_router_pre_softmax,
                   decoder_sparse_step=1, mlp_only_layers=[], attention_bias=False,
                   use_sliding_window=False, sliding_window=None, router_aux_loss_coef=0.0,
                   output_router_logits=False)
    else:
        raise ValueError(t)
    return cfg


def _hf_config_object(spec: FamilySpec, vocab_size: Optional[int] = None):
    from transformers import AutoConfig

    d = hf_config(spec, vocab_size)
    d = dict(d)
    mt = d.pop("model_type")
    return AutoConfig.for_model(mt, **d)


def make_hf_model(spec: FamilySpec, out_dir: str, seed: int = 0) -> str:
    """Tiny HF model from hf_config(spec) with random weights (norms 1+0.1*randn, biases
    nonzero), save_pretrained(safe_serialization=True). Returns out_dir."""
    from transformers import AutoModelForCausalLM

    cfg = _hf_config_object(spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed + 7919)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n or ".ln_" in n:
                if n.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif n.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif n.endswith("gate.weight"):  # MoE router
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / math.sqrt(spec.hidden)))
            else:
                fan_in = spec.hidden if p.dim() < 2 else _hf_fan_in(spec, n, p)
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


def _hf_fan_in(spec: FamilySpec, name: str, p: torch.Tensor) -> int:
    if spec.hf_model_type == "gpt2" and ("c_attn" in name or "c_fc" in name or "c_proj" in name):
        return p.shape[0]  # Conv1D stores [in, out]
    if p.dim() == 3:  # fused experts [E, out, in] (in memory)
        return p.shape[-1]
    return p.shape[-1]


def hf_logits(model_dir: str, tokens: torch.Tensor, return_info: bool = False):
    """from_pretrained (fp32, eager attention); asserts no missing / unexpected / mismatched
    keys; returns fp32 logits [b, s, vocab]."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k != "error_msgs"}
    assert not bad and not info.get("error_msgs"), f"{model_dir}: loading info {info}"
    model.eval()
    with torch.no_grad():
        b, s = tokens.shape
        out = model(input_ids=tokens, attention_mask=torch.ones(b, s, dtype=torch.long),
                    use_cache=False)
    logits = out.logits.float()
    return (logits, info) if return_info else logits
