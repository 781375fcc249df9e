"""Generates the ZIP golden files for tests/unit/zip (run with the repo venv).

  /work/main/.venv/bin/python tests/golden/zip/make_golden.py

Written with torch 2.13.0 (torch._C.PyTorchFileWriter / torch.save) and Python's
zipfile. Outputs, next to this script:
  torch_records.zip   PyTorchFileWriter over a buffer: records a, empty, data/0, c,
                      then write_end_of_file (version, byteorder, .data/serialization_id).
                      Every name gets the "archive/" prefix.
  torch_save.pt       torch.save of a small state dict to a path (archive name "torch_save").
  py_stored.zip       zipfile, ZIP_STORED (unaligned, no data descriptors).
  py_deflated.zip     zipfile, ZIP_DEFLATED.
  zip64_probe.json    the non-payload bytes torch writes for an archive with a
                      record of 4 GiB + 100 bytes (payload not stored): runs of
                      {offset, hex}; the payload is zeros.
  manifest.json       per file: records in central-directory order with
                      name, size, crc32, method, data_offset.
"""
import json
import os
import struct
import sys
import zipfile
import zlib

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


class Recorder:
    """A file-like that keeps small writes and only counts large ones."""

    def __init__(self, keep_all=True):
        self.pos = 0
        self.keep_all = keep_all
        self.data = bytearray()
        self.runs = []  # (offset, bytes)

    def write(self, b):
        mv = memoryview(b)
        n = mv.nbytes
        if self.keep_all:
            self.data += mv.tobytes()
        elif n < (1 << 20):
            if self.runs and self.runs[-1][0] + len(self.runs[-1][1]) == self.pos:
                self.runs[-1] = (self.runs[-1][0], self.runs[-1][1] + mv.tobytes())
            else:
                self.runs.append((self.pos, mv.tobytes()))
        self.pos += n
        return n


RECORDS = [
    ("a", b"hello"),
    ("empty", b""),
    ("data/0", bytes(range(256)) * 2 + b"tail"),
    ("c", b"x" * 300),
]


def torch_records():
    rec = Recorder()
    w = torch._C.PyTorchFileWriter(rec, True, 64)
    for name, data in RECORDS:
        w.write_record(name, data, len(data))
    w.write_end_of_file()
    return bytes(rec.data)


def zip64_probe():
    rec = Recorder(keep_all=False)
    w = torch._C.PyTorchFileWriter(rec, True, 64)
    w.write_record("a", b"hello", 5)
    w.write_record("empty", b"", 0)
    big = (1 << 32) + 100
    t = torch.empty(big, dtype=torch.uint8)  # untouched pages read as zeros
    w.write_record("big", t.untyped_storage(), big)
    w.write_record("after", b"xyz", 3)
    w.write_end_of_file()
    return {"size": rec.pos, "big_size": big,
            "runs": [{"offset": o, "hex": b.hex()} for o, b in rec.runs]}


def records_of(path):
    out = []
    with open(path, "rb") as f:
        raw = f.read()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            off = info.header_offset
            n, m = struct.unpack_from("<HH", raw, off + 26)
            data = z.read(info.filename)
            assert zlib.crc32(data) == info.CRC
            out.append({"name": info.filename, "size": info.file_size,
                        "compressed_size": info.compress_size, "crc32": info.CRC,
                        "method": info.compress_type, "header_offset": off,
                        "data_offset": off + 30 + n + m})
    return out


def main():
    files = {}
    with open(os.path.join(HERE, "torch_records.zip"), "wb") as f:
        f.write(torch_records())
    files["torch_records.zip"] = None

    sd = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
          "b": torch.tensor([1, 2, 3], dtype=torch.int64),
          "e": torch.zeros(0, dtype=torch.float16)}
    torch.save(sd, os.path.join(HERE, "torch_save.pt"))
    files["torch_save.pt"] = None

    fixed = (2020, 1, 2, 3, 4, 6)
    for fname, method in (("py_stored.zip", zipfile.ZIP_STORED),
                          ("py_deflated.zip", zipfile.ZIP_DEFLATED)):
        with zipfile.ZipFile(os.path.join(HERE, fname), "w", compression=method) as z:
            for name, data in [("top.txt", b"top level\n"), ("dir/big.bin", b"abc" * 5000),
                               ("dir/empty", b""), ("dir/uni\u00e9.txt", "caf\u00e9".encode())]:
                info = zipfile.ZipInfo(name, date_time=fixed)
                info.compress_type = method
                z.writestr(info, data)
        files[fname] = None

    manifest = {"torch_version": torch.__version__, "python": sys.version.split()[0],
                "records": RECORDS and [{"name": n, "hex": d.hex()} for n, d in RECORDS],
                "files": {name: records_of(os.path.join(HERE, name)) for name in files}}
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(HERE, "zip64_probe.json"), "w") as f:
        json.dump(zip64_probe(), f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
