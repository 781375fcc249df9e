#!/usr/bin/env python3
"""SIGKILL trials: every ckptkit writer, killed at random points while it
replaces a checkpoint, must leave the destination as the old checkpoint or the
new one, never a mix, never one that looks complete but is not.

Each writer rewrites one destination over and over, alternating between two
sources A and B (different values, and for the Megatron formats different
layouts), and is SIGKILLed after a random delay drawn from [0, 1.3 x the time
an uninterrupted run takes] (so most kills land inside the run: while staging,
writing data files, writing `.metadata`, switching the folder over, cleaning
up; some land after it). After every kill:
  - `ckptkit verify DST` passes (exit 0), and
  - `ckptkit diff DST REF_A` or `ckptkit diff DST REF_B` finds no difference,
    where REF_A / REF_B are uninterrupted conversions of A / B;
  - for the Python plug-in (ckptkit.dcp.StorageWriter, in a forked process),
    stock torch's FileSystemReader loads DST and every tensor equals A's or
    every tensor equals B's.
After the trials one uninterrupted run must succeed and leave nothing of the
killed runs beside the destination (their staging folders are cleaned up or
reused by the next run).

Writers: plugin (ckptkit.dcp), and `ckptkit convert --to` dcp, safetensors
(one file), sharded (safetensors shards + index), torch (one .pt), torch_dist,
hf, legacy.

Usage:
  .venv/bin/python scripts/kill_trials.py [--trials N] [--writers w1,w2] [--seed S]
                                          [--cli build/ckptkit] [--work DIR]
  --trials N   trials per writer (default 30: 240 in all). CI runs a few per
               writer (tests/interop/test_kill_trials.py).
Prints one line per writer (trials, how many ended old / new) and exits 0
when every trial passed, 1 otherwise (naming the trial, the delay and what
was found; DST of the first failure is kept under --work).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(ROOT, "tests", "golden")

# (source A, source B, extra convert options) of the Megatron formats: real
# megatron-core 0.16.1 checkpoints (tests/golden), A and B of other layouts.
L = os.path.join(GOLDEN, "legacy")
MEGATRON_SOURCES = {
    "torch_dist": (os.path.join(L, "mc016_llama_dp2", "legacy", "iter_0000002"),
                   os.path.join(L, "mc016_llama_tp2pp2dp2", "legacy", "iter_0000002"), []),
    "hf": (os.path.join(L, "mc016_llama_dp2", "fully_reshardable", "iter_0000002"),
           os.path.join(L, "mc016_llama_tp2pp2dp2", "legacy", "iter_0000002"), []),
    "legacy": (os.path.join(GOLDEN, "megatron", "mc016_gpt_tp2pp2dp2", "iter_0000010"),
               os.path.join(L, "mc016_llama_tp2pp2dp2", "fully_reshardable", "iter_0000002"), []),
}
PLAIN_FORMATS = {  # writer -> (convert --to, destination name, extra options)
    "dcp": ("dcp", "out", ["--thread-count", "3"]),
    "safetensors": ("safetensors", "out.safetensors", []),
    "sharded": ("safetensors", "out", ["--max-shard-size", "3MB"]),
    "torch": ("torch", "out.pt", []),
}
WRITERS = ["plugin", *PLAIN_FORMATS, *MEGATRON_SOURCES]


class TrialFailure(Exception):
    pass


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def plain_sources(work: str) -> tuple[str, str]:
    """Two safetensors files of the same keys and shapes, other values (~48 MB)."""
    import numpy as np
    from safetensors.numpy import save_file

    paths = []
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        tensors = {f"layer.{i}.weight": rng.standard_normal((384, 512), dtype=np.float32) for i in range(64)}
        tensors["embed"] = rng.integers(0, 1 << 30, size=(1000,), dtype=np.int64)
        path = os.path.join(work, f"src_{'AB'[seed - 1]}.safetensors")
        save_file(tensors, path)
        paths.append(path)
    return paths[0], paths[1]


class CliWriter:
    """`ckptkit convert SRC DST --to FMT`, killed after a delay."""

    def __init__(self, cli: str, name: str, work: str, src_a: str, src_b: str, to: str, dst_name: str,
                 extra: list[str]) -> None:
        self.cli, self.name, self.to, self.extra = cli, name, to, extra
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir)
        self.src = {"A": src_a, "B": src_b}
        self.dst = os.path.join(self.dir, "dst", dst_name)
        os.makedirs(os.path.dirname(self.dst))
        self.ref = {}
        self.seconds = 0.0
        for k in "AB":
            ref = os.path.join(self.dir, f"ref_{k}", dst_name)
            os.makedirs(os.path.dirname(ref))
            t = time.monotonic()
            self.convert(self.src[k], ref, check=True)
            self.seconds = max(self.seconds, time.monotonic() - t)
            self.ref[k] = ref
        self.convert(self.src["A"], self.dst, check=True)
        self.state = "A"

    def cmd(self, src: str, dst: str) -> list[str]:
        return [self.cli, "convert", "-q", src, dst, "--to", self.to, *self.extra]

    def convert(self, src: str, dst: str, check: bool = False) -> None:
        r = run(self.cmd(src, dst))
        if check and r.returncode != 0:
            raise SystemExit(f"{self.name}: {' '.join(self.cmd(src, dst))} failed:\n{r.stdout}")

    def kill_after(self, delay: float) -> None:
        nxt = "B" if self.state == "A" else "A"
        p = subprocess.Popen(self.cmd(self.src[nxt], self.dst), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def check(self) -> str:
        v = run([self.cli, "verify", self.dst])
        if v.returncode != 0:
            raise TrialFailure(f"verify exit {v.returncode}:\n{v.stdout[-2000:]}")
        for k in "AB":
            d = run([self.cli, "diff", self.dst, self.ref[k]])
            if d.returncode == 0:
                self.state = k
                return k
        raise TrialFailure(f"equal to neither A nor B:\n{d.stdout[-2000:]}")

    def leftovers(self) -> list[str]:
        return sorted(set(os.listdir(os.path.dirname(self.dst))) - {os.path.basename(self.dst)})


def _plugin_state(seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {f"w{i}": torch.randn(512, 1024, generator=g) for i in range(12)}
    sd["step"] = torch.tensor(seed)
    sd["extra"] = {"seed": seed, "note": "x" * 100}
    return sd


class PluginWriter:
    """ckptkit.dcp.StorageWriter saving (no_dist) in a forked child, killed."""

    def __init__(self, cli: str, work: str) -> None:
        import torch
        import torch.distributed.checkpoint as dcp

        import ckptkit.dcp

        import warnings

        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        warnings.filterwarnings("ignore", message="Detected an existing checkpoint")
        torch.set_num_threads(1)  # no OpenMP pool before fork()
        self.cli, self.name, self.dcp, self.ckdcp = cli, "plugin", dcp, ckptkit.dcp
        self.dir = os.path.join(work, "plugin")
        self.dst = os.path.join(self.dir, "dst", "iter")
        os.makedirs(os.path.dirname(self.dst))
        self.states = {"A": _plugin_state(1), "B": _plugin_state(2)}
        self.seconds = 0.0
        for k in "ABA":  # the longest of three runs (a first save, then overwrites)
            t = time.monotonic()
            self.save(k)
            self.seconds = max(self.seconds, time.monotonic() - t)
        self.state = "A"

    def save(self, k: str) -> None:
        self.dcp.save(self.states[k], storage_writer=self.ckdcp.StorageWriter(self.dst, thread_count=2),
                      no_dist=True)

    def kill_after(self, delay: float) -> None:
        nxt = "B" if self.state == "A" else "A"
        pid = os.fork()
        if pid == 0:  # the child: save, then exit at once (no atexit, no flushing)
            code = 0
            try:
                import warnings

                warnings.simplefilter("ignore")
                self.save(nxt)
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    def check(self) -> str:
        import torch
        from torch.distributed.checkpoint import FileSystemReader

        v = run([self.cli, "verify", self.dst])
        if v.returncode != 0:
            raise TrialFailure(f"verify exit {v.returncode}:\n{v.stdout[-2000:]}")
        got = {k: torch.zeros_like(t) if isinstance(t, torch.Tensor) else {"seed": None, "note": None}
               for k, t in self.states["A"].items()}
        self.dcp.load(got, storage_reader=FileSystemReader(self.dst), no_dist=True)
        for k, want in self.states.items():
            if all(torch.equal(got[n], want[n]) if isinstance(want[n], torch.Tensor) else got[n] == want[n]
                   for n in want):
                self.state = k
                return k
        raise TrialFailure("stock torch loads a state equal to neither A nor B")

    def leftovers(self) -> list[str]:
        return sorted(set(os.listdir(os.path.dirname(self.dst))) - {os.path.basename(self.dst)})


def make_writer(name: str, cli: str, work: str, plain: Optional[tuple[str, str]]):
    if name == "plugin":
        return PluginWriter(cli, work)
    if name in PLAIN_FORMATS:
        to, dst_name, extra = PLAIN_FORMATS[name]
        return CliWriter(cli, name, work, plain[0], plain[1], to, dst_name, extra)
    a, b, extra = MEGATRON_SOURCES[name]
    return CliWriter(cli, name, work, a, b, name, "out", extra)


def trials(writer, n: int, rng: random.Random, log: Callable[[str], None]) -> tuple[int, dict]:
    ends = {"old": 0, "new": 0}
    failures = 0
    for i in range(n):
        delay = rng.uniform(0.0, 1.3 * writer.seconds)
        before = writer.state
        writer.kill_after(delay)
        try:
            ends["old" if writer.check() == before else "new"] += 1
        except TrialFailure as e:
            failures += 1
            keep = f"{writer.dst}.failed-trial-{i}"
            shutil.copytree(writer.dst, keep) if os.path.isdir(writer.dst) else shutil.copy(writer.dst, keep)
            log(f"FAIL {writer.name} trial {i} (killed after {delay * 1000:.0f} ms; kept {keep}): {e}")
            return failures, ends
    # One uninterrupted run: it must succeed and leave nothing of the killed ones.
    writer.kill_after(600.0)
    try:
        writer.check()
    except TrialFailure as e:
        log(f"FAIL {writer.name}: the run after the trials: {e}")
        return failures + 1, ends
    left = writer.leftovers()
    if left:
        log(f"FAIL {writer.name}: leftovers beside the destination after a clean run: {left}")
        failures += 1
    return failures, ends


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30, help="trials per writer (default 30)")
    ap.add_argument("--writers", default=",".join(WRITERS), help=f"comma-separated, of {','.join(WRITERS)}")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--cli", default=os.path.join(ROOT, "build", "ckptkit"))
    ap.add_argument("--work", default=None, help="work folder (default: a temporary one, removed on success)")
    args = ap.parse_args(argv)
    names = [w for w in args.writers.split(",") if w]
    bad = [w for w in names if w not in WRITERS]
    if bad or args.trials < 1:
        ap.error(f"unknown writers {bad}" if bad else "--trials must be positive")
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    work = args.work or tempfile.mkdtemp(prefix="ckptkit-kill-")
    os.makedirs(work, exist_ok=True)
    print(f"kill trials: seed {seed}, {args.trials} per writer, work {work}", flush=True)
    plain = plain_sources(work) if any(n in PLAIN_FORMATS for n in names) else None
    total_fail = 0
    for name in names:
        writer = make_writer(name, args.cli, work, plain)
        t = time.monotonic()
        failures, ends = trials(writer, args.trials, rng, lambda m: print(m, flush=True))
        total_fail += failures
        print(f"{name:12s} {args.trials} trials ({writer.seconds * 1000:.0f} ms per run): "
              f"ended old {ends['old']}, new {ends['new']}; "
              f"{'FAILED' if failures else 'ok'} ({time.monotonic() - t:.1f} s)", flush=True)
    if total_fail:
        print(f"kill trials: {total_fail} failed (work kept: {work})")
        return 1
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    print("kill trials: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
