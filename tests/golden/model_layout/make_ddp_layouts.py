#!/usr/bin/env python3
"""Dumps the REAL megatron-core DistributedDataParallel buffer layout of tiny GPTModels.

Writes ddp_layouts.json beside this script: for each case (family of
tests/interop/megatron_models.FAMILIES, local layer spec, TP1 PP1 DP1, one process on gloo, fp32
or bf16 params, overlap_grad_reduce with a small bucket size or one bucket) the model config in
ckptkit's ModelConfig field names, the chunk's named_parameters() (name, shape, allreduce,
shared_embedding) and every buffer DDP built: dtypes, numel, numel_unpadded, buckets
(offset, padded numel, numel_unpadded) and param_index_map (name -> start, end, bucket).
tests/unit/model/params_test.cc recomputes all of it with ckpt::model::ChunkParameters /
BuildBuffers. Multi-rank layouts (DP2, TP2, PP2, VPP, EP2) are in tests/golden/legacy/.

Run with the project venv (torch 2.13 CPU, megatron-core 0.16.1):
    .venv/bin/python tests/golden/model_layout/make_ddp_layouts.py
CPU shim: megatron_fixtures.install_cpu_cuda_shim + megatron_models.install_forward_shim
(torch.cuda.current_device() -> 'cpu' so DDP allocates its buffers on the CPU; nothing else).
"""
import json
import os
import sys

import torch
import torch.distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "interop"))
import megatron_fixtures as mf  # noqa: E402
import megatron_models as mm  # noqa: E402

CASES = [  # (family, params dtype, bucket size or None)
    ("llama", torch.float32, 6000),
    ("llama", torch.bfloat16, None),
    ("llama_tied", torch.float32, 5000),
    ("qwen2", torch.bfloat16, 7000),
    ("qwen3", torch.float32, 6000),
    ("gpt2", torch.float32, 9000),
    ("mixtral", torch.float32, 4000),
    ("qwen3_moe", torch.bfloat16, None),
]


def config_fields(spec, vocab_rows):
    return dict(
        num_layers=spec.num_layers, hidden_size=spec.hidden, ffn_hidden_size=spec.ffn,
        num_attention_heads=spec.heads, num_query_groups=spec.groups, kv_channels=spec.head_dim,
        padded_vocab_size=vocab_rows, max_position_embeddings=spec.max_positions,
        norm=spec.normalization, swiglu=spec.swiglu, add_bias_linear=spec.add_bias_linear,
        add_qkv_bias=spec.add_qkv_bias, qk_layernorm=spec.qk_layernorm,
        learned_positions=spec.position_embedding_type == "learned_absolute",
        tied_embeddings=spec.tied, num_experts=spec.num_experts or 0,
        moe_ffn_hidden_size=spec.moe_ffn or 0)


def main():
    mf.install_cpu_cuda_shim()
    mm.install_forward_shim()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(mf._free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state as ps
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.tensor_parallel import random as tp_random
    ps.initialize_model_parallel(1, 1)
    tp_random.initialize_rng_tracker(inference_rng_tracker=True)
    out = []
    for family, dtype, bucket in CASES:
        spec = mm.FAMILIES[family]
        vocab_rows = spec.padded_vocab(1)
        cfg, model = mm.build_model(spec, 1, 1, 1, vocab_rows)
        model = model.to(dtype)
        for p in model.parameters():
            p.requires_grad_(True)
        ddp_config = DistributedDataParallelConfig(
            use_distributed_optimizer=True, overlap_grad_reduce=bucket is not None,
            bucket_size=bucket, grad_reduce_in_fp32=True)
        ddp = DistributedDataParallel(cfg, ddp_config, model)
        names = {p: n for n, p in model.named_parameters()}
        buffers = []
        for b in list(ddp.buffers) + list(ddp.expert_parallel_buffers):
            buffers.append(dict(
                expert=b in ddp.expert_parallel_buffers,
                param_dtype=str(b.param_dtype), grad_dtype=str(b.grad_dtype),
                numel=b.numel, numel_unpadded=b.numel_unpadded,
                buckets=[[k.offset, k.grad_data.numel(), k.numel_unpadded] for k in b.buckets],
                params=[[names[p], *v] for p, v in b.param_index_map.items()]))
        out.append(dict(
            name=f"{family}_{str(dtype).split('.')[-1]}_bucket{bucket}",
            family=family, params_dtype=str(dtype).split(".")[-1], bucket_size=bucket,
            config=config_fields(spec, vocab_rows),
            named_parameters=[[n, list(p.shape), bool(getattr(p, "allreduce", True)),
                               bool(getattr(p, "shared_embedding", False))]
                              for n, p in model.named_parameters()],
            buffers=buffers))
    with open(os.path.join(HERE, "ddp_layouts.json"), "w") as f:
        json.dump(dict(generator="megatron-core " + __import__("megatron.core").core.__version__,
                       cases=out), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
