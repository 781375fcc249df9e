"""Writes examples/sample.pt: a tiny Llama-like model's state dict saved by real torch.

Run with the project venv: .venv/bin/python examples/make_sample.py
The file is committed; this script documents how it was made (torch 2.13.0, CPU).
It is a training-style checkpoint: model weights in bfloat16, a step counter, and
an argparse.Namespace of hyper-parameters (as Megatron's legacy files carry), so
`ckptkit inspect` has something to explain and `convert` something to refuse or drop.
"""
import argparse
import pathlib

import torch

torch.manual_seed(0)
hidden, ffn, layers, vocab, heads = 64, 176, 2, 256, 4

sd = {"model.embed_tokens.weight": torch.randn(vocab, hidden)}
for i in range(layers):
    p = f"model.layers.{i}."
    sd[p + "input_layernorm.weight"] = torch.ones(hidden)
    for n in ("q", "k", "v", "o"):
        sd[p + f"self_attn.{n}_proj.weight"] = torch.randn(hidden, hidden) * 0.02
    sd[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
    sd[p + "mlp.gate_proj.weight"] = torch.randn(ffn, hidden) * 0.02
    sd[p + "mlp.up_proj.weight"] = torch.randn(ffn, hidden) * 0.02
    sd[p + "mlp.down_proj.weight"] = torch.randn(hidden, ffn) * 0.02
sd["model.norm.weight"] = torch.ones(hidden)
sd["lm_head.weight"] = torch.randn(vocab, hidden) * 0.02
sd = {k: v.to(torch.bfloat16) for k, v in sd.items()}

args = argparse.Namespace(hidden_size=hidden, ffn_hidden_size=ffn, num_layers=layers,
                          num_attention_heads=heads, padded_vocab_size=vocab, bf16=True,
                          tensor_model_parallel_size=1, pipeline_model_parallel_size=1)
ckpt = {"model": sd, "iteration": 1000, "args": args, "checkpoint_version": 3.0}
out = pathlib.Path(__file__).with_name("sample.pt")
torch.save(ckpt, out)
print(f"wrote {out} ({out.stat().st_size} bytes), torch {torch.__version__}")
