"""The data pipeline of ``python -m train data prepare``: raw talking-head videos -> aligned training clips.

The reference's `preprocess/data_processing_pipeline.py`, step by step, each into its own folder under the output:

========  ==============  ===============================================================================
step      folder          what it does
========  ==============  ===============================================================================
check     00_check        drop files that cannot be decoded, have no video or no audio track
resample  01_resample     re-encode at 25 fps (frames by timestamp) with 16 kHz mono audio (``--max-side``
                          shrinks large frames first)
scenes    02_scenes       split at scene cuts (PySceneDetect ContentDetector) into 5-10 s segments
align     03_align        track the face and warp every frame to the aligned R x R crop of inference
                          (`FaceTracker` + `FaceAligner`); segments with a frame without a face are dropped
sync      04_sync         with ``--syncnet``: sync confidence and offset of the segment (`latentsync.score`);
                          drop clips under the threshold, shift the audio of the others by their offset
quality   05_quality      with ``--quality-filter module:function``: drop clips scoring under ``--min-quality``
motion    06_motion       optional: drop nearly still or shaking clips (OpenCV Farneback optical flow)
text      07_text         optional: drop clips with burnt-in text (captions) over the face
========  ==============  ===============================================================================

Then the output folder gets ``fileslist.txt`` / ``val_fileslist.txt`` (the clips a deterministic hash puts in the
validation share) and ``meta.jsonl`` (one line per kept clip with its numbers), and, with ``--whisper``, the audio
feature cache the trainers read (``cache/``). Every step records each input in ``NN_step/manifest.jsonl`` as it
finishes it, so a run that was interrupted skips what is done and goes on.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from latentsync.errors import ConfigError, LatentSyncError
from latentsync.files import atomic_write

logger = logging.getLogger("train")

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".flv")
STEP_NAMES = ("check", "resample", "scenes", "align", "sync", "quality", "motion", "text")
OPTIONAL_STEPS = ("motion", "text")
# Aligned clips are encoded near-losslessly: they are training data.
CLIP_CRF = 14
# Motion filter: flow between frames this far apart, on frames shrunk to this size.
MOTION_FRAME_STEP = 5
MOTION_SIZE = 128


@dataclass
class PipelineOptions:
    resolution: int = 256
    max_side: int = 0
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    scene_threshold: float = 27.0
    face_detector: Optional[str] = None
    syncnet: Optional[str] = None
    min_sync_confidence: Optional[float] = None
    whisper: Optional[str] = None
    steps: Optional[list[str]] = None
    quality_filter: Optional[str] = None
    min_quality: float = 0.0
    min_motion: float = 0.3
    max_motion: float = 8.0
    max_text_fraction: float = 0.02
    val_fraction: float = 0.05

    @classmethod
    def from_args(cls, args) -> "PipelineOptions":
        values = {name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)}
        if values.get("steps"):
            values["steps"] = [step.strip() for step in values["steps"].split(",") if step.strip()]
        return cls(**values)

    def selected_steps(self) -> list[str]:
        """The steps to run, in pipeline order."""
        if self.steps is not None:
            unknown = [step for step in self.steps if step not in STEP_NAMES]
            if unknown:
                raise ConfigError(f"Unknown pipeline steps {unknown}; choose among {', '.join(STEP_NAMES)}.")
            wanted = set(self.steps)
        else:
            wanted = {"check", "resample", "scenes", "align"}
            wanted |= {"sync"} if self.syncnet else set()
            wanted |= {"quality"} if self.quality_filter else set()
        if "sync" in wanted and not self.syncnet:
            raise ConfigError("The sync step needs --syncnet (a StableSyncNet checkpoint).")
        if "sync" in wanted and self.min_sync_confidence is None:
            raise ConfigError(
                "Give --min-sync-confidence with --syncnet. The confidence is median - min of StableSyncNet's cosine "
                "distance over audio offsets (0..1), not the reference's LSE-C scale of syncnet_v2 (where 3 is used); "
                "score a few good clips with `python -m latentsync score` to choose it."
            )
        if "quality" in wanted and not self.quality_filter:
            raise ConfigError("The quality step needs --quality-filter module:function.")
        return [step for step in STEP_NAMES if step in wanted]


@dataclass
class StepResult:
    """One step's outcome: kept outputs (with their record) and dropped inputs with the reason."""

    name: str
    kept: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(record.get("seconds", 0.0) for record in self.kept)


