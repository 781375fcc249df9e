#!/usr/bin/env bash
# Fuzzing with libFuzzer (clang-14, ASan+UBSan, -Werror, build-san/), from a corpus kept in
# the repository (tests/fuzz/corpus/<area>/) so that coverage accumulates across runs.
#
#   bash scripts/fuzz.sh [SECONDS]              CI: build everything, run the C++ tests under the
#                                               sanitizers (CKPT_SAN_CTEST=0 skips them), then fuzz
#                                               each target SECONDS (default 30; 0: build and ctest
#                                               only) starting from the kept corpus, which stays
#                                               read-only: new inputs go to tests/fuzz/corpus-work/.
#   bash scripts/fuzz.sh --campaign HOURS [TARGET...]
#                                               build the fuzzers, fuzz each target (all by default)
#                                               for its share of HOURS, CKPT_FUZZ_JOBS targets at a
#                                               time (default 1), merge what it found into the kept
#                                               corpus (-set_cover_merge=1: minimal), measure the
#                                               corpus's features (-runs=0), and append the run to the
#                                               ledger in docs/security.md, with libFuzzer's final
#                                               stats kept in tests/fuzz/ledger/<run>/<target>.txt.
#   bash scripts/fuzz.sh --until EXECS [TARGET...]
#                                               a campaign that runs each target (all by default)
#                                               until its executions since its last crash in the
#                                               ledger reach EXECS (libFuzzer -runs= the shortfall, capped at
#                                               CKPT_FUZZ_CAP seconds, default 14400), longest
#                                               shortfall first; targets already there are skipped.
#                                               The ledger row records the seconds it took.
#   bash scripts/fuzz.sh --merge [TARGET...]    merge the seeds (goldens, corrupt files, seeds/) into
#                                               the kept corpus, no fuzzing: a new target's first corpus.
#   bash scripts/fuzz.sh --coverage [TARGET...] features of each kept corpus (-runs=0) beside the
#                                               ledger's last record; exit 1 when one differs.
#
# Environment: CKPT_SAN_CTEST (1 in CI mode, 0 otherwise), CKPT_FUZZ_JOBS (campaign targets at a
# time), CKPT_BUILD_JOBS (ninja -j, default nproc), CKPT_FUZZ_NICE (nice level of fuzzing, default 0).
# Every libFuzzer run of a target uses the same flags (FLAGS and maxlen_of below), so features
# compare across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything runs inside main, read whole before it starts: a campaign runs for hours, and
# bash reads a script as it goes, so an edit made meanwhile would otherwise change it mid-run.
main() {

MODE=ci
SECS=30
HOURS=
UNTIL=
case "${1:-}" in
  --campaign) MODE=campaign; HOURS=${2:?usage: fuzz.sh --campaign HOURS [TARGET...]}; shift 2 ;;
  --until) MODE=campaign; UNTIL=${2:?usage: fuzz.sh --until EXECS [TARGET...]}; HOURS=0; shift 2 ;;
  --merge) MODE=merge; shift ;;
  --coverage) MODE=coverage; shift ;;
  -*) echo "usage: fuzz.sh [SECONDS] | --campaign HOURS [TARGET...] | --until EXECS [TARGET...] | --merge [TARGET...] | --coverage [TARGET...]" >&2
      exit 2 ;;
  "") ;;
  *) SECS=$1; shift ;;
esac

FLAGS=(-rss_limit_mb=2048 -timeout=10)
CORPUS=tests/fuzz/corpus
WORK=tests/fuzz/corpus-work
LEDGER=docs/security.md
NICE=(nice -n "${CKPT_FUZZ_NICE:-0}")

