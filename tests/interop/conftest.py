"""Fixtures for the interop tests: real torch / safetensors against ckptkit.

Environment:
  CKPTKIT_CLI         path of the `ckptkit` executable (default: `ckptkit` on PATH).
  CKPTKIT_TEST_SEEDS  comma-separated seeds for the random tests (default "0,1,2").

Seeds are part of each test id and printed, so a failure names its seed:
  pytest tests/interop -k "seed=1"
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # for `import helpers`

SEEDS = [int(s) for s in os.environ.get("CKPTKIT_TEST_SEEDS", "0,1,2").split(",") if s.strip()]


def pytest_report_header(config):
    lines = [f"ckptkit interop seeds: {SEEDS} (CKPTKIT_TEST_SEEDS)"]
    try:
        import torch

        lines.append(f"torch {torch.__version__}")
    except ImportError:
        lines.append("torch: not installed")
    try:
        import safetensors

        lines.append(f"safetensors {safetensors.__version__}")
    except ImportError:
        lines.append("safetensors: not installed")
    cli = _find_cli()
    lines.append(f"ckptkit CLI: {cli or 'NOT FOUND (set CKPTKIT_CLI)'}")
    return lines


@pytest.fixture(params=SEEDS, ids=lambda s: f"seed={s}")
def seed(request) -> int:
    print(f"seed={request.param}")
    return request.param


@pytest.fixture
def gen(seed):
    """A torch.Generator seeded with `seed` (printed)."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _find_cli():
    env = os.environ.get("CKPTKIT_CLI")
    if env:
        return env
    return shutil.which("ckptkit")


@pytest.fixture(scope="session")
def cli_path() -> str:
    """The ckptkit executable. Fails (never skips) when it cannot be found."""
    path = _find_cli()
    if not path:
        pytest.fail("ckptkit CLI not found: set CKPTKIT_CLI or put `ckptkit` on PATH "
                    "(pip install . installs it)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"CKPTKIT_CLI={path!r} is not an executable file")
    return path


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __repr__(self):
        return (f"<exit {self.returncode}>\n--- stdout ---\n{self.stdout[-4000:]}"
                f"\n--- stderr ---\n{self.stderr[-4000:]}")


@pytest.fixture
def run_cli(cli_path, tmp_path):
    """run_cli(*args) -> CliResult (exit code, stdout, stderr); never raises on exit code."""

    def run(*args, timeout=120):
        proc = subprocess.run([cli_path, *map(str, args)], capture_output=True, text=True,
                              timeout=timeout, cwd=tmp_path, stdin=subprocess.DEVNULL)
        return CliResult(proc)

    return run
