#!/usr/bin/env bash
# Sets up (see scripts/setup.sh) and runs every test: C++ unit, golden and
# corrupt-corpus tests (ctest), the Python package's interop tests against real
# torch 2.13 / safetensors (pytest), the C++ tests again under ASan+UBSan
# (clang, -Werror), and each fuzz target for a bounded time.
# Usage: bash scripts/test.sh          FUZZ_SECONDS=30 by default; 0 skips fuzzing
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== C++ tests (ctest)"
ctest --test-dir build --output-on-failure -j"$(nproc)"

echo "== Python package (pip install .)"
# One wheel, installed into .venv and (when set up) .venv-mcore019. It is built in
# build/ with build/'s flags (the -C settings), so that only the extension compiles:
# a wheel of its own (pyproject's Release build in build-wheel/) compiled the whole
# library a second time, a third of CI's compile time on 2 cores. `pip install .`
# for users is unchanged.
rm -rf build-wheel-out
.venv/bin/pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps -w build-wheel-out \
  -C build-dir=build -C cmake.build-type="${CKPT_BUILD_TYPE:-RelWithDebInfo}" \
  -C cmake.define.CKPT_BUILD_TESTS=ON -C install.strip=true .
.venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall build-wheel-out/ckptkit-*.whl
MC019=""
if [ -x .venv-mcore019/bin/python ]; then
  .venv-mcore019/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall build-wheel-out/ckptkit-*.whl
  MC019="$PWD/.venv-mcore019/bin/python"
fi

echo "== interop tests (pytest, real torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), megatron-core 0.16.1${MC019:+ and 0.19.2})"
CKPTKIT_CLI="$PWD/build/ckptkit" CKPTKIT_MCORE019_PYTHON="$MC019" .venv/bin/python -m pytest tests/interop -q -p no:cacheprovider
if [ -n "$MC019" ]; then
  echo "== Megatron-Core strategy tests under megatron-core 0.19.2"
  CKPTKIT_CLI="$PWD/build/ckptkit" "$MC019" -m pytest tests/interop/test_megatron_strategy.py -q -p no:cacheprovider
fi

FUZZ_SECONDS=${FUZZ_SECONDS:-30}
echo "== sanitizer build (clang-14, ASan+UBSan, -Werror): ctest, then fuzzing ${FUZZ_SECONDS}s per target"
bash scripts/fuzz.sh "$FUZZ_SECONDS"
echo "== all tests passed"
