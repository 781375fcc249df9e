#!/usr/bin/env bash
# The main job on the bundled sample: sets up (scripts/setup.sh), then looks
# inside examples/sample.pt (written by real torch 2.13) and converts it to
# safetensors and back to a torch.save file, checking the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
CK=build/ckptkit
OUT=${OUT:-$(mktemp -d /tmp/ckptkit-demo.XXXXXX)}

echo "\$ ckptkit inspect examples/sample.pt --max-rows 8"
$CK inspect examples/sample.pt --max-rows 8
echo
echo "\$ ckptkit convert examples/sample.pt $OUT/model.safetensors --to safetensors"
$CK convert examples/sample.pt "$OUT/model.safetensors" --to safetensors
echo
echo "\$ ckptkit convert $OUT/model.safetensors $OUT/model.pt --to torch"
$CK convert "$OUT/model.safetensors" "$OUT/model.pt" --to torch
echo
echo "\$ ckptkit inspect $OUT/model.safetensors --json | head"
$CK inspect "$OUT/model.safetensors" --json | head -n 12
echo
echo "check: real torch and safetensors load what ckptkit wrote"
.venv/bin/python - "$OUT" <<'PYEOF'
import sys, torch
from safetensors.torch import load_file
out = sys.argv[1]
# ckptkit flattens nested containers with '.', as safetensors keys need: model -> "model.<name>".
src = {"model." + k: v for k, v in torch.load("examples/sample.pt", weights_only=False)["model"].items()}
st = load_file(f"{out}/model.safetensors")
pt = torch.load(f"{out}/model.pt", weights_only=True, mmap=True)
assert set(st) == set(src) == set(pt), "key sets differ"
for k, v in src.items():
    assert torch.equal(st[k], v) and torch.equal(pt[k], v), k
print(f"ok: {len(src)} tensors equal in safetensors.load_file and torch.load(weights_only=True, mmap=True)")
PYEOF
