"""Per-frame audio chunks against the reference `feature2chunks` / `crop_overlap_audio_window` (fixture README §4).

The inputs are the fixture's own `audio_feat`, so these comparisons are exact.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch

from helpers.files import load_tensors
from latentsync.audio import (
    audio_window,
    centre_rows,
    chunk_feature_indices,
    default_chunk_count,
    feature_chunks,
    feature_window,
)
from latentsync.errors import LatentSyncError

CASES = [("demo1", 480, 242), ("long", 1952, 978)]


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return load_tensors(fixtures_dir / "whisper" / "whisper_features_public.safetensors")


def reference_chunk_count(num_features: int, fps: float) -> int:
    """The reference loop: chunk i is made, then the loop stops if int(i * 50 / fps) > num_features."""
    multiplier = 50.0 / fps
    i = 0
    while True:
        i += 1
        if int((i - 1) * multiplier) > num_features:
            return i


@pytest.mark.parametrize("name, num_features, count", CASES)
def test_indices_and_count_match_reference(reference, name, num_features, count):
    assert len(reference[f"{name}.audio_feat"]) == num_features
    assert default_chunk_count(num_features) == count
    indices = chunk_feature_indices(num_features, count)
    assert indices.shape == (count, 10)
    np.testing.assert_array_equal(indices, reference[f"{name}.chunk_feature_indices"].numpy())


def test_demo1_chunks_match_reference(reference):
    chunks = feature_chunks(reference["demo1.audio_feat"])
    assert chunks.shape == (242, 50, 24)
    torch.testing.assert_close(chunks, reference["demo1.chunks"], rtol=0, atol=1e-5)


def test_long_chunks_across_the_window_boundary(reference):
    chunks = feature_chunks(reference["long.audio_feat"])
    subset = reference["long.chunks_subset_indices"].long()
    assert chunks.shape == (978, 50, 24)
    assert subset.tolist() == [0, 1, 2, 3, *range(745, 756), 974, 975, 976, 977]
    torch.testing.assert_close(chunks[subset], reference["long.chunks_subset"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["demo1", "long"])
@pytest.mark.parametrize("start", [0, 16])
def test_crops_match_reference(reference, name, start):
    audio_feat = reference[f"{name}.audio_feat"]
    expected = reference[f"{name}.crop_start{start}"]
    torch.testing.assert_close(feature_window(audio_feat, start, 16), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(audio_window(feature_chunks(audio_feat), start, 16), expected, rtol=0, atol=1e-5)


def test_chunk_row_layout():
    audio_feat = torch.arange(7 * 3 * 2, dtype=torch.float32).reshape(7, 3, 2)  # n = 7, L = 3, d = 2
    chunks = feature_chunks(audio_feat, num_frames=5)
    indices = chunk_feature_indices(7, 5)
    assert chunks.shape == (5, 30, 2)
    for frame in range(5):
        for j in range(10):
            for level in range(3):
                assert torch.equal(chunks[frame, 3 * j + level], audio_feat[indices[frame, j], level])
    np.testing.assert_array_equal(indices[0], [0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(indices[4], [4, 5, 6, 6, 6, 6, 6, 6, 6, 6])


def test_last_window_is_shorter():
    chunks = feature_chunks(torch.zeros(100, 5, 4))  # 52 chunks
    assert audio_window(chunks, 48, 16).shape == (4, 50, 4)
    # crop_overlap_audio_window semantics: always num_frames frames, clamped to the last feature row
    assert feature_window(torch.zeros(100, 5, 4), 48, 16).shape == (16, 50, 4)
    with pytest.raises(LatentSyncError, match="outside"):
        audio_window(chunks, 52, 16)


@pytest.mark.parametrize("fps", [24, 25, 30, 50, 60])
def test_other_frame_rates_follow_the_reference_formula(fps):
    frames = np.arange(5000)
    np.testing.assert_array_equal(centre_rows(frames, fps), [int(i * 50 / fps) for i in frames])
    for num_features in (1, 2, 3, 479, 480, 481, 1952, 4999):
        count = default_chunk_count(num_features, fps)
        assert count == reference_chunk_count(num_features, fps)
        assert count / fps >= num_features / 50  # the chunks cover the audio


def test_ntsc_rates_are_exact():
    ntsc = Fraction(30000, 1001)
    frames = np.arange(3000)
    expected = [(i * 50 * 1001) // 30000 for i in frames]
    np.testing.assert_array_equal(centre_rows(frames, ntsc), expected)
    np.testing.assert_array_equal(centre_rows(frames, 30000 / 1001), expected)  # float fps read as the fraction


def test_no_features_is_an_error():
    with pytest.raises(LatentSyncError, match="no audio features"):
        feature_chunks(torch.zeros(0, 5, 24))
    with pytest.raises(LatentSyncError, match="fps"):
        chunk_feature_indices(10, 4, fps=0)
