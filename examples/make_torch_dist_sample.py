#!/usr/bin/env python3
"""Writes examples/torch_dist/: a tiny Llama-like Megatron-Core `torch_dist` checkpoint.

Made by the REAL megatron-core (0.16.x from PyPI) on CPU with 8 gloo ranks:
  * GPTModel with the local (no Transformer Engine) layer spec: RMSNorm, SwiGLU, GQA
    (4 heads, 2 query groups), RoPE, untied embeddings, bf16 params;
    hidden 64, 4 layers, vocab 256, ffn 176 (Llama's 8/3*64=171 -> 172, padded to 176).
  * TP2 x PP2 x DP2 (world size 8), fully parallel save (Megatron-LM's default), sync.
  * Optimizer state in the DistributedOptimizer 'fully_reshardable' on-disk form
    (optimizer.state.{param,exp_avg,exp_avg_sq}.<model key>, fp32). The real
    DistributedOptimizer needs CUDA to be constructed, so these tensors are built from the real
    model sharded state dict with megatron's make_sharded_optimizer_tensor; the values are
    deterministic stand-ins (param = fp32 copy of the weight, exp_avg = 0.1*w, exp_avg_sq =
    0.01*w^2).
  * Megatron-LM layout: torch_dist/iter_0000010/ + torch_dist/latest_checkpointed_iteration.txt
    (reproduced by hand: megatron/training is not part of megatron-core).
Deterministic seeds (torch.manual_seed(1234) before model construction).

Run from the repository root: .venv/bin/python examples/make_torch_dist_sample.py [OUT_DIR]
(needs: pip install megatron-core==0.16.1 psutil==7.2.2; about 2 minutes on 2 cores)
"""

import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "interop"))

import megatron_fixtures as mf  # noqa: E402


def main() -> None:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "torch_dist")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    spec = mf.GPTSpec(
        root=out, iteration=10, tp=2, pp=2, num_layers=4, hidden=64, heads=4, groups=2,
        ffn=176, vocab=256, seq=32, bf16=True, optim="fully_reshardable", fully_parallel=True,
        seed=1234,
    )
    mf.run_ranks(8, mf.save_gpt, spec)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    print(f"wrote {out} ({total} bytes)")


if __name__ == "__main__":
    main()
