"""Batch lip sync: many (video, audio, output) rows, run on the engine `latentsync.parallel` — in this process, in
worker processes (one per GPU) or on a Ray cluster — resumable, one failing row never stopping the others.

Rows come from a jobs file or from two folders::

    rows = read_jobs("jobs.csv")                       # columns video, audio, output, and any lip-sync setting
    rows = pair_folders("videos/", "speech/", "out/")  # talk.mp4 + talk.wav -> out/talk.mp4
    results = run_batch(rows, BatchOptions(sources=ModelSources("checkpoints"), workers=2))

A jobs file is CSV (a header line, then one row per line) or JSON lines (one object per line). ``video`` and
``output`` are required; ``audio`` may be left out (the video's own sound is used); every other column is a setting
of `LipSyncSettings` (``seed``, ``num_inference_steps`` ...), named as the field or as its ``lipsync`` option (``steps``,
``guidance``; ``-`` and ``_`` alike), read and checked by the same `SettingSpec` as ``python -m latentsync lipsync``;
an empty cell keeps the batch's setting. Relative paths are relative to the jobs file. The video may be a still image: the
picture is held for the length of the speech (a talking photo).

Resume. Every finished row is appended to a run record (`RECORD_NAME`, beside the outputs) with a fingerprint of
its inputs (paths, sizes, modification times), its settings and the model files. A re-run skips a row when the
record has it done with the same fingerprint and its output is still there, as written; a changed setting or input,
or a missing output, redoes the row; failed rows are always tried again. Outputs appear only when complete (the
writer renames a temporary file), so a killed run leaves no half-written output, only hidden temporary files, which
the next run removes. One batch at a time writes into a folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..conventions import MODEL_FPS
from ..errors import ConfigError, LatentSyncError
from ..files import leftover_temporaries
from ..media.audio import AUDIO_SUFFIXES, probe_audio
from ..media.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from ..media.writer import PARTIAL_TAG
from ..parallel import Item, ItemResult, RunRecord, fingerprint, run_items, worker_cache
from .loading import ModelSources, load_pipeline
from .models import find_model_files
from .settings import DEFAULT_SETTINGS, SETTING_SPECS, LipSyncSettings
from .speed import EXACT, SpeedSettings

logger = logging.getLogger(__name__)

# The run record, in the folder that holds all the outputs.
RECORD_NAME = "latentsync-batch.jsonl"
# Columns of a jobs file that are files, not settings.
FILE_COLUMNS = ("video", "audio", "output")
# Suffix of the outputs `pair_folders` names.
PAIRED_OUTPUT_SUFFIX = ".mp4"
# Weight (expected output frames) of a row whose audio cannot be probed, for the progress estimate only.
UNKNOWN_ROW_FRAMES = 25


@dataclass(frozen=True)
class BatchRow:
    """One row: lip-sync ``video`` (or a still image) to ``audio`` (``None``: the video's own sound) into ``output``.

    Attributes:
        name: where the row comes from, for messages (``"jobs.csv line 3"``, ``"pair 'talk'"``).
        settings: the row's own settings, over the batch's (`LipSyncSettings` field names, checked values).
    """

    name: str
    video: Path
    audio: Path | None
    output: Path
    settings: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# Rows


def _setting_columns() -> dict[str, str]:
    """Column name -> setting: each field of `LipSyncSettings` by its name or by its ``lipsync`` option
    (``num_inference_steps`` or ``steps``), ``-`` and ``_`` alike."""
    columns = {}
    for name, spec in SETTING_SPECS.items():
        columns[name] = columns[spec.option(name).removeprefix("--").replace("-", "_")] = name
    return columns


def _row_settings(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Settings of one jobs-file row, each checked against its `SettingSpec`: text is parsed as on the command line,
    JSON numbers, booleans and null are taken as they are."""
    columns = _setting_columns()
    settings = {}
    for column, value in values.items():
        setting = columns.get(column.strip().lower().replace("-", "_"))
        if setting is None:
            allowed = ", ".join((*FILE_COLUMNS, *SETTING_SPECS))
            raise ConfigError(f"{name}: unknown column {column!r}; the columns are {allowed}.")
        spec = SETTING_SPECS[setting]
        try:
            if isinstance(value, str):
                settings[setting] = spec.parse(setting, value)
            else:
                spec.check(setting, value)
                settings[setting] = value
        except ConfigError as error:
            raise ConfigError(f"{name}: {error}") from None
    return settings


def _row(name: str, values: dict[str, Any], folder: Path) -> BatchRow:
    """A `BatchRow` from one jobs-file record; empty cells are left out; relative paths start at ``folder``."""
    values = {key: value for key, value in values.items() if value is not None and value != ""}
    files = {column: values.pop(column, None) for column in FILE_COLUMNS}
    for column in ("video", "output"):
        if files[column] is None:
            raise ConfigError(f"{name}: the {column!r} column is empty; every row needs a video and an output.")
    for column, value in files.items():
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name}: {column!r} must be a path, got {value!r}.")
    video, audio, output = (None if value is None else folder / value for value in files.values())
    return BatchRow(name, video, audio, output, _row_settings(name, values))


