"""Hostile ZIP archives, each named after the invariant it breaks, plus valid
twins. Writes the files and expected.json ({file: {code, message}}; code is
ckpt::CodeName, "ok" for a valid twin) next to this script. The C++ runner opens
each archive and then reads every record, so a bad CRC or deflate stream is
found too.

  /work/main/.venv/bin/python tests/corrupt/zip/make_corrupt.py
"""
import io
import json
import os
import struct
import zipfile
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
FIXED = (2020, 1, 2, 3, 4, 6)


def pyzip(records, method=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in records:
            info = zipfile.ZipInfo(name, date_time=FIXED)
            info.compress_type = method
            z.writestr(info, data)
    return bytearray(buf.getvalue())


def torchzip():
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4.0)}, buf)
    return bytearray(buf.getvalue())


def find(b, sig, start=0):
    return b.index(sig, start)


def eocd(b):
    return b.rindex(b"PK\x05\x06")


def central(b, i=0):
    pos = find(b, b"PK\x01\x02")
    for _ in range(i):
        pos = find(b, b"PK\x01\x02", pos + 4)
    return pos


def patch(b, off, fmt, value):
    b = bytearray(b)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def cases():
    base = pyzip([("a.txt", b"hello world"), ("b.bin", b"\x00\x01\x02" * 10)])
    tz = torchzip()
    c = {}
    c["valid_stored.zip"] = (bytes(base), "ok", "")
    c["valid_torch.pt"] = (bytes(tz), "ok", "")
    c["valid_deflated.zip"] = (bytes(pyzip([("z", b"z" * 1000)], zipfile.ZIP_DEFLATED)), "ok", "")
    # --- end records
    c["too_short.zip"] = (b"PK\x05\x06", "data loss", "shorter than an end-of-central-directory record")
    c["no_eocd.zip"] = (b"\x00" * 100, "data loss", "no end-of-central-directory record")
    c["truncated_eocd.zip"] = (bytes(base[:-10]), "data loss", "no end-of-central-directory record")
    c["truncated_half.pt"] = (bytes(tz[: len(tz) // 2]), "data loss", "no end-of-central-directory record")
    e = eocd(base)
    c["cd_offset_past_eof.zip"] = (patch(base, e + 16, "<I", 0x7FFFFFF0), "data loss",
                                   "central directory at offset 2147483632")
    c["cd_size_past_eof.zip"] = (patch(base, e + 12, "<I", 0x10000), "data loss",
                                 "does not fit before the end records")
    bomb = patch(base, e + 8, "<H", 0xFFFF)
    bomb = patch(bomb, e + 10, "<H", 0xFFFF)
    c["entry_count_bomb.zip"] = (bomb, "data loss", "central directory claims 65535 entries but is only")
    # ZIP64 record (torch always writes one): count 2^40.
    z64 = tz.rindex(b"PK\x06\x06")
    t = patch(tz, z64 + 24, "<Q", 1 << 40)
    c["zip64_entry_count_bomb.pt"] = (patch(t, z64 + 32, "<Q", 1 << 40), "resource exhausted",
                                      "claims 1099511627776 entries; the limit is 16777216")
    loc = tz.rindex(b"PK\x06\x07")
    c["zip64_locator_past_eof.pt"] = (patch(tz, loc + 8, "<Q", 1 << 50), "data loss", "ZIP64 locator")
    c["zip64_record_bad_signature.pt"] = (patch(tz, z64, "<I", 0x01020304), "data loss",
                                          "bad signature 0x01020304, expected 0x06064b50")
    c["multi_disk.zip"] = (patch(base, e + 4, "<H", 1), "unimplemented", "multi-disk archive")
    # --- central directory entries
    c0 = central(base)
    c["central_bad_signature.zip"] = (patch(base, c0, "<I", 0x02014b51), "data loss",
                                      "central directory entry 0 at offset")
    c["encrypted_flag.zip"] = (patch(base, c0 + 8, "<H", 1), "unimplemented", "encrypted")
    c["unsupported_method.zip"] = (patch(base, c0 + 10, "<H", 12), "unimplemented",
                                   "compression method 12 is not supported")
    c["name_too_long.zip"] = (patch(base, c0 + 28, "<H", 5000), "data loss", "run past the central directory end")
    c["stored_size_mismatch.zip"] = (patch(base, c0 + 20, "<I", 3), "data loss",
                                     "stored record has compressed size 3 != size 11")
    c["zip64_sentinel_without_extra.zip"] = (patch(base, c0 + 24, "<I", 0xFFFFFFFF), "data loss",
                                              "no ZIP64 extra field")
    # --- local headers and payloads
    c["local_header_past_eof.zip"] = (patch(base, c0 + 42, "<I", 0x7FFFFFF0), "data loss",
                                      "lies past the start of the central directory")
    c["local_bad_signature.zip"] = (patch(base, 0, "<I", 0x04034b51), "data loss",
                                    "local header of 'a.txt' at offset 0: bad signature")
    c["local_name_mismatch.zip"] = (patch(base, 30, "<B", ord("x")), "data loss",
                                    "differs from the central directory's")
    c["local_extra_past_cd.zip"] = (patch(base, 28, "<H", 0xFFFF), "data loss",
                                    "runs past the start of the central directory")
    c["bad_crc.zip"] = (patch(base, 30 + 5, "<B", ord("H")), "data loss", "record 'a.txt': CRC-32 mismatch")
    c["bad_crc_torch.pt"] = (patch(tz, find(tz, b"\x00\x00\x80\x3f"), "<B", 1), "data loss", "CRC-32 mismatch")
    dup = pyzip_duplicate()
    c["duplicate_names.zip"] = (dup, "data loss", "duplicate record name 'same'")
    c["overlapping_entries.zip"] = (overlapping(), "data loss", "overlap")
    # --- deflate
    c["zip_bomb_declared_small.zip"] = (zip_bomb(declared=1000), "data loss",
                                        "inflates past its declared size of 1000 bytes")
    c["zip_bomb_declared_huge.zip"] = (zip_bomb(declared=0xFFFFFFF0), "resource exhausted",
                                       "exceeds the limit of")
    # Below the cap but beyond deflate's 1032:1 ratio: refused before reserving.
    c["zip_bomb_declared_ratio.zip"] = (zip_bomb(declared=1 << 25), "data loss",
                                        "cannot come from")
    c["deflate_garbage.zip"] = (deflate_garbage(), "data loss", "bad deflate stream")
    return c


def pyzip_duplicate():
    buf = io.BytesIO()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(zipfile.ZipInfo("same", date_time=FIXED), b"1")
            z.writestr(zipfile.ZipInfo("same", date_time=FIXED), b"2")
    return buf.getvalue()


def local(name, data, method=0, size=None, crc=None, comp=None):
    crc = zlib.crc32(data) if crc is None else crc
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc,
                       len(data) if comp is None else comp, len(data) if size is None else size,
                       len(name), 0) + name + data


def central_entry(name, off, data, method=0, size=None, crc=None, comp=None):
    crc = zlib.crc32(data) if crc is None else crc
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc,
                       len(data) if comp is None else comp, len(data) if size is None else size,
                       len(name), 0, 0, 0, 0, 0, off) + name


def archive(locals_, centrals):
    body = b"".join(locals_)
    cd = b"".join(centrals)
    return body + cd + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(centrals), len(centrals),
                                   len(cd), len(body), 0)


def overlapping():
    # Record "b"'s local header lies inside record "a"'s payload.
    inner = local(b"b", b"BBBB")
    outer = local(b"a", b"xx" + inner)
    return archive([outer], [central_entry(b"a", 0, b"xx" + inner),
                             central_entry(b"b", 30 + 1 + 2, b"BBBB")])


def zip_bomb(declared):
    raw = b"\0" * (4 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    comp = co.compress(raw) + co.flush()
    crc = zlib.crc32(raw)
    return archive([local(b"bomb", comp, method=8, size=declared, crc=crc, comp=len(comp))],
                   [central_entry(b"bomb", 0, comp, method=8, size=declared, crc=crc, comp=len(comp))])


def deflate_garbage():
    data = b"\xff" * 64
    return archive([local(b"g", data, method=8, size=100)],
                   [central_entry(b"g", 0, data, method=8, size=100)])


def main():
    expected = {}
    for name, (data, code, message) in cases().items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        expected[name] = {"code": code, "message": message}
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
