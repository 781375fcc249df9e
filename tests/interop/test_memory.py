"""Bounded memory: `ckptkit convert` streams tensor by tensor.

A ~384 MiB checkpoint of 24 tensors of 16 MiB each is converted by the CLI in a
child process; its peak resident set (ru_maxrss of the child) must stay far
below the checkpoint's size: about one copy buffer plus the largest tensor, not
the file. torch.load of the same file, measured the same way, is the control:
it holds the whole state dict, so the measurement can tell the two apart.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import torch

MiB = 1 << 20
N_TENSORS = 24
TENSOR_BYTES = 16 * MiB
TOTAL = N_TENSORS * TENSOR_BYTES


def _peak_rss_of(cmd) -> int:
    """Runs cmd in a fresh child (via a wrapper process, so the children's
    maxrss accounts for this command only) and returns its peak RSS in bytes."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], check=True,
                         stdout=subprocess.PIPE, text=True)
    return int(out.stdout.strip().splitlines()[-1]) * 1024  # Linux: KiB


@pytest.fixture(scope="module")
def big_pt(tmp_path_factory):
    d = tmp_path_factory.mktemp("mem")
    g = torch.Generator().manual_seed(0)
    sd = {f"layer.{i}.weight": torch.randn(TENSOR_BYTES // 4, generator=g) for i in range(N_TENSORS)}
    path = d / "big.pt"
    torch.save(sd, path)
    del sd
    return path


@pytest.mark.parametrize("to,name", [("safetensors", "out.safetensors"), ("torch", "out.pt")])
def test_convert_peak_rss_is_bounded_by_a_tensor_not_the_file(big_pt, cli_path, to, name):
    out = big_pt.parent / name
    rss = _peak_rss_of([cli_path, "convert", str(big_pt), str(out), "--to", to, "-q"])
    assert out.stat().st_size >= TOTAL
    print(f"ckptkit convert --to {to}: peak RSS {rss / MiB:.1f} MiB for a {TOTAL / MiB:.0f} MiB file")
    # One 16 MiB tensor in flight plus an 8 MiB copy buffer and the binary's own
    # footprint: a sixth of the file (measured: about 11-21 MiB).
    assert rss < 64 * MiB, f"peak RSS {rss / MiB:.1f} MiB"


def _tree_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


@pytest.mark.parametrize("to", ["dcp", "torch_dist"])
def test_convert_to_dcp_with_writer_threads_is_bounded_too(big_pt, cli_path, to):
    # Four data files written at once: four tensors' streams in flight, each
    # through its own copy buffer and its file's two 4 MiB O_DIRECT write
    # buffers (one filling, one being written), still a third of the file
    # (measured: about 103 MiB; 71 through the page cache).
    out = big_pt.parent / f"out_{to}"
    rss = _peak_rss_of([cli_path, "convert", str(big_pt), str(out), "--to", to, "--thread-count", "4", "-q"])
    assert _tree_bytes(out) >= TOTAL
    print(f"ckptkit convert --to {to} --thread-count 4: peak RSS {rss / MiB:.1f} MiB for a {TOTAL / MiB:.0f} MiB file")
    assert rss < 128 * MiB, f"peak RSS {rss / MiB:.1f} MiB"


def test_control_torch_load_holds_the_whole_file(big_pt):
    rss = _peak_rss_of([sys.executable, "-c",
                        f"import torch; sd = torch.load({str(big_pt)!r}); print(len(sd))"])
    print(f"torch.load: peak RSS {rss / MiB:.1f} MiB")
    assert rss > TOTAL


# ---------------------------------------------------------------------------------------------
# Model conversion (HF <-> Megatron torch_dist): each output tensor is assembled from only the
# source rows it needs, so peak RSS stays about one tensor whatever the model size.
# ---------------------------------------------------------------------------------------------
HF_LAYERS, HF_HIDDEN, HF_FFN, HF_VOCAB = 4, 1024, 4096, 16000
HF_LARGEST = HF_VOCAB * HF_HIDDEN * 4  # the embedding / lm_head, fp32 (62.5 MiB)


@pytest.fixture(scope="module")
def big_hf(tmp_path_factory):
    """A Llama-shaped HF folder of ~370 MiB (fp32, random)."""
    import json

    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("hfmem") / "hf"
    d.mkdir()
    g = torch.Generator().manual_seed(1)
    heads, groups, hd = 16, 4, 64
    sd = {"model.embed_tokens.weight": torch.randn(HF_VOCAB, HF_HIDDEN, generator=g),
          "lm_head.weight": torch.randn(HF_VOCAB, HF_HIDDEN, generator=g),
          "model.norm.weight": torch.randn(HF_HIDDEN, generator=g)}
    for i in range(HF_LAYERS):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.randn(HF_HIDDEN, generator=g)
        sd[p + "post_attention_layernorm.weight"] = torch.randn(HF_HIDDEN, generator=g)
        sd[p + "self_attn.q_proj.weight"] = torch.randn(heads * hd, HF_HIDDEN, generator=g)
        sd[p + "self_attn.k_proj.weight"] = torch.randn(groups * hd, HF_HIDDEN, generator=g)
        sd[p + "self_attn.v_proj.weight"] = torch.randn(groups * hd, HF_HIDDEN, generator=g)
        sd[p + "self_attn.o_proj.weight"] = torch.randn(HF_HIDDEN, heads * hd, generator=g)
        sd[p + "mlp.gate_proj.weight"] = torch.randn(HF_FFN, HF_HIDDEN, generator=g)
        sd[p + "mlp.up_proj.weight"] = torch.randn(HF_FFN, HF_HIDDEN, generator=g)
        sd[p + "mlp.down_proj.weight"] = torch.randn(HF_HIDDEN, HF_FFN, generator=g)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    total = sum(t.numel() * 4 for t in sd.values())
    del sd
    (d / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": HF_VOCAB,
        "hidden_size": HF_HIDDEN, "intermediate_size": HF_FFN, "num_hidden_layers": HF_LAYERS,
        "num_attention_heads": heads, "num_key_value_heads": groups, "head_dim": hd,
        "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float32"}))
    return d, total


def test_hf_model_conversion_both_ways_is_bounded_by_a_tensor(big_hf, cli_path):
    hf, total = big_hf
    meg = hf.parent / "meg"
    rss_in = _peak_rss_of([cli_path, "convert", str(hf), str(meg), "--to", "torch_dist", "--tp", "2",
                           "--pp", "2", "-q"])
    out = hf.parent / "hf_out"
    rss_out = _peak_rss_of([cli_path, "convert", str(meg), str(out), "--to", "hf", "-q"])
    assert (out / "model.safetensors").stat().st_size >= total
    bound = 2 * HF_LARGEST + 64 * MiB
    print(f"HF -> torch_dist: peak RSS {rss_in / MiB:.1f} MiB; torch_dist -> HF: {rss_out / MiB:.1f} MiB "
          f"for {total / MiB:.0f} MiB of weights (largest tensor {HF_LARGEST / MiB:.1f} MiB, bound "
          f"{bound / MiB:.0f} MiB)")
    assert rss_in < bound, f"HF -> torch_dist peak RSS {rss_in / MiB:.1f} MiB"
    assert rss_out < bound, f"torch_dist -> HF peak RSS {rss_out / MiB:.1f} MiB"
    # The weights came back bit for bit (the round trip passes through Megatron's layout).
    from safetensors import safe_open

    with safe_open(str(hf / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
