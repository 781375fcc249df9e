"""Writes damaged PyTorch DCP checkpoints and expected.json.

Run: /work/main/.venv/bin/python tests/corrupt/dcp/make_corrupt.py   (about 15 s)

Two small checkpoints are written by real torch (2 gloo ranks, see
tests/interop/dcp_fixtures.py): `valid/` (a Shard(0) DTensor "w" (4, 2) in
two chunks, one on each rank, a plain tensor "b" (3,) and an int object
"step") and `valid_zstd/` (the same with the ZStandard extension). Each
other folder is a copy of one of them with one kind of damage; `.metadata`
is rewritten, where needed, with torch's own classes and pickle.

expected.json maps each folder to:
  "open":     {"code": "ok"} or {"code": <CodeName>, "message": [substrings]}
              for ckpt::OpenCheckpoint (Status::message() must hold each one)
  "problems": [substrings]; each must appear in some Details()["problems"]
              entry rendered as "file @ offset: 'key': message"
  "read":     {tensor key: {"code": ..., "message": [substrings]}} for
              ReadTensor of that tensor
  "opaque_globals": [names] Details()["opaque_globals"] must contain them
  "marker":   a path that must not exist after opening (hostile pickles)
  "cli_exit": the exit code of `ckptkit inspect [--json] <folder>`: 1 when open
              fails with DataLoss or problems are listed (they are still
              printed), 0 when the damage is only inside the data
Checked by tests/unit/checkpoint/dcp_corrupt_test.cc (C++) and
tests/interop/test_dcp_corrupt.py (the CLI).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "interop"))

import torch  # noqa: E402

import dcp_fixtures  # noqa: E402

# A path the hostile pickles would create if anything ran them.
MARKER = "/tmp/ckptkit_dcp_hostile_marker"


def build_base(rank: int, world_size: int):
    """Shard(0) DTensor "w" (4, 2) float32, plain "b" (3,) float32, object "step"."""
    from torch.distributed.tensor import Shard

    mesh = dcp_fixtures._mesh_1d(world_size)
    return {
        "w": dcp_fixtures._dtensor(dcp_fixtures.make_tensor("float32", (4, 2), seed=71), mesh, [Shard(0)]),
        "b": dcp_fixtures.make_tensor("float32", (3,), seed=72),
        "step": 5,
    }


class _Hostile:
    """Pickles as os.system(...): unpickling it would run the command."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


cases: dict = {}


def read_md(folder):
    with open(os.path.join(folder, ".metadata"), "rb") as f:
        return pickle.load(f)


def write_md(folder, md):
    with open(os.path.join(folder, ".metadata"), "wb") as f:
        pickle.dump(md, f)


def copy(src, name):
    dst = os.path.join(HERE, name)
    if os.path.exists(dst):
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    return dst


def item_of(md, fqn, offsets=None):
    """(MetadataIndex, _StorageInfo) of fqn's chunk at `offsets` (None: bytes)."""
    for idx, info in md.storage_data.items():
        if idx.fqn == fqn and (offsets is None or list(idx.offset) == list(offsets)):
            return idx, info
    raise KeyError((fqn, offsets))


def ok():
    return {"code": "ok"}


def err(code, *msgs):
    return {"code": code, "message": list(msgs)}


def case(name, *, open=None, problems=(), read=None, opaque=(), marker=None, cli_exit=None):
    # `inspect` exits 1 when open fails with DataLoss or lists problems (it
    # still prints them), 0 when the damage is only inside the data.
    if cli_exit is None:
        cli_exit = 1 if problems else 0
    entry = {"open": open or ok(), "problems": list(problems), "read": read or {}, "cli_exit": cli_exit}
    if opaque:
        entry["opaque_globals"] = list(opaque)
    if marker:
        entry["marker"] = marker
    cases[name] = entry


