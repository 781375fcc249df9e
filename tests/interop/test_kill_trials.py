"""Crash consistency of every writer under SIGKILL (scripts/kill_trials.py).

CI runs a few trials per writer (KILL_TRIALS, default 6: 48 in all, about
15 s); the script's default is 30 per writer (240). Each trial kills a
writer (the ckptkit.dcp plug-in in a forked process; `ckptkit convert --to`
dcp / safetensors / sharded safetensors / torch / torch_dist / hf / legacy)
at a random point while it replaces a checkpoint, then requires the
destination to pass `ckptkit verify` and to equal the old or the new
checkpoint (`ckptkit diff`; stock torch's FileSystemReader for the plug-in),
and, after one clean run, nothing left beside it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_writer_survives_sigkill_at_random_points(tmp_path):
    cli = os.environ.get("CKPTKIT_CLI", os.path.join(ROOT, "build", "ckptkit"))
    if not os.path.exists(cli):
        pytest.skip("CKPTKIT_CLI not built")
    trials = os.environ.get("KILL_TRIALS", "6")
    seed = os.environ.get("KILL_SEED", str(os.getpid()))
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "kill_trials.py"), "--trials", trials, "--seed", seed,
         "--cli", cli, "--work", str(tmp_path / "work")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    print(r.stdout)
    assert r.returncode == 0, r.stdout[-4000:]
    lines = [line for line in r.stdout.splitlines() if " trials (" in line]
    assert len(lines) == 8, r.stdout  # every writer ran its trials
    assert "kill trials: all passed" in r.stdout