all_targets=()
for f in tests/fuzz/*_fuzz.cc; do all_targets+=("$(basename "$f" .cc)"); done
targets=()
if [ $# -gt 0 ]; then
  for t in "$@"; do
    t=${t%_fuzz}_fuzz
    [ -f "tests/fuzz/$t.cc" ] || { echo "fuzz: no target $t (tests/fuzz/$t.cc)" >&2; exit 2; }
    targets+=("$t")
  done
else
  targets=("${all_targets[@]}")
fi

# One clang build serves both the sanitizer run of the unit tests (scripts/test.sh)
# and the fuzzers: ASan+UBSan, coverage instrumentation, -Werror.
# -O1 and line tables only (what the ASan docs recommend): a third less compile time
# than -O2 -g, and reports still name file and line.
build() {
  cmake -S . -B build-san -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only -DNDEBUG" \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DCKPT_BUILD_FUZZ=ON -DCKPT_SANITIZE=ON -DCKPT_WERROR=ON \
    -DCKPT_BUILD_TESTS=ON -DCKPT_BUILD_CLI=ON >/dev/null
  ninja -C build-san -j"${CKPT_BUILD_JOBS:-$(nproc)}" "$@"
}

# Seeds besides the kept corpus: the area's goldens and corrupt files. A target named
# <format>_<part>_fuzz (dcp_metadata_fuzz) is also seeded from its format's folders;
# tests/golden/<area>_synthetic holds hand-made inputs beside real goldens.
seeds_of() {
  local area=$1 fmt=${1%%_*} d
  local dirs=(tests/golden/$area tests/golden/${area}_synthetic tests/corrupt/$area tests/unit/$area/testdata
              tests/fuzz/seeds/$area)
  [ "$fmt" != "$area" ] && dirs+=(tests/golden/$fmt tests/corrupt/$fmt)
  for d in "${dirs[@]}"; do [ -d "$d" ] && echo "$d"; done
  return 0
}

# The longest input a target is given (-max_len, in every run, merge and -runs=0 alike, so
# features compare): room for its largest real seed, no more, which keeps the kept corpus
# small (a longer input is cut to this length when read).
maxlen_of() {
  case $1 in
    megatron|megatron_args|hf_config) echo 8192 ;;        # text / common-state pickles: <= 7 KB
    pickle|dcp_metadata|dcp_manifest) echo 16384 ;;      # golden .metadata <= 5.5 KB
    safetensors|zip|torch) echo 32768 ;;                 # goldens <= 20 KB
    *) echo 65536 ;;                                     # legacy: real model_optim_rng.pt <= 45 KB
  esac
}

# The dictionaries of the formats a target reads (tests/fuzz/dict/), joined into one file:
# libFuzzer takes a single -dict.
dict_of() {
  local area=$1 parts
  case $area in
    pickle) parts="pickle" ;;
    zip) parts="zip" ;;
    torch) parts="zip pickle" ;;
    safetensors) parts="safetensors json" ;;
    dcp_metadata) parts="pickle dcp" ;;
    dcp_manifest) parts="dcp json" ;;
    legacy) parts="zip pickle megatron" ;;
    megatron) parts="megatron json" ;;
    megatron_args) parts="pickle megatron" ;;
    hf_config) parts="hf json" ;;
    *) parts="" ;;
  esac
  [ -z "$parts" ] && return 0
  local out=$WORK/$area.dict p
  mkdir -p "$WORK"
  : >"$out"
  for p in $parts; do cat "tests/fuzz/dict/$p.dict" >>"$out"; done
  echo "$out"
}

# "files bytes" of a corpus folder.
corpus_size() {
  local n=0 b=0
  if [ -d "$1" ]; then
    n=$(find "$1" -type f | wc -l)
    b=$(find "$1" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
  fi
  echo "$n $b"
}

# Features (and coverage) of a corpus folder: the INITED line of a -runs=0 pass over it, in a
# fixed order with address randomization off (setarch -R): with ASLR a few features (of about
# 10,000) come and go from run to run, without it the count repeats exactly.
NOASLR=()
setarch "$(uname -m)" -R true 2>/dev/null && NOASLR=(setarch "$(uname -m)" -R)
inited_line() {
  local t=$1 dir=$2
  mkdir -p "$WORK"
  "${NICE[@]}" "${NOASLR[@]}" ./build-san/"$t" -runs=0 -seed=1 -shuffle=0 "${FLAGS[@]}" \
    -max_len="$(maxlen_of "${t%_fuzz}")" -artifact_prefix="$WORK/measure-${t%_fuzz}-" "$dir" 2>&1 |
    grep -E '^#[0-9]+[[:space:]]+INITED' | tail -1
}
field() {  # field NAME LINE: the number after "NAME:" in a libFuzzer status line
  sed -nE "s/.*[[:space:]]$1:[[:space:]]*([0-9]+).*/\1/p" <<<"$2"
}
stat_of() {  # stat_of NAME LOG
  sed -nE "s/^stat::$1:[[:space:]]*([0-9]+).*/\1/p" "$2" | tail -1
}

