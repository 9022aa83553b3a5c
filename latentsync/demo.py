"""A demo clip made only from what the install brings: the packaged portrait, moved slightly, with a generated voice.

The portrait (``face/assets/demo_face.jpg``) is a crop of NASA's public-domain photograph of the astronaut Eileen
Collins (the ``astronaut`` image of scikit-image's data, "no known copyright restrictions"). The default MediaPipe
detector finds its face, so the demo runs the whole pipeline: detection, alignment, generation and paste-back::

    write_demo_clip("demo/face.mp4")    # 4 s, 25 fps, 288x320, a slow sway and nod, a 16 kHz voice track
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np

from .conventions import MODEL_SAMPLE_RATE
from .errors import MediaError
from .media.writer import AudioArray, VideoWriter, write_wav

DEMO_FACE = Path(__file__).resolve().parent / "face" / "assets" / "demo_face.jpg"
DEMO_FPS = 25


def demo_face() -> np.ndarray:
    """The packaged portrait, ``(320, 288, 3)`` uint8 RGB."""
    image = cv2.imread(str(DEMO_FACE), cv2.IMREAD_COLOR)
    if image is None:
        raise MediaError(f"The demo portrait {DEMO_FACE} is missing or unreadable; reinstall the package.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def demo_frames(num_frames: int, fps: int = DEMO_FPS) -> list[np.ndarray]:
    """``num_frames`` frames of the portrait turning by up to 2 degrees, nodding by 3 pixels and zooming by 2%,
    each ``(h, w, 3)`` uint8 RGB: a head that moves like a speaker's, so tracking and smoothing have work to do."""
    face = demo_face()
    height, width = face.shape[:2]
    frames = []
    for index in range(num_frames):
        seconds = index / fps
        angle = 2.0 * math.sin(2 * math.pi * 0.35 * seconds)
        scale = 1.0 + 0.02 * math.sin(2 * math.pi * 0.2 * seconds)
        affine = cv2.getRotationMatrix2D((width / 2, height * 0.4), angle, scale)
        affine[1, 2] += 3.0 * math.sin(2 * math.pi * 0.8 * seconds)
        frames.append(cv2.warpAffine(face, affine, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def demo_voice(seconds: float, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """A voice-like signal, ``(n,)`` float32 in [-0.3, 0.3]: a 120-160 Hz harmonic tone whose vowel colour and
    loudness change four times a second, like syllables, with short pauses between phrases."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    vowel = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)  # moves the energy between low and high harmonics
    voice = sum((1 - vowel + vowel * (k % 3 == 0)) * np.sin(k * phase) / k for k in range(1, 12))
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    phrases = (np.sin(2 * np.pi * 0.4 * t) > -0.8).astype(np.float64)  # a pause every 2.5 s
    samples = syllables * phrases * voice
    return (0.3 * samples / max(np.abs(samples).max(), 1e-9)).astype(np.float32)


def write_demo_clip(path: str | os.PathLike, seconds: float = 4.0, wav_path: str | os.PathLike | None = None) -> Path:
    """Write the demo clip (H.264 + AAC) to ``path``, creating its folder, and its voice alone as a WAV file to
    ``wav_path`` if given (the example ComfyUI workflows load a video and a speech file); returns ``path``.

    Raises:
        MediaError: ``seconds`` not positive, or the file cannot be written.
    """
    if not seconds > 0:
        raise MediaError(f"The demo clip must last more than 0 seconds, got {seconds}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = demo_frames(max(1, round(seconds * DEMO_FPS)))
    height, width = frames[0].shape[:2]
    voice = demo_voice(len(frames) / DEMO_FPS)
    if wav_path is not None:
        Path(wav_path).parent.mkdir(parents=True, exist_ok=True)
        write_wav(wav_path, voice[None], MODEL_SAMPLE_RATE)
    audio = AudioArray(voice, MODEL_SAMPLE_RATE)
    with VideoWriter(path, DEMO_FPS, width, height, audio=audio) as writer:
        for frame in frames:
            writer.write_frame(frame)
    return path
