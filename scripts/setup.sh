#!/usr/bin/env bash
# Installs everything minigpt4-cpp needs on a fresh Debian 12 machine:
# the Debian build dependencies and LibTorch from the pinned PyPI `torch` wheel
# in a project-local virtual environment (.venv). Safe to run again.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_VERSION="${MINIGPT4_TORCH_VERSION:-2.12.1}"   # the wheel built against CUDA 13.0
VENV="${MINIGPT4_VENV:-$ROOT/.venv}"

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

DEB_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git python3-venv
  libyaml-cpp-dev libsentencepiece-dev sentencepiece libpcre2-dev libre2-dev libopencv-dev libjpeg-dev
  libcli11-dev nlohmann-json3-dev
  libarchive-dev libcpp-httplib-dev catch2
  libgloo-dev   # headers of the Gloo that LibTorch has built in (ProcessGroupGloo needs them)
  chromium   # the web demo's browser test (tests/server/browser_test.py) drives it
  clang-format   # the code's style (.clang-format; scripts/format.sh --check in scripts/test.sh)
)
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "[setup] apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  echo "[setup] pip install torch==$TORCH_VERSION (LibTorch for C++; pip's wheel cache is reused)"
  "$VENV/bin/pip" install --disable-pip-version-check -q "torch==$TORCH_VERSION"
fi
# Playwright for Python drives chromium in the web demo's browser test. pip only: the
# browser is Debian's chromium above (`playwright install` would download one).
if ! "$VENV/bin/python" -c "import playwright" 2>/dev/null; then
  echo "[setup] pip install playwright (the browser test's driver)"
  "$VENV/bin/pip" install --disable-pip-version-check -q playwright
fi
echo "[setup] LibTorch: $("$VENV/bin/python" -c 'import torch;print(torch.utils.cmake_prefix_path)')"