# Merges the kept corpus, the given folders and the seeds into a fresh minimal corpus and
# replaces the kept one with it. -set_cover_merge=1 is -merge=1 with a greedy set cover
# (libFuzzer picks the inputs that cover every feature of the union, preferring small ones):
# the same features as -merge=1 in about 30% fewer files. Prints the MERGE-OUTER summary.
merge_into_kept() {
  local t=$1 area=${1%_fuzz}; shift
  local kept=$CORPUS/$area fresh=$WORK/merge-$area
  local seeds
  mapfile -t seeds < <(seeds_of "$area")
  rm -rf "$fresh"
  mkdir -p "$fresh" "$kept"
  "${NICE[@]}" ./build-san/"$t" -set_cover_merge=1 "${FLAGS[@]}" -max_len="$(maxlen_of "${t%_fuzz}")" \
    -artifact_prefix="$WORK/merge-$area-" "$fresh" "$kept" "$@" "${seeds[@]}" \
    >"$WORK/merge-$area.log" 2>&1 || { echo "fuzz: merge of $t failed:"; tail -20 "$WORK/merge-$area.log"; return 1; }
  rm -rf "$kept"
  mv "$fresh" "$kept"
  grep -E '^MERGE-OUTER: [0-9]+ new files' "$WORK/merge-$area.log" || true
}

# The ledger's last features record of a target ("" when none).
ledger_features() {
  awk -F'|' -v t="$1" '$3 ~ "^ *" t " *$" {f=$8} END {gsub(/ /, "", f); print f}' "$LEDGER"
}

# The executions of a target summed over the ledger's rows after its last row with a crash
# (0 when none): a crash's fix changes the code, so only what ran after it counts as clean.
ledger_executions() {
  awk -F'|' -v t="$1" '$0 ~ /^\| [0-9]+T[0-9]+Z \|/ && $3 ~ "^ *" t " *$" {s += $5; if ($10 + 0 > 0) s = 0}
    END {printf "%d\n", s}' "$LEDGER"
}

# Rewrites the totals table between the ledger's markers: per target, the runs, seconds,
# executions and crashes summed over every row, the executions since its last crash (the
# runs after the last row that had one), and the last run's features and corpus.
ledger_totals() {
  local tmp=$LEDGER.tmp
  awk -F'|' '
    /^<!-- fuzz-totals:begin -->/ { intotals = 1; next }
    /^<!-- fuzz-totals:end -->/ { intotals = 0; next }
    intotals { next }
    { lines[++n] = $0 }
    /^\| [0-9]+T[0-9]+Z \|/ {
      t = $3; gsub(/ /, "", t)
      if (!(t in runs)) order[++m] = t
      runs[t]++; secs[t] += $4; ex[t] += $5; cr[t] += $10; clean[t] += $5
      if ($10 + 0 > 0) clean[t] = 0
      ft[t] = $8; gsub(/ /, "", ft[t]); corp[t] = $9; gsub(/^ +| +$/, "", corp[t])
    }
    END {
      for (i = 1; i <= n; i++) {
        print lines[i]
        if (lines[i] ~ /^### Totals/) {
          print "<!-- fuzz-totals:begin -->"
          print ""
          print "| target | runs | seconds | executions | crashes | executions since the last crash | features (last run) | corpus (last run) |"
          print "|---|---|---|---|---|---|---|---|"
          for (j = 1; j <= m; j++) {
            t = order[j]
            printf "| %s | %d | %d | %d | %d | %d | %s | %s |\n", t, runs[t], secs[t], ex[t], cr[t], clean[t], ft[t], corp[t]
          }
          print ""
          print "<!-- fuzz-totals:end -->"
        }
      }
    }' "$LEDGER" >"$tmp"
  mv "$tmp" "$LEDGER"
}

