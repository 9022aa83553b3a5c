"""Switches that make a run follow the official pipeline exactly: the landmark filter off, the VAE's input layout."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.pipeline import SyntheticFaceDetector, face_frame

from latentsync.face.align import FaceAligner
from latentsync.pipeline.faces import FacePreparer
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
    pipeline = LipSyncPipeline(None, None, None, detector, settings)
    np.testing.assert_array_equal(affines(pipeline.face_preparer(), frames), official)
