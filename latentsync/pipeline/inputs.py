"""The files of a run, checked before any model work (`check_inputs`)."""

from __future__ import annotations

import os
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from ..errors import MediaError
from ..media.audio import AudioInfo, decode_audio, probe_audio
from ..media.video import VideoInfo, probe_video
from ..media.writer import CONTAINER_SUFFIXES


@dataclass(frozen=True)
class LipSyncInputs:
    """Checked inputs of a run (`check_inputs`)."""

    video: VideoInfo
    audio_path: Path
    audio: AudioInfo
    output_path: Path


def check_inputs(
    video_path: os.PathLike | str, audio_path: os.PathLike | str | None, output_path: os.PathLike | str
) -> LipSyncInputs:
    """Check the files of a run before any model work: the video decodes, the audio (the video's own when
    ``audio_path`` is None) has samples, and the output can be written (its folder exists, or can be created: the
    run creates it, `latentsync.files.output_folder`, and removes it again if the run fails).

    Raises:
        MediaError: saying which file is wrong and what to do.
    """
    video = probe_video(video_path)
    audio_path = Path(audio_path) if audio_path is not None else video.path
    try:
        audio = probe_audio(audio_path)
    except MediaError as error:
        if audio_path != video.path:
            raise
        raise MediaError(f"{video.path} has no audio track; give the speech with an audio file (--audio).") from error
    with closing(decode_audio(audio_path)) as chunks:
        if not any(seconds > 0 for seconds, _ in chunks):
            raise MediaError(f"{audio_path} has an audio track of zero length. Give an audio file with speech in it.")

    output_path = Path(output_path)
    if output_path.suffix.lower() not in CONTAINER_SUFFIXES:
        raise MediaError(f"Cannot write {output_path.name}: the output must be one of {', '.join(CONTAINER_SUFFIXES)}.")
    folder = output_path.parent
    existing = next(path for path in (folder, *folder.parents) if path.exists())  # created by the run if not folder
    if not existing.is_dir():
        raise MediaError(f"Cannot create the output folder {folder}: {existing} is a file; choose another output path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MediaError(f"The output folder {existing} is not writable; choose another output path.")
    if output_path.is_dir():
        raise MediaError(f"The output {output_path} is a folder; give a file name such as {output_path / 'out.mp4'}.")
    if output_path.exists() and any(output_path.samefile(path) for path in (video.path, audio_path)):
        raise MediaError(f"The output {output_path} is one of the inputs; choose another output name.")
    return LipSyncInputs(video, audio_path, audio, output_path)
