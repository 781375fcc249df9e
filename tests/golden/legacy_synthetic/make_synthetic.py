"""Writes small synthetic Megatron LEGACY (`--ckpt-format torch`) checkpoints
read by tests/unit/megatron/legacy_test.cc and tests/unit/checkpoint/legacy_reader_test.cc.

Run with the project venv (torch 2.13, CPython 3.11):
    /work/main/.venv/bin/python tests/golden/legacy_synthetic/make_synthetic.py

These are NOT written by Megatron: no GPU, no process groups. They are real
torch.save files of dicts built in the exact structure Megatron's code writes
(the real-Megatron goldens live in tests/golden/legacy/, made elsewhere):

  folders    megatron/training/checkpointing.py get_checkpoint_name:
             iter_{:07d} | release / mp_rank_{tp:02d}[_{pp:03d}][_{ep:03d}], the _PPP
             part iff PP > 1, the _EEE part iff EP > 1; get_distributed_optimizer_
             checkpoint_name: distrib_optim.pt beside model_optim_rng.pt.
  model_optim_rng.pt
             checkpointing.py generate_state_dict + save_checkpoint: args,
             checkpoint_version 3.0, iteration, model / model0..N (VPP), optimizer,
             opt_param_scheduler, rng_state (list of dicts), rerun_state_machine,
             num_floating_point_operations_so_far.
  optimizer  megatron/core/optimizer/optimizer.py Float16OptimizerWithFloat16Params
             .state_dict ({optimizer, grad_scaler, fp32_from_fp16_params});
             distrib_optimizer.py DistributedOptimizer.state_dict ({optimizer:
             {param_groups without params}, grad_scaler}); ChainedOptimizer.state_dict
             (a list when more than one sub-optimizer).
  distrib_optim.pt
             format C: distrib_optimizer.py get_parameter_state_dp_zero
               {"buckets_coalesced": True, gbuf_idx: {(param_dtype, grad_dtype):
                {"param", "exp_avg", "exp_avg_sq": fp32 [numel_unpadded], "numel_unpadded"}}}
             ChainedOptimizer.save_parameter_state: [state or None, ...]
             format B (core 0.6): per_bucket_numel / per_bucket_numel_unpadded plus
               gbuf_idx: {dt: {key: [one tensor per bucket, padded length]}}
             format A (core <= 0.5): gbuf_idx: {torch.float32: {key: [per bucket]}}
               (what load_parameter_state_from_dp_zero_legacy indexes).

Buffer sizes follow the layout loop of docs/megatron-format.md §5.4 (params in
reverse order, starts 64-aligned, one bucket) so the numbers look real; nothing
here checks that mapping. Deterministic: fixed seeds, fixed rng states.
"""
import argparse
import os
import shutil

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
BF16_FP32 = (torch.bfloat16, torch.float32)


def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def rand(shape, dtype, g):
    return torch.randn(shape, generator=g).to(dtype)


def args_ns(**kw):
    base = dict(
        num_layers=2, hidden_size=8, ffn_hidden_size=16, num_attention_heads=2,
        num_query_groups=2, kv_channels=4, seq_length=16, max_position_embeddings=16,
        padded_vocab_size=32, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
        expert_model_parallel_size=1, expert_tensor_parallel_size=1,
        virtual_pipeline_model_parallel_size=None, context_parallel_size=1,
        data_parallel_size=1, world_size=1, num_experts=None, use_distributed_optimizer=False,
        optimizer="adam", bf16=True, fp16=False, params_dtype=torch.bfloat16,
        ckpt_format="torch", normalization="RMSNorm", swiglu=True,
        position_embedding_type="rope", untie_embeddings_and_output_weights=True,
        add_bias_linear=False, save="/tmp/ckpt", load=None, iteration=0,
    )
    base.update(kw)
    return argparse.Namespace(**base)


def rng_state():
    # checkpointing.py get_rng_state: a list (one per DP rank with
    # --data-parallel-random-init, else one) of these dicts. Fixed values.
    torch.manual_seed(1234)
    return [{
        "random_rng_state": (3, tuple(range(8)), None),
        "np_rng_state": ("MT19937", [0, 1, 2, 3], 624, 0, 0.0),
        "torch_rng_state": torch.get_rng_state()[:64].clone(),
        "cuda_rng_state": torch.get_rng_state()[:64].clone(),
        "rng_tracker_states": {},
    }]


