#!/usr/bin/env bash
# Builds every libFuzzer target (clang-14, ASan+UBSan) in build-fuzz/ and runs
# each for a bounded time, seeded from the golden files.
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-60}
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCKPT_BUILD_FUZZ=ON -DCKPT_BUILD_TESTS=OFF -DCKPT_BUILD_CLI=OFF >/dev/null
targets=()
for f in tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$f" .cc)"); done
ninja -C build-fuzz -j"$(nproc)" "${targets[@]}"
status=0
for t in "${targets[@]}"; do
  area=${t%_fuzz}
  work=tests/fuzz/corpus-work/$area
  mkdir -p "$work"
  seeds=()
  for d in tests/golden/$area tests/corrupt/$area tests/unit/$area/testdata tests/fuzz/seeds/$area; do
    [ -d "$d" ] && seeds+=("$d")
  done
  echo "fuzz: $t for ${SECS}s (seeds: ${seeds[*]:-none})"
  if ! ./build-fuzz/"$t" -max_total_time="$SECS" -max_len=262144 -rss_limit_mb=2048 \
       -timeout=10 -print_final_stats=1 -artifact_prefix="$work/" "$work" "${seeds[@]}" \
       >"$work.log" 2>&1; then
    echo "fuzz: $t FAILED; last lines of $work.log:"
    tail -40 "$work.log"
    status=1
  else
    grep -E "stat::number_of_executed_units|Done" "$work.log" | tail -2 || true
  fi
done
exit $status
