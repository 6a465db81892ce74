#!/usr/bin/env bash
# Runs the libFuzzer harnesses of tests/fuzz under ASan + UBSan (clang from Debian):
#   scripts/fuzz.sh 600                 # every harness, 600 s each
#   scripts/fuzz.sh 300 safetensors     # one harness
# New interesting inputs go to build-fuzz/corpus/<name> (not committed); a crash, leak-free
# timeout or out-of-memory input is written to tests/fuzz/crashes/<name>/, where the ordinary
# build replays it from then on (CTest label `fuzz`). Fix the cause, keep the file.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MINIGPT4_FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_EACH="${1:-600}"
shift || true
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=clang++ \
      -DMINIGPT4_FUZZ=ON -DMINIGPT4_SANITIZE=address,undefined -DMINIGPT4_BUILD_BENCHMARKS=OFF
if [ "$#" -gt 0 ]; then
  harnesses=("$@")
else
  mapfile -t harnesses < <(cmake --build "$BUILD" --target help | sed -n 's/^fuzz_\([a-z_]*\):.*/\1/p')
fi
cmake --build "$BUILD" --target "${harnesses[@]/#/fuzz_}"
export ASAN_OPTIONS="detect_leaks=0:detect_odr_violation=0"
export MINIGPT4_LOG_LEVEL=error  # a warning per skipped sample would be most of the output
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
for name in "${harnesses[@]}"; do
  mkdir -p "$BUILD/corpus/$name" "$ROOT/tests/fuzz/crashes/$name"
  echo "[fuzz] $name for ${SECONDS_EACH}s"
  "$BUILD/tests/fuzz/fuzz_$name" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
      -max_len=262144 -print_final_stats=1 \
      -artifact_prefix="$ROOT/tests/fuzz/crashes/$name/" \
      "$BUILD/corpus/$name" "$ROOT/tests/fuzz/corpus/$name" 2>&1 | tail -n 25 || echo "[fuzz] $name stopped on a finding"
done
