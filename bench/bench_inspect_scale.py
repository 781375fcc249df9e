#!/usr/bin/env python3
"""`ckptkit inspect` of a DCP `.metadata` with 100k and 1M chunks, and the layout map.

    .venv/bin/python bench/bench_inspect_scale.py [--chunks 100000,1000000] [--repeat 3]
                                                  [--cache-dir /tmp/ckptkit-bench-scale] [--cli build/ckptkit]
                                                  [--json]

Inputs: tests/golden/dcp/make_synthetic_metadata.py --keys N/100 --chunks 100 (N chunks
over 100 fake ranks, torch's own classes pickled as `_FileSystemWriter.finish` does),
cached under --cache-dir. The data files do not exist, so inspect reports them missing
(exit 1): the work timed is parsing the `.metadata`, building the chunk index and the
report. Rows, each best of --repeat, each in its own process:

| row | what is timed |
|---|---|
| pickle.load | `pickle.load` of the `.metadata` inside a Python that has imported torch already (the classes), the baseline of issue 14 |
| inspect | `ckptkit inspect DIR > /dev/null`, the whole process |
| inspect --json | the same with --json |
| inspect --html | the same writing the layout map |
| map first render | headless Chromium opening the map: the page's own data-render-ms (navigation start to the end of drawing) |

Peak RSS of each process (`/usr/bin/time`-style, from wait4). Aims (issue 14): inspect
under 0.3 s (100k) and 1.5 s (1M), peak RSS at most 3x the file, at least 3x faster
than pickle.load.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _timed(cmd):
    """Runs cmd under a tiny wrapper that reports the child's ru_maxrss."""
    wrapper = ("import resource, subprocess, sys, time\n"
               "t = time.perf_counter()\n"
               "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
               "dt = time.perf_counter() - t\n"
               "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n")
    out = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True, check=True).stdout
    dt, rss, rc = out.split()
    return float(dt), int(rss), int(rc)


def _pickle_load(path):
    code = ("import pickle, sys, time, resource\n"
            "import torch, torch.distributed.checkpoint  # the classes, imported before timing\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "t = time.perf_counter()\n"
            "with open(sys.argv[1], 'rb') as f: md = pickle.load(f)\n"
            "dt = time.perf_counter() - t\n"
            "print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, check=True).stdout
    dt, rss = out.split()
    return float(dt), int(rss)


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="100000,1000000")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--cache-dir", default="/tmp/ckptkit-bench-scale")
    ap.add_argument("--cli", default=os.path.join(REPO, "build", "ckptkit"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = []
    for n in [int(x) for x in args.chunks.split(",")]:
        folder = os.path.join(args.cache_dir, f"chunks_{n}")
        md = os.path.join(folder, ".metadata")
        if not os.path.exists(md):
            os.makedirs(folder, exist_ok=True)
            subprocess.run([sys.executable, os.path.join(REPO, "tests", "golden", "dcp", "make_synthetic_metadata.py"),
                            md, "--keys", str(n // 100), "--chunks", "100"], check=True, capture_output=True)
        size = os.path.getsize(md)
        row = {"chunks": n, "metadata_bytes": size}
        row["pickle_load"] = min((_pickle_load(md) for _ in range(args.repeat)), key=lambda r: r[0])
        html = os.path.join(folder, "map.html")
        for name, extra in (("inspect", []), ("inspect_json", ["--json"]), ("inspect_html", ["--html", html])):
            runs = [_timed([args.cli, "inspect", folder, *extra]) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r[0])
            row[name] = {"seconds": best[0], "peak_rss_kib": max(r[1] for r in runs), "exit": best[2]}
        chrome = _chromium()
        if chrome and os.path.exists(html):
            ms = []
            for _ in range(args.repeat):
                dom = subprocess.run([chrome, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                                      f"file://{html}"], capture_output=True, text=True, timeout=600).stdout
                m = re.search(r'data-render-ms="(\d+)"', dom)
                ok = 'data-rendered="1"' in dom and 'data-errors="0"' in dom
                ms.append(int(m.group(1)) if m and ok else None)
            row["map_first_render_ms"] = min((x for x in ms if x is not None), default=None)
            row["map_html_bytes"] = os.path.getsize(html)
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        pl_s, pl_rss = r["pickle_load"]
        print(f"{r['chunks']} chunks, .metadata {r['metadata_bytes'] / 2**20:.1f} MiB")
        print(f"  pickle.load (torch imported)   {pl_s:7.3f} s   +{pl_rss / 1024:7.0f} MiB")
        for name in ("inspect", "inspect_json", "inspect_html"):
            x = r[name]
            print(f"  {name:30s} {x['seconds']:7.3f} s   {x['peak_rss_kib'] / 1024:8.0f} MiB peak "
                  f"({x['peak_rss_kib'] * 1024 / r['metadata_bytes']:.1f}x the file)   "
                  f"{pl_s / x['seconds']:.2f}x pickle.load   exit {x['exit']}")
        if "map_first_render_ms" in r:
            print(f"  map: {r['map_html_bytes'] / 2**20:.1f} MiB of HTML, first render {r['map_first_render_ms']} ms "
                  f"in headless Chromium")
    return 0


if __name__ == "__main__":
    sys.exit(main())
