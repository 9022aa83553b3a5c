#!/usr/bin/env bash
# Create ./.venv and install the pack's dependencies into it.
#   bash scripts/install.sh            runtime dependencies (library, CLI, ComfyUI nodes)
#   bash scripts/install.sh --test     + test dependencies
#   bash scripts/install.sh --train    + training dependencies (accelerate, DeepSpeed, peft, ...)
# torch is installed first, pinned to TORCH_SPEC (default torch==2.13.0), so that no other requirement can pull a
# different build; nothing here installs torchvision or torchaudio. TORCH_SPEC is split into pip arguments, so it
# can name a CUDA build's index:
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" bash scripts/install.sh
# Last, the pack itself is installed in editable mode (--no-deps): the `latentsync` command, and imports from
# anywhere, run this clone's code.
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
read -r -a torch_arguments <<<"$TORCH_SPEC"
.venv/bin/python -m pip install --quiet "${torch_arguments[@]}"
# A constraint file pinning the torch just installed: a requirement asking for another one fails loudly instead.
# (Its version is read from the package metadata: importing torch before NumPy is installed prints a warning.)
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
.venv/bin/python -c 'from importlib.metadata import version; print("torch==" + version("torch").split("+")[0])' \
  >"$constraints"
.venv/bin/python -m pip install --quiet "${requirements[@]}" --constraint "$constraints"
.venv/bin/python -m pip install --quiet --no-deps --editable .
if [ "$train" = 1 ]; then
  # PyPI has only DeepSpeed's source: build it against the installed torch (no isolated build env that would fetch
  # another torch) and without compiling its CUDA/C++ ops (they are built on first use where a toolkit exists).
  DS_BUILD_OPS=0 .venv/bin/python -m pip install --quiet --no-build-isolation "deepspeed>=0.15" --constraint "$constraints"
fi
