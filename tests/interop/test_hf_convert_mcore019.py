"""Megatron <-> HF with the megatron-core 0.19 layout, against real megatron-core 0.19.2.

0.19 keeps the common state inside DCP (`common_state/shard_0_1`, no common.pt). A family is
saved by REAL megatron-core 0.19.2 (the second venv, CKPTKIT_MCORE019_PYTHON, set by
scripts/test.sh) with its own forward logits; `ckptkit convert --to hf` of that checkpoint must
give transformers the same logits. The reverse writes the 0.19 layout (the default) and 0.19.2
loads it into GPTModel with HF's logits. Skipped when the 0.19 venv is not set up.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch

import megatron_models as mm

MC019 = os.environ.get("CKPTKIT_MCORE019_PYTHON", "")
needs_019 = pytest.mark.skipif(not MC019, reason="CKPTKIT_MCORE019_PYTHON (megatron-core 0.19.2 venv) not set")
HERE = os.path.dirname(os.path.abspath(__file__))


def _in_019(code: str) -> None:
    r = subprocess.run([MC019, "-c", code], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"megatron-core 0.19.2 run failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


@needs_019
@pytest.mark.parametrize("family", ["qwen3_moe", "llama_tied"])
def test_019_checkpoint_to_hf_logits(family, run_cli, tmp_path):
    spec = mm.FAMILIES[family]
    root = tmp_path / "meg019"
    _in_019(f"import megatron_models as mm; mm.save_family(mm.FAMILIES[{family!r}], {str(root)!r})")
    it = root / "iter_0000010"
    assert not (it / "common.pt").exists(), "0.19.2 should keep the common state inside DCP"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(mm.hf_config(spec, spec.vocab)))
    out = tmp_path / "hf"
    r = run_cli("convert", str(root), str(out), "--to", "hf", "--hf-config", str(cfg), timeout=300)
    assert r.returncode == 0, r
    ref = torch.load(root / "reference.pt")
    got = mm.hf_logits(str(out), ref["tokens"])
    want = ref["logits"][..., : spec.vocab]
    d = (got.double() - want.double()).abs().max().item()
    print(f"{family} (megatron-core 0.19.2 save) -> HF: max |dlogit| {d:.3e}")
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), d


@needs_019
def test_hf_to_019_layout_loads_in_megatron_019(run_cli, tmp_path):
    spec = mm.FAMILIES["qwen2"]
    hf = tmp_path / "hf"
    mm.make_hf_model(spec, str(hf), seed=5)
    tokens = mm.fixed_tokens(spec)
    want = mm.hf_logits(str(hf), tokens)
    root = tmp_path / "meg"
    r = run_cli("convert", str(hf), str(root), "--to", "torch_dist", "--tp", "2", "--pp", "2", timeout=300)
    assert r.returncode == 0, r
    assert not (root / "iter_0000000" / "common.pt").exists()  # the 0.19 layout (default)
    logits = tmp_path / "logits.pt"
    _in_019(
        "import torch, megatron_models as mm\n"
        f"spec = mm.FAMILIES['qwen2']\n"
        f"out = mm.megatron_forward_from_checkpoint({str(root)!r}, spec, tp=2, pp=2)\n"
        f"torch.save(out, {str(logits)!r})\n")
    got = torch.load(logits)[..., : spec.vocab]
    d = (got.double() - want.double()).abs().max().item()
    print(f"HF -> torch_dist (0.19 layout) -> megatron-core 0.19.2 GPTModel: max |dlogit| {d:.3e}")
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), d


def test_python_api_converts_both_ways(tmp_path):
    """ckptkit.convert(to="hf") / (to="torch_dist", tp=, pp=): the same C++ path as the CLI (no
    second writer in Python); the round trip HF -> Megatron -> HF is bit-exact."""
    import ckptkit
    from safetensors import safe_open

    spec = mm.FAMILIES["llama_tied"]
    hf = tmp_path / "hf"
    mm.make_hf_model(spec, str(hf), seed=3)
    meg = tmp_path / "meg"
    r = ckptkit.convert(hf, meg, to="torch_dist", tp=2, pp=2, megatron_version="0.16")
    assert r["files"][-1].endswith("latest_checkpointed_iteration.txt"), r["files"]
    out = tmp_path / "hf2"
    r = ckptkit.convert(meg, out, to="hf", hf_config=hf / "config.json")
    assert any("not converted" in w or "family" in w for w in r["warnings"]), r["warnings"]
    with safe_open(str(hf / "model.safetensors"), "pt") as a, safe_open(str(out / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            assert torch.equal(a.get_tensor(k), b.get_tensor(k)), k
    with pytest.raises(Exception, match="hf_config"):
        ckptkit.convert(hf, tmp_path / "x", to="safetensors", hf_config=hf / "config.json")
