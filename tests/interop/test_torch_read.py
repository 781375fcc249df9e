"""torch.save (real torch 2.13) -> ckptkit.open: every key, dtype, shape and byte."""

from __future__ import annotations

import collections

import pytest
import torch

import ckptkit
from helpers import (TORCH_SAVE_DTYPES, assert_checkpoint_equal, flatten, layouts,
                     random_tensor)


def _save_and_expect(obj, path):
    torch.save(obj, path)
    # The real library's view of the file decides what ckptkit must return.
    loaded = flatten(torch.load(path, weights_only=True))
    original = flatten(obj)
    assert loaded.keys() == original.keys()
    return loaded


@pytest.mark.parametrize("dtype", TORCH_SAVE_DTYPES)
def test_every_layout_of_dtype_reads_bit_equal(dtype, gen, tmp_path):
    obj = layouts(dtype, gen)
    path = tmp_path / f"{dtype}.pt"
    expected = _save_and_expect(obj, path)
    with ckptkit.open(path) as ckpt:
        assert ckpt.format == "torch"
        assert_checkpoint_equal(ckpt, expected)


def test_mixed_nested_state_dict(gen, tmp_path):
    """A realistic nested checkpoint: OrderedDict model, optimizer-like lists,
    every dtype, scalar leaves as objects."""
    model = collections.OrderedDict()
    for i, name in enumerate(TORCH_SAVE_DTYPES):
        model[f"layers.{i}.{name}"] = random_tensor(name, (2, 3), gen)
    obj = {
        "model": model,
        "optim": {"state": {0: {"exp_avg": random_tensor("float32", (4, 4), gen).t()}},
                  "param_groups": [{"lr": 0.5, "params": [0]}]},
        "epoch": 7,
        "tag": "run-1",
        "tuple": (random_tensor("bfloat16", (3,), gen), random_tensor("int64", (), gen)),
    }
    path = tmp_path / "mixed.pt"
    expected = _save_and_expect(obj, path)
    with ckptkit.open(path) as ckpt:
        assert_checkpoint_equal(ckpt, expected)
        # Keys come in file (pickle) order, the order torch.load gives.
        assert ckpt.keys() == list(expected)
        objects = {o["key"]: o for o in ckpt.objects()}
        assert "epoch" in objects and "7" in objects["epoch"]["repr"]
        assert "tag" in objects and "run-1" in objects["tag"]["repr"]
        assert not any(o["opaque"] for o in objects.values())


def test_shared_storage_and_offsets_reported(gen, tmp_path):
    base = random_tensor("float32", (4, 6), gen)
    obj = {"a": base, "b": base[1:, 2:], "c": base.t()}
    path = tmp_path / "shared.pt"
    expected = _save_and_expect(obj, path)
    with ckptkit.open(path) as ckpt:
        assert_checkpoint_equal(ckpt, expected)
        a, b, c = ckpt.info("a"), ckpt.info("b"), ckpt.info("c")
        assert a.storage == b.storage == c.storage != ""
        assert b.storage_offset == 1 * 6 + 2
        assert tuple(b.stride) == (6, 1)
        assert tuple(c.stride) == (1, 6)


def test_parameter_and_requires_grad_flags(gen, tmp_path):
    obj = {"p": torch.nn.Parameter(random_tensor("float32", (2, 2), gen)),
           "g": random_tensor("float32", (3,), gen).requires_grad_(True),
           "plain": random_tensor("float32", (3,), gen)}
    path = tmp_path / "param.pt"
    torch.save(obj, path)
    expected = flatten(torch.load(path, weights_only=True))
    with ckptkit.open(path) as ckpt:
        assert_checkpoint_equal(ckpt, expected)
        assert ckpt.info("p").is_parameter
        assert ckpt.info("p").requires_grad
        assert ckpt.info("g").requires_grad and not ckpt.info("g").is_parameter
        assert not ckpt.info("plain").requires_grad


def test_legacy_and_legacy_free_zip_names(gen, tmp_path):
    """torch names the archive folder after the file; a buffer save uses 'archive'."""
    import io

    obj = {"w": random_tensor("float16", (5,), gen)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    p = tmp_path / "from_buffer.bin"
    p.write_bytes(buf.getvalue())
    with ckptkit.open(p) as ckpt:
        assert_checkpoint_equal(ckpt, flatten(torch.load(p, weights_only=True)))


def test_torch_sharded_index_reads_all_shards(gen, tmp_path):
    shards = {
        "pytorch_model-00001-of-00002.bin": {"a": random_tensor("float32", (3, 3), gen)},
        "pytorch_model-00002-of-00002.bin": {"b": random_tensor("bfloat16", (4,), gen),
                                             "c": random_tensor("int64", (2,), gen)},
    }
    weight_map = {}
    for name, sd in shards.items():
        torch.save(sd, tmp_path / name)
        weight_map.update({k: name for k in sd})
    import json

    (tmp_path / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    expected = {k: v for sd in shards.values() for k, v in sd.items()}
    with ckptkit.open(tmp_path / "pytorch_model.bin.index.json") as ckpt:
        assert ckpt.format == "torch-sharded"
        assert_checkpoint_equal(ckpt, expected)
        assert ckpt.info("b").file.endswith("pytorch_model-00002-of-00002.bin")
