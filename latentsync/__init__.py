"""LatentSync: audio-conditioned latent diffusion for lip sync, as an importable library.

The public API is imported lazily so that ``import latentsync`` stays cheap (the CLI and the ComfyUI nodes import
only what they use)::

    import latentsync
    unet = latentsync.load_unet("latentsync_unet.pt")              # config inferred from the keys
    whisper = latentsync.load_whisper("whisper/tiny.pt")
    features = whisper.encode(waveform_16k)                        # (n, 5, d)
    chunks = latentsync.feature_chunks(features, fps=25)           # (frames, 50, d)
    latents = latentsync.sample_ddim(unet, noise, mask, masked, ref, chunks[:16])
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "load_unet": ".models.unet_loading",
    "save_unet": ".models.unet_loading",
    "infer_unet_config": ".models.unet_loading",
    "init_unet_from_sd15": ".models.unet_loading",
    "UNet3DConditionModel": ".models.unet",
    "load_whisper": ".audio.whisper",
    "feature_chunks": ".audio.chunks",
    "audio_window": ".audio.chunks",
    "load_syncnet": ".models.syncnet_loading",
    "StableSyncNet": ".models.syncnet",
    "load_vae": ".models.vae",
    "create_scheduler": ".pipeline.ddim",
    "initial_noise": ".pipeline.ddim",
    "sample_ddim": ".pipeline.ddim",
    "LatentSyncError": ".errors",
    "CheckpointError": ".errors",
    "MediaError": ".errors",
    "NoFaceError": ".errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentsync' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
