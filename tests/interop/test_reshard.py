"""`ckptkit reshard` against REAL megatron-core 0.16.1 (DDP + DistributedOptimizer on CPU/gloo,
tests/interop/megatron_optim.py; the CUDA-bookkeeping shim is documented there).

The failing case users report: a run saved at TP1 / PP4 / DP2 with the distributed optimizer in
its default `dp_reshardable` form cannot resume at TP2 / PP2 / DP2 (megatron-core raises a global
shape mismatch on the bucket tensors; Megatron-LM refuses the (TP, PP) change). After `ckptkit
reshard --tp 2 --pp 2`, megatron-core at TP2 / PP2 / DP2 loads model and optimizer
(dist_checkpointing.load + DistributedOptimizer) to exactly the state the TP1 / PP4 run trained:
every parameter, fp32 main parameter, exp_avg and exp_avg_sq to the bit, the step carried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "golden", "legacy"))  # make_golden (the goldens' specs)

mcore = pytest.importorskip("megatron.core")
pytestmark = [
    pytest.mark.skipif(not mcore.__version__.startswith("0.16."), reason="the fixtures run megatron-core 0.16"),
    pytest.mark.skipif(os.environ.get("CKPTKIT_SKIP_SLOW") == "1", reason="CKPTKIT_SKIP_SLOW=1"),
]

TINY4 = (("hidden", 8), ("heads", 4), ("groups", 2), ("ffn", 16), ("vocab", 30), ("divisor", 16),
         ("num_layers", 4))
_CLI = []


@pytest.fixture(autouse=True)
def _cli(cli_path):
    _CLI[:] = [cli_path]


def _ckptkit(*args, check=True):
    r = subprocess.run([_CLI[0], *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _same_tensors(a: dict, b: dict) -> list:
    import torch

    diffs = []
    if set(a["tensors"]) != set(b["tensors"]):
        diffs.append(f"keys: {sorted(set(a['tensors']) ^ set(b['tensors']))}")
    for k in sorted(set(a["tensors"]) & set(b["tensors"])):
        for kind in ("model", "param", "exp_avg", "exp_avg_sq"):
            x, y = a["tensors"][k].get(kind), b["tensors"][k].get(kind)
            if x is None or y is None or x.shape != y.shape or not torch.equal(x, y):
                diffs.append(f"{k}.{kind}")
    return diffs


@pytest.fixture(scope="module")
def pp4_run(tmp_path_factory):
    """One TP1 / PP4 / DP2 training run (8 gloo ranks), saved dp_reshardable, and its state."""
    import torch

    import megatron_optim as mo

    spec = mo.OptimSpec(family="llama", tp=1, pp=4, dp=2, bucket_size=200, model_overrides=TINY4)
    root = tmp_path_factory.mktemp("pp4")
    src = root / "dp_reshardable"
    state = root / "state.pt"
    mo.save_all(spec, {"dp_reshardable": str(src)}, state_path=str(state))
    return spec, src, torch.load(state, weights_only=False)


def test_tp1pp4_dp_reshardable_resumes_at_tp2pp2(pp4_run, tmp_path):
    import megatron_optim as mo

    spec, src, trained = pp4_run
    # Preflight: fits, and says what changes.
    r = _ckptkit("reshard", str(src), "--tp", "2", "--pp", "2", "--check", "--json")
    j = json.loads(r.stdout)
    assert j["source_layout"].startswith("TP=1 PP=4") and j["target_layout"].startswith("TP=2 PP=2")
    assert j["source_optimizer_sharding"] == "dp_reshardable" and j["target_optimizer_sharding"] == "fully_reshardable"
    assert j["files"] == [] and not os.path.exists(tmp_path / "out")
    assert j["loads_as_is"] is False
    assert any("dp_reshardable" in b and "(TP, PP) mismatch" in b for b in j["load_blockers"]), j["load_blockers"]

    out = tmp_path / "out"
    r = _ckptkit("reshard", str(src), str(out), "--tp", "2", "--pp", "2", "--megatron-version", "0.16")
    assert "--no-load-rng" in r.stderr
    assert (out / "latest_checkpointed_iteration.txt").read_text() == str(spec.iteration)
    target = mo.OptimSpec(family="llama", tp=2, pp=2, dp=2, bucket_size=200, model_overrides=TINY4)
    loaded = mo.load_torch_dist_into_optimizer(target, str(out))
    assert _same_tensors(trained, loaded) == []
    steps = {g["step"] for per_rank in loaded["optimizers_by_rank"] for o in per_rank for g in o["param_groups"]}
    assert steps == {spec.steps}
    # Stock megatron-core cannot load the source at that layout.
    with pytest.raises(RuntimeError):
        mo.load_torch_dist_into_optimizer(target, str(src))


def test_bad_target_layouts_are_refused_before_writing(pp4_run, tmp_path):
    _, src, _ = pp4_run
    for flags, why in ((["--tp", "3"], "num_attention_heads 4 is not divisible by tp=3"),
                       (["--tp", "4"], "num_query_groups 2 is not divisible by tp=4"),
                       (["--pp", "3"], "layers"),
                       (["--pp", "2", "--vpp", "4"], "layers")):
        out = tmp_path / "x"
        r = _ckptkit("reshard", str(src), str(out), *flags, check=False)
        assert r.returncode == 2, (flags, r.stderr)
        assert why in r.stderr, (flags, r.stderr)
        assert not out.exists()


GOLDEN = os.path.join(HERE, "..", "golden", "legacy")


def _trained(name):
    with open(os.path.join(GOLDEN, name, "expected.json")) as f:
        want = json.load(f)["trained_state_sha256"]
    return {k: {kind: v["sha256"] for kind, v in d.items()} for k, d in want.items()}


@pytest.mark.parametrize("name,src_format,flags,target", [
    # legacy TP2 x PP2 -> TP1 x PP1 (TP shards merged, stages joined)
    ("mc016_llama_tp2pp2dp2", "legacy", ["--tp", "1", "--pp", "1"], dict(tp=1, pp=1, dp=2)),
    # legacy PP2 x VPP2 -> PP4 (virtual stages become pipeline ranks)
    ("mc016_llama_pp2vpp2dp2", "legacy", ["--pp", "4", "--vpp", "1"], dict(tp=1, pp=4, dp=2)),
    # dp_reshardable DP2 -> DP1 (several buckets, ranges owned by both DP ranks)
    ("mc016_llama_dp2", "dp_reshardable", ["--dp", "1"], dict(tp=1, pp=1, dp=1)),
    # core 0.6 legacy (format B buffers) -> TP2
    ("mc006_llama_dp2", "legacy", ["--tp", "2"], dict(tp=2, pp=1, dp=2)),
])
def test_reshard_loads_in_megatron_at_the_target(name, src_format, flags, target, tmp_path):
    """Real megatron-core 0.16.1 at the target layout loads the resharded checkpoint to the
    state megatron recorded for the source run (expected.json), every tensor to the bit."""
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    _, kw, _ = make_golden.GOLDENS[name]
    kw = dict(kw, vpp=None, **target)
    out = tmp_path / "out"
    _ckptkit("reshard", os.path.join(GOLDEN, name, src_format), str(out), *flags, "--megatron-version", "0.16", "-q")
    st = mo.load_torch_dist_into_optimizer(mo.OptimSpec(**kw), str(out))
    got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
    assert got == _trained(name)


def test_one_more_step_after_reshard_equals_the_original_layouts_step(tmp_path):
    """TP1 / PP4 / DP2 (dp_reshardable) -> TP2 / PP2 / DP2, then one more optimizer.step() with
    the same gradients (a function of each element's global index) gives the parameters, main
    params and moments the original layout's third step gives, to the bit. Gradient clipping is
    off: the clipping norm is a sum whose order depends on the layout, which would change the
    last bits of every update (megatron's behaviour, not the checkpoint's)."""
    import dataclasses

    import megatron_optim as mo

    spec = mo.OptimSpec(family="llama", tp=1, pp=4, dp=2, bucket_size=200, clip_grad=0.0,
                        model_overrides=TINY4)
    src = tmp_path / "src"
    mo.save_all(spec, {"dp_reshardable": str(src)})
    reference = mo.trained_state(dataclasses.replace(spec, extra_steps=1))
    out = tmp_path / "out"
    _ckptkit("reshard", str(src), str(out), "--tp", "2", "--pp", "2", "--megatron-version", "0.16", "-q")
    target = dataclasses.replace(spec, tp=2, pp=2, extra_steps=1)
    resumed = mo.load_torch_dist_into_optimizer(target, str(out))
    assert _same_tensors(reference, resumed) == []
    # And the step did change something (the comparison is not vacuous).
    before = mo.load_torch_dist_into_optimizer(dataclasses.replace(target, extra_steps=0), str(out))
    assert _same_tensors(before, resumed) != []


MHA = (("hidden", 16), ("heads", 4), ("groups", 4), ("ffn", 32), ("vocab", 30), ("divisor", 16),
       ("num_layers", 2))


def _assert_resharded_state(source: dict, loaded: dict, vocab: int = 30):
    """Every tensor equal to the source run's; vocabulary tensors compared on the real rows
    (the target's padding rows are zeros)."""
    import torch

    assert set(source["tensors"]) == set(loaded["tensors"])
    for k, kinds in source["tensors"].items():
        for kind, x in kinds.items():
            y = loaded["tensors"][k][kind]
            if k in ("embedding.word_embeddings.weight", "output_layer.weight"):
                n = min(x.shape[0], y.shape[0])
                assert n >= vocab and torch.equal(x[:n], y[:n]), (k, kind)
                assert not y[n:].any(), (k, kind)  # new padding rows
            else:
                assert x.shape == y.shape and torch.equal(x, y), (k, kind)


@pytest.mark.parametrize("src_tp,dst_tp", [(2, 4), (4, 1)])
def test_tensor_parallel_changes_repad_the_vocabulary(src_tp, dst_tp, tmp_path):
    """TP2 -> TP4 (padded vocabulary 32 -> 64: new zero rows) and TP4 -> TP1 (64 -> 32, from the
    tokenizer's size in args), dp_reshardable in, loaded by real megatron-core at the target to
    the source run's state."""
    import torch

    import megatron_optim as mo

    world = 4
    spec = mo.OptimSpec(family="llama", tp=src_tp, pp=1, dp=world // src_tp, bucket_size=300, model_overrides=MHA)
    src = tmp_path / "src"
    mo.save_all(spec, {"dp_reshardable": str(src)}, state_path=str(tmp_path / "s.pt"))
    source = torch.load(tmp_path / "s.pt", weights_only=False)
    out = tmp_path / "out"
    flags = ["--tp", str(dst_tp), "--dp", str(world // dst_tp)]
    r = _ckptkit("reshard", str(src), str(out), *flags, "--check", "--json")
    assert json.loads(r.stdout)["target_padded_vocab"] == {1: 32, 4: 64}[dst_tp]
    _ckptkit("reshard", str(src), str(out), *flags, "--megatron-version", "0.16", "-q")
    target = mo.OptimSpec(family="llama", tp=dst_tp, pp=1, dp=world // dst_tp, bucket_size=300, model_overrides=MHA)
    loaded = mo.load_torch_dist_into_optimizer(target, str(out))
    _assert_resharded_state(source, loaded)


def test_moe_expert_parallel_change(tmp_path):
    """Mixtral, 4 experts: EP4 x DP4 -> EP2 x DP4 (both a dense and an expert optimizer),
    dp_reshardable in; real megatron-core at EP2 loads every expert's weights and moments."""
    import torch

    import megatron_optim as mo

    moe = (("hidden", 8), ("heads", 4), ("groups", 2), ("ffn", 16), ("vocab", 30), ("divisor", 16),
           ("num_layers", 2), ("moe_ffn", 16))
    spec = mo.OptimSpec(family="mixtral", tp=1, pp=1, ep=4, dp=4, bucket_size=300, model_overrides=moe)
    src = tmp_path / "src"
    mo.save_all(spec, {"dp_reshardable": str(src)}, state_path=str(tmp_path / "s.pt"))
    source = torch.load(tmp_path / "s.pt", weights_only=False)
    out = tmp_path / "out"
    _ckptkit("reshard", str(src), str(out), "--ep", "2", "--megatron-version", "0.16", "-q")
    loaded = mo.load_torch_dist_into_optimizer(
        mo.OptimSpec(family="mixtral", tp=1, pp=1, ep=2, dp=4, bucket_size=300, model_overrides=moe), str(out))
    _assert_resharded_state(source, loaded)
    # One optimizer <-> two is refused, saying why, before anything is written.
    r = _ckptkit("reshard", str(src), str(tmp_path / "x"), "--ep", "1", check=False)
    assert r.returncode != 0 and "expert one" in r.stderr and not (tmp_path / "x").exists()


def test_unknown_tokenizer_size_that_makes_the_padding_ambiguous_is_asked_for(tmp_path):
    """Args without vocab_size (real Megatron-LM runs with an HF tokenizer record only the padded
    size): TP2's 32 rows may hold 17..32 real tokens, which TP1 pads to 32 or less; reshard asks
    for --vocab-size instead of guessing, and writes nothing."""
    import shutil

    import torch

    src = tmp_path / "src"
    shutil.copytree(os.path.join(GOLDEN, "mc016_llama_tp2pp2dp2", "legacy"), src)
    for p in src.rglob("model_optim_rng.pt"):
        d = torch.load(p, weights_only=False)
        d["args"].vocab_size = None
        torch.save(d, p)
    out = tmp_path / "out"
    r = _ckptkit("reshard", str(src), str(out), "--tp", "1", "--pp", "1", check=False)
    assert r.returncode == 2 and "give vocab_size" in r.stderr and "32" in r.stderr, r.stderr
    assert not out.exists()
    r = _ckptkit("reshard", str(src), "--tp", "1", "--pp", "1", "--vocab-size", "30", "--check", "--json")
    assert json.loads(r.stdout)["target_padded_vocab"] == 32
    r = _ckptkit("reshard", str(src), "--tp", "1", "--pp", "1", "--vocab-size", "40", "--check", check=False)
    assert r.returncode == 2 and "vocab_size 40" in r.stderr


def test_dp_reshardable_output_loads_in_megatron_at_the_new_layout(pp4_run, tmp_path):
    """--optimizer-sharding dp_reshardable: the target layout's own buckets (per_bucket_numel
    objects, one flat tensor per bucket and state, computed by ckptkit's model layer for
    TP2 / PP2 / DP2); megatron-core's dp_reshardable loader accepts them (it checks the bucket
    sizes against its own) and gives the source run's state. And back: dp_reshardable ->
    fully_reshardable -> dp_reshardable at the source layout gives the same per-parameter state."""
    import megatron_optim as mo

    spec, src, trained = pp4_run
    out = tmp_path / "out"
    r = _ckptkit("reshard", str(src), str(out), "--tp", "2", "--pp", "2", "--optimizer-sharding", "dp_reshardable",
                 "--megatron-version", "0.16", "--json")
    assert json.loads(r.stdout)["target_optimizer_sharding"] == "dp_reshardable"
    r = _ckptkit("inspect", str(out))
    assert "sharding dp_reshardable" in r.stdout
    target = mo.OptimSpec(family="llama", tp=2, pp=2, dp=2, bucket_size=200, model_overrides=TINY4)
    loaded = mo.load_torch_dist_into_optimizer(target, str(out))
    assert _same_tensors(trained, loaded) == []

    full = tmp_path / "full"
    back = tmp_path / "back"
    _ckptkit("reshard", str(src), str(full), "-q")  # 0.19 form in between
    _ckptkit("reshard", str(full), str(back), "--optimizer-sharding", "dp_reshardable", "--megatron-version", "0.16",
             "-q")
    again = mo.load_torch_dist_into_optimizer(spec, str(back))
    assert _same_tensors(trained, again) == []


def test_python_api_is_the_same_engine(tmp_path):
    """ckptkit.reshard (the package's thin binding) checks and writes as the CLI does."""
    import ckptkit

    src = os.path.join(GOLDEN, "mc016_llama_tp2pp2dp2", "legacy")
    rep = ckptkit.reshard(src, check=True, tp=1, pp=1)
    assert rep["source_layout"].startswith("TP=2 PP=2") and rep["target_layout"].startswith("TP=1 PP=1")
    assert rep["files"] == [] and rep["bytes"] > 0
    with pytest.raises(ValueError, match="num_attention_heads 4 is not divisible by tp=3"):
        ckptkit.reshard(src, tmp_path / "x", tp=3)
    with pytest.raises(ValueError, match="optimizer_sharding"):
        ckptkit.reshard(src, tmp_path / "x", optimizer_sharding="zero")
    assert not (tmp_path / "x").exists()
    rep = ckptkit.reshard(src, tmp_path / "out", tp=1, pp=1, optimizer_sharding="dp_reshardable")
    assert rep["files"][-1].endswith("latest_checkpointed_iteration.txt")
    r = _ckptkit("inspect", str(tmp_path / "out"))
    assert "TP=1 PP=1" in r.stdout and "sharding dp_reshardable" in r.stdout
    assert rep["loads_as_is"] is False and rep["load_blockers"]
    rep = ckptkit.reshard(src, tmp_path / "leg", tp=1, pp=1, to="legacy")
    assert os.path.exists(tmp_path / "leg" / "iter_0000002" / "mp_rank_00" / "distrib_optim.pt")
    with pytest.raises(ValueError, match="to: torch_dist or legacy"):
        ckptkit.reshard(src, tmp_path / "y", to="hf")


def test_load_strategy_reshards_at_load_time(pp4_run, monkeypatch):
    """ckptkit.megatron.TorchDistLoadStrategy in megatron-core's own dist_checkpointing.load: a
    job at TP2 / PP2 / DP2 loads the TP1 / PP4 dp_reshardable checkpoint (which stock
    megatron-core refuses at that layout) to the source run's state; the scratch copy is gone."""
    import megatron_optim as mo

    spec, src, trained = pp4_run
    before = sorted(os.listdir(src))
    monkeypatch.setenv("MO_LOAD_STRATEGY", "ckptkit")
    target = mo.OptimSpec(family="llama", tp=2, pp=2, dp=2, bucket_size=200, model_overrides=TINY4)
    loaded = mo.load_torch_dist_into_optimizer(target, str(src))
    assert _same_tensors(trained, loaded) == []
    assert sorted(os.listdir(src)) == before  # no scratch folder left beside it
    assert not [d for d in os.listdir(os.path.dirname(src)) if d.startswith("ckptkit-reshard-")]
    # And at the source's own layout nothing is resharded: the same state.
    same = mo.load_torch_dist_into_optimizer(spec, str(src))
    assert _same_tensors(trained, same) == []


@pytest.mark.parametrize("name,src_format,target,as_is", [
    # DP only, megatron-core's own 64-aligned buckets: the boundaries stay, stock loads it.
    ("mc016_llama_dp2", "dp_reshardable", dict(tp=1, pp=1, dp=1), True),
    # A TP change: dp_reshardable buckets are per model-parallel rank.
    ("mc016_llama_dp2", "dp_reshardable", dict(tp=2, pp=1, dp=1), False),
    # fully_reshardable, same padded vocabulary (32 at TP1 and TP2): loads at any layout.
    ("mc016_llama_dp2", "fully_reshardable", dict(tp=2, pp=1, dp=1), True),
    # dp_zero_gather_scatter: whole buffers per model-parallel rank, scattered again at any DP.
    ("mc016_llama_dp2", "dp_zero_gather_scatter", dict(tp=1, pp=1, dp=1), True),
    ("mc016_llama_dp2", "dp_zero_gather_scatter", dict(tp=2, pp=1, dp=1), False),
    # A TP x PP change of a fully_reshardable save whose padded vocabulary stays 32.
    ("mc016_llama_tp2pp2dp2", "fully_reshardable", dict(tp=1, pp=1, dp=2), True),
])
def test_preflight_verdict_is_what_stock_megatron_does(name, src_format, target, as_is):
    """reshard --check says whether megatron-core would load the source as it is at the target;
    real megatron-core 0.16.1 (stock load strategy) at that layout then does exactly that: loads
    it to the source run's state, or raises."""
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    src = os.path.join(GOLDEN, name, src_format)
    if not os.path.isdir(src):
        pytest.skip(f"{name} has no {src_format} save")
    flags = [f"--{k}={v}" for k, v in target.items()]
    j = json.loads(_ckptkit("reshard", src, "--check", "--json", *flags).stdout)
    assert j["loads_as_is"] is as_is, j["load_blockers"]
    assert (j["load_blockers"] == []) is as_is
    _, kw, _ = make_golden.GOLDENS[name]
    spec = mo.OptimSpec(**dict(kw, vpp=None, **target))
    if as_is:
        st = mo.load_torch_dist_into_optimizer(spec, src)
        got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
        want = _trained(name)
        if src_format == "fully_reshardable":
            # megatron-core <= 0.19.2's own fully_reshardable saves of buffers with several
            # buckets hold shifted optimizer state (NVIDIA/Megatron-LM PR #5077; `verify --deep`
            # flags these goldens: main params that are not the weights), so only the model is
            # compared here; the loader accepting them at the target is the point.
            got = {k: {"model": d["model"]} for k, d in got.items()}
            want = {k: {"model": d["model"]} for k, d in want.items()}
        assert got == want
    else:
        with pytest.raises(Exception):
            mo.load_torch_dist_into_optimizer(spec, src)


def test_dp4_to_dp2(tmp_path):
    """TP1 / DP4 (dp_reshardable, several buckets) -> DP2: the preflight says megatron-core loads
    it as it is (its 64-aligned buckets keep their unpadded sizes at any DP), which stock
    megatron-core at DP2 confirms; reshard's fully_reshardable output at DP2 loads to the same
    state, every tensor to the bit."""
    import torch

    import megatron_optim as mo

    spec = mo.OptimSpec(family="llama", tp=1, pp=1, dp=4, bucket_size=150, model_overrides=MHA)
    src = tmp_path / "src"
    mo.save_all(spec, {"dp_reshardable": str(src)}, state_path=str(tmp_path / "s.pt"))
    source = torch.load(tmp_path / "s.pt", weights_only=False)
    j = json.loads(_ckptkit("reshard", str(src), "--dp", "2", "--check", "--json").stdout)
    assert j["loads_as_is"] is True and j["target_layout"].startswith("TP=1 PP=1 DP=2")
    target = mo.OptimSpec(family="llama", tp=1, pp=1, dp=2, bucket_size=150, model_overrides=MHA)
    assert _same_tensors(source, mo.load_torch_dist_into_optimizer(target, str(src))) == []
    out = tmp_path / "out"
    _ckptkit("reshard", str(src), str(out), "--dp", "2", "--megatron-version", "0.16", "-q")
    assert _same_tensors(source, mo.load_torch_dist_into_optimizer(target, str(out))) == []


def test_inspect_json_carries_the_preflight():
    """inspect --json lists, for one size changed at a time, whether megatron-core loads the
    checkpoint as it is: the same verdicts reshard --check gives (checked above against stock
    megatron-core), the padded vocabulary each TP gives."""
    src = os.path.join(GOLDEN, "mc016_llama_dp2", "dp_reshardable")
    rs = json.loads(_ckptkit("inspect", "--json", src).stdout)["details"]["reshard"]
    assert rs["layout"].startswith("TP=1 PP=1 DP=2") and rs["optimizer_sharding"] == "dp_reshardable"
    sizes = {(z["dim"], z["size"]): z for z in rs["sizes"]}
    assert {s for d, s in sizes if d == "tp"} == {1, 2}  # 4 heads, 2 query groups
    assert {s for d, s in sizes if d == "pp"} == {1, 2}  # 2 layers
    for (dim, size), z in sizes.items():
        j = json.loads(_ckptkit("reshard", src, "--check", "--json", f"--{dim}={size}").stdout)
        assert (z["loads_as_is"], z["load_blockers"], z["padded_vocab"]) == \
            (j["loads_as_is"], j["load_blockers"], j["target_padded_vocab"]), (dim, size)
    assert sizes[("tp", 2)]["loads_as_is"] is False and sizes[("dp", 4)]["loads_as_is"] is True
    text = _ckptkit("inspect", src).stdout
    assert "tp: 1 (as is), 2 (reshard)" in text


@pytest.mark.parametrize("name,src_format,flags,target", [
    # dp_reshardable TP1 / PP1 -> legacy TP2 x PP2 (shards split, stages cut, new buffers)
    ("mc016_llama_dp2", "dp_reshardable", ["--tp", "2", "--pp", "2"], dict(tp=2, pp=2, dp=2)),
    # legacy TP2 x PP2 -> legacy TP1 (the layout change Megatron-LM refuses for legacy)
    ("mc016_llama_tp2pp2dp2", "legacy", ["--tp", "1", "--pp", "1"], dict(tp=1, pp=1, dp=2)),
    # MoE: dp_reshardable EP2 -> legacy EP2 x DP4 (a dense and an expert distrib_optim list)
    ("mc016_mixtral_ep2", "dp_reshardable", ["--dp", "4"], dict(dp=4)),
])
def test_reshard_to_legacy_loads_in_megatron_at_the_target(name, src_format, flags, target, tmp_path):
    """--to legacy: Megatron-LM's mp_rank_* folders at the new layout (model_optim_rng.pt with
    TP-local shards, distrib_optim.pt with the new layout's buffers, args for it); real
    megatron-core 0.16.1 at the target loads them the way Megatron-LM's load_checkpoint does
    (load_state_dict + load_parameter_state) to the state the source run trained."""
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    _, kw, _ = make_golden.GOLDENS[name]
    kw = dict(kw, vpp=None, **target)
    out = tmp_path / "out"
    r = _ckptkit("reshard", os.path.join(GOLDEN, name, src_format), str(out), *flags, "--to", "legacy", "--json")
    j = json.loads(r.stdout)
    assert j["target_format"] == "legacy" and j["target_optimizer_sharding"] == "legacy distrib_optim.pt"
    assert j["files"][-1].endswith("latest_checkpointed_iteration.txt")
    assert any(f.endswith("distrib_optim.pt") for f in j["files"])
    st = mo.load_legacy_into_optimizer(mo.OptimSpec(**kw), str(out))
    got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
    assert got == _trained(name)
    # --optimizer-sharding is torch_dist's: refused with --to legacy, nothing written.
    r = _ckptkit("reshard", os.path.join(GOLDEN, name, src_format), str(tmp_path / "x"), *flags, "--to", "legacy",
                 "--optimizer-sharding", "dp_reshardable", check=False)
    assert r.returncode == 2 and "--optimizer-sharding" in r.stderr and not (tmp_path / "x").exists()