def read_jobs(path: str | os.PathLike) -> list[BatchRow]:
    """The rows of a jobs file: ``.csv`` (a header line naming the columns) or ``.jsonl`` (one JSON object a line).

    Raises:
        ConfigError: an unreadable file, an unknown column or setting, a bad value or a missing video or output,
            naming the line.
    """
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ConfigError(f"{path}: a jobs file must be .csv or .jsonl (JSON lines), got {path.suffix or 'no suffix'}.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read the jobs file {path} ({error}); give a UTF-8 .csv or .jsonl file.") from error
    rows = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        for record in reader:
            name = f"{path.name} line {reader.line_num}"
            if None in record:
                raise ConfigError(f"{name}: more cells than the header has columns ({', '.join(reader.fieldnames)}).")
            rows.append(_row(name, record, path.parent))
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name = f"{path.name} line {number}"
            try:
                record = json.loads(line)
            except ValueError as error:
                raise ConfigError(f"{name} is not JSON ({error}); write one object per line.") from None
            if not isinstance(record, dict):
                raise ConfigError(f"{name}: each line must be a JSON object such as {{\"video\": ..., \"output\": ...}}.")
            rows.append(_row(name, record, path.parent))
    if not rows:
        raise ConfigError(f"The jobs file {path} has no rows.")
    return rows


