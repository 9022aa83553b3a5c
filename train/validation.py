"""Validation during UNet training: every ``validation.every_n_steps`` (default: every checkpoint) the main process

1. logs the training losses' decoded frames next to the real ones to TensorBoard (stage 2);
2. renders a validation video into ``<output_dir>/val/``:

   * with ``data.val_video_path`` (and ``data.val_audio_path``), the whole clip through the inference pipeline
     (`latentsync.pipeline.lipsync.LipSyncPipeline`: face detection, alignment, DDIM, paste-back) as the reference
     does, at 256 or 512;
   * otherwise the first training window, denoised from noise with DDIM and classifier-free guidance as inference
     does (reference = the window's own frames, mouth masked), saved as ``[real | generated]`` side by side with
     the window's audio.

Under ZeRO-3 the weights are partitioned over processes, so rendering is skipped there (losses are still logged).
"""

from __future__ import annotations

import json
import logging
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from latentsync.pipeline.ddim import VAE_SCALING_FACTOR, initial_noise, sample_ddim

from .config import Config

logger = logging.getLogger("train")

IMAGES_LOGGED = 4


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``(n, 3, h, w)`` in ``[-1, 1]`` -> ``(n, h, w, 3)`` uint8."""
    return ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Validator:
    def __init__(self, config: Config, output_dir: Path, frozen, dataset, accelerator):
        self.config = config
        self.validation = config["validation"]
        every = self.validation["every_n_steps"]
        self.every = config["ckpt"]["save_ckpt_steps"] if every == 0 else every
        self.folder = output_dir / "val"
        self.frozen = frozen
        self.dataset = dataset
        self.accelerator = accelerator

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def run(self, unet: torch.nn.Module, terms: dict, step: int) -> None:
        from .runtime import is_deepspeed

        accelerator = self.accelerator
        if not accelerator.is_main_process:
            return
        self._log_images(terms, step)
        deepspeed_config = accelerator.state.deepspeed_plugin.deepspeed_config if is_deepspeed(accelerator) else {}
        if deepspeed_config.get("zero_optimization", {}).get("stage") == 3:
            logger.info("Validation video skipped under ZeRO-3 (weights are partitioned).")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        was_training = unet.training
        unet.eval()
        try:
            data = self.config["data"]
            if data["val_video_path"]:
                path = self._render_clip(unet, step)
            else:
                path = self._render_window(unet, step)
        finally:
            unet.train(was_training)
        logger.info("Validation video: %s", path)

    def _log_images(self, terms: dict, step: int) -> None:
        if "pred_pixels" not in terms or not self.config["run"]["report_to"]:
            return
        tracker = self.accelerator.get_tracker("tensorboard", unwrap=True)
        pairs = torch.cat([terms["gt_pixels"][:IMAGES_LOGGED], terms["pred_pixels"][:IMAGES_LOGGED]], dim=-1)
        tracker.add_images("train/real_vs_one_step", _to_uint8(pairs), step, dataformats="NHWC")

    def _render_clip(self, unet, step: int) -> Path:
        from latentsync.audio import load_whisper
        from latentsync.models.vae import DiffusersVAE
        from latentsync.pipeline.lipsync import LipSyncPipeline
        from latentsync.pipeline.settings import LipSyncSettings

        data = self.config["data"]
        settings = LipSyncSettings(
            resolution=data["resolution"],
            num_inference_steps=self.validation["inference_steps"],
            guidance_scale=self.validation["guidance_scale"],
            num_frames=data["num_frames"],
            seed=self.config["run"]["seed"],
        )
        whisper = load_whisper(self.config["model"]["whisper"], device=self.accelerator.device)
        pipeline = LipSyncPipeline(unet, whisper, DiffusersVAE(self.frozen.vae), settings=settings)
        output = self.folder / f"val_{step}.mp4"
        pipeline.run(data["val_video_path"], data["val_audio_path"] or None, output)
        return output

    @torch.no_grad()
    def _render_window(self, unet, step: int) -> Path:
        from latentsync.media import AudioArray, VideoWriter, load_audio

        data = self.config["data"]
        epoch = self.dataset.epoch
        self.dataset.set_epoch(0)  # the same window at every validation
        sample = self.dataset[0]
        self.dataset.set_epoch(epoch)
        device, dtype = next(unet.parameters()).device, next(unet.parameters()).dtype
        generator = torch.Generator().manual_seed(self.config["run"]["seed"])

        # 1. conditioning as at inference: the window's own frames are the reference
        pixels = sample["gt_pixel_values"].to(device)
        vae = self.frozen.vae
        vae_dtype = next(vae.parameters()).dtype

        def encode(frames: torch.Tensor) -> torch.Tensor:
            latents = vae.encode(frames.to(vae_dtype)).latent_dist.sample(generator=None) * VAE_SCALING_FACTOR
            return latents.transpose(0, 1)[None].to(dtype)

        masked_latents = encode(sample["masked_pixel_values"].to(device))
        ref_latents = encode(pixels)
        size = masked_latents.shape[-2:]
        masks = torch.nn.functional.interpolate(sample["masks"].float(), size=size, mode="nearest")
        masks = masks.transpose(0, 1)[None].to(device, dtype)
        num_frames = pixels.shape[0]
        noise = initial_noise(*size, generator=generator).to(device, dtype).repeat(1, 1, num_frames, 1, 1)
        audio = sample.get("audio_embeds")
        audio = audio.to(device, dtype) if audio is not None else noise.new_zeros(1, num_frames, 1, unet.config.cross_attention_dim)

        # 2. DDIM with guidance, decode
        latents = sample_ddim(
            unet, noise, masks, masked_latents, ref_latents, audio,
            num_inference_steps=self.validation["inference_steps"], guidance_scale=self.validation["guidance_scale"],
        )  # fmt: skip
        decoded = vae.decode((latents[0].transpose(0, 1) / VAE_SCALING_FACTOR).to(vae_dtype)).sample

        # 3. [real | generated] with the window's audio
        frames = _to_uint8(torch.cat([pixels.to(decoded.dtype), decoded], dim=-1))
        clip = self.dataset.clips[sample["clip_index"]]
        rate, fps = data["audio_sample_rate"], data["video_fps"]
        waveform = load_audio(clip, rate)
        first = sample["start"] * rate // fps
        audio_track = AudioArray(waveform[first : first + num_frames * rate // fps][None], rate)
        output = self.folder / f"window_{step}.mp4"
        height, width = frames.shape[1:3]
        with VideoWriter(output, Fraction(fps), width, height, audio=audio_track) as writer:
            for frame in frames:
                writer.write_frame(frame)
        (self.folder / f"window_{step}.json").write_text(json.dumps({"clip": str(clip), "start": sample["start"]}))
        return output
