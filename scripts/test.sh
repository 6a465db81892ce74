#!/usr/bin/env bash
# The test command: install everything (scripts/setup.sh), build, run every CTest test, then
# build the parsers and the server with AddressSanitizer + UndefinedBehaviorSanitizer and run
# their unit tests and the fuzz replays again (docs/security.md).
# Extra arguments go to ctest (e.g. `-L parity`) and skip the sanitizer pass, as does
# MINIGPT4_SANITIZER_PASS=0. Extra fixture cases: MINIGPT4_PARITY_DIRS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MINIGPT4_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$(nproc)"
ctest --test-dir "$BUILD" --output-on-failure "$@"

if [ "$#" -eq 0 ] && [ "${MINIGPT4_SANITIZER_PASS:-1}" = 1 ]; then
  "$ROOT/scripts/sanitize.sh" address,undefined
fi
