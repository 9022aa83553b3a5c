"""Media IO: probing and streaming video frames, loading audio, fitting video to audio, writing the result."""

from .audio import AudioInfo, decode_audio, load_audio, probe_audio
from .timeline import LONG_AUDIO_POLICIES, SHORT_AUDIO_POLICIES, Timeline, plan_timeline, samples_for_frames
from .video import SourceFrameCursor, VideoInfo, VideoReader, probe_video
from .writer import AudioArray, AudioFile, AudioSource, VideoWriter

__all__ = [
    "AudioInfo",
    "decode_audio",
    "load_audio",
    "probe_audio",
    "LONG_AUDIO_POLICIES",
    "SHORT_AUDIO_POLICIES",
    "Timeline",
    "plan_timeline",
    "samples_for_frames",
    "SourceFrameCursor",
    "VideoInfo",
    "VideoReader",
    "probe_video",
    "AudioArray",
    "AudioFile",
    "AudioSource",
    "VideoWriter",
]
