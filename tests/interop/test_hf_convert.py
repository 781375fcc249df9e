"""`ckptkit convert --to hf` (Megatron-Core torch_dist -> HuggingFace safetensors) and
`ckptkit convert HF_DIR OUT --to torch_dist --tp N --pp N [--ep N]` against the real frameworks.

Megatron -> HF: a tiny real GPTModel of each family (tests/interop/megatron_models.py FAMILIES)
is saved by real megatron-core 0.16.1 from 4 gloo ranks (dense TP2 x PP2, MoE TP2 x PP2 x EP2
ETP1) with Megatron's own forward logits as the reference. ckptkit converts it; transformers
loads the output (no missing / unexpected / mismatched keys) and its logits must equal
Megatron's on the real vocab.

HF -> Megatron: a tiny random transformers model is converted to torch_dist at TP2 x PP2
(MoE: EP2 too), loaded by real megatron-core (dist_checkpointing.load + strict
load_state_dict) into a GPTModel at TP2 x PP2, whose logits must equal transformers'.

Bad input exits 1 or 2, names what is wrong and leaves no OUT behind.

Saved checkpoints are cached per session (set CKPTKIT_HF_CONVERT_CACHE=DIR to keep them
across sessions). Run: .venv/bin/python -m pytest tests/interop/test_hf_convert.py
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

pytest.importorskip("megatron.core")
pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402

import megatron_models as mm  # noqa: E402

FAMILY_NAMES = list(mm.FAMILIES)
MOE_EP = 2
ATOL = 1e-4
RTOL = 1e-4


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------
_SAVED: dict = {}


@pytest.fixture(scope="session")
def megatron_root(tmp_path_factory):
    """megatron_root(name, layout=None) -> Megatron-LM root of that family, saved once per
    session; layout (tp, pp, ep) defaults to the family's (dense TP2 PP2, MoE TP2 PP2 EP2)."""
    cache = os.environ.get("CKPTKIT_HF_CONVERT_CACHE")

    def get(name: str, layout=None) -> str:
        spec = mm.FAMILIES[name]
        layout = tuple(layout or spec.default_parallel())
        tag = f"{name}_tp{layout[0]}pp{layout[1]}ep{layout[2]}"
        if tag in _SAVED:
            return _SAVED[tag]
        if cache:
            root = os.path.join(cache, f"mc_{tag}")
            if not os.path.exists(os.path.join(root, "reference.pt")):
                shutil.rmtree(root, ignore_errors=True)
                mm.save_family(spec, root, *layout)
        else:
            root = str(tmp_path_factory.mktemp(f"mc_{tag}"))
            mm.save_family(spec, root, *layout)
        _SAVED[tag] = root
        return root

    return get


@pytest.fixture(scope="session")
def hf_expected(tmp_path_factory):
    """hf_expected(name) -> {tensor name: (dtype, shape)} that transformers' own
    save_pretrained writes for the family (the on-disk names)."""
    memo = {}

    def get(name: str):
        if name not in memo:
            d = str(tmp_path_factory.mktemp(f"hfref_{name}"))
            mm.make_hf_model(mm.FAMILIES[name], d, seed=0)
            memo[name] = read_safetensors_dir(d, check=True)[1]
        return memo[name]

    return get


def read_safetensors_dir(out: str, check: bool = True):
    """All tensors of an HF folder: ({name: tensor}, {name: (dtype, shape)}). Checks the
    single-file / index layout: every file in the index exists, every tensor is mapped to the
    file holding it, total_size = sum of tensor bytes, no stray safetensors files."""
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    index_path = os.path.join(out, "model.safetensors.index.json")
    tensors, meta = {}, {}
    where = {}
    for fn in files:
        with safe_open(os.path.join(out, fn), framework="pt") as f:
            md = f.metadata()
            if check:
                assert md is not None and md.get("format") == "pt", \
                    f"{fn}: __metadata__ {md!r} lacks format=pt"
            for k in f.keys():
                assert k not in tensors, f"{k} in two files"
                t = f.get_tensor(k)
                tensors[k] = t
                meta[k] = (str(t.dtype).replace("torch.", ""), tuple(t.shape))
                where[k] = fn
    if check:
        if os.path.exists(index_path):
            with open(index_path) as f:
                index = json.load(f)
            wm = index["weight_map"]
            assert set(wm) == set(tensors), \
                f"index vs files: only in index {sorted(set(wm) - set(tensors))[:5]}, " \
                f"only in files {sorted(set(tensors) - set(wm))[:5]}"
            for k, fn in wm.items():
                assert where[k] == fn, f"{k}: index says {fn}, found in {where[k]}"
            assert set(wm.values()) == set(files), f"stray or missing shards: {files}"
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            assert index["metadata"]["total_size"] == total, \
                f"index total_size {index['metadata']['total_size']} != {total}"
        else:
            assert files == ["model.safetensors"], f"no index but files {files}"
    return tensors, meta