@dataclass
class PipelineSummary:
    steps: list[StepResult]
    clips: list[dict]
    output: Path

    def table(self) -> str:
        """Kept / dropped per step and hours of video kept."""
        lines = [f"{'step':10s} {'kept':>7s} {'dropped':>8s} {'hours':>8s}", "-" * 36]
        for step in self.steps:
            lines.append(f"{step.name:10s} {len(step.kept):7d} {len(step.dropped):8d} {step.seconds / 3600:8.3f}")
        reasons: dict[str, int] = {}
        for step in self.steps:
            for record in step.dropped:
                key = f"{step.name}: {record['reason'].split(':')[0]}"
                reasons[key] = reasons.get(key, 0) + 1
        lines += ["", f"{len(self.clips)} training clips in {self.output} (fileslist.txt, meta.jsonl)"]
        lines += [f"  dropped at {reason}: {count}" for reason, count in sorted(reasons.items())]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------
# Clip IO


def _write_clip(path: Path, frames: Iterable[np.ndarray], audio: np.ndarray) -> int:
    """Write RGB frames at 25 fps with 16 kHz mono audio (atomically); returns the frame count."""
    from latentsync.media import AudioArray, VideoWriter

    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise LatentSyncError("no frames")
    height, width = first.shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with VideoWriter(path, Fraction(FPS), width, height, CLIP_CRF, AudioArray(audio, SAMPLE_RATE)) as writer:
        writer.write_frame(first)
        for frame in frames:
            writer.write_frame(frame)
        return writer.frames_written


def _frames(path: Path, start: int = 0, stop: Optional[int] = None):
    """Frames ``start .. stop - 1`` of a clip at 25 fps."""
    from latentsync.media import VideoReader

    with VideoReader(path) as reader:
        for index, (_, frame) in enumerate(reader.frames_at_fps(FPS, start_index=start), start=start):
            if stop is not None and index >= stop:
                break
            yield frame


def _audio(path: Path) -> np.ndarray:
    from latentsync.media import load_audio

    return load_audio(path, SAMPLE_RATE)


def _count_frames(path: Path) -> int:
    from latentsync.media import VideoReader

    with VideoReader(path) as reader:
        return reader.num_frames_at_fps(FPS)


# ----------------------------------------------------------------------------------------------------------
# Steps: each maps one input record to output records (kept) or raises `Dropped` / a LatentSyncError (dropped)


class Dropped(Exception):
    """The input does not pass this step; the message is the reason."""


