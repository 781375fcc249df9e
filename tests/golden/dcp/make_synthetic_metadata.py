"""Write a large synthetic DCP `.metadata` with torch's own classes (for benchmarks).

    .venv/bin/python tests/golden/dcp/make_synthetic_metadata.py OUT_PATH \
        [--keys 1000] [--chunks 100] [--bytes-keys 10] [--time-load]

Produces exactly what `_FileSystemWriter.finish` pickles (plain pickle.dump at
the default protocol): a Metadata whose `keys` float32 tensors each have
`chunks` row chunks of (8, 16) spread over `chunks` fake ranks/files
`__<r>_0.distcp`, plus `bytes-keys` BytesStorageMetadata entries, planner_data,
storage_meta and version.  The data files do not exist: only the `.metadata`
is meant to be parsed.  Not committed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import pickle
import sys
import time
import uuid
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch.distributed.checkpoint.filesystem import _StorageInfo  # noqa: E402
from torch.distributed.checkpoint.metadata import (  # noqa: E402
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)

ROWS_PER_CHUNK = 8
COLS = 16
ARCHIVE_LEN = 1577  # typical length of one small torch.save chunk archive


def build(keys: int, chunks: int, bytes_keys: int, checkpoint_id: str) -> Metadata:
    sdm = {}
    storage = {}
    planner = {}
    file_off = [0] * chunks
    for k in range(keys):
        fqn = f"model.layers.{k // 10}.block{k % 10}.weight"
        chunk_list = []
        for c in range(chunks):
            offsets = torch.Size([c * ROWS_PER_CHUNK, 0])
            chunk_list.append(ChunkStorageMetadata(offsets=offsets, sizes=torch.Size([ROWS_PER_CHUNK, COLS])))
            storage[MetadataIndex(fqn, offsets, c)] = _StorageInfo(f"__{c}_0.distcp", file_off[c], ARCHIVE_LEN)
            file_off[c] += ARCHIVE_LEN
        sdm[fqn] = TensorStorageMetadata(
            properties=TensorProperties(dtype=torch.float32),
            size=torch.Size([chunks * ROWS_PER_CHUNK, COLS]),
            chunks=chunk_list,
        )
        planner[fqn] = tuple(fqn.split("."))
    for b in range(bytes_keys):
        fqn = f"extra.obj{b}"
        sdm[fqn] = BytesStorageMetadata()
        storage[MetadataIndex(fqn)] = _StorageInfo("__0_0.distcp", file_off[0], 1261)
        file_off[0] += 1261
        planner[fqn] = ("extra", f"obj{b}")
    md = Metadata(state_dict_metadata=sdm, planner_data=planner, storage_data=storage)
    # FileSystemWriter stores its path as a pathlib.Path (pickled as pathlib.PosixPath).
    md.storage_meta = StorageMeta(checkpoint_id=pathlib.Path(checkpoint_id), save_id=str(uuid.uuid4()))
    md.version = "1.0.0"
    return md


def main(argv) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="path of the .metadata file to write")
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--chunks", type=int, default=100)
    ap.add_argument("--bytes-keys", type=int, default=10)
    ap.add_argument("--time-load", action="store_true", help="time pickle.load of the result")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    md = build(a.keys, a.chunks, a.bytes_keys, os.path.dirname(os.path.abspath(a.out)))
    t1 = time.perf_counter()
    with open(a.out, "wb") as f:
        pickle.dump(md, f)  # as _FileSystemWriter.finish does
    t2 = time.perf_counter()
    size = os.path.getsize(a.out)
    print(f"{a.out}: {a.keys} keys x {a.chunks} chunks = {a.keys * a.chunks} chunks, "
          f"{a.bytes_keys} bytes keys, {size} bytes (build {t1 - t0:.2f}s, dump {t2 - t1:.2f}s)")
    if a.time_load:
        best = None
        for _ in range(3):
            t = time.perf_counter()
            with open(a.out, "rb") as f:
                back = pickle.load(f)
            dt = time.perf_counter() - t
            best = dt if best is None else min(best, dt)
        assert len(back.storage_data) == a.keys * a.chunks + a.bytes_keys
        print(f"pickle.load: best of 3 = {best:.3f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
