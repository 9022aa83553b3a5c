"""Install-time step for ComfyUI-Manager (it runs this file once after cloning; nothing runs at ComfyUI start-up):
the runtime requirements into ComfyUI's Python. The default face detector's model files come with the clone."""

import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "pip", "install", "-r", "requirements.txt"], cwd=__file__.rsplit("/", 1)[0] or ".")
