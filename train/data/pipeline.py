"""The data pipeline of ``python -m train data prepare``: raw talking-head videos -> aligned training clips.

The steps, in order, each over all its inputs before the next starts (per-clip work: `train.data.steps`):

========  ===========================================================================================================
step      what it does
========  ===========================================================================================================
check     drop files that cannot be decoded, have no video or no audio track
resample  re-encode at 25 fps (frames by timestamp) with 16 kHz mono audio; ``--max-side`` shrinks large frames
scenes    find the scene cuts (PySceneDetect ContentDetector)
faces     track the face through each scene; its three alignment points per frame (the face-size rule of the
          detector is judged in the source's pixels, so ``--max-side`` does not lose faces)
segments  cut the face runs of each scene (a miss longer than ``--max-face-gap`` frames ends a run) into balanced
          pieces of ``--min-seconds`` .. ``--max-seconds``; only scenes and runs shorter than the minimum are dropped
align     warp every frame to the aligned R x R face of inference (`FaceAligner`)
sync      with ``--syncnet``: StableSyncNet confidence and offset; drop clips under ``--min-sync-confidence`` or
          beyond ``--max-sync-offset``, shift the audio of the others by their offset
quality   drop blurred (``--min-sharpness``), badly exposed (``--min/max-brightness``) and small
          (``--min-face-size``) faces; built in, no weights
motion    optional: drop nearly still or shaking clips (OpenCV Farneback optical flow)
text      optional: drop clips with text over more than 1 % of the aligned frame (PaddleOCR's models, from the
          ``rapidocr_onnxruntime`` package)
========  ===========================================================================================================

**Parallel and resumable.** Each step runs its inputs through `latentsync.parallel.run_items`: in this process
(``workers=1``), in local worker processes (``workers=N``) or on a Ray cluster (``ray``). Every input of a step is
an item keyed by its id and fingerprinted by the step's options and its input record (which carries the fingerprint
of the step before): a re-run skips what is done with the same options, and changing an option redoes that step
and the steps after it, nothing else. The per-step records live in ``intermediate/NN_step/``; a killed run resumes
from them. A clip that fails a step (an exception) is reported and retried on the next run; the others go on.

**Output.** ``clips/`` holds the training clips (25 fps, 16 kHz, ``R x R``), ``fileslist.txt`` /
``val_fileslist.txt`` list them (the clips a deterministic hash puts in the validation share), ``meta.jsonl`` has
their numbers, ``cache/`` the audio features with ``--whisper``. ``intermediate/`` is removed at the end unless
``keep_intermediate`` (a later run then starts over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from latentsync.errors import ConfigError
from latentsync.files import atomic_write
from latentsync.media.video import VIDEO_SUFFIXES

from .steps import StepTask, run_step_task

logger = logging.getLogger("train")

STEP_NAMES = ("check", "resample", "scenes", "faces", "segments", "align", "sync", "quality", "motion", "text")
OPTIONAL_STEPS = ("motion", "text")
# The options that decide each step's result: its fingerprint.
STEP_OPTIONS = {
    "check": (), "resample": ("max_side",), "scenes": ("scene_threshold",),
    "faces": ("face_detector", "face_model_dir", "max_face_gap"),
    "segments": ("min_seconds", "max_seconds"), "align": ("resolution",),
    "sync": ("syncnet", "min_sync_confidence", "max_sync_offset"),
    "quality": ("min_face_size", "min_sharpness", "min_brightness", "max_brightness"),
    "motion": ("min_motion", "max_motion"), "text": ("max_text_fraction",),
}  # fmt: skip
# Cheap steps run in this process; starting workers would cost more than they save.
DRIVER_STEPS = ("check", "segments")
# Steps whose models use a GPU (a Ray task asks for `gpus_per_clip` of one).
GPU_STEPS = ("faces", "align", "sync")

# Sync filter defaults. StableSyncNet's confidence is median - min of the cosine distance over +-15 frame offsets,
# on a 0-1 scale (see `latentsync.score`); the reference's 3 is on syncnet_v2's LSE-C scale and does not carry over.
# Measured with the tiny SyncNet that learned sync (tests/assets, docs/syncnet.md) on 6-s held-out clips: 0.25 in
# sync, 0.08-0.10 with another voice; random weights give 0.007-0.017, so an untrained SyncNet keeps nothing.
DEFAULT_MIN_SYNC_CONFIDENCE = 0.15
DEFAULT_MAX_SYNC_OFFSET = 6


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class PipelineOptions:
    """Settings of `run_pipeline`; the command line's options of the same names (``python -m train data prepare
    --help``) document each."""

    resolution: int = 256
    max_side: int = 0
    scene_threshold: float = 27.0
    face_detector: Optional[str] = None
    face_model_dir: Optional[str] = None
    max_face_gap: int = 5
    min_seconds: float = 5.0
    max_seconds: float = 10.0
    syncnet: Optional[str] = None
    min_sync_confidence: float = DEFAULT_MIN_SYNC_CONFIDENCE
    max_sync_offset: int = DEFAULT_MAX_SYNC_OFFSET
    min_face_size: float = 64.0
    min_sharpness: float = 6.0
    min_brightness: float = 40.0
    max_brightness: float = 220.0
    min_motion: float = 0.3
    max_motion: float = 8.0
    max_text_fraction: float = 0.01
    whisper: Optional[str] = None
    steps: Optional[list[str]] = None
    val_fraction: float = 0.05
    workers: int = field(default_factory=default_workers)
    ray: Optional[str] = None
    gpus_per_clip: float = 0.0
    keep_intermediate: bool = False

    @classmethod
    def from_args(cls, args) -> "PipelineOptions":
        values = {name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)}
        if values.get("steps"):
            values["steps"] = [step.strip() for step in values["steps"].split(",") if step.strip()]
        return cls(**values)

    def check(self) -> None:
        """Raise `ConfigError` on settings that cannot work, before any clip is touched."""
        if not 0 < self.min_seconds <= self.max_seconds:
            raise ConfigError(
                f"Need 0 < --min-seconds <= --max-seconds, got {self.min_seconds} and {self.max_seconds}."
            )
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {self.workers}.")
        if self.max_face_gap < 0 or self.max_sync_offset < 0:
            raise ConfigError("--max-face-gap and --max-sync-offset must be >= 0.")
        if self.syncnet and not Path(self.syncnet).is_file():
            raise ConfigError(f"SyncNet checkpoint not found: {self.syncnet}.")
        if "text" in self.selected_steps():
            from .filters import text_reader_class

            text_reader_class()

    def selected_steps(self) -> list[str]:
        """The steps to run, in pipeline order."""
        if self.steps is not None:
            unknown = [step for step in self.steps if step not in STEP_NAMES]
            if unknown:
                raise ConfigError(f"Unknown pipeline steps {unknown}; choose among {', '.join(STEP_NAMES)}.")
            wanted = set(self.steps)
        else:
            wanted = set(STEP_NAMES) - set(OPTIONAL_STEPS) - ({"sync"} if not self.syncnet else set())
        if "sync" in wanted and not self.syncnet:
            raise ConfigError("The sync step needs --syncnet (a StableSyncNet checkpoint).")
        return [step for step in STEP_NAMES if step in wanted]

    def step_settings(self, name: str) -> dict:
        """The options that decide step ``name``'s result (with the SyncNet file's identity for ``sync``)."""
        settings = {option: getattr(self, option) for option in STEP_OPTIONS[name]}
        if name == "sync":
            from .clips import file_fingerprint

            settings["syncnet"] = file_fingerprint(Path(self.syncnet))
        return settings


@dataclass
class StepResult:
    """One step's outcome over all its inputs."""

    name: str
    inputs: int = 0
    kept: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    done: int = 0
    skipped: int = 0
    wall_seconds: float = 0.0


