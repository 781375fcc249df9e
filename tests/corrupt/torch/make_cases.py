"""Writes corrupt / hostile torch.save files and expected.json.

Run: /work/main/.venv/bin/python tests/corrupt/torch/make_cases.py
Checked by tests/unit/torch/corrupt_test.cc: TorchFile::Open in strict mode
(or "mode": "inspect"), then ReadTensor of every tensor when "stage" is
"read"; the error code must match and the message must contain the substring
and the file name.
"""
import io
import json
import os
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
cases = {}


def case(name, data, code, message, mode="strict", stage="open"):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    cases[name] = {"code": code, "message": message, "mode": mode, "stage": stage}


def saved(obj):
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


def rezip(data, edit):
    """Rewrites an archive with Python's zipfile: edit(name, bytes) -> bytes or None (drop)."""
    zin = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            new = edit(info.filename, zin.read(info.filename))
            if new is not None:
                zout.writestr(info.filename if not isinstance(new, tuple) else new[0],
                              new if not isinstance(new, tuple) else new[1])
    return out.getvalue()


def patch_pkl(data, old, new):
    def edit(name, b):
        if name.endswith("data.pkl"):
            assert old in b, (old, b)
            return b.replace(old, new, 1)
        return b
    return rezip(data, edit)


valid = saved({"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3)})
case("valid.pt", valid, "ok", "")
case("not_a_zip.pt", b"hello world, not a checkpoint", "data loss", "not a torch.save file")
case("truncated_half.pt", valid[: len(valid) // 2], "data loss", "truncated_half.pt")
case("truncated_eocd.pt", valid[:-10], "data loss", "truncated_eocd.pt")
# numel 6 -> 7 in the first persistent id ('storage', FloatStorage, '0', 'cpu', 6)
case("storage_numel_mismatch.pt", patch_pkl(valid, b"cpuq\x06K\x06t", b"cpuq\x06K\x07t"),
     "data loss", "holds 24 bytes; the persistent id says 7 x 4 = 28")
# size (2, 3) -> (2, 4): extent past the storage
case("extent_past_storage.pt", patch_pkl(valid, b"K\x02K\x03\x86", b"K\x02K\x04\x86"),
     "data loss", "reaches past the 24 bytes of storage '0'")
# stride (3, 1) -> (3, -1)
case("negative_stride.pt", patch_pkl(valid, b"K\x03K\x01\x86", b"K\x03J\xff\xff\xff\xff\x86"),
     "data loss", "dimension 1 is not a non-negative int")
case("missing_storage_record.pt",
     rezip(valid, lambda n, b: None if n.endswith("data/0") else b),
     "data loss", "storage record 'archive/data/0' is missing")
case("missing_data_pkl.pt", rezip(valid, lambda n, b: None if n.endswith("data.pkl") else b),
     "data loss", "record 'archive/data.pkl' is missing")
case("missing_version.pt", rezip(valid, lambda n, b: None if n.endswith("/version") else b),
     "data loss", "record 'archive/version' is missing")
case("unsupported_version.pt",
     rezip(valid, lambda n, b: b"99\n" if n.endswith("/version") else b),
     "unimplemented", "file format version 99 is outside the supported")
case("bad_byteorder.pt", rezip(valid, lambda n, b: b"middle" if n.endswith("byteorder") else b),
     "data loss", "holds 'middle', not 'little' or 'big'")
case("no_subdirectory.pt", rezip(valid, lambda n, b: (n.split("/", 1)[1], b)),
     "data loss", "is not in a subdirectory")
case("unknown_storage_class.pt", patch_pkl(valid, b"torch\nFloatStorage\n", b"torch\nEvilzStorage\n"),
     "unimplemented", "unknown storage class torch.EvilzStorage")
case("pickle_truncated.pt", rezip(valid, lambda n, b: b[:-3] if n.endswith("data.pkl") else b),
     "data loss", "data.pkl: unexpected end of pickle")
# One flipped bit in data.pkl: the record's CRC-32 no longer matches.
case("data_pkl_crc_mismatch.pt",
     valid.replace(b"collections\nOrderedDict", b"collections\nOrderedDicu", 1),
     "data loss", "data.pkl")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


case("os_system.pt", saved({"w": torch.ones(1), "x": Evil()}), "unimplemented",
     "data.pkl: offset ")
case("eval_global.pt", patch_pkl(saved({"w": torch.ones(1), "x": Evil()}), b"posix\nsystem",
                                 b"builtins\neval\x00"[:-1]), "unimplemented",
     "global 'builtins.eval' is not allowed")
lb = io.BytesIO()
torch.save({"w": torch.ones(2)}, lb, _use_new_zipfile_serialization=False)
case("legacy_format.pt", lb.getvalue(), "unimplemented", "legacy (pre-1.6, non-zip)")
# Storage bytes corrupted: Open succeeds (storages are not read), ReadStorage's CRC check fails.
zi = zipfile.ZipFile(io.BytesIO(valid))
off = zi.getinfo("archive/data/1").header_offset
raw = bytearray(valid)
hdr_len = 30 + int.from_bytes(raw[off + 26:off + 28], "little") + int.from_bytes(raw[off + 28:off + 30], "little")
raw[off + hdr_len] ^= 0x01
case("storage_crc_mismatch.pt", bytes(raw), "data loss", "archive/data/1", stage="storage")

with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(cases, f, indent=1, sort_keys=True)
    f.write("\n")
