#!/usr/bin/env bash
# Installs everything ckptkit needs on a fresh Debian 12 machine, idempotently:
# Debian -dev packages (apt-get), a .venv with torch==2.13.0 (CPU) and the
# Python test dependencies, then configures and builds the C++ tree in build/.
# Usage: bash scripts/setup.sh              everything (what scripts/test.sh needs)
#        bash scripts/setup.sh --only cli   only build/ckptkit: the Debian packages its build
#                                           configures with (no clang, no benchmark library),
#                                           then the ckptkit target alone
#        bash scripts/setup.sh --only venv  only a .venv with torch, numpy and safetensors
#                                           (what scripts/demo.sh compares against)
# Build type RelWithDebInfo (CKPT_BUILD_TYPE overrides it). Each part is idempotent, and a
# later full run completes what a partial one left out.
set -euo pipefail
cd "$(dirname "$0")/.."

PART=all
case "${1:-}" in
  "") ;;
  --only)
    case "${2:-}" in
      cli | venv) PART=$2 ;;
      *) echo "setup: --only takes cli or venv, got '${2:-}'" >&2; exit 2 ;;
    esac ;;
  *) echo "usage: bash scripts/setup.sh [--only {cli,venv}]" >&2; exit 2 ;;
esac

# What configuring build/ needs (the unit tests' gtest/gmock included, so that a
# build/ configured by `--only cli` is the same one the full setup builds).
APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libfmt-dev nlohmann-json3-dev libcli11-dev zlib1g-dev libzstd-dev libdeflate-dev libssl-dev libxxhash-dev libtbb-dev
  libgtest-dev libgmock-dev
)
if [ "$PART" = all ]; then
  # The sanitizer and fuzzing build (scripts/fuzz.sh), google benchmark, and
  # the headless browser the layout map's tests render in.
  APT_PACKAGES+=(libbenchmark-dev clang-14 libclang-rt-14-dev chromium)
elif [ "$PART" = venv ]; then
  APT_PACKAGES=()
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ "$PART" != cli ] && [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PY" -m venv .venv
fi
if [ "$PART" = venv ]; then
  if ! .venv/bin/python - <<'PYEOF' 2>/dev/null
import importlib.metadata as m
for name, ver in {"torch": "2.13.0", "safetensors": "0.8.0"}.items():
    assert m.version(name).split("+")[0] == ver, name
m.version("numpy")
PYEOF
  then
    echo "setup: installing torch, numpy and safetensors into .venv"
    .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 numpy safetensors==0.8.0
  fi
  echo "setup: done (.venv with torch)"
  exit 0
fi
# The test venvs, up to the matching `fi  # PART = all` (left unindented: heredocs).
if [ "$PART" = all ]; then
# Pinned: plain `pip install torch` would pull a multi-GB CUDA build.
PY_PACKAGES=(torch==2.13.0 numpy safetensors==0.8.0 zstandard==0.25.0 megatron-core==0.16.1 psutil==7.2.2 pytest nanobind==3.1.0 "scikit-build-core>=0.10" transformers==5.23.0)
if ! .venv/bin/python - <<'PYEOF' 2>/dev/null
import importlib.metadata as m
need = {"torch": "2.13.0", "safetensors": "0.8.0", "nanobind": "3.1.0", "zstandard": "0.25.0",
        "megatron-core": "0.16.1", "psutil": "7.2.2", "transformers": "5.23.0"}
for name, ver in need.items():
    assert m.version(name).split("+")[0] == ver, name
for name in ("numpy", "pytest", "scikit_build_core"):
    m.version(name)
PYEOF
then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

# A second venv with megatron-core 0.19.x (the newest layout: common state
# inside DCP). 0.19 declares Python >= 3.12 but runs on 3.11; numpy is pinned
# to the last wheel for 3.11; megatron.core imports triton. Only the interop tests use it (scripts/test.sh);
# CKPT_SKIP_MCORE019=1 skips it.
if [ "${CKPT_SKIP_MCORE019:-0}" != 1 ]; then
  if [ ! -x .venv-mcore019/bin/python ]; then
    echo "setup: creating .venv-mcore019"
    "$PY" -m venv .venv-mcore019
  fi
  if ! .venv-mcore019/bin/python - <<'PYEOF' 2>/dev/null
import importlib.metadata as m
need = {"torch": "2.13.0", "megatron-core": "0.19.2", "psutil": "7.2.2", "numpy": "2.4.6", "triton": "3.9.0"}
for name, ver in need.items():
    assert m.version(name).split("+")[0] == ver, name
m.version("pytest")
PYEOF
  then
    echo "setup: installing torch 2.13.0 + megatron-core 0.19.2 into .venv-mcore019"
    .venv-mcore019/bin/pip install -q --disable-pip-version-check torch==2.13.0 numpy==2.4.6 psutil==7.2.2 pytest
    .venv-mcore019/bin/pip install -q --disable-pip-version-check --ignore-requires-python \
      megatron-core==0.19.2 numpy==2.4.6 triton==3.9.0
  fi
fi

fi  # PART = all

BUILD_TYPE=${CKPT_BUILD_TYPE:-RelWithDebInfo}
if [ ! -f build/build.ninja ]; then
  # RelWithDebInfo here means -O2 with -g1 (line tables and function names: enough for
  # backtraces, gdb's `bt` and perf), not full -g, which costs a third more compile time
  # on the 2-core CI machine. CKPT_BUILD_TYPE=Debug gives full debug info.
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG" >/dev/null
fi
if [ "$PART" = cli ]; then
  ninja -C build -j"$(nproc)" ckptkit
else
  ninja -C build -j"$(nproc)"
fi
echo "setup: done (CLI at build/ckptkit)"
