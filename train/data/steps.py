"""The per-clip work of each step of `train.data.pipeline`, as plain functions any worker can run.

A step function takes one input record (a JSON-able dict: ``id``, ``path``, ``seconds`` and what earlier steps
added), the step's folder, the `PipelineOptions` and a ``report(done, total)`` progress callback. It returns a
`StepOutcome`: the records it keeps (usually one, several when a clip is cut into segments) and the stretches it
drops with their reason. It raises `Dropped` when the whole input fails the step; any other exception is a
failure of that input only (the engine records it and goes on). Files are written atomically (temporary name,
then rename), so a killed worker never leaves a half-written clip under its final name.

Models are loaded once per worker process (`worker_cache`) and put on the worker's device (`worker_device`):
face detection, alignment and sync scoring use a GPU when the worker has one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from latentsync.conventions import MODEL_FPS, MODEL_SAMPLE_RATE, SAMPLES_PER_MODEL_FRAME
from latentsync.errors import LatentSyncError, MediaError
from latentsync.files import atomic_write

from .segments import balanced_pieces, face_runs

if TYPE_CHECKING:
    from .pipeline import PipelineOptions

# Training clips are written at the models' rates; the frame rate as an int, for frame arithmetic.
FPS = int(MODEL_FPS)
# Aligned clips are encoded near-losslessly: they are training data.
CLIP_CRF = 14
# Frames aligned per warp call.
ALIGN_BATCH = 16

Report = Callable[[float, float], None]


class Dropped(Exception):
    """The input does not pass this step.

    Args:
        reason: the short reason the closing table groups by (e.g. ``"sync confidence"``).
        detail: the numbers behind it, for the log and ``meta``.
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


@dataclass
class StepOutcome:
    """What one step made of one input: records kept, and stretches dropped (``reason``, ``seconds``)."""

    kept: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    def drop(self, record_id: str, reason: str, seconds: float, detail: str = "") -> None:
        self.dropped.append({"id": record_id, "reason": reason, "seconds": seconds, "detail": detail})

    def to_dict(self) -> dict:
        return {"kept": self.kept, "dropped": self.dropped}


@dataclass
class StepTask:
    """The payload of one engine item: run step ``name`` on ``record``, writing into ``folder``."""

    name: str
    record: dict
    folder: str
    options: "PipelineOptions"


def run_step_task(task: StepTask, report: Report) -> dict:
    """The engine's task (`latentsync.parallel.run_items`): one step on one input, as a JSON-able outcome."""
    record = task.record
    try:
        outcome = STEP_FUNCTIONS[task.name](record, Path(task.folder), task.options, report)
    except Dropped as dropped:
        outcome = StepOutcome()
        outcome.drop(record["id"], dropped.reason, record.get("seconds", 0.0), dropped.detail)
    return outcome.to_dict()


# ----------------------------------------------------------------------------------------------------------
# Clip IO


def write_clip(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray) -> int:
    """Write RGB frames at 25 fps with 16 kHz mono audio (atomically); returns the frame count."""
    from latentsync.media import AudioArray, VideoWriter

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise MediaError(f"no frames to write to {path}")
    height, width = first.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, MODEL_FPS, width, height, CLIP_CRF, AudioArray(audio, MODEL_SAMPLE_RATE)) as writer:
        writer.write_frame(first)
        for frame in frames:
            writer.write_frame(frame)
        return writer.frames_written


def read_frames(path: str | Path, start: int = 0, stop: Optional[int] = None) -> Iterator[np.ndarray]:
    """Frames ``start .. stop - 1`` of a clip at 25 fps, ``(h, w, 3)`` uint8 RGB."""
    from latentsync.media import VideoReader

    with VideoReader(path) as reader:
        for index, (_, frame) in enumerate(reader.frames_at_fps(FPS, start_index=start), start=start):
            if stop is not None and index >= stop:
                break
            yield frame


def read_audio(path: str | Path) -> np.ndarray:
    from latentsync.media import load_audio

    return load_audio(path, MODEL_SAMPLE_RATE)


def count_frames(path: str | Path) -> int:
    from .clips import count_frames

    return count_frames(Path(path), FPS)


def _reporting(frames: Iterable[np.ndarray], report: Report, total: int) -> Iterator[np.ndarray]:
    for index, frame in enumerate(frames, start=1):
        yield frame
        report(index, total)