@dataclass
class PipelineSummary:
    steps: list[StepResult]
    clips: list[dict]
    output: Path

    @property
    def hours(self) -> float:
        return sum(clip["seconds"] for clip in self.clips) / 3600

    def table(self) -> str:
        """Per step: inputs, kept, dropped, failed, redone (not skipped), hours kept and wall time; then hours kept and
        dropped per reason."""
        lines = [f"{'step':9s} {'in':>6s} {'kept':>6s} {'dropped':>8s} {'failed':>7s} {'redone':>7s} "
                 f"{'hours kept':>11s} {'wall s':>7s}"]  # fmt: skip
        for step in self.steps:
            hours = sum(record["seconds"] for record in step.kept) / 3600
            lines.append(f"{step.name:9s} {step.inputs:6d} {len(step.kept):6d} {len(step.dropped):8d} "
                         f"{len(step.failed):7d} {step.done:7d} {hours:11.4f} {step.wall_seconds:7.1f}")  # fmt: skip
        reasons: dict[str, list[float]] = {}
        for step in self.steps:
            for record in step.dropped:
                count_seconds = reasons.setdefault(f"{step.name}: {record['reason']}", [0, 0.0])
                count_seconds[0] += 1
                count_seconds[1] += record["seconds"]
        lines += ["", f"{'':44s} {'pieces':>6s} {'hours':>8s}", f"{'kept':44s} {len(self.clips):6d} {self.hours:8.4f}"]
        lines += [f"{'dropped at ' + reason:44s} {count:6d} {seconds / 3600:8.4f}"
                  for reason, (count, seconds) in sorted(reasons.items())]  # fmt: skip
        for step in self.steps:
            lines += [f"failed at {step.name}: {record['id']}: {record['error']}" for record in step.failed]
        if any(step.failed for step in self.steps):
            lines.append("(failed clips are retried on the next run)")
        lines.append(f"{len(self.clips)} training clips in {self.output / 'clips'} (fileslist.txt, meta.jsonl)")
        return "\n".join(lines)


