"""Switches that make a run follow the official pipeline exactly: the landmark filter off, the VAE's input layout."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.pipeline import SyntheticFaceDetector, ZeroNoiseUNet, face_frame, speech, write_clip, write_wav

from latentsync.face.align import FaceAligner
from latentsync.pipeline.faces import FacePreparer, face_pixels
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.pipeline.settings import LipSyncSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def shaking_clip(num_frames: int = 12) -> list[np.ndarray]:
    """The synthetic face, moved sideways by 0..3 pixels from frame to frame (detector jitter)."""
    return [np.roll(face_frame(index, marks=False), (index * 7) % 4, axis=1) for index in range(num_frames)]


def affines(preparer: FacePreparer, frames: list[np.ndarray]) -> np.ndarray:
    return np.stack([face.affine for _, face in preparer.prepare(iter(frames))])


def test_landmark_filter_off_aligns_the_detectors_own_points():
    frames, detector = shaking_clip(), SyntheticFaceDetector()
    aligner = FaceAligner(256, smooth=True)  # the official alignment: the detector's points, affine smoothing
    official = np.stack([aligner.estimate_affine(detector.detect(frame)[0].points3) for frame in frames])

    unfiltered = affines(FacePreparer(detector, 256, landmark_filter=False), frames)
    np.testing.assert_array_equal(unfiltered, official)
    filtered = affines(FacePreparer(detector, 256), frames)  # the default: One-Euro on the points
    assert np.abs(filtered - official).max() > 0.1

    # the setting reaches the pipeline's preparer
    settings = LipSyncSettings(resolution=256, landmark_filter=False)
    pipeline = LipSyncPipeline(ZeroNoiseUNet(), None, None, detector, settings)
    np.testing.assert_array_equal(affines(pipeline.face_preparer(), frames), official)


class RecordingCodec:
    """The tiny VAE, recording whether each image batch it encodes is contiguous (as the official code's is)."""

    def __init__(self, codec):
        self.codec, self.contiguous = codec, []

    def encode(self, pixels, generator=None):
        self.contiguous.append(pixels.is_contiguous())
        return self.codec.encode(pixels, generator)

    def decode(self, latents):
        return self.codec.decode(latents)


def test_the_vae_encodes_contiguous_images_as_the_official_code(tmp_path, tiny_models):
    """The CPU convolution kernels round differently for a channels-last-strided input (posterior ~3e-4 apart):
    the faces go to the VAE in the official code's contiguous layout."""
    clip = write_clip(tmp_path / "clip.mp4", 5, size=(160, 160))
    audio = write_wav(tmp_path / "speech.wav", speech(0.2))
    codec = RecordingCodec(tiny_models.vae)
    settings = LipSyncSettings(resolution=256, num_inference_steps=1, guidance_scale=1.0, num_frames=5)
    LipSyncPipeline(tiny_models.unet, tiny_models.whisper, codec, SyntheticFaceDetector(), settings).run(
        clip, audio, tmp_path / "out.mp4"
    )
    assert codec.contiguous and all(codec.contiguous)  # masked faces and reference faces
    faces = np.stack(shaking_clip(2))[:, :64, :64]
    assert face_pixels(faces).is_contiguous()
