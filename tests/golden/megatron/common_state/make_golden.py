#!/usr/bin/env python3
"""Regenerates the common-state goldens in this folder with REAL torch (and megatron-core's own
extract_matching_values), for tests/unit/megatron/writer_test.cc.

What megatron-core writes for the non-sharded ("common") part of a checkpoint:
  core <= 0.18 (0.16.1 strategies/common.py TorchCommonSaveStrategy.save_common):
      torch.save(common_dict, "<ckpt>/common.pt")          -> archive folder "common"
  core >= 0.19 (0.19.2 serialization.save + strategies/torch.py _mcore_to_torch_sharded_object):
      the ShardedObject 'common_state' item = torch.save([common_dict], io.BytesIO())
                                                            -> archive folder "archive"

Files (every one is what torch writes; a conversion must reproduce it byte for byte):
  direct/common.pt      torch.save(COMMON, "direct/common.pt")
  direct/item.bin       torch.save([COMMON], BytesIO)
  from_item/common.pt   torch.save(torch.load(direct/item.bin)[0], "from_item/common.pt")   (0.19 -> 0.16)
  from_common/item.bin  torch.save([torch.load(direct/common.pt)], BytesIO)               (0.16 -> 0.19)
  empty/common.pt       torch.save({}, "empty/common.pt");   empty/item.bin  torch.save([{}], BytesIO)
  state_dict/sd.pt      torch.save(SD, ...): tensors at several depths plus non-tensor values
  state_dict/common.pt  torch.save(extract_matching_values(torch.load(sd.pt), is_tensor)[1], ...)
  state_dict/item.bin   torch.save([that dict], BytesIO)
  mc016/item.bin        torch.save([torch.load(<mc016_handbuilt>/common.pt)], BytesIO): what a 0.19
                        save of the dict megatron-core 0.16.1 wrote gives (0.16 -> 0.19)
  mc016/common.pt       torch.save(torch.load(mc016/item.bin)[0], "mc016/common.pt") (-> 0.19 -> 0.16).
                        Not the original file: torch.load + torch.save of that file is not
                        byte-identical to it either (object identities differ after loading).
  versions.json         torch / megatron-core / python versions used

Usage: /work/main/.venv/bin/python tests/golden/megatron/common_state/make_golden.py
"""

import argparse
import collections
import io
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def common_dict():
    args = argparse.Namespace(
        tensor_model_parallel_size=2, pipeline_model_parallel_size=1, num_layers=2, hidden_size=8,
        params_dtype=torch.bfloat16, normalization="RMSNorm", ckpt_format="torch_dist", lr=3e-4,
        seed=1234, swiglu=True, vocab_file=None, tag="x",
    )
    return {
        "args": args,
        "checkpoint_version": 3.0,
        "iteration": 10,
        "num_floating_point_operations_so_far": 123456789,
        "opt_param_scheduler": {"max_lr": 3e-4, "num_steps": 10, "lr_decay_style": "cosine"},
        "content_metadata": {"singleton_local_shards": False, "distrib_optim_sharding_type": "fully_reshardable"},
        "rng_pair": (torch.arange(4, dtype=torch.int64), "a"),
        "names": ["a", "b", "é", ""],
    }


def state_dict():
    t = lambda *s: torch.arange(int(torch.tensor(s).prod())).reshape(s).float()  # noqa: E731
    return {
        "model": collections.OrderedDict([("layer.weight", t(2, 3)), ("layer.bias", t(3))]),
        "optimizer": {"state": {0: {"exp_avg": t(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "only_tensors": {"a": t(1), "b": [t(1), t(2)]},
        "mixed_list": [t(1), 5, {"w": t(1)}, {"keep": 1, "w": t(1)}, [], {}],
        "empty": {},
        "iteration": 7,
        "args": argparse.Namespace(lr=0.1, name="run"),
        "in_tuple": (t(2), "kept with its tensor"),
    }


def save_item(obj, path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def main():
    from megatron.core.dist_checkpointing.dict_utils import extract_matching_values
    import megatron.core

    for d in ("direct", "from_item", "from_common", "empty", "state_dict", "mc016"):
        os.makedirs(os.path.join(HERE, d), exist_ok=True)
    p = lambda *a: os.path.join(HERE, *a)  # noqa: E731

    torch.save(common_dict(), p("direct", "common.pt"))
    save_item([common_dict()], p("direct", "item.bin"))
    with open(p("direct", "item.bin"), "rb") as f:
        item = torch.load(io.BytesIO(f.read()), weights_only=False)
    torch.save(item[0], p("from_item", "common.pt"))
    save_item([torch.load(p("direct", "common.pt"), weights_only=False)], p("from_common", "item.bin"))

    torch.save({}, p("empty", "common.pt"))
    save_item([{}], p("empty", "item.bin"))

    torch.save(state_dict(), p("state_dict", "sd.pt"))
    sd = torch.load(p("state_dict", "sd.pt"), weights_only=False)
    _, common = extract_matching_values(sd, lambda v: isinstance(v, torch.Tensor))
    torch.save(common, p("state_dict", "common.pt"))
    save_item([common], p("state_dict", "item.bin"))

    mc016 = os.path.join(HERE, "..", "mc016_handbuilt", "iter_0000010", "common.pt")
    save_item([torch.load(mc016, weights_only=False)], p("mc016", "item.bin"))
    with open(p("mc016", "item.bin"), "rb") as f:
        torch.save(torch.load(io.BytesIO(f.read()), weights_only=False)[0], p("mc016", "common.pt"))

    with open(p("versions.json"), "w") as f:
        json.dump({"torch": torch.__version__, "megatron_core": megatron.core.__version__,
                   "python": sys.version.split()[0]}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