def _inputs(input_dir: Path) -> list[dict]:
    """One record per video under ``input_dir``: a unique id from its relative path, and the file's identity."""
    paths = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not paths:
        raise ConfigError(f"No videos ({', '.join(VIDEO_SUFFIXES)}) under {input_dir}.")
    records: dict[str, dict] = {}
    for path in paths:
        clip_id = "_".join(path.relative_to(input_dir).with_suffix("").parts)
        if clip_id in records:
            raise ConfigError(f"{path} and {records[clip_id]['path']} would both be called {clip_id}; rename one.")
        stat = path.stat()
        records[clip_id] = {"id": clip_id, "path": str(path), "source": str(path), "bytes": stat.st_size,
                            "mtime_ns": stat.st_mtime_ns}  # fmt: skip
    return list(records.values())


def run_step(name: str, index: int, records: list[dict], work_dir: Path, options: PipelineOptions) -> StepResult:
    """Run step ``name`` over ``records`` through the engine; skip what its record already has with the same
    fingerprint."""
    from latentsync.parallel import Item, RunRecord, fingerprint, run_items

    folder = work_dir / f"{index:02d}_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    settings = options.step_settings(name)
    items = []
    for record in records:
        item_fingerprint = fingerprint(name, settings, record)
        task = StepTask(name, record, str(folder), options)
        items.append(Item(record["id"], task, item_fingerprint, weight=max(record.get("seconds", 1.0), 0.1)))
    in_driver = name in DRIVER_STEPS
    start = time.perf_counter()
    results = run_items(
        run_step_task, items,
        workers=1 if in_driver else options.workers, ray_address=None if in_driver else options.ray,
        gpus_per_item=options.gpus_per_clip if name in GPU_STEPS else 0.0,
        record=RunRecord(folder / "manifest.jsonl"), label=name, weight_unit="s of video",
    )  # fmt: skip
    step = StepResult(name, inputs=len(records), wall_seconds=time.perf_counter() - start)
    for item, result in zip(items, results):
        if result.status == "failed":
            seconds = item.payload.record.get("seconds", 0.0)
            step.failed.append({"id": item.key, "error": result.error, "seconds": seconds})
            logger.warning("%s failed on %s: %s", name, item.key, result.error)
            continue
        step.done += result.status == "done"
        step.skipped += result.status == "skipped"
        step.kept += [{**kept, "fingerprint": item.fingerprint} for kept in result.record["kept"]]
        step.dropped += result.record["dropped"]
    return step


