"""Sanity of the DistributedOptimizer fixtures and goldens (tests/golden/legacy) with REAL
megatron-core: the same training run saved as legacy / dp_reshardable / dp_zero_gather_scatter
loads back (real DDP + DistributedOptimizer, megatron's own loaders) to bit-identical canonical
states, equal to the trained state recorded in expected.json; 'fully_reshardable' of a
multi-bucket run differs exactly where megatron-core 0.16/0.19 mis-slice it (params in buckets
>= 1, fixed upstream by NVIDIA/Megatron-LM PR #5077).

Skipped when megatron-core is not importable or CKPTKIT_SKIP_SLOW=1 (about 30 s on 2 cores).
Only the small goldens are loaded here (world <= 2); make_golden.py checks all of them.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "golden", "legacy")
sys.path.insert(0, os.path.join(GOLDEN))

mcore = pytest.importorskip("megatron.core")
pytestmark = pytest.mark.skipif(os.environ.get("CKPTKIT_SKIP_SLOW") == "1",
                                reason="CKPTKIT_SKIP_SLOW=1")


def _spec(name):
    import make_golden
    import megatron_optim as mo

    need, kw, formats = make_golden.GOLDENS[name]
    if not mcore.__version__.startswith(need + "."):
        pytest.skip(f"{name} needs megatron-core {need}")
    return mo.OptimSpec(**kw), formats


def _load(spec, root, fmt):
    import megatron_optim as mo

    if fmt == "legacy":
        return mo.load_legacy_into_optimizer(spec, root)
    return mo.load_torch_dist_into_optimizer(spec, root)


def _expected(name):
    with open(os.path.join(GOLDEN, name, "expected.json")) as f:
        return json.load(f)


def _sha_state(state):
    import megatron_fixtures as mf

    return {k: {kind: mf.tensor_sha256(t) for kind, t in d.items()}
            for k, d in state["tensors"].items()}


def _keys_beyond_bucket0(name):
    with open(os.path.join(GOLDEN, name, "layout.json")) as f:
        lay = json.load(f)
    keys = set()
    for r in lay["ranks"]:
        for c in r["chunks"]:
            for b in c["buffers"]:
                for p in b["params_in_index_order"]:
                    if p["bucket_id"] >= 1:
                        keys.add(p["key"])
    return keys


@pytest.mark.parametrize("name", ["mc016_llama_dp2", "mc019_llama_dp2"])
def test_formats_load_identical(name):
    import megatron_optim as mo

    spec, formats = _spec(name)
    exp = _expected(name)
    states = {f: _load(spec, os.path.join(GOLDEN, name, f), f) for f in formats}
    ref = states["legacy"]
    # legacy equals the trained state recorded when the golden was made
    want = {k: {kind: v["sha256"] for kind, v in d.items()}
            for k, d in exp["trained_state_sha256"].items()}
    assert _sha_state(ref) == want
    for f, st in states.items():
        diffs = mo.compare_states(ref, st, f)
        if f == "fully_reshardable":
            continue
        assert not diffs, diffs
    if "fully_reshardable" in states:
        diffs = mo.compare_states(ref, states["fully_reshardable"], "fr")
        bad_keys = {d.split()[1].rsplit(".", 1)[0] for d in diffs}
        # multi-bucket: known megatron-core mis-slicing, confined to params in buckets >= 1
        assert bad_keys, "fully_reshardable of a multi-bucket run expected to differ"
        assert bad_keys <= _keys_beyond_bucket0(name), bad_keys - _keys_beyond_bucket0(name)
        assert "output_layer.weight" not in bad_keys


def test_moe_chained_legacy():
    import megatron_optim as mo

    name = "mc016_mixtral_ep2"
    spec, formats = _spec(name)
    st = _load(spec, os.path.join(GOLDEN, name, "legacy"), "legacy")
    exp = _expected(name)
    want = {k: {kind: v["sha256"] for kind, v in d.items()}
            for k, d in exp["trained_state_sha256"].items()}
    assert _sha_state(st) == want
    # ChainedOptimizer of [dense, expert] on every rank
    assert all(len(x) == 2 for x in st["optimizers_by_rank"])
    files = exp["describe"]["legacy"]["files"]
    assert files["iter_0000002/mp_rank_00_001/distrib_optim.pt"]["top_level_type"] == "list"
