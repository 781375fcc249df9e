#!/usr/bin/env python3
"""Seeds for megatron_args_fuzz: the data.pkl (the common state pickle, with
Megatron-LM's `args`) of every common.pt among the goldens, deduplicated by
content. (A legacy model_optim_rng.pt holds args too, but its 25-45 KB pickle
is past the target's -max_len, 8192.) Standard library only:
    python3 tests/fuzz/seeds/make_megatron_args_seeds.py
"""
import hashlib
import pathlib
import zipfile

root = pathlib.Path(__file__).resolve().parents[3]
out = pathlib.Path(__file__).resolve().parent / "megatron_args"
out.mkdir(exist_ok=True)
for old in out.glob("*.pkl"):
    old.unlink()
seen = set()
for name in ("common.pt",):
    for path in sorted((root / "tests/golden").rglob(name)):
        with zipfile.ZipFile(path) as z:
            pkl = [n for n in z.namelist() if n.endswith("/data.pkl")]
            if len(pkl) != 1:
                continue
            data = z.read(pkl[0])
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        rel = path.relative_to(root / "tests/golden").parent.as_posix().replace("/", "_")
        (out / f"{rel}_{name[:-3]}.pkl").write_bytes(data)
print(f"{len(seen)} seeds in {out}")
