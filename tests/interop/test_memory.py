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
    # through its own copy buffer, still far below the file.
    out = big_pt.parent / f"out_{to}"
    rss = _peak_rss_of([cli_path, "convert", str(big_pt), str(out), "--to", to, "--thread-count", "4", "-q"])
    assert _tree_bytes(out) >= TOTAL
    print(f"ckptkit convert --to {to} --thread-count 4: peak RSS {rss / MiB:.1f} MiB for a {TOTAL / MiB:.0f} MiB file")
    assert rss < 96 * MiB, f"peak RSS {rss / MiB:.1f} MiB"


def test_control_torch_load_holds_the_whole_file(big_pt):
    rss = _peak_rss_of([sys.executable, "-c",
                        f"import torch; sd = torch.load({str(big_pt)!r}); print(len(sd))"])
    print(f"torch.load: peak RSS {rss / MiB:.1f} MiB")
    assert rss > TOTAL
