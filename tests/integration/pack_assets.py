"""Tiny models and short clips that let the pack's workflows run in a real ComfyUI on a CPU within seconds.

    models/latentsync/latentsync_unet.pt, whisper/tiny.pt, stable_syncnet.pt   `latentsync.tiny.make_tiny_models`
    models/vae/sd-vae-ft-mse/                  its tiny VAE (diffusers folder, for LatentSync VAE Loader)
    models/vae_approx/taesd_{encoder,decoder}.safetensors                        random TAESD ("taesd" in Load VAE)
    models/loras/latentsync_test_lora/                                           a LoRA of the tiny UNet (peft)
    input/talking_head.mp4   0.64 s of demo1, cropped around the face (544x544, H.264 + AAC stereo 44.1 kHz)
    input/silent.mp4         the same frames without an audio track
    input/speech.wav         0.64 s of demo1's speech (16 kHz mono PCM)

The tiny VAE of `make_tiny_models` has a non-standard configuration that ComfyUI's Load VAE cannot build (it
assumes the SD VAE's 128-channel layout); LatentSync VAE Loader loads it. Load VAE gets TAESD, with random weights
in ComfyUI's module layout (written in ComfyUI's interpreter, as this process may not import ComfyUI); TAESD runs
at full resolution with 64 channels, about 1 s per face on a small CPU, so the timed runs use the tiny VAE.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from latentsync.models.lora import LoRA, save_lora
from latentsync.models.unet_loading import load_unet
from latentsync.tiny import make_tiny_models

VIDEO_FILE, SILENT_VIDEO_FILE, AUDIO_FILE = "talking_head.mp4", "silent.mp4", "speech.wav"
LORA_FILE = "latentsync_test_lora/adapter_model.safetensors"  # a LoRA folder in peft's layout, as `save_lora` writes
TINY_VAE_FOLDER = "sd-vae-ft-mse"
CLIP_SECONDS = Fraction(16, 25)  # 16 frames: one window, and the 16 frames a sync score needs at least
CLIP_FPS = 25
# (x, y, size) of the square cut from demo1's 1080x1920 frames: the face and some background.
FACE_CROP = (328, 448, 544)

# Random TAESD weights with ComfyUI's own module layout; std 1/sqrt(fan in) keeps activations bounded.
_TAESD_SCRIPT = """
import sys, torch
sys.path.insert(0, sys.argv[1])
from comfy.cli_args import args
args.cpu = True
import comfy.taesd.taesd as taesd
from safetensors.torch import save_file
generator = torch.Generator().manual_seed(0)
for name, module in (("encoder", taesd.Encoder()), ("decoder", taesd.Decoder())):
    state = {}
    for key, value in module.state_dict().items():
        fan_in = value[0].numel() if value.ndim > 1 else 1
        state[key] = (torch.randn(value.shape, generator=generator) / fan_in ** 0.5).contiguous()
    save_file(state, f"{sys.argv[2]}/taesd_{name}.safetensors")
"""


def place_models(models_dir: Path, comfyui_path: Path, comfyui_python: str) -> None:
    """Write the tiny models into ComfyUI's model folders (see the module docstring)."""
    with tempfile.TemporaryDirectory() as scratch:
        paths = make_tiny_models(scratch)
        latentsync = models_dir / "latentsync"
        (latentsync / "whisper").mkdir(parents=True, exist_ok=True)
        shutil.copy(paths["unet"], latentsync / "latentsync_unet.pt")
        shutil.copy(paths["whisper"], latentsync / "whisper" / "tiny.pt")
        shutil.copy(paths["syncnet"], latentsync / "stable_syncnet.pt")
        shutil.copytree(paths["vae"], models_dir / "vae" / TINY_VAE_FOLDER)
        write_lora(paths["unet"], models_dir / "loras" / Path(LORA_FILE).parent)
    vae_approx = models_dir / "vae_approx"
    vae_approx.mkdir(parents=True, exist_ok=True)
    subprocess.run([comfyui_python, "-c", _TAESD_SCRIPT, str(comfyui_path), str(vae_approx)], check=True)


def write_lora(unet_path: Path, path: Path, rank: int = 4) -> Path:
    """A random LoRA on the audio cross-attention queries of the tiny UNet."""
    unet = load_unet(unet_path)
    generator = torch.Generator().manual_seed(1)
    layers = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_q") and isinstance(module, torch.nn.Linear):
            down = torch.randn(rank, module.in_features, generator=generator) * 0.1
            up = torch.randn(module.out_features, rank, generator=generator) * 0.1
            layers[name] = (down, up)
    return save_lora(LoRA(layers, rank, float(rank), {"base_checkpoint": unet_path.name}), path)


def place_clips(assets_dir: Path, input_dir: Path) -> None:
    """Cut the input clips from demo1 (see the module docstring)."""
    video, speech = assets_dir / "demo1_video.mp4", assets_dir / "demo1_audio.wav"
    cut_video(video, input_dir / VIDEO_FILE, with_audio=True)
    cut_video(video, input_dir / SILENT_VIDEO_FILE, with_audio=False)
    cut_audio(speech, input_dir / AUDIO_FILE)


def cut_video(source: Path, dest: Path, with_audio: bool) -> None:
    """The first `CLIP_SECONDS` of ``source`` cropped to `FACE_CROP`, as H.264 (+ its audio as AAC)."""
    x, y, size = FACE_CROP
    with av.open(str(source)) as reader, av.open(str(dest), "w") as writer:
        video = writer.add_stream("libx264", rate=CLIP_FPS)
        video.width = video.height = size
        video.pix_fmt = "yuv420p"
        audio_in = reader.streams.audio[0]
        layout, rate = audio_in.layout.name, audio_in.rate
        audio = writer.add_stream("aac", rate=rate, layout=layout) if with_audio else None
        for index, frame in zip(range(int(CLIP_SECONDS * CLIP_FPS)), reader.decode(video=0)):
            rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24")[y : y + size, x : x + size])
            out = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            out.pts, out.time_base = index, Fraction(1, CLIP_FPS)
            writer.mux(video.encode(out))
        writer.mux(video.encode(None))
        if audio is None:
            return
        reader.seek(0)
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=rate)
        samples = np.concatenate(
            [f.to_ndarray() for frame in reader.decode(audio_in) for f in resampler.resample(frame)], axis=1
        )
        chunk = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples[:, : int(CLIP_SECONDS * rate)]), format="fltp", layout=layout
        )
        chunk.sample_rate, chunk.pts, chunk.time_base = rate, 0, Fraction(1, rate)
        writer.mux(audio.encode(chunk))
        writer.mux(audio.encode(None))


def cut_audio(source: Path, dest: Path) -> None:
    """The first `CLIP_SECONDS` of a PCM wav, unchanged otherwise."""
    import wave

    with wave.open(str(source)) as reader, wave.open(str(dest), "wb") as writer:
        writer.setparams(reader.getparams())
        writer.writeframes(reader.readframes(int(CLIP_SECONDS * reader.getframerate())))
