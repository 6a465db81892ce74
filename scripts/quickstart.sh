#!/usr/bin/env bash
# The main job on the embedded default: install everything, build, then train a tiny
# MiniGPT-4 end to end on a generated world (language warm-up, stage 1, stage 2) and
# answer questions about held-out pictures, next to a blind baseline, then score it with
# `minigpt4 evaluate` on a synthetic captioning and VQA set. Output: runs/quickstart
# (quickstart_summary.json, quickstart_eval_metrics.json, minigpt4_quickstart_eval.yaml,
# every stage's checkpoints, metrics and curves). Extra arguments go to `minigpt4 quickstart` (see --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MINIGPT4_BUILD_DIR:-$ROOT/build}"
"$ROOT/scripts/setup.sh"
cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD" -j"$(nproc)" --target minigpt4
cd "$ROOT"
"$BUILD/minigpt4" quickstart --out runs/quickstart "$@"
