#!/usr/bin/env bash
# Sets up (see scripts/setup.sh) and runs every test: C++ unit, golden and
# corrupt-corpus tests (ctest), the Python package's interop tests against real
# torch 2.13 / safetensors (pytest), the C++ tests again under ASan+UBSan
# (clang, -Werror), each fuzz target for a bounded time, and the save engine's
# tests under ThreadSanitizer.
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

# The save engine's threads (WriteFiles, StagingPool, FolderCommit) and the Env
# they write through, under ThreadSanitizer; clang also checks the engine's
# CKPT_GUARDED_BY annotations (-Wthread-safety -Werror) in both clang builds.
echo "== ThreadSanitizer (clang-14, -Werror): the engine's and the Env's tests"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCKPT_TSAN=ON -DCKPT_WERROR=ON -DCKPT_BUILD_TESTS=ON -DCKPT_BUILD_CLI=OFF >/dev/null
ninja -C build-tsan -j"$(nproc)" ckpt_engine_tests ckpt_io_tests
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ./build-tsan/ckpt_engine_tests --gtest_brief=1
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" ./build-tsan/ckpt_io_tests --gtest_brief=1
echo "== all tests passed"
