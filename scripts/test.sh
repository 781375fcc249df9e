#!/usr/bin/env bash
# Sets up (see scripts/setup.sh) and runs every test: C++ unit, golden and
# corrupt-corpus tests (ctest), the Python package's interop tests against real
# torch 2.13 / safetensors (pytest), the C++ tests again under ASan+UBSan
# (clang, -Werror), and each fuzz target for a bounded time.
# Usage: bash scripts/test.sh          FUZZ_SECONDS=60 by default; 0 skips fuzzing
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== C++ tests (ctest)"
ctest --test-dir build --output-on-failure -j"$(nproc)"

echo "== Python package (pip install .)"
.venv/bin/pip install -q --disable-pip-version-check --no-build-isolation .

echo "== interop tests (pytest, real torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'))"
CKPTKIT_CLI="$PWD/build/ckptkit" .venv/bin/python -m pytest tests/interop -q -p no:cacheprovider

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
echo "== sanitizer build (clang-14, ASan+UBSan, -Werror): ctest, then fuzzing ${FUZZ_SECONDS}s per target"
bash scripts/fuzz.sh "$FUZZ_SECONDS"
echo "== all tests passed"