def _files_by_stem(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise ConfigError(f"The {what} folder {folder} does not exist.")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in files:
                raise ConfigError(f"{files[path.stem].name} and {path.name} in {folder} have the same name; "
                                  "pairing is by name, so rename one.")  # fmt: skip
            files[path.stem] = path
    return files


def pair_folders(
    videos: str | os.PathLike, audios: str | os.PathLike, output_dir: str | os.PathLike
) -> list[BatchRow]:
    """Rows pairing each video or still image in ``videos`` with the audio file (`AUDIO_SUFFIXES`) of the same name
    without suffix in ``audios`` (which may be the same folder), written to ``output_dir/NAME.mp4``. Files without
    a partner are listed in a warning.

    Raises:
        ConfigError: a missing folder, two files of the same name in one folder, or no pair at all.
    """
    videos, audios, output_dir = Path(videos), Path(audios), Path(output_dir)
    video_files = _files_by_stem(videos, VIDEO_SUFFIXES + IMAGE_SUFFIXES, "videos")
    audio_files = _files_by_stem(audios, AUDIO_SUFFIXES, "audios")
    unpaired = sorted(video_files.keys() ^ audio_files.keys())
    if unpaired:
        logger.warning("no partner of the same name, left out: %s", ", ".join(unpaired))
    stems = sorted(video_files.keys() & audio_files.keys())
    if not stems:
        raise ConfigError(
            f"No video in {videos} has an audio file of the same name in {audios} (e.g. talk.mp4 and talk.wav)."
        )
    return [
        BatchRow(f"pair {stem!r}", video_files[stem], audio_files[stem], output_dir / f"{stem}{PAIRED_OUTPUT_SUFFIX}")
        for stem in stems
    ]


# ----------------------------------------------------------------------------------------------------------
# One row, in a worker


@dataclass(frozen=True)
class RowJob:
    """Everything a worker needs for one row (the payload of its `Item`)."""

    sources: ModelSources
    settings: LipSyncSettings
    speed: SpeedSettings
    video: str
    audio: str | None
    output: str


def lipsync_row(job: RowJob, report: Callable[[float, float], None]) -> dict:
    """Lip-sync one row, with the models this worker already loaded (`latentsync.parallel.worker_cache`).

    Returns:
        the row's record: ``frames`` and ``frames_without_face`` written, ``bytes`` of the output.
    """

    def progress(stage: str, done: int, total: int) -> None:
        if stage != "faces":  # the lip sync's own total: most of the row's work (not the pass over every face)
            report(done, total)

    pipeline = load_pipeline(job.sources, job.settings, job.speed, cache=worker_cache)
    result = pipeline.run(job.video, job.audio, job.output, progress=progress)
    return {
        "frames": result.num_frames,
        "frames_without_face": result.frames_without_face,
        "bytes": Path(job.output).stat().st_size,
    }


# ----------------------------------------------------------------------------------------------------------
# The batch


class BatchRecord(RunRecord):
    """The run record of a batch: a finished row counts only while its output is still there, as it was written."""

    def lookup(self, key: str, fingerprint: str) -> dict | None:
        old = super().lookup(key, fingerprint)
        output = Path(key)
        if old is None or not output.is_file() or output.stat().st_size != old.get("bytes"):
            return None
        return old


@dataclass(frozen=True)
class BatchOptions:
    """How to run a batch.

    Attributes:
        sources: where the models are.
        settings: the settings of every row, under each row's own.
        speed: the speed switches of every row.
        workers: worker processes (each loads the models once); with ``ray_address``, the CPUs of a local cluster.
        ray_address: ``"local"``, ``"auto"`` or a Ray cluster address; ``None`` runs here.
        cpus_per_row / gpus_per_row: the resources of one Ray task (a GPU fraction shares a GPU).
        record: the run record; by default `RECORD_NAME` in the folder that holds all the outputs.
    """

    sources: ModelSources
    settings: LipSyncSettings = DEFAULT_SETTINGS
    speed: SpeedSettings = EXACT
    workers: int = 1
    ray_address: str | None = None
    cpus_per_row: float = 1.0
    gpus_per_row: float = 0.0
    record: Path | None = None


def _file_identity(path: Path | None) -> list:
    """A file's path, size and modification time (a changed file redoes its rows); a missing one is just its path."""
    if path is None:
        return [None]
    try:
        status = path.stat()
    except OSError:
        return [str(path)]
    return [str(path.resolve()), status.st_size, status.st_mtime_ns]


def _expected_frames(row: BatchRow) -> float:
    """Model frames of the row's audio (its expected cost for the ETA); a guess when it cannot be probed."""
    try:
        return max(1.0, probe_audio(row.audio or row.video).duration * float(MODEL_FPS))
    except LatentSyncError:
        return UNKNOWN_ROW_FRAMES


def _model_identity(sources: ModelSources) -> list:
    """Identities of every model file a row may use (a changed model redoes the rows).

    Raises:
        CheckpointError: a model is missing (found before any row runs).
    """
    files = find_model_files(sources.models_dir, sources.unet, sources.whisper, sources.vae)
    others = (sources.syncnet_file(), sources.detector_models and Path(sources.detector_models))
    identity = [_file_identity(path) for path in (*dataclasses.astuple(files), *others)]
    return identity + [[_file_identity(Path(lora)), strength] for lora, strength in sources.loras]


def plan_items(rows: Iterable[BatchRow], options: BatchOptions) -> list[Item]:
    """One engine `Item` per row: key the output path, payload a `RowJob`, fingerprint of everything that makes the
    output, weight the expected frames.

    Raises:
        ConfigError: two rows with one output, or a row whose merged settings are out of bounds.
        CheckpointError: a model file is missing (found before any row runs).
    """
    model_identity = _model_identity(options.sources)
    items, names = [], {}
    for row in rows:
        key = str(row.output.absolute())
        if key in names:
            raise ConfigError(f"{names[key]} and {row.name} both write {row.output}; give each row its own output.")
        names[key] = row.name
        try:
            settings = options.settings.replace(**row.settings)
        except ConfigError as error:
            raise ConfigError(f"{row.name}: {error}") from None
        job = RowJob(options.sources, settings, options.speed, str(row.video), row.audio and str(row.audio), key)
        made_of = (_file_identity(row.video), _file_identity(row.audio), dataclasses.asdict(settings),
                   dataclasses.asdict(options.speed), model_identity)  # fmt: skip
        items.append(Item(key, job, fingerprint(*made_of), _expected_frames(row)))
    return items


def record_path(rows: list[BatchRow]) -> Path:
    """`RECORD_NAME` in the deepest folder that holds every output."""
    return Path(os.path.commonpath([row.output.absolute().parent for row in rows])) / RECORD_NAME


def run_batch(
    rows: list[BatchRow],
    options: BatchOptions,
    on_result: Callable[[ItemResult], None] | None = None,
    show_progress: bool = True,
) -> list[ItemResult]:
    """Lip-sync every row (see the module docstring); returns one `ItemResult` per row, in order: ``"done"``,
    ``"skipped"`` (done by an earlier run) or ``"failed"`` with the error.

    Raises:
        ConfigError / CheckpointError: see `plan_items`; nothing runs then.
    """
    items = plan_items(rows, options)
    record = BatchRecord(options.record or record_path(rows))
    logger.info("run record: %s", record.path)
    for row in rows:  # a killed run's unfinished outputs
        for leftover in leftover_temporaries(row.output, PARTIAL_TAG):
            logger.info("removing %s, left by an unfinished run", leftover)
            leftover.unlink(missing_ok=True)
    return run_items(
        lipsync_row,
        items,
        workers=options.workers,
        ray_address=options.ray_address,
        cpus_per_item=options.cpus_per_row,
        gpus_per_item=options.gpus_per_row,
        record=record,
        on_result=on_result,
        label="rows",
        weight_unit="frames",
        show_progress=show_progress,
    )


def batch_report(rows: list[BatchRow], results: list[ItemResult]) -> str:
    """The closing report: one line per row (status, seconds of work, frames and output, or the error), then the
    counts and the frames written."""
    lines = []
    for row, result in zip(rows, results, strict=True):
        seconds = "done earlier" if result.status == "skipped" else f"{result.seconds:.1f} s"
        if result.status == "failed":
            lines.append(f"failed   {row.name} ({seconds}): {result.error}")
        else:
            lines.append(f"{result.status:<8} {row.name}: {row.output} ({result.record['frames']} frames, {seconds})")
    counts = {status: sum(result.status == status for result in results) for status in ("done", "skipped", "failed")}
    written = sum(result.record["frames"] for result in results if result.status == "done")
    lines.append(", ".join(f"{count} {status}" for status, count in counts.items()) + f"; {written} frames written")
    return "\n".join(lines)
