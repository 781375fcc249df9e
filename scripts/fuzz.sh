#!/usr/bin/env bash
# Builds everything with clang-14, ASan+UBSan and -Werror in build-san/, runs the
# C++ unit tests there (CKPT_SAN_CTEST=0 skips them), then runs each libFuzzer
# target for a bounded time, seeded from the golden and corrupt files.
# Usage: bash scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30; 0 = build and ctest only)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-30}
# One clang build serves both the sanitizer run of the unit tests (scripts/test.sh)
# and the fuzzers: ASan+UBSan, coverage instrumentation, -Werror.
# -O1 and line tables only (what the ASan docs recommend): a third less compile time
# than -O2 -g, and reports still name file and line.
cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCKPT_BUILD_FUZZ=ON -DCKPT_SANITIZE=ON -DCKPT_WERROR=ON \
  -DCKPT_BUILD_TESTS=ON -DCKPT_BUILD_CLI=ON >/dev/null
targets=()
for f in tests/fuzz/*_fuzz.cc; do targets+=("$(basename "$f" .cc)"); done
ninja -C build-san -j"$(nproc)"
if [ "${CKPT_SAN_CTEST:-1}" = 1 ]; then
  echo "== C++ tests under ASan+UBSan (clang-14, -Werror)"
  ctest --test-dir build-san --output-on-failure -j"$(nproc)"
fi
[ "$SECS" = 0 ] && exit 0
status=0
for t in "${targets[@]}"; do
  area=${t%_fuzz}
  work=tests/fuzz/corpus-work/$area
  mkdir -p "$work"
  seeds=()
  # A target named <format>_<part>_fuzz (dcp_metadata_fuzz) is also seeded from its format's folders.
  fmt=${area%%_*}
  extra=()
  [ "$fmt" != "$area" ] && extra=(tests/golden/$fmt tests/corrupt/$fmt)
  # Hand-made inputs beside a format's real goldens: tests/golden/<area>_synthetic (legacy_synthetic).
  for d in tests/golden/$area tests/golden/${area}_synthetic tests/corrupt/$area tests/unit/$area/testdata \
    tests/fuzz/seeds/$area "${extra[@]}"; do
    [ -d "$d" ] && seeds+=("$d")
  done
  echo "fuzz: $t for ${SECS}s (seeds: ${seeds[*]:-none})"
  if ! ./build-san/"$t" -max_total_time="$SECS" -max_len=262144 -rss_limit_mb=2048 \
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