def _save_array(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as temporary, temporary.open("wb") as file:
        np.save(file, array)


# ----------------------------------------------------------------------------------------------------------
# Steps


def step_check(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Drop files that cannot be decoded or have no video or no audio track."""
    from latentsync.media import probe_audio, probe_video

    try:
        info = probe_video(record["path"])
        probe_audio(record["path"])
    except LatentSyncError as error:
        raise Dropped("unreadable", f"{type(error).__name__}: {error}") from None
    if info.duration <= 0:
        raise Dropped("unreadable", "empty video")
    return StepOutcome(kept=[{**record, "seconds": float(info.duration), "width": info.width, "height": info.height}])


def _shrunk(frames: Iterable[np.ndarray], size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Frames resized to ``size`` = ``(width, height)`` when they differ (area filter)."""
    import cv2

    for frame in frames:
        if frame.shape[1::-1] != size:
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        yield frame


def stored_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The ``(width, height)`` a clip is stored at: its own, or scaled so the longer side is ``max_side`` (even)."""
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return 2 * round(width * scale / 2), 2 * round(height * scale / 2)


def step_resample(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Re-encode at 25 fps (frames by timestamp) with 16 kHz mono audio, shrunk to ``max_side``."""
    target = folder / f"{record['id']}.mp4"
    num_frames = count_frames(record["path"])
    audio = read_audio(record["path"])
    num_samples = num_frames * SAMPLES_PER_MODEL_FRAME
    audio = np.pad(audio, (0, max(num_samples - len(audio), 0)))[:num_samples]
    size = stored_size(record["width"], record["height"], options.max_side)
    frames = _reporting(_shrunk(read_frames(record["path"]), size), report, num_frames)
    written = write_clip(target, frames, audio)
    kept = {**record, "path": str(target), "frames": written, "seconds": written / FPS,
            "width": size[0], "height": size[1], "scale": size[0] / record["width"]}  # fmt: skip
    return StepOutcome(kept=[kept])


def step_scenes(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Find the scene cuts (PySceneDetect's ContentDetector); the scenes cover the clip."""
    from scenedetect import ContentDetector, detect

    scenes = detect(record["path"], ContentDetector(threshold=options.scene_threshold))
    ranges = [[start.frame_num, min(end.frame_num, record["frames"])] for start, end in scenes]
    return StepOutcome(kept=[{**record, "scenes": ranges or [[0, record["frames"]]]}])


def _face_detector(options: "PipelineOptions", scale: float):
    """The worker's face detector, with the size rule of the reference (`FaceFilter`) judged in source pixels.

    A clip stored smaller than its source (``--max-side``) shows the same face with fewer pixels; the reference's
    50 x 80 pixel minimum would reject faces that are fine in the source (a 200-pixel face of a 1080 x 1920 video
    is 75 pixels at 720), so the minimum is scaled with the clip.
    """
    from latentsync.face.detectors import DEFAULT_FACE_DETECTOR, FaceFilter, create_face_detector
    from latentsync.parallel import worker_cache

    name = options.face_detector or DEFAULT_FACE_DETECTOR
    model_dir = {"model_dir": options.face_model_dir} if options.face_model_dir else {}
    detector = worker_cache(
        f"face-detector:{name}:{options.face_model_dir}", lambda: create_face_detector(name, **model_dir)
    )
    detector.face_filter = FaceFilter.for_min_height(max(1, math.ceil(FaceFilter().min_height * scale)))
    return detector


def step_faces(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Track the face through each scene; save its three alignment points per frame (NaN where it is missing).

    The tracker starts afresh at every cut and bridges misses of up to ``max_face_gap`` frames; longer misses
    stay NaN, and the ``segments`` step cuts around them.
    """
    from latentsync.face.tracking import FaceTracker

    tracker = FaceTracker(_face_detector(options, record["scale"]), max_gap_frames=options.max_face_gap)
    points = np.full((record["frames"], 3, 2), np.nan)
    frames = read_frames(record["path"])
    for start, stop in record["scenes"]:
        for index, (_, face_points) in enumerate(tracker.track(islice(frames, stop - start)), start=start):
            if face_points is not None:
                points[index] = face_points
            report(index + 1, record["frames"])
    target = folder / f"{record['id']}.npy"
    _save_array(target, points)
    with_face = int(np.isfinite(points[:, 0, 0]).sum())
    return StepOutcome(kept=[{**record, "points": str(target), "face_frames": with_face}])


def step_segments(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Cut each scene's face runs into balanced segments of ``min_seconds .. max_seconds`` (no file is written)."""
    has_face = np.isfinite(np.load(record["points"])[:, 0, 0])
    min_frames, max_frames = round(options.min_seconds * FPS), round(options.max_seconds * FPS)
    outcome = StepOutcome()
    base = {key: value for key, value in record.items() if key not in ("scenes", "face_frames")}
    for scene, (start, stop) in enumerate(record["scenes"]):
        scene_id = f"{record['id']}_s{scene:03d}"
        if stop - start < min_frames:
            outcome.drop(scene_id, "scene shorter than min-seconds", (stop - start) / FPS)
            continue
        missing = int((~has_face[start:stop]).sum())
        if missing:
            outcome.drop(scene_id, "no face", missing / FPS)
        piece = 0
        for run_start, run_stop in face_runs(has_face, start, stop):
            pieces = balanced_pieces(run_start, run_stop, min_frames, max_frames)
            left_over = (run_stop - run_start) - sum(last - first for first, last in pieces)
            if not pieces:
                outcome.drop(scene_id, "face run shorter than min-seconds", left_over / FPS)
            elif left_over:
                outcome.drop(scene_id, "left over", left_over / FPS)
            for first, last in pieces:
                outcome.kept.append({**base, "id": f"{scene_id}_{piece:02d}", "first_frame": first, "stop_frame": last,
                                     "frames": last - first, "seconds": (last - first) / FPS})  # fmt: skip
                piece += 1
    return outcome


def step_align(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Warp each frame of the segment to the aligned ``R x R`` face of inference, with the tracked points.

    Also measures the face size: the side, in pixels of the stored clip, of the square the aligned crop is cut
    from (median over the frames); below ``R`` the face is enlarged.
    """
    import torch

    from latentsync.face import FaceAligner
    from latentsync.parallel import worker_device

    first, stop = record["first_frame"], record["stop_frame"]
    points = np.load(record["points"])[first:stop]
    aligner, device = FaceAligner(options.resolution), worker_device()
    crop_sides = []

    def aligned_frames() -> Iterator[np.ndarray]:
        frames = read_frames(record["path"], first, stop)
        for batch_start in range(0, stop - first, ALIGN_BATCH):
            batch = list(islice(frames, ALIGN_BATCH))
            affines = np.stack([aligner.estimate_affine(p) for p in points[batch_start : batch_start + len(batch)]])
            crop_sides.extend(aligner.crop_size[0] / np.sqrt(np.abs(np.linalg.det(affines[:, :, :2]))))
            pixels = torch.from_numpy(np.stack(batch)).to(device)
            yield from aligner.align_batch(pixels, affines).cpu().numpy()
            report(batch_start + len(batch), stop - first)

    audio = read_audio(record["path"])[first * SAMPLES_PER_MODEL_FRAME : stop * SAMPLES_PER_MODEL_FRAME]
    target = folder / f"{record['id']}.mp4"
    written = write_clip(target, aligned_frames(), audio)
    kept = {**record, "path": str(target), "frames": written, "seconds": written / FPS,
            "resolution": options.resolution, "face_size": float(np.median(crop_sides))}  # fmt: skip
    for key in ("points", "first_frame", "stop_frame"):
        kept.pop(key)
    kept["source_start_frame"] = first
    return StepOutcome(kept=[kept])


def _syncnet(options: "PipelineOptions"):
    from latentsync.models.syncnet_loading import load_syncnet
    from latentsync.parallel import worker_cache, worker_device

    return worker_cache(f"syncnet:{options.syncnet}", lambda: load_syncnet(options.syncnet, device=worker_device()))


def step_sync(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Score the clip with StableSyncNet (`latentsync.score.sync_offset_scores` on its aligned faces); drop it when
    the confidence is under ``min_sync_confidence`` or the offset beyond ``max_sync_offset``; otherwise shift the
    audio by the offset (frames no longer covered by audio are cut)."""
    import torch

    from latentsync.face.align import resize_faces
    from latentsync.score import SyncNetInput, as_face_tensor, sync_offset_scores

    syncnet = _syncnet(options)
    spec = SyncNetInput.for_model(syncnet)
    faces = torch.from_numpy(np.stack(list(read_frames(record["path"])))).permute(0, 3, 1, 2)
    if faces.shape[-1] != spec.resolution:  # as scoring and SyncNet training feed a model for smaller faces
        faces = resize_faces(as_face_tensor(faces), spec.resolution)
    audio = read_audio(record["path"])
    try:
        score = sync_offset_scores(syncnet, faces, audio)
    except MediaError as error:
        raise Dropped("too short to score sync", str(error)) from None
    report(1, 1)
    numbers = {"sync_confidence": score.confidence, "sync_offset": score.best_offset,
               "sync_min_distance": score.min_distance}  # fmt: skip
    if score.confidence < options.min_sync_confidence:
        raise Dropped("sync confidence", f"{score.confidence:.3f} < {options.min_sync_confidence}")
    offset = score.best_offset
    if abs(offset) > options.max_sync_offset:
        raise Dropped("sync offset", f"|{offset}| > {options.max_sync_offset} frames")
    if offset == 0:
        return StepOutcome(kept=[{**record, **numbers}])
    # offset > 0: the audio lags the video by `offset` frames; advance it (and cut the frames it no longer covers)
    num_frames = record["frames"] - abs(offset)
    first_frame = max(-offset, 0)
    audio = audio[max(offset, 0) * SAMPLES_PER_MODEL_FRAME :][: num_frames * SAMPLES_PER_MODEL_FRAME]
    target = folder / f"{record['id']}.mp4"
    written = write_clip(target, read_frames(record["path"], first_frame, first_frame + num_frames), audio)
    return StepOutcome(kept=[{**record, **numbers, "path": str(target), "frames": written, "seconds": written / FPS}])


def step_quality(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Drop blurred, badly exposed and small faces (`filters.face_quality` and the aligner's face size)."""
    from .filters import face_quality

    quality = face_quality(read_frames(record["path"]))
    numbers = {"sharpness": quality.sharpness, "brightness": quality.brightness}
    if record["face_size"] < options.min_face_size:
        raise Dropped("face too small", f"{record['face_size']:.0f} < {options.min_face_size} pixels")
    if quality.sharpness < options.min_sharpness:
        raise Dropped("blurred", f"sharpness {quality.sharpness:.1f} < {options.min_sharpness}")
    if not options.min_brightness <= quality.brightness <= options.max_brightness:
        raise Dropped("exposure", f"brightness {quality.brightness:.0f} outside "
                      f"[{options.min_brightness}, {options.max_brightness}]")  # fmt: skip
    return StepOutcome(kept=[{**record, **numbers}])


def step_motion(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Drop nearly still or shaking clips (`filters.mean_flow`)."""
    from .filters import mean_flow

    motion = mean_flow(read_frames(record["path"]))
    if not options.min_motion <= motion <= options.max_motion:
        raise Dropped("motion", f"{motion:.2f} outside [{options.min_motion}, {options.max_motion}]")
    return StepOutcome(kept=[{**record, "motion": motion}])


def step_text(record: dict, folder: Path, options: "PipelineOptions", report: Report) -> StepOutcome:
    """Drop clips with text over more than ``max_text_fraction`` of the aligned frame (`filters.text_fraction`)."""
    from latentsync.parallel import worker_cache

    from .filters import load_text_reader, text_fraction

    reader = worker_cache("text-reader", load_text_reader)
    fraction = text_fraction(read_frames(record["path"]), record["frames"], reader)
    if fraction > options.max_text_fraction:
        raise Dropped("text", f"text covers {fraction:.3f} of the frame")
    return StepOutcome(kept=[{**record, "text_fraction": fraction}])


STEP_FUNCTIONS = {
    "check": step_check, "resample": step_resample, "scenes": step_scenes, "faces": step_faces,
    "segments": step_segments, "align": step_align, "sync": step_sync, "quality": step_quality,
    "motion": step_motion, "text": step_text,
}  # fmt: skip


def cache_audio_features(payload: tuple[str, str, str], report: Report) -> dict:
    """The engine's task for the feature cache: ``(clip path, cache folder, Whisper checkpoint)``."""
    from latentsync.parallel import worker_cache

    from .clips import AudioFeatureCache

    clip, cache_dir, whisper = payload
    cache = worker_cache(f"features:{cache_dir}:{whisper}", lambda: AudioFeatureCache(cache_dir, whisper))
    features = cache.whisper_features(Path(clip))
    cache.mel(Path(clip))
    return {"whisper_shape": list(features.shape)}