def assert_failed_cleanly(r, out, *words):
    """Exit 1 or 2, a message naming one of `words`, no OUT (or partial OUT) left behind."""
    assert r.returncode in (1, 2), r
    msg = (r.stdout + r.stderr).lower()
    assert msg.strip(), f"no message: {r}"
    if words:
        assert any(w.lower() in msg for w in words), f"message names none of {words}: {r}"
    assert not os.path.exists(out), f"{out} left behind after a failed convert: " \
                                    f"{os.listdir(out) if os.path.isdir(out) else ''}"
    parent = os.path.dirname(str(out))
    leftovers = [f for f in os.listdir(parent) if os.path.basename(str(out)) in f]
    assert not leftovers, f"temporary output left behind: {leftovers}"


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_logits_close(got: torch.Tensor, want: torch.Tensor, what: str):
    assert got.shape == want.shape, f"{what}: logits shape {tuple(got.shape)} != " \
                                    f"{tuple(want.shape)}"
    d = max_diff(got, want)
    scale = want.abs().max().item()
    print(f"{what}: max |dlogit| = {d:.3e} (max |logit| {scale:.2f})")
    assert torch.allclose(got, want, atol=ATOL, rtol=RTOL), \
        f"{what}: max |dlogit| = {d:.3e} > atol {ATOL} / rtol {RTOL} (max |logit| {scale:.2f})"


def hf_config_args(spec, tmp_path, vocab_size=None, name="cfg.json"):
    path = tmp_path / name
    path.write_text(json.dumps(mm.hf_config(spec, vocab_size), indent=2))
    return path


def convert_to_hf(run_cli, root, out, spec, tmp_path, force_config=False, *extra):
    args = ["convert", root, out, "--to", "hf", *extra]
    if force_config or not spec.record_vocab_size:
        args += ["--hf-config", hf_config_args(spec, tmp_path)]
    return run_cli(*args, timeout=300)


ARCH_FIELDS = ("vocab_size", "tie_word_embeddings", "hidden_size", "intermediate_size",
               "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_act",
               "rms_norm_eps", "max_position_embeddings", "attention_bias", "mlp_bias",
               "num_local_experts", "num_experts_per_tok", "moe_intermediate_size",
               "norm_topk_prob", "decoder_sparse_step", "n_inner", "activation_function",
               "layer_norm_epsilon", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
               "reorder_and_upcast_attn", "partial_rotary_factor")


def _effective(cfg, field):
    """A config value as the modeling code uses it (defaults and equivalent spellings folded)."""
    if field == "head_dim":
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if field == "sliding_window":
        if getattr(cfg, "use_sliding_window", True) is False:
            return None
        return getattr(cfg, "sliding_window", None)
    if field == "mlp_only_layers":
        return list(getattr(cfg, "mlp_only_layers", None) or [])
    if field == "rope":
        rp = dict(getattr(cfg, "rope_parameters", None) or {})
        return (rp.get("rope_type", "default"), float(rp.get("rope_theta", 0.0)),
                rp.get("partial_rotary_factor", 1.0))
    return getattr(cfg, field, "<absent>")


def assert_config_matches(out, spec):
    """config.json, as transformers 5.23 reads it, describes the family's model (every field the
    modeling code of that family reads)."""
    from transformers import AutoConfig

    with open(os.path.join(out, "config.json")) as f:
        raw = json.load(f)
    assert raw.get("architectures") == [spec.hf_architecture], raw.get("architectures")
    assert raw.get("model_type") == spec.hf_model_type, raw.get("model_type")
    got = AutoConfig.from_pretrained(out)
    want = mm._hf_config_object(spec)
    assert type(got) is type(want), f"config class {type(got).__name__} != {type(want).__name__}"
    fields = [f for f in ARCH_FIELDS if hasattr(want, f)]
    fields += ["head_dim", "sliding_window"] if spec.hf_model_type != "gpt2" else []
    fields += ["mlp_only_layers"] if spec.hf_model_type == "qwen3_moe" else []
    fields += ["rope"] if spec.position_embedding_type == "rope" else []
    bad = {f: (_effective(got, f), _effective(want, f)) for f in fields
           if _effective(got, f) != _effective(want, f)}
    assert not bad, f"config.json fields (got, want): {bad}"


