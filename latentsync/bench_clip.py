"""What the end-to-end benchmark runs on: a generated clip (or the first frames of a given one) and a detector that
reports a face in the middle of every frame, so every stage runs on any clip."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from .conventions import MODEL_FPS, MODEL_SAMPLE_RATE, SAMPLES_PER_MODEL_FRAME
from .face.detectors import Face, FaceDetector


class CentredFaceDetector(FaceDetector):
    """Reports one face in the middle of every frame (a third of the shorter side wide), so the pipeline runs
    every stage on any clip. For benchmarks of generated clips; it finds nothing."""

    name = "centred"

    def _find_faces(self, image: np.ndarray) -> list[Face]:
        height, width = image.shape[:2]
        centre = np.array([width / 2, height / 2])
        half = min(width, height) / 6
        box = np.concatenate([centre - [half, 1.3 * half], centre + [half, 1.3 * half]])
        points = centre + half * np.array([[-0.5, -0.45], [0.5, -0.45], [0.0, 0.1]])
        return [Face(box=box, score=1.0, points3=points)]


def write_test_clip(folder: Path, num_frames: int, size: tuple[int, int] = (640, 360)) -> tuple[Path, Path]:
    """A generated 25 fps H.264 clip of ``num_frames`` frames (moving gradient with a bright ellipse in the middle)
    and a 16 kHz WAV of speech-like tones of the same length; returns their paths."""
    import av

    width, height = size
    video_path, audio_path = folder / "bench_clip.mp4", folder / "bench_audio.wav"
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ellipse = ((x - width / 2) / (height / 6)) ** 2 + ((y - height / 2) / (height / 4.5)) ** 2 <= 1
    with av.open(str(video_path), "w") as container:
        stream = container.add_stream("libx264", rate=MODEL_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = {"crf": "18", "preset": "ultrafast"}
        for index in range(num_frames):
            frame = np.stack([x / width * 200 + index, y / height * 200, np.full_like(x, 80)], axis=-1)
            frame[ellipse] = (224, 172, 150)
            rgb = av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(rgb):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    sample_rate = MODEL_SAMPLE_RATE
    seconds = np.arange(num_frames * SAMPLES_PER_MODEL_FRAME) / sample_rate
    tones = 0.3 * np.sin(2 * np.pi * 180 * seconds) * (1 + np.sin(2 * np.pi * 3 * seconds)) / 2
    with wave.open(str(audio_path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes((tones * 32767).astype(np.int16).tobytes())
    return video_path, audio_path


def cut_audio(audio_path: Path, num_frames: int, folder: Path) -> Path:
    """The first ``num_frames / 25`` seconds of ``audio_path`` as a 16 kHz mono WAV in ``folder`` (so a long clip
    is benchmarked on its first frames: the pipeline trims the video to the audio)."""
    from .media.audio import load_audio

    samples = load_audio(audio_path, MODEL_SAMPLE_RATE)[: num_frames * SAMPLES_PER_MODEL_FRAME]
    path = folder / f"{Path(audio_path).stem}_{num_frames}f.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(MODEL_SAMPLE_RATE)
        handle.writeframes((np.clip(samples, -1, 1) * 32767).astype(np.int16).tobytes())
    return path
