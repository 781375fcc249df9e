#!/usr/bin/env python3
"""Hostile Megatron-LM common states (the pickle of common.pt / the
common_state entry) whose `args` the model layer reads (ConfigFromArgs,
LayoutFromArgs, DistOptFromArgs). Each case is named after the invariant it
breaks; expected.json gives the stage that must refuse it ("layout":
LayoutFromArgs, "config": ConfigFromArgs), the status code and a message
substring. Standard library only: python3 make_cases.py
"""
import argparse
import json
import pathlib
import pickle

here = pathlib.Path(__file__).resolve().parent
VALID = dict(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=256, padded_vocab_size=128,
             max_position_embeddings=128, tensor_model_parallel_size=2, pipeline_model_parallel_size=2,
             context_parallel_size=1, world_size=8)


def case(name, expected, **overrides):
    fields = dict(VALID)
    fields.update(overrides)
    for k in [k for k, v in fields.items() if v is ...]:
        del fields[k]
    state = {"args": argparse.Namespace(**fields), "iteration": 10, "checkpoint_version": 3.0}
    (here / name).write_bytes(pickle.dumps(state, protocol=2))
    cases[name] = expected


cases = {}
case("valid.pkl", {"code": "ok"})
# Found by megatron_args_fuzz: world_size without data_parallel_size was
# divided by tp * pp * cp before the sizes were checked (SIGFPE for 0).
case("tp0_with_world_size.pkl",
     {"stage": "layout", "code": "invalid argument", "message": "tp (tensor_model_parallel_size)"},
     tensor_model_parallel_size=0)
case("cp0_with_world_size.pkl",
     {"stage": "layout", "code": "invalid argument", "message": "cp (context_parallel_size)"},
     context_parallel_size=0)
# ... and tp * pp * cp could overflow int64 on the way.
case("tp_pp_cp_overflow.pkl",
     {"stage": "layout", "code": "invalid argument", "message": "is larger than 2^20"},
     tensor_model_parallel_size=1 << 40, pipeline_model_parallel_size=1 << 40, context_parallel_size=1 << 40)
case("negative_world_size.pkl",
     {"stage": "layout", "code": "invalid argument", "message": "dp (data_parallel_size)"},
     world_size=-8)
case("missing_num_layers.pkl",
     {"stage": "config", "code": "invalid argument", "message": "args.num_layers is missing"},
     num_layers=...)
(here / "expected.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
print(f"{len(cases)} cases")
