"""Writes the pickle test vectors used by tests/unit/pickle/*_test.cc.

Run with /work/main/.venv/bin/python (CPython 3.11, torch 2.13):
    python tests/unit/pickle/testdata/make_vectors.py

rich_p{0..5}.pkl  one object with every value kind, pickled at protocols 0-5;
                  the C++ test checks all six read to the same tree.
canonical_p2.pkl  protocol 2 (the C pickler, as torch.save uses) of objects
                  our pickler must reproduce byte for byte.
recursive_p2.pkl  self-referencing list and tuple (POP / BINGET paths).
"""
import argparse
import collections
import os
import pickle

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def rich():
    shared = [9]
    return {
        "int": 5, "neg": -7, "i16": 40000, "i32": -70000, "i64": 2**40, "nbig": -2**70,
        "big": 2**100, "float": 1.5, "nfloat": -0.25, "str": "h\u00e9llo \u20ac",
        "bytes": b"\x00\xffab", "empty_bytes": b"", "ba": bytearray(b"xy"),
        "list": [1, [2, 3], (4,)], "tuple": (1, 2, 3, 4), "set": {1}, "fs": frozenset({2}),
        "none": None, "t": True, "f": False, "od": collections.OrderedDict(a=1),
        "shared": (shared, shared), "empty": (), "ed": {}, "el": [],
        "nested": {"a": [{"b": 1}]}, 7: "int key",
    }


def canonical():
    od = collections.OrderedDict((f"k{i}", i) for i in range(1001))
    ns = argparse.Namespace(lr=0.1, name="gpt", layers=[1, 2])
    s = "shared-string"
    return {
        "ints": [0, 1, 255, 256, 65535, 65536, -1, -128, 2**31 - 1, -2**31, 2**31, -2**31 - 1,
                 2**39, -2**39, -2**40, 2**63 - 1, -2**63, 2**64, -2**64, 2**200],
        "floats": [0.0, -0.0, 1e300, float("inf"), 3.141592653589793],
        "strs": ["", "a", "\u00e9\u4e2d\U0001F600", s, s],
        "bytes": [b"", b"\x00\x80\xff", b"abc", bytearray(b""), bytearray(b"\x01\x02")],
        "sets": [set(), {3}, frozenset(), frozenset({4})],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4), (1, 2, 3, 4, 5)],
        "dict1000": {i: i for i in range(1000)},
        "dict1001": {i: i for i in range(1001)},
        "list1001": list(range(1001)),
        "od": od,
        "od1": collections.OrderedDict(x=1),
        "size": torch.Size([2, 3]),
        "size0": torch.Size([]),
        "ns": ns,
        "dtype": torch.float32,
        "many": [f"s{i}" for i in range(300)],  # LONG_BINPUT / LONG_BINGET
    }


def recursive():
    lst = []
    lst.append(lst)
    t = ([],)
    t[0].append(t)
    return [lst, t]


def main():
    for proto in range(6):
        with open(os.path.join(HERE, f"rich_p{proto}.pkl"), "wb") as f:
            pickle.dump(rich(), f, protocol=proto)
    with open(os.path.join(HERE, "canonical_p2.pkl"), "wb") as f:
        pickle.dump(canonical(), f, protocol=2)
    with open(os.path.join(HERE, "recursive_p2.pkl"), "wb") as f:
        pickle.dump(recursive(), f, protocol=2)


if __name__ == "__main__":
    main()
