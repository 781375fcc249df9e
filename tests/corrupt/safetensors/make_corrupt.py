"""Hostile safetensors files, each named after the invariant it breaks, plus valid
twins. Writes the files and expected.json ({file: {code, message}}; code is
ckpt::CodeName, "ok" for a valid twin) next to this script.

  /work/main/.venv/bin/python tests/corrupt/safetensors/make_corrupt.py

The comment on each case says what safetensors 0.8.0 does with it.
"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
T = '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'


def mk(header, data=b"", n=None):
    if isinstance(header, str):
        header = header.encode()
    return struct.pack("<Q", len(header) if n is None else n) + header + data


VALID = mk("{" + T + "}   ", b"\x00\x00\x80\x3f")
CASES = {
    # --- valid twins (0.8.0 loads them all)
    "valid_minimal.safetensors": (VALID, "ok", ""),
    "valid_unpadded_header.safetensors": (mk("{" + T + "}", b"abcd"), "ok", ""),
    "valid_null_metadata.safetensors": (mk('{"__metadata__":null,' + T + "}", b"abcd"), "ok", ""),
    "valid_empty_tensor.safetensors": (
        mk('{"e":{"dtype":"F16","shape":[0,2],"data_offsets":[0,0]},' + T + "}", b"abcd"), "ok", ""),
    # --- length prefix (HeaderTooSmall / HeaderTooLarge / InvalidHeaderLength)
    "header_too_small.safetensors": (b"\x10\x00\x00", "data loss", "HeaderTooSmall"),
    "truncated_in_length.safetensors": (VALID[:7], "data loss", "HeaderTooSmall"),
    "header_too_large.safetensors": (mk("{}", n=100_000_001), "data loss", "HeaderTooLarge"),
    "header_length_u64_max.safetensors": (mk("{}", n=2**64 - 1), "data loss", "HeaderTooLarge"),
    "header_length_past_eof.safetensors": (mk("{}", n=1000), "data loss", "InvalidHeaderLength"),
    "truncated_in_header.safetensors": (VALID[:30], "data loss", "InvalidHeaderLength"),
    # --- text (InvalidHeader / InvalidHeaderDeserialization)
    "invalid_utf8.safetensors": (mk(b'{"\xff":1}'), "data loss", "InvalidHeader: header is not valid UTF-8"),
    "overlong_utf8.safetensors": (mk(b'{"\xc0\xaf":1}'), "data loss", "InvalidHeader"),
    "utf16_surrogate.safetensors": (mk(b'{"\xed\xa0\x80":1}'), "data loss", "InvalidHeader"),
    "not_json.safetensors": (mk("{not json}"), "data loss", "InvalidHeaderDeserialization: header is not valid JSON"),
    "empty_header.safetensors": (mk(""), "data loss", "not valid JSON"),
    "trailing_nul_in_header.safetensors": (mk("{" + T + "}\x00", b"abcd"), "data loss", "not valid JSON"),
    "not_object.safetensors": (mk("[]"), "data loss", "header is a JSON array, expected an object"),
    "deep_nesting.safetensors": (mk("[" * 5000 + "]" * 5000), "data loss", "nests deeper"),
    # 0.8.0 keeps the last of duplicate keys; we refuse.
    "duplicate_tensor_key.safetensors": (mk("{" + T + "," + T + "}", b"abcd"), "data loss", "duplicate key 'a'"),
    "duplicate_field.safetensors": (
        mk('{"a":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"abcd"),
        "data loss", "duplicate key 'dtype' in 'a'"),
    "metadata_non_string.safetensors": (
        mk('{"__metadata__":{"x":1},' + T + "}", b"abcd"), "data loss",
        "__metadata__ value of 'x' is a JSON number"),
    "metadata_not_object.safetensors": (
        mk('{"__metadata__":"pt",' + T + "}", b"abcd"), "data loss", "__metadata__ is a JSON string"),
    "entry_not_object.safetensors": (mk('{"a":[1]}'), "data loss", "tensor 'a': entry is a JSON array"),
    # 0.8.0 ignores unknown fields; the brief wants exactly three.
    "extra_field.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}}', b"abcd"),
        "data loss", "unknown field 'x'"),
    "missing_shape.safetensors": (
        mk('{"a":{"dtype":"F32","data_offsets":[0,4]}}', b"abcd"), "data loss", "missing field 'shape'"),
    "unknown_dtype.safetensors": (
        mk('{"a":{"dtype":"F99","shape":[1],"data_offsets":[0,4]}}', b"abcd"), "unimplemented",
        "tensor 'a': unknown dtype 'F99'"),
    "dtype_not_string.safetensors": (
        mk('{"a":{"dtype":7,"shape":[1],"data_offsets":[0,4]}}', b"abcd"), "data loss", "dtype is not a string"),
    "negative_dim.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}', b"abcd"), "data loss",
        "shape holds -1, expected a non-negative integer"),
    "float_dim.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', b"abcd"), "data loss",
        "expected a non-negative integer"),
    "dim_past_u64.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[18446744073709551616],"data_offsets":[0,4]}}', b"abcd"),
        "data loss", "expected a non-negative integer"),
    "offsets_three_elements.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4,4]}}', b"abcd"), "data loss",
        "expected [begin, end]"),
    "offsets_negative.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}', b"abcd"), "data loss",
        "expected [begin, end]"),
    # --- Metadata::validate
    "offsets_gap.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
           '"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}', b"\0" * 12),
        "data loss", "InvalidOffset: tensor 'b': data_offsets [8, 12] leave a gap"),
    "offsets_overlap.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
           '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
        "data loss", "InvalidOffset: tensor 'b': data_offsets [4, 8] overlap"),
    "offsets_not_from_zero.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', b"\0" * 8),
        "data loss", "InvalidOffset: tensor 'a'"),
    "end_before_begin.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},'
           '"b":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}}', b"\0" * 4),
        "data loss", "InvalidOffset"),
    "size_mismatch.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"abcd"), "data loss",
        "TensorInvalidInfo: tensor 'a': data_offsets [0, 4] hold 4 bytes, but F32 shape [2] needs 8"),
    "shape_overflow.safetensors": (
        mk('{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}', b"abcd"),
        "data loss", "ValidationOverflow"),
    "shape_times_size_overflow.safetensors": (
        mk('{"a":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}}', b"abcd"),
        "data loss", "ValidationOverflow"),
    "f4_odd_count.safetensors": (
        mk('{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"ab"), "data loss", "MisalignedSlice"),
    "trailing_bytes.safetensors": (VALID + b"\0", "data loss",
                                   "MetadataIncompleteBuffer: tensors cover 4 bytes of data but the data section is 5 bytes"),
    "truncated_in_data.safetensors": (VALID[:-1], "data loss", "MetadataIncompleteBuffer"),
    "empty_header_with_data.safetensors": (mk("{}", b"x"), "data loss", "MetadataIncompleteBuffer"),
    "f6_dtype.safetensors": (
        mk('{"a":{"dtype":"F6_E3M2","shape":[4],"data_offsets":[0,3]}}', b"abc"), "unimplemented",
        "has no torch dtype"),
}


def main():
    expected = {}
    for name, (data, code, message) in CASES.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
        expected[name] = {"code": code, "message": message}
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
