#!/usr/bin/env bash
# The test command: install everything (scripts/setup.sh), build, run every CTest test.
# Extra arguments go to ctest (e.g. `-L parity`). Extra fixture cases: MINIGPT4_PARITY_DIRS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MINIGPT4_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$(nproc)"
ctest --test-dir "$BUILD" --output-on-failure "$@"