def _is_validation(clip_id: str, fraction: float) -> bool:
    digest = int(hashlib.sha1(clip_id.encode()).hexdigest()[:8], 16)
    return digest / 0xFFFFFFFF < fraction


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as temporary:
        temporary.write_text(text)


def collect_clips(records: list[dict], output: Path) -> list[dict]:
    """Copy the final clips into ``output/clips/<id>.mp4`` and remove clips there that this run did not keep;
    returns the records with their new paths."""
    clips_dir = output / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    collected = []
    for record in records:
        target = clips_dir / f"{record['id']}.mp4"
        with atomic_write(target) as temporary:
            shutil.copyfile(record["path"], temporary)
        collected.append({**record, "path": str(target)})
    wanted = {Path(record["path"]).name for record in collected}
    for stale in clips_dir.glob("*.mp4"):
        if stale.name not in wanted:
            stale.unlink()
    return collected


def write_lists(clips: list[dict], output: Path, val_fraction: float) -> None:
    """``fileslist.txt``, ``val_fileslist.txt`` (paths relative to ``output``) and ``meta.jsonl``, atomically."""
    train, val, meta = [], [], []
    for clip in clips:
        relative = os.path.relpath(clip["path"], output)
        split = "val" if _is_validation(clip["id"], val_fraction) else "train"
        (val if split == "val" else train).append(relative)
        entry = {key: value for key, value in clip.items() if key != "fingerprint"}
        meta.append(json.dumps({**entry, "path": relative, "split": split}) + "\n")
    _write_text(output / "fileslist.txt", "".join(f"{path}\n" for path in train))
    _write_text(output / "val_fileslist.txt", "".join(f"{path}\n" for path in val))
    _write_text(output / "meta.jsonl", "".join(meta))


def cache_features(clips: list[dict], output: Path, options: PipelineOptions) -> None:
    """Compute the Whisper features and SyncNet mels the trainers read (``output/cache``), through the engine."""
    from latentsync.parallel import Item, run_items

    from .steps import cache_audio_features

    items = [Item(clip["id"], (clip["path"], str(output / "cache"), options.whisper)) for clip in clips]
    results = run_items(cache_audio_features, items, workers=options.workers, ray_address=options.ray, label="features")
    for item, result in zip(items, results):
        if result.status == "failed":
            logger.warning(
                "No audio features for %s (%s); training computes them on first use.", item.key, result.error
            )


def run_pipeline(input_dir: str | os.PathLike, output: str | os.PathLike, options: PipelineOptions) -> PipelineSummary:
    """Run the selected steps, collect the clips, write the lists (and the feature cache); return the summary."""
    from latentsync.parallel import ray_cluster, worker_pool

    input_dir, output = Path(input_dir), Path(output)
    if not input_dir.is_dir():
        raise ConfigError(f"Input folder not found: {input_dir}.")
    options.check()
    output.mkdir(parents=True, exist_ok=True)
    work_dir = output / "intermediate"
    logger.info("Data pipeline: %s", json.dumps(asdict(options)))
    records, results = _inputs(input_dir), []
    # One set of workers (or one Ray connection) for every step: their start-up and model loading are paid once.
    with ray_cluster(options.ray, options.workers), worker_pool(1 if options.ray else options.workers):
        for name in options.selected_steps():
            result = run_step(name, STEP_NAMES.index(name), records, work_dir, options)
            results.append(result)
            records = result.kept
        clips = collect_clips(records, output)
        if options.whisper and clips:
            cache_features(clips, output, options)
    write_lists(clips, output, options.val_fraction)
    if not options.keep_intermediate and not any(step.failed for step in results):
        shutil.rmtree(work_dir)
    summary = PipelineSummary(results, clips, output)
    logger.info("Data pipeline done: %d clips, %.3f hours of training video.", len(clips), summary.hours)
    return summary
