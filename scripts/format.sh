#!/usr/bin/env bash
# The C++ sources in the project's style (.clang-format, clang-format 14 as Debian ships it).
#   scripts/format.sh           reformat in place
#   scripts/format.sh --check   list the files that differ and fail (scripts/test.sh runs this)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mapfile -t files < <(git ls-files -co --exclude-standard -- 'minigpt4/*.cpp' 'minigpt4/*.h' 'apps/*.cpp' 'apps/*.h' \
  'tests/*.cpp' 'tests/*.h' 'benchmarks/*.cpp' 'benchmarks/*.h' 'examples/*.cpp' | grep -v '^tests/fuzz/corpus/' |
  while read -r f; do [ -f "$f" ] && echo "$f"; done)  # (files deleted but not yet committed are listed too)
if [ "${1:-}" = --check ]; then
  if ! clang-format --dry-run -Werror "${files[@]}" 2> /tmp/minigpt4-format.$$; then
    grep 'code should be clang-formatted' /tmp/minigpt4-format.$$ | cut -d: -f1 | sort -u | sed 's/^/  not formatted: /'
    rm -f /tmp/minigpt4-format.$$
    echo "[format] run scripts/format.sh to apply .clang-format"
    exit 1
  fi
  rm -f /tmp/minigpt4-format.$$
  echo "[format] ${#files[@]} files follow .clang-format"
else
  clang-format -i "${files[@]}"
fi
