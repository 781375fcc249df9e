"""safetensors.torch.save_file (real safetensors 0.8.0) -> ckptkit.open."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import ckptkit
from helpers import (SAFETENSORS_DTYPES, assert_checkpoint_equal, random_tensor)

# safetensors.torch.load_file cannot load these in 0.8.0 (no F8_E8M0/F4 in its
# load table) but save_file writes them; ckptkit must still read them as torch
# would have them: float4_e2m1fn_x2 packs two values a byte and safetensors'
# header counts 4-bit elements (last dim doubled), torch counts bytes.
_LOAD_FILE_CANNOT = {"float8_e8m0fnu", "float4_e2m1fn_x2"}


@pytest.mark.parametrize("dtype", sorted(SAFETENSORS_DTYPES))
def test_every_safetensors_dtype_reads_bit_equal(dtype, gen, tmp_path):
    tensors = {
        "w": random_tensor(dtype, (3, 5), gen),
        "scalar": random_tensor(dtype, (), gen),
        "empty": random_tensor(dtype, (0, 4), gen),
        "v": random_tensor(dtype, (7,), gen),
    }
    if dtype == "float4_e2m1fn_x2":
        # safetensors cannot describe a 0-dim packed-pair tensor (its header
        # shape counts 4-bit elements, so it doubles the last dim).
        del tensors["scalar"]
    path = tmp_path / f"{dtype}.safetensors"
    save_file(tensors, path)
    if dtype not in _LOAD_FILE_CANNOT:
        from safetensors.torch import load_file

        expected = load_file(path)
    else:
        expected = tensors
    with ckptkit.open(path) as ckpt:
        assert ckpt.format == "safetensors"
        assert_checkpoint_equal(ckpt, expected)


def test_mixed_dtypes_metadata_and_header_order(gen, tmp_path):
    tensors = {f"t.{name}": random_tensor(name, (2, 3), gen) for name in SAFETENSORS_DTYPES
               if name not in _LOAD_FILE_CANNOT}
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, path, metadata={"format": "pt", "note": "hello ckptkit"})
    from safetensors.torch import load_file

    expected = load_file(path)
    with ckptkit.open(path) as ckpt:
        assert_checkpoint_equal(ckpt, expected)
        details = json.dumps(ckpt.details())
        assert "hello ckptkit" in details
        # data_offset: each tensor's bytes really sit there in the file.
        raw = path.read_bytes()
        for key in ckpt:
            info = ckpt.info(key)
            assert raw[info.data_offset:info.data_offset + info.nbytes] == \
                ckpt.read_bytes(key).tobytes(), key


def test_sharded_safetensors_index_and_folder(gen, tmp_path):
    shard_names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    shards = [{"a": random_tensor("float32", (4, 4), gen), "b": random_tensor("int8", (3,), gen)},
              {"c": random_tensor("bfloat16", (2, 2), gen)}]
    weight_map = {}
    for name, sd in zip(shard_names, shards):
        save_file(sd, tmp_path / name)
        weight_map.update({k: name for k in sd})
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 99}, "weight_map": weight_map}))
    expected = {k: v for sd in shards for k, v in sd.items()}
    for target in (tmp_path / "model.safetensors.index.json", tmp_path):
        with ckptkit.open(target) as ckpt:
            assert ckpt.format == "safetensors-sharded"
            assert_checkpoint_equal(ckpt, expected)
            assert ckpt.info("c").file.endswith(shard_names[1])
