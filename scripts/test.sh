#!/usr/bin/env bash
# The test command: install everything (scripts/setup.sh), check the code's format, build
# with warnings as errors, run every CTest test (the fuzz corpora and crash reproducers
# included, label `fuzz`; the installed package building examples/, label `install`). Extra arguments go to
# ctest (e.g. `-L parity`). Extra fixture cases: MINIGPT4_PARITY_DIRS.
# Then, unless ctest arguments were given or MINIGPT4_SANITIZER_PASS=0, it builds the parsers
# and the server again with ASan + UBSan and runs their unit tests and the fuzz replays
# (scripts/sanitize.sh, docs/security.md): about 40 more minutes on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MINIGPT4_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
"$ROOT/scripts/format.sh" --check
# Warnings are errors here (MINIGPT4_WERROR), so none creeps in.
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMINIGPT4_WERROR=ON
cmake --build "$BUILD" -j"$(nproc)"
ctest --test-dir "$BUILD" --output-on-failure "$@"

if [ "$#" -eq 0 ] && [ "${MINIGPT4_SANITIZER_PASS:-1}" != 0 ]; then
  # CI has 90 minutes for everything and the pass takes ~40 on 2 cores: when the ordinary
  # part alone took longer than MINIGPT4_SANITIZER_LATEST_START seconds (40 minutes), the
  # pass would not fit, and it is left out, loudly, rather than losing the whole verdict.
  latest_start="${MINIGPT4_SANITIZER_LATEST_START:-2400}"
  if [ "$SECONDS" -gt "$latest_start" ]; then
    echo "[test] SANITIZER PASS NOT RUN: the build and tests took $((SECONDS / 60)) minutes, more than" \
         "MINIGPT4_SANITIZER_LATEST_START=${latest_start}s; run scripts/sanitize.sh address,undefined on its own"
  else
    "$ROOT/scripts/sanitize.sh" address,undefined
  fi
fi
echo "[test] done in $((SECONDS / 60)) min $((SECONDS % 60)) s"