# ---------------------------------------------------------------------------------------------
# Megatron -> HF
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_megatron_to_hf_logits(family, megatron_root, hf_expected, run_cli, tmp_path):
    spec = mm.FAMILIES[family]
    root = megatron_root(family)
    ref = mm.load_reference(root)
    out = tmp_path / "hf"
    r = convert_to_hf(run_cli, root, out, spec, tmp_path)
    assert r.returncode == 0, r

    tensors, meta = read_safetensors_dir(str(out))
    want = hf_expected(family)
    assert set(meta) == set(want), \
        f"tensor names: missing {sorted(set(want) - set(meta))}, " \
        f"unexpected {sorted(set(meta) - set(want))}"
    for k, (dt, shape) in want.items():
        assert meta[k] == (dt, shape), f"{k}: {meta[k]} != transformers' {(dt, shape)}"
    if spec.tied:
        assert "lm_head.weight" not in tensors, "tied model must not carry lm_head.weight"
    for k, t in tensors.items():
        assert torch.isfinite(t).all(), f"{k} has non-finite values"
    assert_config_matches(str(out), spec)

    got = mm.hf_logits(str(out), ref["tokens"])  # asserts no missing/unexpected/mismatched
    V = spec.vocab
    assert ref["logits"].shape[-1] == spec.padded_vocab(2)
    assert_logits_close(got, ref["logits"][..., :V], f"{family} megatron->hf")


@pytest.mark.parametrize("family,layout", [("llama_tied", (1, 4, 1)), ("qwen3_moe", (1, 1, 4)),
                                           ("mixtral", (2, 1, 2))],
                         ids=["llama_tied-tp1pp4", "qwen3_moe-tp1pp1ep4dp4",
                              "mixtral-tp2pp1ep2dp2"])
def test_megatron_to_hf_other_layouts(family, layout, megatron_root, run_cli, tmp_path):
    """Other saving layouts: one layer per PP stage (tied embedding on stage 0 of 4), one expert
    per EP rank with DP replicas, PP1 with EP2 over DP2. Padded vocab follows the saving TP."""
    spec = mm.FAMILIES[family]
    root = megatron_root(family, layout)
    ref = mm.load_reference(root)
    assert ref["logits"].shape[-1] == spec.padded_vocab(layout[0])
    out = tmp_path / "hf"
    r = convert_to_hf(run_cli, root, out, spec, tmp_path)
    assert r.returncode == 0, r
    read_safetensors_dir(str(out))
    got = mm.hf_logits(str(out), ref["tokens"])
    assert_logits_close(got, ref["logits"][..., :spec.vocab], f"{family} {layout} megatron->hf")


def test_megatron_to_hf_sharded_index(megatron_root, run_cli, tmp_path):
    """--max-shard-size small enough for several shards: index consistent, logits equal."""
    spec = mm.FAMILIES["llama"]
    root = megatron_root("llama")
    ref = mm.load_reference(root)
    out = tmp_path / "hf"
    r = convert_to_hf(run_cli, root, out, spec, tmp_path, False, "--max-shard-size", "200KB")
    assert r.returncode == 0, r
    assert os.path.exists(out / "model.safetensors.index.json"), os.listdir(out)
    files = [f for f in os.listdir(out) if f.endswith(".safetensors")]
    assert len(files) > 1, files
    read_safetensors_dir(str(out))
    got = mm.hf_logits(str(out), ref["tokens"])
    assert_logits_close(got, ref["logits"][..., :spec.vocab], "llama sharded megatron->hf")


