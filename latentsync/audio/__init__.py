"""Audio features of LatentSync: Whisper hidden states for the UNet, and the mel spectrogram for SyncNet.

    extractor = load_whisper("checkpoints/whisper/tiny.pt")
    audio_feat = extractor.encode(waveform_16k)            # (n, 5, 384), 50 rows per second
    chunks = feature_chunks(audio_feat, fps=25)            # (frames, 50, 384), one per video frame
    mel = syncnet_melspectrogram(waveform_16k)             # (80, T), 80 columns per second
    clip_mel = crop_mel_window(mel, start_frame=10)        # (1, 80, 52) for 16 frames
"""

from .chunks import (
    audio_window,
    centre_rows,
    chunk_feature_indices,
    default_chunk_count,
    feature_chunks,
    feature_window,
)
from .mel import as_waveform, mel_filterbank, stft
from .syncnet_mel import AudioHParams, crop_mel_window, mel_window_length, syncnet_melspectrogram
from .whisper import (
    FEATURES_PER_SECOND,
    WhisperAudioEncoder,
    WhisperFeatureExtractor,
    load_whisper,
    random_tiny_whisper_state,
    save_whisper_checkpoint,
)

__all__ = [
    "AudioHParams",
    "FEATURES_PER_SECOND",
    "WhisperAudioEncoder",
    "WhisperFeatureExtractor",
    "as_waveform",
    "audio_window",
    "centre_rows",
    "chunk_feature_indices",
    "crop_mel_window",
    "default_chunk_count",
    "feature_chunks",
    "feature_window",
    "load_whisper",
    "mel_filterbank",
    "mel_window_length",
    "random_tiny_whisper_state",
    "save_whisper_checkpoint",
    "stft",
    "syncnet_melspectrogram",
]
