#!/usr/bin/env bash
# Builds what reads untrusted input (config, weight files, datasets, images, tokenizers, the
# server) with sanitizers and runs its unit tests and the fuzz replays:
#   scripts/sanitize.sh address,undefined   # ASan + UBSan (what scripts/test.sh runs)
#   scripts/sanitize.sh thread              # TSan: the data worker pool, the server, heartbeats
# LibTorch itself is not instrumented; leaks are not checked (LibTorch's static state).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SANITIZERS="${1:-address,undefined}"
BUILD="${MINIGPT4_SANITIZE_BUILD_DIR:-$ROOT/build-${SANITIZERS//,/-}}"
# -O1: what the sanitizers' documentation recommends, and the quickest to compile.
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="-O1" \
      -DMINIGPT4_SANITIZE="$SANITIZERS" -DMINIGPT4_BUILD_BENCHMARKS=OFF
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:detect_odr_violation=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$ROOT/tests/tsan.supp"
if [ "$SANITIZERS" = thread ]; then
  targets=(test_datasets test_server test_distributed)
  tests='^(datasets|server|distributed)$'
else
  targets=(test_common test_io test_processors test_tokenizer test_datasets test_server)
  tests='^(common|io|processors|tokenizer|datasets|server)$|^fuzz_'
  mapfile -t fuzz < <(cmake --build "$BUILD" --target help | sed -n 's/^\(fuzz_[a-z_]*\):.*/\1/p')
  targets+=("${fuzz[@]}")
fi
start=$(date +%s)
cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}"
ctest --test-dir "$BUILD" --output-on-failure -R "$tests"
echo "[sanitize] $SANITIZERS: build and tests took $(( $(date +%s) - start )) s"