def test_megatron_to_hf_iter_dir_and_config_override(megatron_root, run_cli, tmp_path):
    """An iter_XXXXXXX folder works as input; --hf-config given although args.vocab_size is
    recorded (must agree) gives the same logits."""
    spec = mm.FAMILIES["llama"]
    root = megatron_root("llama")
    ref = mm.load_reference(root)
    out = tmp_path / "hf"
    r = convert_to_hf(run_cli, os.path.join(root, "iter_0000010"), out, spec, tmp_path, True)
    assert r.returncode == 0, r
    got = mm.hf_logits(str(out), ref["tokens"])
    assert_logits_close(got, ref["logits"][..., :spec.vocab], "llama iter-dir megatron->hf")


# ---------------------------------------------------------------------------------------------
# HF -> Megatron
# ---------------------------------------------------------------------------------------------
def convert_to_torch_dist(run_cli, hf_dir, out, spec, tp=2, pp=2):
    args = ["convert", hf_dir, out, "--to", "torch_dist", "--tp", tp, "--pp", pp,
            "--megatron-version", "0.16"]
    if spec.is_moe:
        args += ["--ep", MOE_EP]
    return run_cli(*args, timeout=300)


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_hf_to_torch_dist_logits(family, run_cli, tmp_path):
    spec = mm.FAMILIES[family]
    hf_dir = mm.make_hf_model(spec, str(tmp_path / "hf"), seed=spec.seed + 100)
    tokens = mm.fixed_tokens(spec)
    want = mm.hf_logits(hf_dir, tokens)
    out = tmp_path / "mc"
    r = convert_to_torch_dist(run_cli, hf_dir, out, spec)
    assert r.returncode == 0, r
    ep = MOE_EP if spec.is_moe else 1
    got, stray_keys = mm.megatron_forward_from_checkpoint(
        str(out), spec, tp=2, pp=2, ep=ep, tokens=tokens, return_unexpected=True)
    rows = got.shape[-1]
    assert rows >= spec.vocab and rows % 2 == 0, f"padded vocab {rows} (vocab {spec.vocab})"
    assert_logits_close(got[..., :spec.vocab], want, f"{family} hf->torch_dist TP2 PP2")
    shapes = mm.checkpoint_tensor_shapes(mm.resolve_iter_dir(str(out)))
    model_keys = {k for k in shapes if not k.startswith(("optimizer", "rng_state"))}
    stray = sorted(k for k in stray_keys if k in model_keys)
    assert not stray, f"checkpoint tensors no GPTModel parameter asked for: {stray}"
    if spec.tied:
        assert "output_layer.weight" not in shapes, "tied model must not write output_layer"


def test_hf_to_torch_dist_reshard_tp1_pp1(run_cli, tmp_path):
    """The TP2 x PP2 output also loads at TP1 x PP1 (real resharding load)."""
    spec = mm.FAMILIES["llama"]
    hf_dir = mm.make_hf_model(spec, str(tmp_path / "hf"), seed=5)
    tokens = mm.fixed_tokens(spec)
    want = mm.hf_logits(hf_dir, tokens)
    out = tmp_path / "mc"
    r = convert_to_torch_dist(run_cli, hf_dir, out, spec)
    assert r.returncode == 0, r
    got = mm.megatron_forward_from_checkpoint(str(out), spec, tp=1, pp=1, tokens=tokens)
    assert_logits_close(got[..., :spec.vocab], want, "llama hf->torch_dist loaded TP1 PP1")


def test_hf_to_torch_dist_common_state(run_cli, tmp_path):
    """What Megatron-LM's load_checkpoint reads from the common state is there and right."""
    spec = mm.FAMILIES["qwen3_moe"]
    hf_dir = mm.make_hf_model(spec, str(tmp_path / "hf"), seed=3)
    out = tmp_path / "mc"
    r = convert_to_torch_dist(run_cli, hf_dir, out, spec)
    assert r.returncode == 0, r
    ckpt = mm.resolve_iter_dir(str(out))
    assert ckpt != str(out), "expected a Megatron-LM root with a tracker"
    common = torch.load(os.path.join(ckpt, "common.pt"), weights_only=False)
    assert common.get("iteration") is not None and "checkpoint_version" in common, \
        sorted(common)
    a = vars(common["args"])
    want = dict(num_layers=spec.num_layers, hidden_size=spec.hidden,
                num_attention_heads=spec.heads, num_query_groups=spec.groups,
                kv_channels=spec.head_dim, num_experts=spec.num_experts,
                moe_router_topk=spec.topk, moe_ffn_hidden_size=spec.moe_ffn,
                qk_layernorm=True, swiglu=True, normalization="RMSNorm",
                untie_embeddings_and_output_weights=True, tensor_model_parallel_size=2,
                pipeline_model_parallel_size=2, expert_model_parallel_size=MOE_EP,
                vocab_size=spec.vocab, moe_router_pre_softmax=False)
    bad = {k: (a.get(k, "<absent>"), v) for k, v in want.items() if a.get(k, "<absent>") != v}
    assert not bad, f"args (got, want): {bad}"
    rows = mm.checkpoint_tensor_shapes(ckpt)["embedding.word_embeddings.weight"][0]
    assert a.get("padded_vocab_size") == rows, (a.get("padded_vocab_size"), rows)


