"""Regenerate the golden DCP checkpoints in this folder with real torch.

    .venv/bin/python tests/golden/dcp/make_golden.py [NAME ...]          # rewrite
    .venv/bin/python tests/golden/dcp/make_golden.py --check [NAME ...]  # verify only

Each checkpoint <name>/ is written by torch.distributed.checkpoint.save from
real spawned ranks (gloo, CPU) via tests/interop/dcp_fixtures.py, then read
back with torch's FileSystemReader; the facts in <name>.json are read from
torch (metadata, loaded values), never computed here.  Every byte range in the
sidecar is also re-checked by slicing the file and torch.load-ing the slice.

Tensor data is deterministic (seeded); `.metadata` is not byte-stable (it
holds a fresh uuid4 save_id).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "interop"))

import torch  # noqa: E402

import dcp_fixtures as F  # noqa: E402

warnings.filterwarnings("ignore")


def _zstd_extensions():
    from torch.distributed.checkpoint._extension import ZStandard

    return [ZStandard()]


# name -> (world_size, builder, thread_count, single_file_per_rank, extensions factory)
CHECKPOINTS = {
    "ws1_plain": (1, F.build_plain, 1, True, None),
    "ws2_threads2": (2, F.build_sharded, 2, True, None),
    "ws3_uneven": (3, F.build_uneven, 1, True, None),
    "ws4_per_item": (4, F.build_per_item, 1, False, None),
    "ws2_zstd": (2, F.build_zstd, 1, True, _zstd_extensions),
    "all_dtypes": (1, F.build_all_dtypes, 1, True, None),
    "ws1_threads3_empty": (1, F.build_tiny, 3, True, None),
}

MAX_TOTAL_BYTES = 1_500_000


def _read_slice(ckpt: str, rel: str, off: int, length: int, descriptors) -> bytes:
    with open(os.path.join(ckpt, rel), "rb") as f:
        f.seek(off)
        data = f.read(length)
    if len(data) != length:
        raise AssertionError(f"{rel}: short read at {off} (+{length})")
    for d in descriptors or ():
        if d.partition("/")[0] != "stream.zstd":
            raise AssertionError(f"unexpected transform descriptor {d!r}")
        import zstandard

        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


def _short_repr(v) -> str | None:
    if isinstance(v, (bool, int, float, str, bytes, type(None), list, dict)):
        r = repr(v)
        return r if len(r) <= 200 else None
    return None


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and F.tensor_bytes(a) == F.tensor_bytes(b)
        )
    if isinstance(a, io.BytesIO) and isinstance(b, io.BytesIO):
        return a.getvalue() == b.getvalue()
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def write_one(name: str) -> None:
    ws, builder, threads, per_rank, ext = CHECKPOINTS[name]
    F.write_dcp(
        name,  # relative: StorageMeta.checkpoint_id then holds no local path
        ws,
        builder,
        thread_count=threads,
        single_file_per_rank=per_rank,
        extensions=ext() if ext else None,
    )


def inspect_one(name: str) -> dict:
    """Sidecar facts of the existing checkpoint folder `name` (cwd = HERE)."""
    ws, builder, threads, per_rank, ext = CHECKPOINTS[name]
    ckpt = name
    desc = F.describe(ckpt)
    ref = F.load_reference(ckpt)  # dcp_to_torch_save + torch.load
    direct = F.load_flat_direct(ckpt)  # FileSystemReader + _EmptyStateDictLoadPlanner
    if set(ref) != set(desc["keys"]) or set(direct) != set(desc["keys"]):
        raise AssertionError(
            f"{name}: loaded keys differ from metadata keys: "
            f"{sorted(set(ref) ^ set(desc['keys']))} / {sorted(set(direct) ^ set(desc['keys']))}"
        )
    for k in ref:
        if not _same(ref[k], direct[k]):
            raise AssertionError(f"{name}: {k}: dcp_to_torch_save and _load_state_dict disagree")

    tensors, objects = {}, {}
    for fqn, info in desc["keys"].items():
        storage = info["storage"]
        if info["kind"] == "tensor":
            value = ref[fqn]
            assert isinstance(value, torch.Tensor), fqn
            assert F.dtype_name(value.dtype) == info["dtype"], fqn
            assert list(value.shape) == info["size"], fqn
            by_offset = {tuple(s["offset"]): s for s in storage}
            chunks = []
            for c in info["chunks"]:
                s = by_offset[tuple(c["offsets"])]
                chunk = {
                    "offsets": c["offsets"],
                    "sizes": c["sizes"],
                    "index": s["index"],
                    "file": s["relative_path"],
                    "offset": s["file_offset"],
                    "length": s["length"],
                }
                if s["transform_descriptors"]:
                    chunk["transform_descriptors"] = s["transform_descriptors"]
                # Independent check of the byte range: it must torch.load
                # (weights_only, as FileSystemReader does) to this chunk.
                raw = _read_slice(ckpt, s["relative_path"], s["file_offset"], s["length"],
                                  s["transform_descriptors"])
                t = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
                want = value
                for d, (o, n) in enumerate(zip(c["offsets"], c["sizes"])):
                    want = want.narrow(d, o, n)
                if t.dtype != value.dtype or list(t.shape) != c["sizes"] or F.tensor_bytes(t) != F.tensor_bytes(want):
                    raise AssertionError(f"{name}: {fqn} chunk {c}: slice does not load to the chunk")
                chunk["chunk_sha256"] = F.tensor_sha256(t)
                # Layout of the tensor inside the embedded torch.save archive:
                # DCP does not make chunks contiguous (only compact), so e.g.
                # a transposed tensor is stored with its transposed strides.
                chunk["stored_stride"] = list(t.stride())
                chunk["stored_storage_offset"] = t.storage_offset()
                chunks.append(chunk)
            if len(storage) != len(info["chunks"]):
                raise AssertionError(f"{name}: {fqn}: {len(storage)} storage items for {len(info['chunks'])} chunks")
            tensors[fqn] = {
                "dtype": info["dtype"],
                "shape": info["size"],
                "chunks": chunks,
                "sha256": F.tensor_sha256(value),
                "nbytes": value.numel() * value.element_size(),
            }
        else:
            value = ref[fqn]
            if len(storage) != 1:
                raise AssertionError(f"{name}: {fqn}: bytes item with {len(storage)} storage entries")
            s = storage[0]
            raw = _read_slice(ckpt, s["relative_path"], s["file_offset"], s["length"], s["transform_descriptors"])
            back = torch.load(io.BytesIO(raw), weights_only=False)
            if not _same(back, value):
                raise AssertionError(f"{name}: {fqn}: byte range does not torch.load to the value")
            entry = {
                "file": s["relative_path"],
                "offset": s["file_offset"],
                "length": s["length"],
                "type": type(value).__name__,
                "payload_sha256": hashlib.sha256(raw).hexdigest(),
            }
            if s["transform_descriptors"]:
                entry["transform_descriptors"] = s["transform_descriptors"]
            r = _short_repr(value)
            if r is not None:
                entry["repr"] = r
            if isinstance(value, io.BytesIO):
                entry["value_hex"] = value.getvalue().hex()
            if isinstance(value, bytes):
                entry["value_hex"] = value.hex()
            objects[fqn] = entry

    # Items of each file in file order (from the metadata, sorted by offset).
    file_items: dict = {}
    for fqn, info in desc["keys"].items():
        for s in info["storage"]:
            file_items.setdefault(s["relative_path"], []).append(
                [fqn, s["offset"], s["file_offset"], s["length"]]
            )
    for v in file_items.values():
        v.sort(key=lambda x: x[2])

    sm = desc["storage_meta"]
    return {
        "torch_version": torch.__version__,
        "world_size": ws,
        "thread_count": threads,
        "single_file_per_rank": per_rank,
        "extensions": [e.get_descriptor() for e in ext()] if ext else [],
        "metadata_version": desc["version"],
        "storage_meta": {k: sm[k] for k in ("checkpoint_id", "checkpoint_id_type", "modules")} if sm else None,
        "metadata_pickle_globals": F.pickle_globals(ckpt),
        "planner_data": desc["planner_data"],
        "key_order": list(desc["keys"]),
        "storage_order": desc["storage_order"],
        "files": desc["files"],
        "file_items": file_items,
        "tensors": tensors,
        "bytes": objects,
    }


def main(argv) -> int:
    check = "--check" in argv
    names = [a for a in argv if a != "--check"] or list(CHECKPOINTS)
    unknown = [n for n in names if n not in CHECKPOINTS]
    if unknown:
        print(f"unknown checkpoint(s): {unknown}; known: {list(CHECKPOINTS)}", file=sys.stderr)
        return 2
    os.chdir(HERE)
    failed = 0
    for name in names:
        if check:
            # Re-read the committed folder with torch and compare with the sidecar.
            with open(f"{name}.json") as f:
                want = json.load(f)
            got = json.loads(json.dumps(inspect_one(name)))
            bad = [k for k in want if k != "torch_version" and want[k] != got.get(k)]
            print(f"{name}: {'OK' if not bad else 'MISMATCH in ' + ', '.join(bad)}")
            failed += bool(bad)
            continue
        if os.path.exists(name):
            shutil.rmtree(name)
        write_one(name)
        side = inspect_one(name)
        with open(f"{name}.json", "w") as f:
            json.dump(side, f, indent=1, sort_keys=False)
            f.write("\n")
        print(f"{name}: {len(side['tensors'])} tensors, {len(side['bytes'])} objects, "
              f"files {side['files']}")
    total = 0
    for root, _, files in os.walk(HERE):
        if "__pycache__" in root:
            continue
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"total size of {HERE}: {total} bytes")
    if total > MAX_TOTAL_BYTES:
        print(f"ERROR: golden folder exceeds {MAX_TOTAL_BYTES} bytes", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
