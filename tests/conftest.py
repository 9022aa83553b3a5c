"""Shared test fixtures: where the conformance data lives, skipping cleanly when it is absent, and one torch thread
for the modules that run tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# The conformance data sits beside the checkout in this workplace (`../shared/fixtures`); a user's clone has
# none, so every test that needs it skips with the reason below. LATENTSYNC_FIXTURES overrides the location.
FIXTURES_DIR = Path(os.environ.get("LATENTSYNC_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures"))
_MISSING_REASON = (
    f"conformance fixtures not found at {FIXTURES_DIR} (they live in ../shared/fixtures beside the checkout; "
    "set LATENTSYNC_FIXTURES to point elsewhere)"
)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    Tiny models gain nothing from more threads, and on a shared 2-core runner two threads were up to 20x slower than
    one while other jobs held the cores (OpenMP threads spin while they wait for each other); one thread keeps the
    suite's time predictable.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The conformance fixture folder; skips the test when it is absent."""
    if not (FIXTURES_DIR / "README.md").is_file():
        pytest.skip(_MISSING_REASON)
    return FIXTURES_DIR


@pytest.fixture(scope="session")
def assets_dir(fixtures_dir: Path) -> Path:
    """The real talking-head clips (`demo1_video.mp4`, `demo1_audio.wav`, ...)."""
    return fixtures_dir / "assets"


def load_tensors(path: Path) -> dict:
    """All tensors of a `.safetensors` fixture file."""
    from safetensors.torch import load_file

    return load_file(str(path))


def read_pcm16_wav(path: Path):
    """A 16 kHz mono PCM16 wav as float32 samples ``int16 / 32768`` (how the reference reads audio)."""
    import wave

    import numpy as np

    with wave.open(str(path)) as handle:
        assert (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) == (16000, 1, 2)
        pcm = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
    return pcm.astype(np.float32) / 32768.0


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