def test_round_trip_megatron_hf_megatron(megatron_root, run_cli, tmp_path):
    """Megatron -> HF -> torch_dist (TP2 x PP2 x EP2): Megatron's forward of the result equals
    the original reference (MoE: expert numbering and [gate; up] survive both ways)."""
    spec = mm.FAMILIES["qwen3_moe"]
    root = megatron_root("qwen3_moe")
    ref = mm.load_reference(root)
    hf = tmp_path / "hf"
    r = convert_to_hf(run_cli, root, hf, spec, tmp_path)
    assert r.returncode == 0, r
    out = tmp_path / "mc"
    r = convert_to_torch_dist(run_cli, hf, out, spec)
    assert r.returncode == 0, r
    got = mm.megatron_forward_from_checkpoint(str(out), spec, tp=2, pp=2, ep=MOE_EP,
                                              tokens=ref["tokens"])
    assert_logits_close(got[..., :spec.vocab], ref["logits"][..., :spec.vocab],
                        "qwen3_moe megatron->hf->torch_dist")


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------
def test_vocab_size_none_needs_hf_config(megatron_root, run_cli, tmp_path):
    spec = mm.FAMILIES["llama_tied"]
    assert not spec.record_vocab_size
    out = tmp_path / "hf"
    r = run_cli("convert", megatron_root("llama_tied"), out, "--to", "hf")
    assert_failed_cleanly(r, out, "vocab", "--hf-config")


@pytest.mark.parametrize("other", ["qwen3", "mixtral", "gpt2", "qwen2"])
def test_hf_config_of_other_architecture(other, megatron_root, run_cli, tmp_path):
    """A llama checkpoint with another family's config.json (vocab made equal) is refused."""
    root = megatron_root("llama")
    cfg = hf_config_args(mm.FAMILIES[other], tmp_path, vocab_size=mm.FAMILIES["llama"].vocab)
    out = tmp_path / "hf"
    r = run_cli("convert", root, out, "--to", "hf", "--hf-config", cfg)
    assert_failed_cleanly(r, out, "config", "mismatch", "architecture", "head", "expert",
                          "bias", "norm", "position", "tie")


def test_hf_config_vocab_larger_than_padded_rows(megatron_root, run_cli, tmp_path):
    spec = mm.FAMILIES["llama_tied"]
    rows = spec.padded_vocab(2)
    cfg = hf_config_args(spec, tmp_path, vocab_size=rows + 1)
    out = tmp_path / "hf"
    r = run_cli("convert", megatron_root("llama_tied"), out, "--to", "hf", "--hf-config", cfg)
    assert_failed_cleanly(r, out, "vocab", str(rows))


def test_hf_config_vocab_disagrees_with_args(megatron_root, run_cli, tmp_path):
    """args.vocab_size is recorded (250): a config saying 240 contradicts it."""
    spec = mm.FAMILIES["llama"]
    cfg = hf_config_args(spec, tmp_path, vocab_size=spec.vocab - 10)
    out = tmp_path / "hf"
    r = run_cli("convert", megatron_root("llama"), out, "--to", "hf", "--hf-config", cfg)
    assert_failed_cleanly(r, out, "vocab")


@pytest.mark.parametrize("field,value", [("rms_norm_eps", 1e-6), ("rope_parameters",
                                         {"rope_type": "default", "rope_theta": 10000.0})])
