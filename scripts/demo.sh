#!/usr/bin/env bash
# The main job on the bundled sample: sets up (scripts/setup.sh), then looks
# inside examples/torch_dist (a Megatron-Core torch_dist checkpoint written by
# real megatron-core 0.16.1 with TP2/PP2/DP2), verifies it, takes one layer
# out of a stacked tensor, converts it to torch.save and safetensors, re-writes
# it as torch_dist (every rank's files merged, megatron-core 0.19 layout), and
# checks the results against torch's own DCP loader.
# It sets up only what it uses, each part just before it is needed: first the CLI
# (scripts/setup.sh --only cli: the ckptkit target, no tests), then, for the
# comparison with torch, a .venv with torch (--only venv). The sample is bundled:
# making it needs no Python. scripts/test.sh builds and installs the rest.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x build/ckptkit ] || echo "(first run: installing the Debian packages the CLI builds with and building build/ckptkit; a few minutes)" >&2
bash scripts/setup.sh --only cli >/dev/null
CK=build/ckptkit
SAMPLE=examples/torch_dist
OUT=${OUT:-$(mktemp -d /tmp/ckptkit-demo.XXXXXX)}

echo "\$ ckptkit inspect $SAMPLE --max-rows 10"
$CK inspect "$SAMPLE" --max-rows 10
echo
echo "\$ ckptkit verify $SAMPLE --deep"
$CK verify "$SAMPLE" --deep
echo
KEY=decoder.layers.self_attention.linear_qkv.weight
echo "\$ ckptkit get $SAMPLE $KEY --slice 1 -o $OUT/qkv_layer1.npy   # bf16 -> use .safetensors"
$CK get "$SAMPLE" "$KEY" --slice 1 -o "$OUT/qkv_layer1.safetensors" --json
echo
echo "\$ ckptkit convert $SAMPLE $OUT/model.pt --to torch"
$CK convert "$SAMPLE" "$OUT/model.pt" --to torch -q
echo "\$ ckptkit convert $SAMPLE $OUT/model.safetensors --to safetensors"
$CK convert "$SAMPLE" "$OUT/model.safetensors" --to safetensors -q
echo
mkdir -p "$OUT/torch"
[ -x .venv/bin/python ] || echo "(first run: installing torch into .venv for the comparison below)" >&2
bash scripts/setup.sh --only venv >/dev/null
echo "(torch's own converter, for comparison: dcp_to_torch_save, which loads everything into memory)"
.venv/bin/python -W ignore -c 'import sys; from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as f; f(sys.argv[1], sys.argv[2])' \
  "$SAMPLE/iter_0000010" "$OUT/torch/model.pt"
echo "\$ ckptkit diff $OUT/torch/model.pt $OUT/model.pt"
$CK diff "$OUT/torch/model.pt" "$OUT/model.pt"
cmp -s "$OUT/torch/model.pt" "$OUT/model.pt" && echo "(and the two files are byte-identical)"
echo "\$ ckptkit diff $SAMPLE $OUT/model.safetensors --tensors-only"
$CK diff "$SAMPLE" "$OUT/model.safetensors" --tensors-only
echo
echo "\$ ckptkit convert $SAMPLE $OUT/rewritten --to torch_dist --thread-count 2   # 8 ranks' files -> 2, megatron-core 0.19 layout"
$CK convert "$SAMPLE" "$OUT/rewritten" --to torch_dist --thread-count 2 -q
ls -A "$OUT/rewritten" "$OUT/rewritten/iter_0000010"
echo "\$ ckptkit diff $SAMPLE $OUT/rewritten --tensors-only   # objects: common.pt -> the common_state entry"
$CK diff "$SAMPLE" "$OUT/rewritten" --tensors-only
echo
echo "check: torch's own DCP loader agrees with what ckptkit read and wrote"
.venv/bin/python - "$OUT" "$SAMPLE/iter_0000010" "$KEY" <<'PYEOF'
import os, sys, tempfile, warnings
import torch
from safetensors.torch import load_file
warnings.filterwarnings("ignore")
out, iter_dir, key = sys.argv[1:]
ref_path = os.path.join(out, "torch", "model.pt")  # made above by torch's own converter
ref = torch.load(ref_path, weights_only=False)
ref_t = {k: v for k, v in ref.items() if isinstance(v, torch.Tensor)}
ours = torch.load(os.path.join(out, "model.pt"), weights_only=False)
st = load_file(os.path.join(out, "model.safetensors"))
assert set(st) == set(ref_t), "safetensors key set differs from torch's"
for k, v in ref_t.items():
    assert torch.equal(st[k], v) and torch.equal(ours[k], v), k
assert set(ours) == set(ref), "torch.save output holds different keys than dcp_to_torch_save's"
layer = load_file(os.path.join(out, "qkv_layer1.safetensors"))
assert torch.equal(next(iter(layer.values())), ref_t[key][1])
print(f"ok: {len(ref_t)} tensors and {len(ref) - len(ref_t)} objects equal to torch's dcp_to_torch_save; "
      f"layer slice equal")
PYEOF
