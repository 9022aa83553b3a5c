"""Where the repository and the conformance data live, and readers for the fixture files."""

from __future__ import annotations

import json
import os
import wave
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
# The conformance data sits beside the checkout in this workplace (`../shared/fixtures`); a user's clone has
# none, so every test that needs it skips (the `fixtures_dir` fixture). LATENTSYNC_FIXTURES overrides the location.
FIXTURES_DIR = Path(os.environ.get("LATENTSYNC_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))


def load_tensors(path: Path) -> dict:
    """All tensors of a `.safetensors` fixture file."""
    from safetensors.torch import load_file

    return load_file(str(path))


def read_pcm16_wav(path: Path) -> np.ndarray:
    """A 16 kHz mono PCM16 wav as float32 samples ``int16 / 32768`` (how the reference reads audio)."""
    with wave.open(str(path)) as handle:
        assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