ledger_header() {
  grep -q '^## 9. Fuzzing ledger' "$LEDGER" && return 0
  cat >>"$LEDGER" <<'EOF'

## 9. Fuzzing ledger

Appended by `scripts/fuzz.sh --campaign` (one row per target and run; keep this section
last). *executions* is libFuzzer's `stat::number_of_executed_units` of that run, *exec/s*
its `stat::average_exec_per_sec`; *features* is what a `-runs=0` pass over the kept corpus
reports after the run was merged into it (`bash scripts/fuzz.sh --coverage` re-measures
it); *corpus* the kept corpus after the merge; *crashes* the crash, leak, timeout and OOM
artifacts the run left (a timeout whose input, run again alone, finishes in under half
the limit is shown as "+1 timeout unreproduced" and not counted: the limit is wall-clock
time, and a fuzzer at nice 19 beside a compile can be starved past it). The excerpts of each run's log (final stats, last status line,
merge, `-runs=0`) are in `tests/fuzz/ledger/<run>/<target>.txt`. The totals are summed
from the rows below after each campaign.

### Totals

### Runs

| run (UTC) | target | seconds | executions | exec/s | new units | features | corpus (files / KiB) | crashes |
|---|---|---|---|---|---|---|---|---|
EOF
}

if [ "$MODE" = ci ]; then
  if [ "${CKPT_SAN_CTEST:-1}" = 1 ]; then build; else build "${targets[@]}"; fi
  if [ "${CKPT_SAN_CTEST:-1}" = 1 ]; then
    echo "== C++ tests under ASan+UBSan (clang-14, -Werror)"
    ctest --test-dir build-san --output-on-failure -j"$(nproc)"
  fi
  [ "$SECS" = 0 ] && exit 0
  status=0
  for t in "${targets[@]}"; do
    area=${t%_fuzz}
    work=$WORK/$area
    rm -rf "$work"
    mkdir -p "$work"
    mapfile -t seeds < <(seeds_of "$area")
    dict=$(dict_of "$area")
    read -r kfiles kbytes < <(corpus_size "$CORPUS/$area")
    kept=()
    [ -d "$CORPUS/$area" ] && kept=("$CORPUS/$area")
    echo "fuzz: $t for ${SECS}s from $CORPUS/$area ($kfiles files) + seeds: ${seeds[*]:-none}"
    # The kept corpus and the seeds are read-only inputs: libFuzzer writes new inputs to the
    # first folder only, so CI never changes the tree.
    if ! "${NICE[@]}" ./build-san/"$t" -max_total_time="$SECS" "${FLAGS[@]}" -max_len="$(maxlen_of "$area")" \
         ${dict:+-dict="$dict"} \
         -print_final_stats=1 -artifact_prefix="$work/" "$work" "${kept[@]}" "${seeds[@]}" \
         >"$work.log" 2>&1; then
      echo "fuzz: $t FAILED; last lines of $work.log:"
      tail -40 "$work.log"
      status=1
    else
      last=$(grep -E '^#[0-9]+[[:space:]]' "$work.log" | tail -1)
      read -r nfiles _ < <(corpus_size "$work")
      echo "fuzz: $t executions $(stat_of number_of_executed_units "$work.log")," \
        "$(stat_of average_exec_per_sec "$work.log") exec/s, features $(field ft "$last")," \
        "kept corpus $kfiles files / $((kbytes / 1024)) KiB, $nfiles new inputs (not kept)"
    fi
  done
  exit $status
fi

if [ "$MODE" = coverage ]; then
  build "${targets[@]}"
  status=0
  for t in "${targets[@]}"; do
    area=${t%_fuzz}
    line=$(inited_line "$t" "$CORPUS/$area")
    ft=$(field ft "$line")
    want=$(ledger_features "$t")
    read -r n b < <(corpus_size "$CORPUS/$area")
    execs=$(awk -F'|' -v t="$t" '$3 ~ "^ *" t " *$" {gsub(/ /, "", $5); s += $5} END {printf "%d", s}' "$LEDGER")
    verdict=ok
    if [ -z "$want" ]; then verdict="no ledger record"; elif [ "$ft" != "$want" ]; then verdict="DIFFERS"; status=1; fi
    echo "coverage: $t features $ft (ledger: ${want:-none}) $verdict; corpus $n files / $((b / 1024)) KiB;" \
      "executions in the ledger: $execs"
  done
  exit $status
fi

