"""A demo clip made only from what the install brings: the packaged portrait, moved slightly, with a generated voice.

The portrait (``face/assets/demo_face.jpg``) is a crop of NASA's public-domain photograph of the astronaut Eileen
Collins (the ``astronaut`` image of scikit-image's data, "no known copyright restrictions"). The default MediaPipe
detector finds its face, so the demo runs the whole pipeline: detection, alignment, generation and paste-back::

    write_demo_clip("demo/face.mp4")    # 4 s, 25 fps, 288x320, a slow sway and nod, a 16 kHz voice track

`lip_voice` makes the same kind of voice from a clip's own mouth openings, so real faces get a sound in sync with
them by construction (`write_lip_voiced_clip`): what the tiny trained SyncNet of the tests learns from (docs/syncnet.md).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .conventions import MODEL_SAMPLE_RATE
from .errors import MediaError
from .face.detectors import FaceDetector
from .face.mouth import mouth_openings
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


def harmonic_voice(loudness: np.ndarray, vowel: np.ndarray, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """A voice-like signal, ``(n,)`` float32 peaking at 0.3: a 120-160 Hz harmonic tone whose loudness follows
    ``loudness`` and whose vowel colour follows ``vowel`` (0: energy in the low harmonics, 1: moved to every third
    one), both ``(n,)`` per sample in [0, 1]."""
    t = np.arange(len(loudness)) / sample_rate
    pitch = 140 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    tone = sum((1 - vowel + vowel * (k % 3 == 0)) * np.sin(k * phase) / k for k in range(1, 12))
    samples = loudness * tone
    return (0.3 * samples / max(np.abs(samples).max(), 1e-9)).astype(np.float32)


def demo_voice(seconds: float, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """The demo's `harmonic_voice`: vowel colour and loudness change four times a second, like syllables, with
    short pauses between phrases."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    vowel = 0.5 + 0.5 * np.sin(2 * np.pi * 1.3 * t)
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    phrases = (np.sin(2 * np.pi * 0.4 * t) > -0.8).astype(np.float64)  # a pause every 2.5 s
    return harmonic_voice(syllables * phrases, vowel, sample_rate)


def lip_voice(openings: np.ndarray, fps: float = DEMO_FPS, sample_rate: int = MODEL_SAMPLE_RATE) -> np.ndarray:
    """A voice that follows a clip's lips: `harmonic_voice` loud and open-voweled where the mouth is open, nearly
    silent where it is closed, ``(round(len(openings) * sample_rate / fps),)`` float32.

    ``openings`` are per-frame `latentsync.face.mouth.mouth_openings`; they are scaled so that the clip's 5th
    percentile is closed and its 95th wide open, and each frame's value sits at the middle of its samples (frame
    ``i`` sounds in samples ``[i, i + 1) * sample_rate / fps``, where the SyncNet looks for it). Test material whose
    sync is known by construction: the sound of frame ``i`` is made from the lips of frame ``i``.
    """
    closed, wide = np.percentile(openings, [5, 95])
    level = np.clip((openings - closed) / max(wide - closed, 1e-9), 0.0, 1.0)
    num_samples = round(len(openings) * sample_rate / fps)
    centres = (np.arange(len(openings)) + 0.5) * sample_rate / fps
    level = np.interp(np.arange(num_samples), centres, level)
    return harmonic_voice(level**1.5, level, sample_rate)


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


def write_lip_voiced_clip(
    frames: Sequence[np.ndarray], path: str | os.PathLike, detector: FaceDetector, fps: int = DEMO_FPS
) -> Path:
    """Write ``frames`` (H.264) with the `lip_voice` of their own lips as sound (AAC) to ``path``: a clip whose
    sound is in sync with its lips by construction, for testing and training sync with real faces when the real
    sound does not follow the lips. Returns ``path``.

    Args:
        frames: ``(h, w, 3)`` uint8 RGB frames of one clip at ``fps``.
        detector: a detector with face-mesh landmarks (`latentsync.face.mouth.mouth_openings`).

    Raises:
        NoFaceError: no frame has a face.
    """
    voice = lip_voice(mouth_openings(frames, detector), fps)
    height, width = frames[0].shape[:2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, fps, width, height, audio=AudioArray(voice, MODEL_SAMPLE_RATE)) as writer:
        for frame in frames:
            writer.write_frame(frame)
    return path
