"""``python -m train data make-tiny DIR``: everything the tiny training configs use, in a few seconds on a CPU.

    DIR/models/        latentsync.tiny models (UNet, Whisper, VAE) + a SyncNet for the tiny configs' windows
    DIR/clips/         synthetic aligned clips (128 x 128, 25 fps, 16 kHz audio) and train.txt

Then ``python -m train stage2 --config tiny_stage2`` (from the folder that holds DIR=tiny) trains for two steps.
The weights are random and the clips are patterns: this proves the mechanics, never quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from latentsync.conventions import MODEL_FPS, MODEL_SAMPLE_RATE

TINY_RESOLUTION = 128


def synthetic_clip(path: Path, num_frames: int, seed: int, size: int = TINY_RESOLUTION) -> Path:
    """A face-sized clip of smooth moving blobs with a speech-like tone track of the same length."""
    from latentsync.media import AudioArray, VideoWriter

    generator = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size] / size
    centres = generator.uniform(0.2, 0.8, size=(3, 2))
    seconds = num_frames / float(MODEL_FPS)
    time = np.arange(int(seconds * MODEL_SAMPLE_RATE)) / MODEL_SAMPLE_RATE
    pitch = 120 + 40 * np.sin(2 * np.pi * 3 * time + seed)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * time)
    waveform = 0.3 * envelope * np.sin(2 * np.pi * np.cumsum(pitch) / MODEL_SAMPLE_RATE)
    with VideoWriter(path, MODEL_FPS, size, size, audio=AudioArray(waveform, MODEL_SAMPLE_RATE)) as writer:
        for index in range(num_frames):
            phase = 2 * np.pi * index / 25
            frame = np.zeros((size, size, 3))
            for channel, (cy, cx) in enumerate(centres):
                cy = cy + 0.1 * np.sin(phase + channel)
                frame[..., channel] = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 0.05)
            writer.write_frame((frame * 255).astype(np.uint8))
    return path


def make_tiny_assets(folder: str | Path, num_clips: int = 2, num_frames: int = 50, seed: int = 0) -> dict[str, Path]:
    """Write the tiny models and clips into ``folder``; returns their paths by role."""
    from latentsync.models.syncnet import StableSyncNet
    from latentsync.models.syncnet_loading import save_syncnet
    from latentsync.tiny import make_tiny_models, randomize_parameters

    from ..config import load_config

    folder = Path(folder)
    paths = make_tiny_models(folder / "models", seed=seed)
    syncnet_config = load_config("syncnet", "tiny_syncnet")["model"]["syncnet_config"]
    syncnet = randomize_parameters(StableSyncNet.from_config(syncnet_config), torch.Generator().manual_seed(seed))
    paths["syncnet_5f_128"] = save_syncnet(syncnet, folder / "models" / "syncnet_5f_128.pt")

    clips_dir = folder / "clips"
    clips_dir.mkdir(parents=True, exist_ok=True)
    clips = [synthetic_clip(clips_dir / f"clip_{index:03d}.mp4", num_frames, seed + index) for index in range(num_clips)]
    paths["fileslist"] = clips_dir / "train.txt"
    paths["fileslist"].write_text("".join(f"{clip.name}\n" for clip in clips))
    return paths