if [ "$MODE" = merge ]; then
  build "${targets[@]}"
  for t in "${targets[@]}"; do
    area=${t%_fuzz}
    merge_into_kept "$t"
    line=$(inited_line "$t" "$CORPUS/$area")
    read -r n b < <(corpus_size "$CORPUS/$area")
    echo "merge: $t corpus $n files / $((b / 1024)) KiB, features $(field ft "$line")"
  done
  exit 0
fi

# --campaign HOURS
CKPT_SAN_CTEST=${CKPT_SAN_CTEST:-0}
build "${targets[@]}"
if [ "$CKPT_SAN_CTEST" = 1 ]; then ctest --test-dir build-san --output-on-failure -j"$(nproc)"; fi
JOBS=${CKPT_FUZZ_JOBS:-1}
declare -A need=()
if [ -n "$UNTIL" ]; then
  # Each target's shortfall from the ledger's totals; the longest first, so parallel jobs
  # end close together. libFuzzer counts the corpus's own runs in -runs, hence the 1% more.
  per=${CKPT_FUZZ_CAP:-14400}
  mapfile -t order < <(for t in "${targets[@]}"; do
      have=$(ledger_executions "$t")
      echo "$((UNTIL - ${have:-0})) $t"
    done | sort -rn | awk '$1 > 0 {print $2 " " int($1 * 1.01) + 1000}')
  targets=()
  for line in "${order[@]}"; do
    read -r t n <<<"$line"
    targets+=("$t"); need[$t]=$n
  done
  [ "${#targets[@]}" -gt 0 ] || { echo "fuzz: every target has $UNTIL executions in the ledger"; exit 0; }
  for t in "${targets[@]}"; do echo "campaign: $t needs ${need[$t]} executions"; done
else
  per=$(awk -v h="$HOURS" -v j="$JOBS" -v n="${#targets[@]}" 'BEGIN {printf "%d", h * 3600 * j / n}')
  [ "$per" -ge 10 ] || { echo "fuzz: $HOURS h over ${#targets[@]} targets is under 10 s each" >&2; exit 2; }