def main():
    for name in os.listdir(HERE):
        if os.path.isdir(os.path.join(HERE, name)):
            shutil.rmtree(os.path.join(HERE, name))
    valid = os.path.join(HERE, "valid")
    dcp_fixtures.write_dcp(valid, 2, build_base)
    from torch.distributed.checkpoint._extension import ZStandard

    valid_zstd = os.path.join(HERE, "valid_zstd")
    dcp_fixtures.write_dcp(valid_zstd, 2, build_base, extensions=[ZStandard()])
    for folder in (valid, valid_zstd):  # keep the corpus byte-small and stable
        md = read_md(folder)
        md.storage_meta.checkpoint_id = "ckpt"
        md.storage_meta.save_id = "0"
        write_md(folder, md)

    md = read_md(valid)
    w0_idx, w0 = item_of(md, "w", [0, 0])
    w1_idx, w1 = item_of(md, "w", [2, 0])
    b_idx, b_info = item_of(md, "b", [0])
    all_ok = {"w": ok(), "b": ok()}
    case("valid", read=all_ok)
    case("valid_zstd", read=all_ok)

    # 1. A data file cut short: the items past the cut are reported and unreadable.
    d = copy(valid, "truncated_distcp")
    path = os.path.join(d, w1.relative_path)
    size = os.path.getsize(path)
    cut = w1.offset + w1.length // 2
    with open(path, "r+b") as f:
        f.truncate(cut)
    read = {"w": err("data loss", "cannot assemble 'w'", w1.relative_path, "truncated")}
    if b_info.relative_path != w1.relative_path or b_info.offset + b_info.length <= cut:
        read["b"] = ok()
    else:
        read["b"] = err("data loss", "cannot assemble 'b'", "truncated")
    case("truncated_distcp",
         problems=[f"{w1.relative_path} @ {w1.offset}: 'w': item of {w1.length} bytes ends at "
                   f"{w1.offset + w1.length} but the file has {cut} bytes (truncated)"],
         read=read)
    assert cut < size

    # 2. One rank's file is gone.
    d = copy(valid, "missing_rank_file")
    os.remove(os.path.join(d, w1.relative_path))
    read = {"w": err("data loss", "cannot assemble 'w'", f"{w1.relative_path} is missing")}
    read["b"] = ok() if b_info.relative_path != w1.relative_path else err(
        "data loss", "cannot assemble 'b'", f"{w1.relative_path} is missing")
    case("missing_rank_file", problems=[f"{w1.relative_path}: data file is missing"], read=read)

    # 3. .metadata points past the end of a file.
    d = copy(valid, "metadata_past_eof")
    m = read_md(d)
    info = m.storage_data[w0_idx]
    file_size = os.path.getsize(os.path.join(d, info.relative_path))
    info.offset = file_size + 100
    write_md(d, m)
    case("metadata_past_eof",
         problems=[f"{w0.relative_path} @ {file_size + 100}: 'w': item of {w0.length} bytes ends at "
                   f"{file_size + 100 + w0.length} but the file has {file_size} bytes"],
         read={"w": err("data loss", "cannot assemble 'w'", "truncated"), "b": ok()})

    # 4. Overlapping chunks: chunk 1 of "w" claims rows 1..3 instead of 2..4
    #    (its storage item is re-keyed to match, so only coverage is wrong).
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex

    d = copy(valid, "overlapping_chunks")
    m = read_md(d)
    tmd = m.state_dict_metadata["w"]
    tmd.chunks = [c if list(c.offsets) != [2, 0] else ChunkStorageMetadata(torch.Size([1, 0]), c.sizes)
                  for c in tmd.chunks]
    m.storage_data = {(MetadataIndex("w", torch.Size([1, 0]), k.index) if k == w1_idx else k): v
                      for k, v in m.storage_data.items()}
    write_md(d, m)
    case("overlapping_chunks",
         problems=["'w': chunk at [1, 0] sizes [2, 2] overlaps chunk at [0, 0] sizes [2, 2]",
                   "'w': 2 of 8 elements are in no chunk (first: [3:4, 0:2])"],
         read={"w": err("data loss", "cannot assemble 'w'", "overlaps"), "b": ok()})

    # 5. A chunk dropped from state_dict_metadata: rows 2..4 are in no chunk,
    #    and its storage item belongs to nothing.
    d = copy(valid, "missing_chunk")
    m = read_md(d)
    m.state_dict_metadata["w"].chunks = [c for c in m.state_dict_metadata["w"].chunks
                                         if list(c.offsets) != [2, 0]]
    write_md(d, m)
    case("missing_chunk",
         problems=["'w': 4 of 8 elements are in no chunk (first: [2:4, 0:2]): a chunk is missing",
                   f"{w1.relative_path} @ {w1.offset}: 'w': storage item belongs to no entry"],
         read={"w": err("data loss", "cannot assemble 'w'", "a chunk is missing"), "b": ok()})

    # 6. Mangled embedded archives: the central directory signature of w's
    #    first chunk and the first local header of b's item. Structure is
    #    intact, so open and inspect succeed; reading fails naming the item.
    d = copy(valid, "mangled_archive")

    def mangle(info, sig):
        p = os.path.join(d, info.relative_path)
        with open(p, "r+b") as f:
            f.seek(info.offset)
            data = f.read(info.length)
            at = data.find(sig)
            assert at >= 0, (info, sig)
            f.seek(info.offset + at)
            f.write(b"XX\xff\xff")

    mangle(w0, b"PK\x01\x02")
    mangle(b_info, b"PK\x03\x04")
    case("mangled_archive",
         read={"w": err("data loss", f"{w0.relative_path} @ {w0.offset}", "'w'",
                        "not a valid embedded torch.save archive"),
               "b": err("data loss", f"{b_info.relative_path} @ {b_info.offset}", "'b'",
                        "not a valid embedded torch.save archive")})

    # 7. .metadata cut in half.
    d = copy(valid, "truncated_metadata")
    p = os.path.join(d, ".metadata")
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) // 2)
    case("truncated_metadata", open=err("data loss", ".metadata"), cli_exit=1)

    # 8. .metadata that is not a pickle.
    d = copy(valid, "metadata_not_pickle")
    with open(os.path.join(d, ".metadata"), "wb") as f:
        f.write(b'{"state_dict_metadata": {}}\n')
    case("metadata_not_pickle", open=err("data loss", ".metadata"), cli_exit=1)

    # 9. Hostile .metadata: a real Metadata with an extra attribute that
    #    unpickles through os.system. It must open (the call is an opaque
    #    record, never run) and list the global.
    d = copy(valid, "hostile_metadata")
    m = read_md(d)
    m.evil = _Hostile()
    write_md(d, m)
    with open(os.path.join(d, ".metadata"), "rb") as f:
        assert f"touch {MARKER}".encode() in f.read()
    sys_name = f"{os.system.__module__}.system"  # posix.system
    case("hostile_metadata", read=all_ok, opaque=[sys_name], marker=MARKER)

    # 9b. The whole .metadata is the os.system call: refused, never run.
    d = copy(valid, "hostile_root")
    with open(os.path.join(d, ".metadata"), "wb") as f:
        pickle.dump(_Hostile(), f)
    case("hostile_root", open=err("data loss", "expected a Metadata object with a state_dict_metadata dict",
                                  f"found {sys_name}"),
         marker=MARKER, cli_exit=1)

    # 10. Data files without .metadata: the save never committed.
    d = copy(valid, "no_metadata")
    os.remove(os.path.join(d, ".metadata"))
    case("no_metadata", open=err("data loss", "no .metadata", "the save did not finish"), cli_exit=1)

    # 11. A zstd item whose frame is corrupt (its magic number overwritten).
    d = copy(valid_zstd, "zstd_corrupt_frame")
    mz = read_md(d)
    _, zw1 = item_of(mz, "w", [2, 0])
    _, zb = item_of(mz, "b", [0])
    assert list(zw1.transform_descriptors) == ["stream.zstd/1"]
    with open(os.path.join(d, zw1.relative_path), "r+b") as f:
        f.seek(zw1.offset)
        assert f.read(4) == b"\x28\xb5\x2f\xfd"
        f.seek(zw1.offset)
        f.write(b"\x00\x00\x00\x00")
    case("zstd_corrupt_frame",
         read={"w": err("data loss", f"{zw1.relative_path} @ {zw1.offset}", "'w'", "corrupt zstd stream"),
               "b": ok()})

    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(cases, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(HERE) for n in ns)
    print(f"wrote {len(cases)} cases, {total} bytes in {HERE}")


if __name__ == "__main__":
    main()
