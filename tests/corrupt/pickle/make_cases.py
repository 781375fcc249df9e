"""Writes hostile / corrupt pickle streams and expected.json (file -> expected error).

Run: /work/main/.venv/bin/python tests/corrupt/pickle/make_cases.py
Checked by tests/unit/pickle/corrupt_test.cc (strict mode unless "mode" says
otherwise): the error code must match and the message must contain the
substring, the file name and "offset".
"""
import json
import os
import pickle
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
cases = {}


def case(name, data, code, message, mode="strict"):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)
    cases[name] = {"code": code, "message": message, "mode": mode}


valid = pickle.dumps({"a": [1, 2.5, "x"], "b": (None, True)}, protocol=2)
case("valid.pkl", valid, "ok", "")
case("truncated_no_stop.pkl", valid[:-1], "data loss", "unexpected end of pickle at offset")
cut = valid.index(b"X\x01\x00\x00\x00a")
case("truncated_in_binunicode.pkl", valid[:cut + 3], "data loss", "BINUNICODE")
case("huge_binunicode_length.pkl", b"\x80\x02X\xff\xff\xff\xefabc.", "data loss",
     "BINUNICODE: length 4026531839 exceeds the 4 bytes left")
case("huge_binbytes8_length.pkl", b"\x80\x03\x8e" + struct.pack("<Q", 2**63 - 1) + b"zz.",
     "data loss", "BINBYTES8: length 9223372036854775807 exceeds")
case("huge_long4_length.pkl", b"\x80\x02\x8b" + struct.pack("<i", 2**31 - 1) + b"\x01.",
     "data loss", "LONG4: length 2147483647 exceeds")
case("negative_binstring_length.pkl", b"T" + struct.pack("<i", -5) + b"x.", "data loss",
     "BINSTRING: negative length")
case("mark_bomb.pkl", b"(" * 20000, "resource exhausted", "MARK: MARKs nested deeper than 1000")
case("nesting_bomb.pkl", b"\x80\x02N" + b"\x85" * 5000 + b".", "resource exhausted",
     "TUPLE1: containers nested deeper than 1000")
case("list_append_bomb.pkl", b"\x80\x02]" + b"]" * 3000 + b"a" * 3000 + b".", "resource exhausted",
     "APPEND: containers nested deeper than 1000")
case("memo_get_missing.pkl", b"\x80\x02h\x05.", "data loss", "BINGET: memo key 5 was never stored")
case("stack_underflow.pkl", b"\x80\x02R.", "data loss", "REDUCE: stack underflow")
case("setitems_without_mark.pkl", b"\x80\x02}K\x01K\x02u.", "data loss", "SETITEMS: could not find MARK")
case("invalid_opcode.pkl", b"\x80\x02\xff.", "data loss", "invalid opcode 0xff")
case("protocol_6.pkl", b"\x80\x06N.", "unimplemented", "unsupported pickle protocol 6")
case("ext1.pkl", b"\x80\x02\x82\x01.", "unimplemented", "EXT1")
case("next_buffer.pkl", b"\x80\x05\x97.", "unimplemented", "NEXT_BUFFER")
case("frame_too_long.pkl", b"\x80\x04\x95" + struct.pack("<Q", 1000) + b"N.", "data loss",
     "FRAME: frame length 1000 exceeds")
case("os_system.pkl", b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", "unimplemented",
     "GLOBAL: global 'os.system' is not allowed (strict mode")
case("builtins_eval.pkl", b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93X\x01\x00\x00\x001\x85R.",
     "unimplemented", "STACK_GLOBAL: global 'builtins.eval' is not allowed")
case("py2_builtin_eval.pkl", b"c__builtin__\neval\n(S'1'\ntR.", "unimplemented",
     "global 'builtins.eval' is not allowed")
case("inst_subprocess.pkl", b"(S'ls'\nisubprocess\nPopen\n.", "unimplemented",
     "INST: global 'subprocess.Popen' is not allowed")
case("reduce_on_string.pkl", b"\x80\x02X\x01\x00\x00\x00f)R.", "data loss",
     "REDUCE: callable is a str, not a global")
case("append_to_int.pkl", b"\x80\x02K\x01K\x02a.", "data loss", "APPEND: cannot append to a int")
case("build_on_list.pkl", b"\x80\x02]}b.", "data loss", "BUILD: cannot BUILD a list")
case("odd_dict.pkl", b"(K\x01d.", "data loss", "DICT: odd number of items")
case("bad_float_text.pkl", b"Fnot-a-float\n.", "data loss", "FLOAT: invalid float literal")
case("bad_int_text.pkl", b"I12x4\n.", "data loss", "INT: invalid integer literal")
case("huge_int_text.pkl", b"I" + b"9" * 5000 + b"\n.", "resource exhausted",
     "INT: integer literal of 5000 digits exceeds 4300")
case("unquoted_string.pkl", b"Sabc\n.", "data loss", "STRING: the STRING opcode argument must be quoted")
# Bit flip in a valid stream: the BINUNICODE length of 'x' becomes 0x80000001.
flip = bytearray(valid)
pos = valid.index(b"X\x01\x00\x00\x00x")
flip[pos + 4] ^= 0x80
case("bitflip_length.pkl", bytes(flip), "data loss", "BINUNICODE: length 2147483649 exceeds")

with open(os.path.join(HERE, "expected.json"), "w") as f:
    json.dump(cases, f, indent=1, sort_keys=True)
    f.write("\n")
