"""Megatron's legacy layout and the distributed optimizer's buffers, against REAL megatron-core.

The goldens in tests/golden/legacy are one training run of a real GPTModel + DDP +
DistributedOptimizer (megatron-core 0.16.1 / 0.19.2, CPU, gloo; tests/interop/megatron_optim.py)
saved by megatron itself as legacy files and as torch_dist with each optimizer sharding type;
expected.json records the trained state (sha256 of every global tensor: the model, the fp32 main
params, exp_avg, exp_avg_sq) as megatron's own per-parameter ranges give it.

* `ckptkit get --optimizer STATE` on a dp_reshardable (or dp_zero_gather_scatter) checkpoint reassembles every parameter's
  state from the flat buckets with ckptkit's own layout code: each equals the trained state. A
  fully_sharded_model_space one (megatron-core 0.15: N-D flattened pieces under reformulated shapes) is
  re-indexed into the parameters' shapes: the same.
* `ckptkit convert --to legacy` of a dp_reshardable checkpoint writes a distrib_optim.pt
  byte-identical to megatron's save_parameter_state and a model_optim_rng.pt equal to megatron's
  (every key, tensor and object), which megatron's own loader (load_state_dict +
  load_parameter_state into a fresh DDP + DistributedOptimizer) loads to the trained state.
* Bad input: an existing iteration folder is replaced in one step (other files carried over); non-torch_dist sources are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "golden", "legacy")
sys.path.insert(0, GOLDEN)
sys.path.insert(0, HERE)

_CLI = []


@pytest.fixture(autouse=True)
def _cli(cli_path):
    _CLI[:] = [cli_path]


def _ckptkit(*args, check=True):
    r = subprocess.run([_CLI[0], *args], capture_output=True, text=True, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


def _expected(name):
    with open(os.path.join(GOLDEN, name, "expected.json")) as f:
        return json.load(f)


def _sha(t: torch.Tensor) -> str:
    import hashlib

    t = t.detach().contiguous()
    return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"").hexdigest()


def _mcore_minor():
    try:
        import megatron.core as mc
    except Exception:  # noqa: BLE001
        return None
    return ".".join(mc.__version__.split(".")[:2])


@pytest.mark.parametrize("name,layout", [("mc016_llama_dp2", "dp_reshardable"), ("mc019_llama_dp2", "dp_reshardable"),
                                         ("mc016_llama_dp2", "dp_zero_gather_scatter"),
                                         ("mc016_mixtral_ep2", "dp_reshardable"),
                                         ("mc016_mixtral_ep2", "dp_zero_gather_scatter"),
                                         ("mc015_llama_tp2dp2", "fully_sharded_model_space")])
def test_get_optimizer_state_from_dp_reshardable_buckets(name, layout, tmp_path):
    from safetensors.torch import load_file

    exp = _expected(name)
    src = os.path.join(GOLDEN, name, layout)
    checked = 0
    for key, kinds in exp["trained_state_sha256"].items():
        for state in ("param", "exp_avg", "exp_avg_sq"):
            out = tmp_path / f"{state}.{key}.safetensors"
            _ckptkit("get", src, key, "--optimizer", state, "-o", str(out))
            (t,) = load_file(out).values()
            assert list(t.shape) == kinds[state]["shape"], (key, state)
            assert t.dtype == torch.float32
            assert _sha(t) == kinds[state]["sha256"], (key, state)
            checked += 1
    assert checked >= 3 * 9
    # The key form works too, and a state that does not exist is a clear error.
    key = next(iter(exp["trained_state_sha256"]))
    _ckptkit("get", src, f"optimizer.state.exp_avg.{key}", "-o", str(tmp_path / "k.safetensors"))
    r = _ckptkit("get", src, key, "--optimizer", "momentum", "-o", str(tmp_path / "m.npy"), check=False)
    assert r.returncode == 2 and "optimizer.state.momentum" in r.stderr


LEGACY_GOLDENS = ["mc016_llama_dp2", "mc016_llama_tp2pp2dp2", "mc016_llama_pp2vpp2dp2", "mc016_mixtral_ep2",
                  "mc016_llama_fp32_dp2", "mc019_llama_dp2", "mc015_llama_tp2dp2", "mc006_llama_dp2"]


@pytest.mark.parametrize("name", LEGACY_GOLDENS)
def test_legacy_model_space_equals_trained_state(name, tmp_path):
    """A legacy checkpoint read in model space (the model merged from TP shards at its PP / VPP
    layer and EP expert offsets, the optimizer state cut out of distrib_optim.pt's buffers by
    ckptkit's own layout code) equals the trained state megatron recorded, tensor for tensor."""
    from safetensors.torch import load_file

    exp = _expected(name)
    src = os.path.join(GOLDEN, name, "legacy")
    n = 0
    for key, kinds in exp["trained_state_sha256"].items():
        for kind, want in kinds.items():
            out = tmp_path / f"{kind}.safetensors"
            args = ["get", src, key, "-o", str(out)]
            if kind != "model":
                args += ["--optimizer", kind]
            _ckptkit(*args)
            (t,) = load_file(out).values()
            assert list(t.shape) == want["shape"], (key, kind)
            # expected.json hashes the model as float32 (the fixture's canonical form)
            assert _sha(t.float() if kind == "model" else t) == want["sha256"], (key, kind)
            n += 1
    assert n == 4 * len(exp["trained_state_sha256"])


def _torch_load(p):
    return torch.load(p, weights_only=False, map_location="cpu")


def _assert_same(a, b, path=""):
    import numpy as np

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert type(a) is type(b), (path, type(a), type(b))
        assert list(a.keys()) == list(b.keys()), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif hasattr(a, "__dict__") and not isinstance(a, type):
        assert type(a) is type(b), path
        _assert_same(vars(a), vars(b), path)
    else:
        assert a == b or (a != a and b != b), (path, a, b)


@pytest.mark.parametrize("name,layout", [("mc016_llama_dp2", "dp_reshardable"), ("mc019_llama_dp2", "dp_reshardable"),
                                         ("mc016_llama_dp2", "dp_zero_gather_scatter"),
                                         ("mc016_mixtral_ep2", "dp_reshardable"),
                                         ("mc016_mixtral_ep2", "dp_zero_gather_scatter"),
                                         ("mc015_llama_tp2dp2", "fully_sharded_model_space")])
def test_dp_reshardable_to_legacy_is_megatrons_own(name, layout, tmp_path):
    src = os.path.join(GOLDEN, name, layout)
    ref = os.path.join(GOLDEN, name, "legacy", "iter_0000002")
    out = tmp_path / "legacy"
    _ckptkit("convert", src, str(out), "--to", "legacy", "-q")
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "2"
    ranks = sorted(os.listdir(ref))
    assert sorted(os.listdir(out / "iter_0000002")) == ranks
    for rank in ranks:
        mine = out / "iter_0000002" / rank
        with open(os.path.join(ref, rank, "distrib_optim.pt"), "rb") as f:
            assert (mine / "distrib_optim.pt").read_bytes() == f.read(), rank
        _assert_same(_torch_load(os.path.join(ref, rank, "model_optim_rng.pt")),
                     _torch_load(mine / "model_optim_rng.pt"))
    # --no-optimizer: no distrib_optim.pt, no optimizer entry
    bare = tmp_path / "bare"
    _ckptkit("convert", src, str(bare), "--to", "legacy", "--no-optimizer", "-q")
    d = _torch_load(bare / "iter_0000002" / ranks[0] / "model_optim_rng.pt")
    assert "optimizer" not in d and "model" in d
    assert not (bare / "iter_0000002" / ranks[0] / "distrib_optim.pt").exists()


@pytest.mark.skipif(os.environ.get("CKPTKIT_SKIP_SLOW") == "1", reason="CKPTKIT_SKIP_SLOW=1")
def test_legacy_from_torch_dist_loads_in_megatron(tmp_path):
    """pp2 x vpp2 x dp2 (4 ranks): fully_reshardable -> legacy, loaded by megatron's own
    legacy loader into a fresh DDP + DistributedOptimizer: the trained state."""
    if _mcore_minor() != "0.16":
        pytest.skip("the golden is megatron-core 0.16")
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    name = "mc016_llama_pp2vpp2dp2"
    _, kw, _ = make_golden.GOLDENS[name]
    spec = mo.OptimSpec(**kw)
    out = tmp_path / "legacy"
    _ckptkit("convert", os.path.join(GOLDEN, name, "fully_reshardable"), str(out), "--to", "legacy", "-q")
    st = mo.load_legacy_into_optimizer(spec, str(out))
    want = _expected(name)["trained_state_sha256"]
    got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
    assert got == {k: {kind: v["sha256"] for kind, v in d.items()} for k, d in want.items()}


@pytest.mark.skipif(os.environ.get("CKPTKIT_SKIP_SLOW") == "1", reason="CKPTKIT_SKIP_SLOW=1")
def test_moe_expert_parallel_to_legacy_loads_as_the_source(tmp_path):
    """Mixtral EP2 (ChainedOptimizer: dense + expert): fully_reshardable -> legacy. The folders,
    the [dense|None, expert|None] distrib_optim lists and the optimizer lists are Megatron's; loaded
    by megatron's legacy loader, the state equals what megatron itself loads from the source.
    (The source's dense state in buckets >= 1 is already shifted by megatron-core's own
    fully_reshardable save, NVIDIA/Megatron-LM PR #5077, so the trained state is not the bar.)"""
    if _mcore_minor() != "0.16":
        pytest.skip("the golden is megatron-core 0.16")
    import make_golden
    import megatron_optim as mo

    name = "mc016_mixtral_ep2"
    _, kw, _ = make_golden.GOLDENS[name]
    spec = mo.OptimSpec(**kw)
    src = os.path.join(GOLDEN, name, "fully_reshardable")
    out = tmp_path / "legacy"
    _ckptkit("convert", src, str(out), "--to", "legacy", "-q")
    ref = os.path.join(GOLDEN, name, "legacy", "iter_0000002")
    assert sorted(os.listdir(out / "iter_0000002")) == sorted(os.listdir(ref))
    # The expert-only file of the EP rank 1 folder: megatron's bytes (one expert bucket, not shifted).
    with open(os.path.join(ref, "mp_rank_00_001", "distrib_optim.pt"), "rb") as f:
        assert (out / "iter_0000002" / "mp_rank_00_001" / "distrib_optim.pt").read_bytes() == f.read()
    a = _torch_load(out / "iter_0000002" / "mp_rank_00_000" / "distrib_optim.pt")
    assert isinstance(a, list) and len(a) == 2 and all(x is not None for x in a)
    mine = mo.load_legacy_into_optimizer(spec, str(out))
    theirs = mo.load_torch_dist_into_optimizer(spec, src)
    assert not mo.compare_states(theirs, mine, "legacy")


@pytest.mark.parametrize("name", ["mc016_llama_tp2pp2dp2", "mc016_llama_pp2vpp2dp2", "mc016_mixtral_ep2"])
def test_legacy_to_hf_is_the_torch_dist_conversion(name, tmp_path):
    """--to hf from the mp_rank_* folders gives byte for byte the model.safetensors and config.json
    of --to hf from the torch_dist save of the same run (whose HF logits test_hf_convert checks
    against Megatron's forward)."""
    g = os.path.join(GOLDEN, name)
    _ckptkit("convert", os.path.join(g, "legacy"), str(tmp_path / "a"), "--to", "hf", "-q")
    _ckptkit("convert", os.path.join(g, "fully_reshardable"), str(tmp_path / "b"), "--to", "hf", "-q")
    for f in ("model.safetensors", "config.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_legacy_to_safetensors_and_diff_in_model_space(tmp_path):
    """--to safetensors / torch from legacy writes the global tensors and optimizer states; diff
    compares a legacy folder with a torch_dist one in model space."""
    from safetensors.torch import load_file

    g = os.path.join(GOLDEN, "mc016_llama_pp2vpp2dp2")
    _ckptkit("convert", os.path.join(g, "legacy"), str(tmp_path / "a.safetensors"), "--to", "safetensors", "-q")
    _ckptkit("convert", os.path.join(g, "fully_reshardable"), str(tmp_path / "b.safetensors"), "--to",
             "safetensors", "-q")
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert sorted(a) == sorted(b) and len(a) == 36
    assert "optimizer.state.exp_avg_sq.decoder.layers.mlp.linear_fc1.weight" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    _ckptkit("convert", os.path.join(g, "legacy"), str(tmp_path / "c.pt"), "--to", "torch", "-q")
    c = _torch_load(tmp_path / "c.pt")
    assert sorted(c) == sorted(a) and torch.equal(c["output_layer.weight"], a["output_layer.weight"])
    r = _ckptkit("diff", "--tensors-only", os.path.join(g, "legacy"), os.path.join(g, "fully_reshardable"))
    assert "identical: 36 tensors compared, 0 differ" in r.stdout
    # dp_reshardable buckets vs the legacy buffers of the same run
    d = os.path.join(GOLDEN, "mc016_llama_dp2")
    r = _ckptkit("diff", "--tensors-only", os.path.join(d, "legacy"), os.path.join(d, "dp_reshardable"))
    assert "0 differ; 0 only in A, 0 only in B" in r.stdout


@pytest.mark.skipif(os.environ.get("CKPTKIT_SKIP_SLOW") == "1", reason="CKPTKIT_SKIP_SLOW=1")
@pytest.mark.parametrize("name", ["mc016_llama_dp2", "mc016_llama_pp2vpp2dp2", "mc016_mixtral_ep2"])
def test_legacy_to_torch_dist_loads_in_megatron(name, tmp_path):
    """legacy -> torch_dist (model-space, fully_reshardable) loads with megatron's
    dist_checkpointing.load into a fresh DDP + DistributedOptimizer to the trained state: also
    where megatron-core's own fully_reshardable save of the same run is shifted (several buckets:
    llama dp2, mixtral's dense buffer)."""
    if _mcore_minor() != "0.16":
        pytest.skip("the goldens are megatron-core 0.16")
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    _, kw, _ = make_golden.GOLDENS[name]
    spec = mo.OptimSpec(**kw)
    out = tmp_path / "td"
    _ckptkit("convert", os.path.join(GOLDEN, name, "legacy"), str(out), "--to", "torch_dist",
             "--megatron-version", "0.16", "-q")
    r = _ckptkit("verify", "--deep", str(out))
    assert "fp32 main params round to the model weights" in r.stdout
    st = mo.load_torch_dist_into_optimizer(spec, str(out))
    want = _expected(name)["trained_state_sha256"]
    got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
    assert got == {k: {kind: v["sha256"] for kind, v in d.items()} for k, d in want.items()}


def test_core06_legacy_to_torch_dist_loads_in_megatron_016(tmp_path):
    """megatron-core 0.6's legacy save (distrib_optim.pt format B: a tensor per bucket, buckets
    padded to a multiple of DP, parameters packed without alignment; make_golden_mc006.py) ->
    torch_dist: megatron-core 0.16.1 loads it into a fresh DDP + DistributedOptimizer (its own,
    differently packed buffers) to the state the 0.6 run trained, bit for bit."""
    if _mcore_minor() != "0.16":
        pytest.skip("the load runs under megatron-core 0.16")
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    name = "mc006_llama_dp2"
    _, kw, _ = make_golden.GOLDENS[name]
    out = tmp_path / "td"
    _ckptkit("convert", os.path.join(GOLDEN, name, "legacy"), str(out), "--to", "torch_dist",
             "--megatron-version", "0.16", "-q")
    st = mo.load_torch_dist_into_optimizer(mo.OptimSpec(**kw), str(out))
    want = _expected(name)["trained_state_sha256"]
    got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
    assert got == {k: {kind: v["sha256"] for kind, v in d.items()} for k, d in want.items()}


def test_fully_sharded_model_space_to_torch_dist_loads_in_megatron_016(tmp_path):
    """megatron-core 0.15's fully_sharded_model_space save (N-D flattened optimizer pieces under
    reformulated shapes, which 0.16+ refuses to load) -> torch_dist: the optimizer state written
    model-space, fully_reshardable; megatron-core 0.16.1's dist_checkpointing.load into a fresh
    TP2 x DP2 DDP + DistributedOptimizer gives the state the 0.15 run trained, bit for bit."""
    if _mcore_minor() != "0.16":
        pytest.skip("the load runs under megatron-core 0.16")
    import make_golden
    import megatron_fixtures as mf
    import megatron_optim as mo

    name = "mc015_llama_tp2dp2"
    _, kw, _ = make_golden.GOLDENS[name]
    spec = mo.OptimSpec(**kw)
    out = tmp_path / "td"
    r = _ckptkit("convert", os.path.join(GOLDEN, name, "fully_sharded_model_space"), str(out), "--to", "torch_dist",
                 "--megatron-version", "0.16")
    assert "written as fully_reshardable" in r.stderr
    r = _ckptkit("inspect", str(out))
    assert "sharding fully_reshardable" in r.stdout and "fp32_param" not in r.stdout
    st = mo.load_torch_dist_into_optimizer(spec, str(out))
    want = _expected(name)["trained_state_sha256"]
    got = {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()} for k, d in st["tensors"].items()}
    assert got == {k: {kind: v["sha256"] for kind, v in d.items()} for k, d in want.items()}


@pytest.mark.parametrize("name", ["mc016_llama_dp2", "mc016_llama_tp2pp2dp2", "mc016_mixtral_ep2"])
def test_round_trips_are_exact(name, tmp_path):
    """legacy -> torch_dist -> legacy gives megatron's own legacy files back (distrib_optim.pt byte
    for byte, model_optim_rng.pt equal in every key, tensor and object); torch_dist -> legacy ->
    torch_dist keeps every tensor."""
    g = os.path.join(GOLDEN, name)
    _ckptkit("convert", os.path.join(g, "legacy"), str(tmp_path / "td"), "--to", "torch_dist", "-q")
    _ckptkit("convert", str(tmp_path / "td"), str(tmp_path / "lg"), "--to", "legacy", "-q")
    ref = os.path.join(g, "legacy", "iter_0000002")
    assert sorted(os.listdir(tmp_path / "lg" / "iter_0000002")) == sorted(os.listdir(ref))
    for rank in sorted(os.listdir(ref)):
        mine = tmp_path / "lg" / "iter_0000002" / rank
        assert sorted(os.listdir(mine)) == sorted(os.listdir(os.path.join(ref, rank)))
        with open(os.path.join(ref, rank, "distrib_optim.pt"), "rb") as f:
            assert (mine / "distrib_optim.pt").read_bytes() == f.read(), rank
        _assert_same(_torch_load(os.path.join(ref, rank, "model_optim_rng.pt")), _torch_load(mine / "model_optim_rng.pt"))
    _ckptkit("convert", str(tmp_path / "lg"), str(tmp_path / "td2"), "--to", "torch_dist", "-q")
    r = _ckptkit("diff", str(tmp_path / "td"), str(tmp_path / "td2"))
    assert r.stdout.strip().splitlines()[-1].startswith("identical"), r.stdout[-2000:]


def test_legacy_bad_destinations_and_sources(tmp_path):
    src = os.path.join(GOLDEN, "mc016_llama_dp2", "dp_reshardable")
    out = tmp_path / "busy"
    (out / "iter_0000002" / "mp_rank_00").mkdir(parents=True)
    keep = out / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt"
    keep.write_bytes(b"old checkpoint")
    notes = out / "iter_0000002" / "notes.txt"
    notes.write_text("not a checkpoint's")
    stale = out / "iter_0000002" / "mp_rank_01"
    stale.mkdir()
    (stale / "model_optim_rng.pt").write_bytes(b"a rank of the old layout")
    # The iteration folder is switched over in one step: the old rank folders go (none of them
    # survives beside the new ones), other files are carried over, no staging folder is left.
    _ckptkit("convert", src, str(out), "--to", "legacy", "-q")
    assert keep.read_bytes() != b"old checkpoint" and not stale.exists()
    assert notes.read_text() == "not a checkpoint's"
    assert (out / "latest_checkpointed_iteration.txt").read_text() == "2"
    assert sorted(p.name for p in out.iterdir()) == ["iter_0000002", "latest_checkpointed_iteration.txt"]
    # A legacy checkpoint is not a torch_dist source for --to legacy.
    r = _ckptkit("convert", os.path.join(GOLDEN, "mc016_llama_dp2", "legacy"), str(tmp_path / "x"),
                 "--to", "legacy", check=False)
    assert r.returncode == 2
    assert not (tmp_path / "x").exists()
    # --no-optimizer is a --to legacy flag only.
    r = _ckptkit("convert", src, str(tmp_path / "y"), "--to", "torch", "--no-optimizer", check=False)
    assert r.returncode == 2 and "--no-optimizer" in r.stderr


def test_python_convert_to_legacy(tmp_path):
    import ckptkit

    src = os.path.join(GOLDEN, "mc016_llama_dp2", "dp_reshardable")
    rep = ckptkit.convert(src, tmp_path / "out", to="legacy")
    assert rep["files"][-1].endswith("latest_checkpointed_iteration.txt")
    ref = os.path.join(GOLDEN, "mc016_llama_dp2", "legacy", "iter_0000002", "mp_rank_00", "distrib_optim.pt")
    with open(ref, "rb") as f:
        assert (tmp_path / "out" / "iter_0000002" / "mp_rank_00" / "distrib_optim.pt").read_bytes() == f.read()
    rep = ckptkit.convert(src, tmp_path / "bare", to="legacy", no_optimizer=True)
    assert not any(p.endswith("distrib_optim.pt") for p in rep["files"])
    with pytest.raises(ValueError, match='no_optimizer applies only with to="legacy"'):
        ckptkit.convert(src, tmp_path / "x", to="torch", no_optimizer=True)


def _copy_legacy(name, tmp_path):
    import shutil

    dst = tmp_path / "src"
    shutil.copytree(os.path.join(GOLDEN, name, "legacy"), dst)
    return dst


def test_legacy_damaged_inputs_are_named_and_publish_nothing(tmp_path):
    """A missing rank folder, a distrib_optim.pt whose buffers do not match the model, and args whose
    DP size puts the buckets elsewhere: inspect exits 1 naming file and buffer; conversions fail with
    the same words and leave nothing at the destination."""
    # 1. a missing rank folder
    src = _copy_legacy("mc016_llama_tp2pp2dp2", tmp_path / "a")
    import shutil

    shutil.rmtree(src / "iter_0000002" / "mp_rank_01_001")
    r = _ckptkit("inspect", str(src), check=False)
    assert r.returncode == 1 and "mp_rank_01_001" in r.stdout
    for to in ("torch_dist", "hf", "safetensors"):
        out = tmp_path / "a" / f"out_{to}"
        r = _ckptkit("convert", str(src), str(out), "--to", to, check=False)
        assert r.returncode in (1, 2) and "mp_rank_01_001" in r.stderr, (to, r.stderr)
        assert not out.exists(), to
    # 2. a distrib_optim.pt whose buffer is 64 elements short (numel_unpadded consistent with itself)
    src = _copy_legacy("mc016_llama_dp2", tmp_path / "b")
    f = src / "iter_0000002" / "mp_rank_00" / "distrib_optim.pt"
    d = _torch_load(f)
    (dt,) = d[0].keys()
    for k in ("param", "exp_avg", "exp_avg_sq"):
        d[0][dt][k] = d[0][dt][k][:-64].clone()
    d[0][dt]["numel_unpadded"] -= 64
    torch.save(d, f)
    r = _ckptkit("inspect", str(src), check=False)
    assert r.returncode == 1
    assert "mp_rank_00/distrib_optim.pt: buffer 0 (torch.bfloat16, torch.float32) holds 1920 elements" in r.stdout
    r = _ckptkit("verify", str(src), check=False)
    assert r.returncode == 1 and "gives (torch.bfloat16, torch.float32) with 1984" in r.stdout
    out = tmp_path / "b" / "out"
    r = _ckptkit("convert", str(src), str(out), "--to", "torch_dist", check=False)
    assert r.returncode == 1 and "distrib_optim.pt: buffer 0" in r.stderr
    assert not out.exists()
    # 3. a dp_reshardable checkpoint whose args say DP 3: megatron's recorded padded bucket sizes
    #    (per_bucket_numel) are not divisible by 3 -- args that do not describe the run.
    import shutil

    src = tmp_path / "c"
    shutil.copytree(os.path.join(GOLDEN, "mc016_llama_dp2", "dp_reshardable"), src)
    f = src / "iter_0000002" / "common.pt"
    d = _torch_load(f)
    d["args"].data_parallel_size = 3
    d["args"].world_size = 3
    torch.save(d, f)
    r = _ckptkit("verify", str(src), check=False)
    assert r.returncode == 1 and "per_bucket_numel" in r.stdout
    assert "which the data-parallel size 3 from args does not divide" in r.stdout, r.stdout
    out = tmp_path / "c_out"
    r = _ckptkit("convert", str(src), str(out), "--to", "legacy", check=False)
    assert r.returncode == 1 and "data-parallel size 3" in r.stderr and not out.exists()


def test_core06_bucket_sizes_that_do_not_match_the_model_are_named(tmp_path):
    """A format B distrib_optim.pt (core 0.6) whose per-bucket sizes are not what the model's
    buffers give: the view refuses it naming the file, buffer and both size lists; a converted
    checkpoint is not published."""
    src = _copy_legacy("mc006_llama_dp2", tmp_path)
    path = src / "iter_0000002" / "mp_rank_00" / "distrib_optim.pt"
    d = torch.load(path, weights_only=False)
    (dt,) = d[0].keys()
    for key in ("per_bucket_numel", "per_bucket_numel_unpadded"):
        d[key][0][dt][1] -= 2
    for ts in d[0][dt].values():
        ts[1] = ts[1][:-2].clone()
    torch.save(d, path)
    r = _ckptkit("get", str(src), "output_layer.weight", "--optimizer", "exp_avg", "-o", str(tmp_path / "x.npy"),
                 check=False)
    assert r.returncode != 0
    assert "mp_rank_00/distrib_optim.pt: buffer 0" in r.stderr and "per_bucket_numel [392, 390" in r.stderr, r.stderr
    assert "[392, 392, 456, 464]" in r.stderr
    out = tmp_path / "td"
    r = _ckptkit("convert", str(src), str(out), "--to", "torch_dist", "-q", check=False)
    assert r.returncode != 0 and not (out / "latest_checkpointed_iteration.txt").exists()