def test_hf_config_numeric_field_disagrees(field, value, megatron_root, run_cli, tmp_path):
    """An --hf-config whose eps / rope_theta contradict args: refused, or the output is still
    Megatron's model (the checkpoint's values win). Never a silently different model."""
    spec = mm.FAMILIES["llama"]
    root = megatron_root("llama")
    cfg = mm.hf_config(spec)
    cfg[field] = value
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "hf"
    r = run_cli("convert", root, out, "--to", "hf", "--hf-config", path)
    if r.returncode != 0:
        assert_failed_cleanly(r, out, "eps", "epsilon", "rope", "theta", "rotary")
        return
    ref = mm.load_reference(root)
    got = mm.hf_logits(str(out), ref["tokens"])
    assert_logits_close(got, ref["logits"][..., :spec.vocab], f"llama with config {field}")


def _copy_root(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def test_missing_tracker(megatron_root, run_cli, tmp_path):
    root = _copy_root(megatron_root("llama"), tmp_path / "root")
    os.remove(os.path.join(root, "latest_checkpointed_iteration.txt"))
    out = tmp_path / "hf"
    r = run_cli("convert", root, out, "--to", "hf")
    assert_failed_cleanly(r, out, "tracker", "latest_checkpointed_iteration", "checkpoint",
                          "format")


def _rewrite_metadata(ckpt_dir, edit):
    """Loads the DCP .metadata with torch's own reader, edits it, pickles it back (as torch's
    FileSystemWriter does)."""
    from torch.distributed.checkpoint import FileSystemReader

    md = FileSystemReader(ckpt_dir).read_metadata()
    edit(md)
    with open(os.path.join(ckpt_dir, ".metadata"), "wb") as f:
        pickle.dump(md, f)


def test_missing_layer_chunks(megatron_root, run_cli, tmp_path):
    """Layer 3's chunks of linear_fc2 deleted from .metadata: the global tensor is not
    covered; ckptkit must refuse, naming the tensor."""
    root = _copy_root(megatron_root("llama"), tmp_path / "root")
    key = "decoder.layers.mlp.linear_fc2.weight"

    def edit(md):
        tm = md.state_dict_metadata[key]
        before = len(tm.chunks)
        tm.chunks = [c for c in tm.chunks if c.offsets[0] != 3]
        assert len(tm.chunks) < before
        for idx in [i for i in md.storage_data if i.fqn == key and i.offset[0] == 3]:
            del md.storage_data[idx]

    _rewrite_metadata(mm.resolve_iter_dir(root), edit)
    out = tmp_path / "hf"
    r = run_cli("convert", root, out, "--to", "hf")
    assert_failed_cleanly(r, out, "linear_fc2", "down_proj")


def test_missing_layer_key(megatron_root, run_cli, tmp_path):
    """A whole parameter (every layer's attention output projection) is absent."""
    root = _copy_root(megatron_root("llama"), tmp_path / "root")
    key = "decoder.layers.self_attention.linear_proj.weight"

    def edit(md):
        del md.state_dict_metadata[key]
        for idx in [i for i in md.storage_data if i.fqn == key]:
            del md.storage_data[idx]

    _rewrite_metadata(mm.resolve_iter_dir(root), edit)
    out = tmp_path / "hf"
    r = run_cli("convert", root, out, "--to", "hf")
    assert_failed_cleanly(r, out, "linear_proj", "o_proj")


def test_hf_input_missing_tensor(run_cli, tmp_path):
    """HF -> torch_dist with a tensor missing from the safetensors file is refused."""
    from safetensors.torch import load_file, save_file

    spec = mm.FAMILIES["llama"]
    hf_dir = mm.make_hf_model(spec, str(tmp_path / "hf"), seed=1)
    path = os.path.join(hf_dir, "model.safetensors")
    sd = load_file(path)
    del sd["model.layers.2.mlp.up_proj.weight"]
    save_file(sd, path, metadata={"format": "pt"})
    out = tmp_path / "mc"
    r = convert_to_torch_dist(run_cli, hf_dir, out, spec)
    assert_failed_cleanly(r, out, "up_proj", "layers.2")


def test_hf_input_tp_not_dividing_groups(run_cli, tmp_path):
    """TP that does not divide the KV groups (llama: 2 groups, TP 4 would need TP % ng == 0
    sub-sharding; TP 3 divides nothing) is refused."""
    spec = mm.FAMILIES["llama"]
    hf_dir = mm.make_hf_model(spec, str(tmp_path / "hf"), seed=1)
    out = tmp_path / "mc"
    r = convert_to_torch_dist(run_cli, hf_dir, out, spec, tp=3, pp=2)
    assert_failed_cleanly(r, out, "tp", "tensor", "group", "divis")