fi
RUN=$(date -u +%Y%m%dT%H%M%SZ)
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git status --porcelain --untracked-files=no -- src include tests/fuzz/*.cc 2>/dev/null)" ] || COMMIT="$COMMIT+changes"
RUNDIR=$WORK/campaign-$RUN
EXCERPTS=tests/fuzz/ledger/$RUN
mkdir -p "$RUNDIR" "$EXCERPTS"
echo "campaign $RUN: ${#targets[@]} targets, ${per}s each, $JOBS at a time"

fuzz_one() {  # the fuzzing part of a campaign: writes $RUNDIR/<area>/ and $RUNDIR/<area>.log
  local t=$1 area=${1%_fuzz} dict seeds
  local out=$RUNDIR/$area
  mkdir -p "$out"
  mapfile -t seeds < <(seeds_of "$area")
  dict=$(dict_of "$area")
  local start=$SECONDS
  "${NICE[@]}" ./build-san/"$t" -max_total_time="$per" ${need[$t]:+-runs="${need[$t]}"} "${FLAGS[@]}" -max_len="$(maxlen_of "$area")" \
    ${dict:+-dict="$dict"} \
    -print_final_stats=1 -artifact_prefix="$out/" "$out" $([ -d "$CORPUS/$area" ] && echo "$CORPUS/$area") "${seeds[@]}" \
    >"$RUNDIR/$area.log" 2>&1 && echo 0 >"$RUNDIR/$area.rc" || echo $? >"$RUNDIR/$area.rc"
  echo $((SECONDS - start)) >"$RUNDIR/$area.secs"
}

running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
  if [ -n "$UNTIL" ]; then echo "campaign: $t for ${need[$t]} executions (at most ${per}s)"; else echo "campaign: $t for ${per}s"; fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait || true

status=0
# Campaigns may run side by side (different targets): one writes the ledger at a time.
exec 9>"$WORK/ledger.lock"
flock 9
ledger_header
for t in "${targets[@]}"; do
  area=${t%_fuzz}
  log=$RUNDIR/$area.log
  out=$RUNDIR/$area
  crashes=$(find "$out" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
  # -timeout is wall-clock time: a fuzzer at nice 19 beside a compile can be starved past it.
  # Each timeout artifact runs again alone (nice 0, the same flags); one that finishes in under
  # half the limit there is listed as unreproduced and not counted as a crash (ClusterFuzz files
  # only crashes that reproduce). Crashes, leaks and OOMs always count.
  unrepro=()
  while IFS= read -r a; do
    [ -n "$a" ] || continue
    t0=$(date +%s.%N)
    if timeout 60 ./build-san/"$t" "${FLAGS[@]}" -artifact_prefix="$a.rerun-" "$a" >"$a.rerun.log" 2>&1; then
      took=$(awk -v s="$t0" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}')
      if awk -v x="$took" 'BEGIN {exit !(x < 5)}'; then unrepro+=("$(basename "$a") ran alone in ${took}s"); fi
    fi
  done < <(find "$out" -maxdepth 1 -type f -name 'timeout-*')
  crashes=$((crashes - ${#unrepro[@]}))
  # New inputs live in $out (libFuzzer names them by SHA-1); artifacts are left out of the merge.
  mkdir -p "$out.units"
  find "$out" -maxdepth 1 -type f ! -name 'crash-*' ! -name 'leak-*' ! -name 'timeout-*' ! -name 'oom-*' \
    ! -name 'slow-unit-*' -exec mv -t "$out.units" {} +
  merge=$(merge_into_kept "$t" "$out.units")
  line=$(inited_line "$t" "$CORPUS/$area")
  read -r n b < <(corpus_size "$CORPUS/$area")
  execs=$(stat_of number_of_executed_units "$log")
  rate=$(stat_of average_exec_per_sec "$log")
  units=$(stat_of new_units_added "$log")
  ft=$(field ft "$line")
  rc=$(cat "$RUNDIR/$area.rc")
  secs=$(cat "$RUNDIR/$area.secs" 2>/dev/null || echo "$per")  # measured: a run can stop early
  how="--campaign $HOURS"
  [ -n "$UNTIL" ] && how="--until $UNTIL"
  {
    echo "# scripts/fuzz.sh $how: $t, run $RUN, ${secs}s, exit $rc, fuzzing the code of commit $COMMIT"
    echo "# flags: ${FLAGS[*]} -max_len=$(maxlen_of "$area") -max_total_time=$per${need[$t]:+ -runs=${need[$t]}} -print_final_stats=1 (dict: $(grep -oE 'Dictionary: [0-9]+ entries' "$log" | head -1 || true))"
    grep -E '^INFO: Seed:|^INFO: +[0-9]+ files found|^#[0-9]+[[:space:]]+INITED' "$log" || true
    grep -E '^#[0-9]+[[:space:]]' "$log" | tail -1 || true
    grep -E '^==[0-9]+==ERROR|^SUMMARY|runtime error|^artifact_prefix|Test unit written' "$log" | head -10 || true
    for u in "${unrepro[@]}"; do echo "# unreproduced (limit 10 s, counted as no crash): $u"; done
    grep -E '^stat::' "$log" || true
    echo "# merge into $CORPUS/$area:"
    echo "$merge"
    echo "# -runs=0 over the merged corpus ($n files, $b bytes):"
    echo "$line"
  } >"$EXCERPTS/$t.txt"
  if [ -z "$execs" ]; then
    echo "campaign: $t left no final stats (exit $rc); see $log"
    execs=0
    status=1
  fi
  [ "$crashes" -gt 0 ] && { echo "campaign: $t CRASHED ($crashes artifacts in $out/); see $log"; status=1; }
  shown=$crashes
  [ "${#unrepro[@]}" -gt 0 ] && shown="$crashes (+${#unrepro[@]} timeout unreproduced)"
  printf '| %s | %s | %s | %s | %s | %s | %s | %s / %s | %s |\n' "$RUN" "$t" "$secs" "$execs" "${rate:-0}" \
    "${units:-0}" "$ft" "$n" "$((b / 1024))" "$shown" >>"$LEDGER"
  echo "campaign: $t executions $execs (${rate:-0}/s), features $ft, corpus $n files / $((b / 1024)) KiB, crashes $crashes"
done
ledger_totals
echo "campaign $RUN done: ledger rows appended to $LEDGER, excerpts in $EXCERPTS/; kept corpus: $(du -sh "$CORPUS" | cut -f1)"
exit $status
}
main "$@"