def layer_params(prefix, cfg, tp, dtype, g, experts_local=0, dense_mlp=True):
    """A TE GPT layer's TP-local params (registration order)."""
    h, f = cfg["hidden"], cfg["ffn"]
    qkv_rows = (cfg["heads"] + 2 * cfg["groups"]) * cfg["kv"] // tp
    p = {}
    # Values drawn in a fixed order; keys inserted in megatron-core's registration order
    # (SelfAttention: linear_proj is built by Attention.__init__, before linear_qkv), which is the
    # order DistributedDataParallel lays the buffers out in (checked on real files, tests/golden/legacy).
    qkv_ln = rand([h], dtype, g)
    qkv_w = rand([qkv_rows, h], dtype, g)
    p[f"{prefix}.self_attention.linear_proj.weight"] = rand([h, cfg["heads"] * cfg["kv"] // tp], dtype, g)
    p[f"{prefix}.self_attention.linear_qkv.layer_norm_weight"] = qkv_ln
    p[f"{prefix}.self_attention.linear_qkv.weight"] = qkv_w
    if dense_mlp:
        p[f"{prefix}.mlp.linear_fc1.layer_norm_weight"] = rand([h], dtype, g)
        p[f"{prefix}.mlp.linear_fc1.weight"] = rand([2 * f // tp, h], dtype, g)
        p[f"{prefix}.mlp.linear_fc2.weight"] = rand([h, f // tp], dtype, g)
    else:
        p[f"{prefix}.pre_mlp_layernorm.weight"] = rand([h], dtype, g)
        p[f"{prefix}.mlp.router.weight"] = rand([cfg["experts"], h], dtype, g)  # params dtype, as megatron-core builds it
        for j in range(experts_local):
            e = f"{prefix}.mlp.experts.local_experts.{j}"
            p[f"{e}.linear_fc1.weight"] = rand([2 * f, h], dtype, g)
            p[f"{e}.linear_fc2.weight"] = rand([h, f], dtype, g)
    return p


def extra_state():
    # TE get_extra_state: a uint8 tensor (empty when FP8 is off).
    return torch.empty(0, dtype=torch.uint8)


def model_chunk(cfg, tp, pp_rank, pp, layers_per_chunk, g, first=True, last=True, moe_local=0):
    sd = {}
    dtype = torch.bfloat16
    if first:
        sd["embedding.word_embeddings.weight"] = rand([cfg["vocab"] // tp, cfg["hidden"]], dtype, g)
    for i in range(layers_per_chunk):
        sd.update(layer_params(f"decoder.layers.{i}", cfg, tp, dtype, g, experts_local=moe_local,
                               dense_mlp=moe_local == 0))
        sd[f"decoder.layers.{i}.self_attention.core_attention._extra_state"] = extra_state()
    if last:
        sd["decoder.final_layernorm.weight"] = rand([cfg["hidden"]], dtype, g)
        sd["output_layer.weight"] = rand([cfg["vocab"] // tp, cfg["hidden"]], dtype, g)
    return sd


def params_of(sd, pred=lambda k: True):
    return [(k, v) for k, v in sd.items() if not k.endswith("._extra_state") and pred(k)]


def buffer_numel_unpadded(params):
    """§5.4 layout loop, one bucket, core >= 0.8: reversed order, 64-aligned starts."""
    cursor = 0
    end = 0
    for _, p in reversed(params):
        start = -(-cursor // 64) * 64
        end = start + p.numel()
        cursor = end
    return end


def param_groups(distributed, n_params):
    groups = []
    for wd in (0.0, 0.1):
        gr = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": wd,
              "amsgrad": False, "foreach": None, "maximize": False, "capturable": False,
              "differentiable": False, "fused": None, "wd_mult": 1.0 if wd else 0.0,
              "lr_mult": 1.0, "is_expert_parallel": False, "is_decoupled_lr": False}
        if distributed:
            gr["step"] = 10  # DistributedOptimizer.state_dict keeps 'step' in the group
        else:
            gr["params"] = list(range(n_params)) if wd else []
        groups.append(gr)
    return groups


def grad_scaler():
    return None  # bf16: no grad scaler (Float16Optimizer stores None)


def dist_optimizer_sd(n_params):
    # DistributedOptimizer.state_dict: 'optimizer' without 'state', param groups without 'params'.
    return {"optimizer": {"param_groups": param_groups(True, n_params)}, "grad_scaler": grad_scaler()}


def fp16_optimizer_sd(params, g):
    # Float16OptimizerWithFloat16Params.state_dict.
    state = {}
    fp32 = []
    for i, (_, p) in enumerate(params):
        state[i] = {"step": torch.tensor(10.0), "exp_avg": rand(list(p.shape), torch.float32, g),
                    "exp_avg_sq": rand(list(p.shape), torch.float32, g).abs()}
        fp32.append(p.float().clone())
    return {"optimizer": {"state": state, "param_groups": param_groups(False, len(params))},
            "grad_scaler": grad_scaler(), "fp32_from_fp16_params": [[], fp32]}


def world_state(numel, g, keys=("param", "exp_avg", "exp_avg_sq")):
    # get_parameter_state_dp_zero: fp32 CPU world tensors of numel_unpadded.
    d = {k: rand([numel], torch.float32, g) for k in keys}
    d["numel_unpadded"] = numel
    return d


def format_c(buffers, g):
    """buffers: list of numel_unpadded, one (bf16, fp32) buffer each."""
    state = {"buckets_coalesced": True}
    for i, n in enumerate(buffers):
        state[i] = {BF16_FP32: world_state(n, g)}
    return state


def common(args, iteration, optimizer, chunks):
    sd = {"args": args, "checkpoint_version": 3.0, "iteration": iteration}
    sd.update(chunks)
    if optimizer is not None:
        sd["optimizer"] = optimizer
    sd["opt_param_scheduler"] = {"max_lr": 3e-4, "lr_warmup_steps": 0, "num_steps": iteration * 4,
                                 "lr_decay_style": "cosine", "lr_decay_steps": 100, "min_lr": 3e-5,
                                 "start_wd": 0.1, "end_wd": 0.1, "wd_incr_style": "constant",
                                 "wd_incr_steps": 100}
    sd["rng_state"] = rng_state()
    sd["rerun_state_machine"] = {"mode": "disabled", "rerun_requested": False}
    sd["num_floating_point_operations_so_far"] = 1.5e12
    return sd


def tracker(root, text):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(text)


def rank_dir(iter_dir, tp, pp, ep, pp_size, ep_size):
    # get_checkpoint_name.
    name = f"mp_rank_{tp:02d}" if pp_size == 1 else f"mp_rank_{tp:02d}_{pp:03d}"
    if ep_size > 1:
        name += f"_{ep:03d}"
    d = os.path.join(iter_dir, name)
    os.makedirs(d, exist_ok=True)
    return d


CFG = dict(hidden=8, ffn=16, heads=2, groups=2, kv=4, vocab=32, experts=4)


def make_tp2pp2_distopt(out):
    """TP=2 PP=2 DP=2, distributed optimizer, format C."""
    root = os.path.join(out, "tp2pp2_distopt")
    it = os.path.join(root, "iter_0000010")
    tracker(root, "10")
    args = args_ns(tensor_model_parallel_size=2, pipeline_model_parallel_size=2, data_parallel_size=2,
                   world_size=8, use_distributed_optimizer=True, iteration=10)
    for pp in range(2):
        for tp in range(2):
            g = gen(100 + 10 * pp + tp)
            sd = model_chunk(CFG, 2, pp, 2, 1, g, first=pp == 0, last=pp == 1)
            params = params_of(sd)
            d = rank_dir(it, tp, pp, 0, 2, 1)
            torch.save(common(args, 10, dist_optimizer_sd(len(params)), {"model": sd}),
                       os.path.join(d, "model_optim_rng.pt"))
            torch.save(format_c([buffer_numel_unpadded(params)], g), os.path.join(d, "distrib_optim.pt"))


def make_ep2_chained(out):
    """TP=1 PP=1 EP=2 DP=2 MoE: ChainedOptimizer (dense, expert), distrib_optim lists."""
    root = os.path.join(out, "ep2_chained")
    it = os.path.join(root, "iter_0000020")
    tracker(root, "20")
    args = args_ns(num_layers=1, expert_model_parallel_size=2, data_parallel_size=2, world_size=2, num_experts=4,
                   use_distributed_optimizer=True, iteration=20)
    for ep in range(2):
        g = gen(200 + ep)
        sd = model_chunk(CFG, 1, 0, 1, 1, g, moe_local=2)
        dense = params_of(sd, lambda k: ".experts." not in k)
        expert = params_of(sd, lambda k: ".experts." in k)
        d = rank_dir(it, 0, 0, ep, 1, 2)
        opt = [dist_optimizer_sd(len(dense)), dist_optimizer_sd(len(expert))]
        torch.save(common(args, 20, opt, {"model": sd}), os.path.join(d, "model_optim_rng.pt"))
        # Dense DP group = both ranks: only EP rank 0 is dense DP rank 0. Expert DP size 1.
        dense_state = format_c([buffer_numel_unpadded(dense)], g) if ep == 0 else None
        expert_state = format_c([buffer_numel_unpadded(expert)], g)
        torch.save([dense_state, expert_state], os.path.join(d, "distrib_optim.pt"))


def make_pp2_vpp2_fp16opt(out):
    """TP=1 PP=2 VPP=2, non-distributed optimizer, release folder."""
    root = os.path.join(out, "pp2_vpp2_fp16opt")
    it = os.path.join(root, "release")
    tracker(root, "release")
    args = args_ns(num_layers=4, pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2,
                   world_size=2, iteration=5)
    for pp in range(2):
        g = gen(300 + pp)
        chunks = {}
        params = []
        for v in range(2):
            sd = model_chunk(CFG, 1, pp, 2, 1, g, first=(pp == 0 and v == 0), last=(pp == 1 and v == 1))
            chunks[f"model{v}"] = sd
            params += params_of(sd)
        d = rank_dir(it, 0, pp, 0, 2, 1)
        torch.save(common(args, 5, fp16_optimizer_sd(params, g), chunks), os.path.join(d, "model_optim_rng.pt"))


def make_broken(out):
    """TP=4, distributed optimizer: mp_rank_01 lacks distrib_optim.pt, mp_rank_02's
    exp_avg is shorter than numel_unpadded, mp_rank_03 is missing, mp_rank_07 is not
    in the grid."""
    root = os.path.join(out, "broken")
    it = os.path.join(root, "iter_0000030")
    tracker(root, "30")
    args = args_ns(tensor_model_parallel_size=4, data_parallel_size=1, world_size=4,
                   use_distributed_optimizer=True, iteration=30)
    for tp in (0, 1, 2, 7):
        g = gen(400 + tp)
        sd = model_chunk(CFG, 4 if tp < 4 else 4, 0, 1, 1, g)
        params = params_of(sd)
        d = rank_dir(it, tp, 0, 0, 1, 1)
        torch.save(common(args, 30, dist_optimizer_sd(len(params)), {"model": sd}),
                   os.path.join(d, "model_optim_rng.pt"))
        if tp == 1:
            continue
        st = format_c([buffer_numel_unpadded(params)], g)
        if tp == 2:
            st[0][BF16_FP32]["exp_avg"] = st[0][BF16_FP32]["exp_avg"][:-16].clone()
        torch.save(st, os.path.join(d, "distrib_optim.pt"))


def make_distrib_optim_files(out):
    d = os.path.join(out, "distrib_optim")
    os.makedirs(d, exist_ok=True)
    g = gen(500)
    # C: two buffers (bf16 dense, fp32 e.g. router), Lion-like state with exp_avg only in buffer 1.
    c = {"buckets_coalesced": True,
         0: {BF16_FP32: world_state(1216, g)},
         1: {(torch.float32, torch.float32): world_state(40, g, keys=("param", "exp_avg"))}}
    torch.save(c, os.path.join(d, "format_c.pt"))
    # B (core 0.6): two buckets, tensors of the padded bucket length.
    padded, unpadded = [256, 128], [250, 100]
    b = {"per_bucket_numel": [{BF16_FP32: padded}], "per_bucket_numel_unpadded": [{BF16_FP32: unpadded}],
         0: {BF16_FP32: {k: [rand([n], torch.float32, g) for n in padded]
                         for k in ("param", "exp_avg", "exp_avg_sq")}}}
    torch.save(b, os.path.join(d, "format_b.pt"))
    # A (core <= 0.5): grad dtype key, per-bucket lists, no per_bucket_numel*.
    a = {0: {torch.float32: {k: [rand([n], torch.float32, g) for n in (96, 64)]
                             for k in ("param", "exp_avg", "exp_avg_sq")}}}
    torch.save(a, os.path.join(d, "format_a.pt"))
    # ChainedOptimizer: [dense, None, expert].
    chained = [{"buckets_coalesced": True, 0: {BF16_FP32: world_state(128, g)}}, None,
               {"buckets_coalesced": True, 0: {BF16_FP32: world_state(64, g)}}]
    torch.save(chained, os.path.join(d, "chained.pt"))
    # C with exp_avg 1200 long where numel_unpadded says 1216.
    m = {"buckets_coalesced": True, 0: {BF16_FP32: world_state(1216, g)}}
    m[0][BF16_FP32]["exp_avg"] = rand([1200], torch.float32, g)
    torch.save(m, os.path.join(d, "mismatch_c.pt"))
    # B whose bucket 1 tensor is shorter than per_bucket_numel says.
    mb = {"per_bucket_numel": [{BF16_FP32: padded}], "per_bucket_numel_unpadded": [{BF16_FP32: unpadded}],
          0: {BF16_FP32: {k: [rand([n], torch.float32, g) for n in (256, 120)]
                          for k in ("param", "exp_avg", "exp_avg_sq")}}}
    torch.save(mb, os.path.join(d, "mismatch_b.pt"))


def main():
    for name in os.listdir(HERE):
        p = os.path.join(HERE, name)
        if os.path.isdir(p):
            shutil.rmtree(p)
    make_tp2pp2_distopt(HERE)
    make_ep2_chained(HERE)
    make_pp2_vpp2_fp16opt(HERE)
    make_broken(HERE)
    make_distrib_optim_files(HERE)
    with open(os.path.join(HERE, "VERSIONS"), "w") as f:
        f.write(f"torch {torch.__version__.split('+')[0]}\nwritten by make_synthetic.py, not by Megatron\n")


if __name__ == "__main__":
    main()
