#!/usr/bin/env bash
# Make a CPU-only Python environment for a ComfyUI checkout, for the integration tests in this folder.
#
#   bash tests/integration/setup_comfyui.sh COMFYUI_DIR VENV_DIR
#   COMFYUI_PATH=COMFYUI_DIR COMFYUI_PYTHON=VENV_DIR/bin/python python -m pytest tests/integration
#
# Only CUDA builds of torchvision and torchaudio are on PyPI, and their native parts cannot load against the CPU
# torch. ComfyUI imports torchvision at startup (comfy/sd.py) and torchaudio for its audio nodes (LoadAudio,
# SaveAudio, ...), but uses only their pure-Python parts (transforms, models, functional.resample). So this
# installs the releases built for torch 2.13 without dependencies, deletes their native libraries, and lets
# torchvision import without them (its fake-op registration for nms/qnms assumes the native ops are loaded).
# spandrel (ComfyUI's upscale-model loader) is installed without dependencies because it pins torchvision.
set -euo pipefail
comfyui_dir=$1 venv_dir=$2

python3 -m venv "$venv_dir"
pip="$venv_dir/bin/pip"
"$pip" install torch==2.13.0
grep -vE '^(torch|torchvision|torchaudio|spandrel)$' "$comfyui_dir/requirements.txt" > "$venv_dir/comfyui-requirements.txt"
pack_dir=$(cd "$(dirname "$0")/../.." && pwd)
# ComfyUI's requirements and this pack's, as ComfyUI-Manager would install them (install.py).
"$pip" install -r "$venv_dir/comfyui-requirements.txt" -r "$pack_dir/requirements.txt" onnxruntime
"$pip" install --no-deps spandrel torchvision==0.28.0 torchaudio==2.11.0

site=$("$venv_dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -f "$site"/torchvision/*.so "$site"/torchaudio/lib/*.so
sed -i -E 's/^@torch\.library\.register_fake\(("torchvision::q?nms")\)$/@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda fn: fn))/' \
    "$site/torchvision/_meta_registrations.py"
"$venv_dir/bin/python" -c 'import torch, torchvision, torchaudio.functional; print("torch", torch.__version__, "torchvision", torchvision.__version__, "(python only)")'
