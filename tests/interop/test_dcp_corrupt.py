"""`ckptkit inspect` on every damaged DCP checkpoint of tests/corrupt/dcp/.

The corpus (real torch checkpoints, then damaged) and expected.json come
from tests/corrupt/dcp/make_corrupt.py.  For each case the CLI must exit
with the expected code (0: opened and nothing wrong is visible without
reading the data; 1: problems found, still printed, or a data problem refused
at open; 2: input that is not a checkpoint), never die
of a signal, print a one-line error naming the case on failure, and never
run a pickled call (the hostile cases' marker file must not appear).
"""

from __future__ import annotations

import json
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corrupt", "dcp")
with open(os.path.join(CORPUS, "expected.json")) as _f:
    EXPECTED = json.load(_f)


def _render(p: dict) -> str:
    """A details.problems entry as dcp::ToString renders it."""
    s = p.get("file", "")
    if "offset" in p:
        s += f" @ {p['offset']}"
    if s:
        s += ": "
    if "key" in p:
        s += f"'{p['key']}': "
    return s + p["message"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_inspect_exit_code_and_problems(run_cli, name):
    want = EXPECTED[name]
    folder = os.path.join(CORPUS, name)
    marker = want.get("marker")
    if marker and os.path.exists(marker):
        os.remove(marker)
    for args in (("inspect", "--json", folder), ("inspect", folder)):
        r = run_cli(*args)
        assert r.returncode >= 0, f"killed by signal {-r.returncode}: {r!r}"
        assert r.returncode == want["cli_exit"], r
        if marker:
            assert not os.path.exists(marker), "a hostile pickle was executed"
        if want["open"]["code"] != "ok":
            # Refused at open: one error, on stderr, naming the folder and the damage.
            assert name in r.stderr, r
            for sub in want["open"]["message"]:
                assert sub in r.stderr, r
            assert r.stdout == "", r
            continue
        if want["problems"]:
            assert "problem" in r.stderr, r
        if args[1] != "--json":
            assert "dcp" in r.stdout
            for sub in want["problems"]:
                # The text table lists the problems too (key and message).
                assert sub.split(": ")[-1] in r.stdout, (sub, r)
            continue
        doc = json.loads(r.stdout)
        assert doc["format"] == "dcp"
        problems = [_render(p) for p in doc["details"]["problems"]]
        if not want["problems"]:
            assert problems == []
        for sub in want["problems"]:
            assert any(sub in p for p in problems), (sub, problems)
        for g in want.get("opaque_globals", []):
            assert g in doc["details"].get("opaque_globals", []), doc["details"]
        # Every tensor named in "read" is still listed with its chunks.
        keys = {t["key"]: t for t in doc["tensors"]}
        for key in want["read"]:
            assert key in keys, sorted(keys)


@pytest.mark.parametrize("name", [n for n in sorted(EXPECTED) if EXPECTED[n]["read"]])
def test_get_fails_or_succeeds_as_read_says(run_cli, tmp_path, name):
    """`ckptkit get` of each named tensor: exit 0 and a file, or exit 1 naming the damage."""
    folder = os.path.join(CORPUS, name)
    for key, want in EXPECTED[name]["read"].items():
        out = tmp_path / f"{key}.pt"
        r = run_cli("get", folder, key, "-o", out)
        assert r.returncode >= 0, r
        if want["code"] == "ok":
            assert r.returncode == 0, r
            assert out.stat().st_size > 0
        else:
            assert r.returncode == 1, r
            for sub in want["message"]:
                assert sub in r.stderr, (sub, r)


def test_not_a_checkpoint_is_exit_2(run_cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    r = run_cli("inspect", empty)
    assert r.returncode == 2, r
    r = run_cli("inspect", tmp_path / "does-not-exist")
    assert r.returncode == 2, r