def step_check(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    from latentsync.media import probe_audio, probe_video

    path = Path(record["path"])
    info = probe_video(path)
    probe_audio(path)
    if info.duration <= 0:
        raise Dropped("empty video")
    return [{**record, "seconds": float(info.duration), "width": info.width, "height": info.height}]


def _shrunk(frames: Iterable[np.ndarray], max_side: int) -> Iterable[np.ndarray]:
    """Frames whose longer side exceeds ``max_side`` scaled down (area filter, even sizes); others as they are."""
    import cv2

    for frame in frames:
        height, width = frame.shape[:2]
        scale = max_side / max(height, width) if max_side else 1.0
        if scale < 1.0:
            size = (2 * round(width * scale / 2), 2 * round(height * scale / 2))
            frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
        yield frame


def step_resample(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    source = Path(record["path"])
    target = folder / f"{record['id']}.mp4"
    audio = _audio(source)
    num_frames = _count_frames(source)
    audio = np.pad(audio, (0, max(num_frames * SAMPLES_PER_FRAME - len(audio), 0)))[: num_frames * SAMPLES_PER_FRAME]
    frames_written = _write_clip(target, _shrunk(_frames(source), options.max_side), audio)
    return [{**record, "path": str(target), "frames": frames_written, "seconds": frames_written / FPS}]


def _scene_ranges(path: Path, threshold: float, num_frames: int) -> list[tuple[int, int]]:
    from scenedetect import ContentDetector, detect

    scenes = detect(str(path), ContentDetector(threshold=threshold))
    ranges = [(start.get_frames(), end.get_frames()) for start, end in scenes]
    return ranges or [(0, num_frames)]


def segment_ranges(start: int, stop: int, min_frames: int, max_frames: int) -> list[tuple[int, int]]:
    """Split ``[start, stop)`` into consecutive pieces of ``max_frames`` frames; the last piece is kept only when it
    has at least ``min_frames``."""
    pieces = []
    for first in range(start, stop, max_frames):
        last = min(first + max_frames, stop)
        if last - first >= min_frames:
            pieces.append((first, last))
    return pieces


def step_scenes(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    path = Path(record["path"])
    num_frames = record["frames"]
    audio = _audio(path)
    min_frames, max_frames = round(options.min_seconds * FPS), round(options.max_seconds * FPS)
    outputs = []
    for scene, (start, stop) in enumerate(_scene_ranges(path, options.scene_threshold, num_frames)):
        for piece, (first, last) in enumerate(segment_ranges(start, min(stop, num_frames), min_frames, max_frames)):
            target = folder / f"{record['id']}_s{scene:03d}_{piece:02d}.mp4"
            clip_audio = audio[first * SAMPLES_PER_FRAME : last * SAMPLES_PER_FRAME]
            written = _write_clip(target, _frames(path, first, last), clip_audio)
            outputs.append({**record, "id": target.stem, "path": str(target), "frames": written,
                            "seconds": written / FPS, "source_start_frame": first})  # fmt: skip
    if not outputs:
        raise Dropped(f"no scene of at least {options.min_seconds} s")
    return outputs


def step_align(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    from latentsync.face import FaceAligner
    from latentsync.face.detectors import create_face_detector
    from latentsync.face.tracking import FaceTracker

    path = Path(record["path"])
    detector = create_face_detector(options.face_detector) if options.face_detector else create_face_detector()
    tracker = FaceTracker(detector)
    aligner = FaceAligner(options.resolution)

    def aligned_frames():
        for index, (frame, points) in enumerate(tracker.track(_frames(path))):
            if points is None:
                raise Dropped(f"no face in frame {index}")
            yield aligner.align(frame, aligner.estimate_affine(points))

    target = folder / f"{record['id']}.mp4"
    written = _write_clip(target, aligned_frames(), _audio(path))
    return [{**record, "path": str(target), "segment": str(path), "frames": written, "seconds": written / FPS,
             "resolution": options.resolution}]  # fmt: skip


class _SyncScorer:
    def __init__(self, options: PipelineOptions):
        from latentsync.models.syncnet import load_syncnet

        self.syncnet = load_syncnet(options.syncnet)

    def __call__(self, record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
        from latentsync.score import score_video

        # Scored on the segment (whole frames): the detector finds faces more reliably there than in tight crops.
        score = score_video(record["segment"], self.syncnet, options.face_detector)
        path = Path(record["path"])
        numbers = {"sync_confidence": score.confidence, "sync_offset": score.best_offset}
        if score.confidence < options.min_sync_confidence:
            raise Dropped(f"sync confidence {score.confidence:.3f} < {options.min_sync_confidence}")
        target = folder / f"{record['id']}.mp4"
        audio, offset = _audio(path), score.best_offset
        num_frames = record["frames"] - abs(offset)
        # offset > 0: the audio lags the video by `offset` frames; advance it (and drop frames it no longer covers)
        first_frame = 0 if offset >= 0 else -offset
        audio = audio[max(offset, 0) * SAMPLES_PER_FRAME :][: num_frames * SAMPLES_PER_FRAME]
        written = _write_clip(target, _frames(path, first_frame, first_frame + num_frames), audio)
        return [{**record, **numbers, "path": str(target), "frames": written, "seconds": written / FPS}]


def _load_quality_filter(spec: str) -> Callable[[Path], float]:
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise ConfigError(f"--quality-filter must be module:function, got {spec!r}.")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ConfigError(f"Cannot load the quality filter {spec!r}: {error}") from error


def step_quality(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    score = float(_load_quality_filter(options.quality_filter)(Path(record["path"])))
    if score < options.min_quality:
        raise Dropped(f"quality {score:.3f} < {options.min_quality}")
    return [{**record, "quality": score}]


def mean_flow(path: Path) -> float:
    """Mean optical-flow magnitude (pixels at 128 x 128) between frames ``MOTION_FRAME_STEP`` apart."""
    import cv2

    previous, magnitudes = None, []
    for index, frame in enumerate(_frames(path)):
        if index % MOTION_FRAME_STEP:
            continue
        gray = cv2.cvtColor(cv2.resize(frame, (MOTION_SIZE, MOTION_SIZE)), cv2.COLOR_RGB2GRAY)
        if previous is not None:
            flow = cv2.calcOpticalFlowFarneback(previous, gray, None, 0.5, 3, 15, 3, 5, 1.2, 0)
            magnitudes.append(float(np.linalg.norm(flow, axis=2).mean()))
        previous = gray
    return float(np.mean(magnitudes)) if magnitudes else 0.0


def step_motion(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    motion = mean_flow(Path(record["path"]))
    if not options.min_motion <= motion <= options.max_motion:
        raise Dropped(f"motion {motion:.2f} outside [{options.min_motion}, {options.max_motion}]")
    return [{**record, "motion": motion}]


def text_fraction(path: Path, num_samples: int = 5) -> float:
    """Share of a frame covered by text-like strokes (a heuristic: small, high-contrast, horizontally grouped
    components that stay in place across the clip), the largest over ``num_samples`` frames."""
    import cv2

    frames = list(_frames(path))
    if len(frames) < 2:
        return 0.0
    picks = [frames[i] for i in np.linspace(0, len(frames) - 1, num_samples).round().astype(int)]
    grays = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in picks]
    # burnt-in text stays where it is while the face moves: keep pixels that vary little over the samples
    still = np.std(np.stack(grays).astype(np.float32), axis=0) < 6
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
    worst = 0.0
    for gray in grays:
        gradient = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, kernel)
        _, strokes = cv2.threshold(gradient, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
        lines = cv2.morphologyEx(strokes, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (9, 1)))
        count, _, stats, _ = cv2.connectedComponentsWithStats(lines)
        mask = np.zeros_like(gray, dtype=bool)
        for x, y, w, h, area in stats[1:count]:
            if 6 <= h <= gray.shape[0] // 10 and w >= 3 * h and area >= 0.4 * w * h:
                mask[y : y + h, x : x + w] = True
        worst = max(worst, float((mask & still).mean()))
    return worst


def step_text(record: dict, folder: Path, options: PipelineOptions) -> list[dict]:
    fraction = text_fraction(Path(record["path"]))
    if fraction > options.max_text_fraction:
        raise Dropped(f"text covers {fraction:.3f} of the frame")
    return [{**record, "text_fraction": fraction}]


_STEP_FUNCTIONS = {
    "check": step_check, "resample": step_resample, "scenes": step_scenes, "align": step_align,
    "quality": step_quality, "motion": step_motion, "text": step_text,
}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Running


def _read_manifest(path: Path) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by an interruption; that input is redone
            done[entry["input"]] = entry
    return done


def run_step(name: str, index: int, records: list[dict], output: Path, options: PipelineOptions) -> StepResult:
    """Run one step over ``records``, skipping inputs its manifest already has."""
    from tqdm.auto import tqdm

    folder = output / f"{index:02d}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "manifest.jsonl"
    done = _read_manifest(manifest_path)
    function = _SyncScorer(options) if name == "sync" else _STEP_FUNCTIONS[name]
    result = StepResult(name)
    with manifest_path.open("a") as manifest:
        for record in tqdm(records, desc=name, unit="clip"):
            entry = done.get(record["path"])
            if entry is None:
                try:
                    entry = {"input": record["path"], "kept": function(record, folder, options)}
                except (Dropped, LatentSyncError, OSError, ValueError, RuntimeError) as error:
                    entry = {"input": record["path"], "dropped": f"{type(error).__name__}: {error}"}
                    logger.info("%s: dropped %s (%s)", name, record["path"], error)
                manifest.write(json.dumps(entry) + "\n")
                manifest.flush()
            if "dropped" in entry:
                result.dropped.append({**record, "reason": entry["dropped"]})
            else:
                result.kept.extend(entry["kept"])
    return result


def _inputs(input_dir: Path) -> list[dict]:
    paths = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not paths:
        raise ConfigError(f"No videos ({', '.join(VIDEO_SUFFIXES)}) under {input_dir}.")
    records = []
    for path in paths:
        relative = path.relative_to(input_dir).with_suffix("")
        name = "_".join(relative.parts)
        records.append({"id": name, "path": str(path), "source": str(path)})
    return records


def _is_validation(clip_id: str, fraction: float) -> bool:
    digest = int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def write_lists(clips: list[dict], output: Path, val_fraction: float) -> None:
    """``fileslist.txt``, ``val_fileslist.txt`` (paths relative to ``output``) and ``meta.jsonl``, atomically."""

    def write(name: str, text: str) -> None:
        with atomic_write(output / name) as temporary:
            temporary.write_text(text)

    train, val = [], []
    for clip in clips:
        relative = os.path.relpath(clip["path"], output)
        (val if _is_validation(clip["id"], val_fraction) else train).append(relative)
    write("fileslist.txt", "".join(f"{path}\n" for path in train))
    write("val_fileslist.txt", "".join(f"{path}\n" for path in val))
    meta = []
    for clip in clips:
        relative = os.path.relpath(clip["path"], output)
        meta.append(json.dumps({**clip, "path": relative, "split": "val" if relative in val else "train"}) + "\n")
    write("meta.jsonl", "".join(meta))


def run_pipeline(input_dir: str | os.PathLike, output: str | os.PathLike, options: PipelineOptions) -> PipelineSummary:
    """Run the selected steps, write the lists (and the feature cache) and return the summary."""
    input_dir, output = Path(input_dir), Path(output)
    if not input_dir.is_dir():
        raise ConfigError(f"Input folder not found: {input_dir}.")
    if options.min_seconds > options.max_seconds:
        raise ConfigError("--min-seconds must not exceed --max-seconds.")
    output.mkdir(parents=True, exist_ok=True)
    records, results = _inputs(input_dir), []
    for name in options.selected_steps():
        result = run_step(name, STEP_NAMES.index(name), records, output, options)
        results.append(result)
        records = result.kept
    if options.whisper:
        from .clips import AudioFeatureCache

        cache = AudioFeatureCache(output / "cache", options.whisper)
        for record in records:
            cache.whisper_features(Path(record["path"]))
            cache.mel(Path(record["path"]))
    write_lists(records, output, options.val_fraction)
    summary = PipelineSummary(results, records, output)
    logger.info("Data pipeline done; %.3f hours of training video.", sum(c.get("seconds", 0) for c in records) / 3600)
    return summary

