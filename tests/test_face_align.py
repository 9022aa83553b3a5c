"""Face alignment, mouth mask and paste-back against the reference fixtures (fixture README §7).

Tolerances: the uint8 images of the float32 path must match exactly; the frame → crop matrices to ``rtol 1e-5``
(the reference's float32 SVD is LAPACK-dependent in the last bit, which moves a translation near -650 by 1.2e-4);
the float16 path, which the reference ran in half precision, to ±1 on at most 0.5 % of the values.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from helpers.files import load_json, load_tensors

from latentsync.errors import ConfigError, MediaError, NoFaceError
from latentsync.face import (
    CROP_SIZE_256,
    CROP_SIZE_512,
    FACE_TEMPLATE_256,
    FACE_TEMPLATE_512,
    FaceAligner,
    MouthMask,
    as_affine_batch,
    invert_affine,
    paste_back,
    paste_back_batch,
    similarity_transform,
)

# The restore fixture: rows 560..899 and columns 450..749 of the restored frame.
RESTORE_WINDOW = (slice(560, 900), slice(450, 750))


@pytest.fixture(scope="module")
def face_dir(fixtures_dir):
    return fixtures_dir / "face"


@pytest.fixture(scope="module")
def tensors(face_dir):
    return load_tensors(face_dir / "face.safetensors")


@pytest.fixture(scope="module")
def face_json(face_dir):
    return load_json(face_dir / "face.json")


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def frame(face_dir) -> np.ndarray:
    return read_rgb(face_dir / "demo1_frame0.png")


def assert_close_matrix(actual: np.ndarray, expected: torch.Tensor) -> None:
    np.testing.assert_allclose(actual, expected.double().numpy(), rtol=1e-5, atol=1e-5)


def assert_images_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    difference = np.abs(actual.astype(np.int16) - expected.astype(np.int16))
    assert actual.shape == expected.shape
    assert difference.max() == 0, f"{(difference > 0).sum()} values differ, by up to {difference.max()}"


def test_templates_and_crop_sizes(tensors):
    np.testing.assert_array_equal(FACE_TEMPLATE_256, tensors["face_template"].numpy())
    np.testing.assert_allclose(FACE_TEMPLATE_512, 2 * FACE_TEMPLATE_256, rtol=1e-15)
    assert CROP_SIZE_256 == (280, 210)
    assert CROP_SIZE_512 == (560, 420)
    with pytest.raises(ConfigError, match="256, 512"):
        FaceAligner(384)


def test_similarity_transform_maps_template_onto_itself():
    shifted = FACE_TEMPLATE_256 + np.array([30.0, -12.0])
    matrix = similarity_transform(shifted, FACE_TEMPLATE_256)
    np.testing.assert_allclose(matrix, [[1, 0, -30], [0, 1, 12]], atol=1e-4)


def test_first_frame_affine(tensors, face_json):
    aligner = FaceAligner(256)
    affine = aligner.estimate_affine(tensors["landmarks3"].numpy())
    assert affine.shape == (2, 3) and affine.dtype == np.float64
    assert_close_matrix(affine, tensors["affine_matrix_float32"])
    np.testing.assert_allclose(aligner.smoothing_bias, face_json["alignment"]["p_bias_first_frame"], atol=1e-6)
    # the reference's half-precision pipeline rounds the matrix to float16
    np.testing.assert_array_equal(
        as_affine_batch(tensors["affine_matrix_float32"], torch.float16)[0].numpy(),
        tensors["affine_matrix_float16"].float().numpy(),
    )


def test_landmarks_are_rounded(tensors):
    landmarks = tensors["landmarks3"].numpy()
    jittered = FaceAligner(256).estimate_affine(landmarks + np.array([[0.3, -0.2], [-0.4, 0.1], [0.2, 0.4]]))
    np.testing.assert_array_equal(jittered, FaceAligner(256).estimate_affine(landmarks))


def test_smoothing_sequence(tensors):
    smoothed, unsmoothed = FaceAligner(256), FaceAligner(256, smooth=False)
    for index in range(3):
        landmarks = tensors[f"smooth_seq.{index}.landmarks3"].numpy()
        assert_close_matrix(smoothed.estimate_affine(landmarks), tensors[f"smooth_seq.{index}.affine_matrix"])
        np.testing.assert_allclose(smoothed.smoothing_bias, tensors[f"smooth_seq.{index}.p_bias"].numpy(), atol=1e-6)
        assert_close_matrix(
            unsmoothed.estimate_affine(landmarks), tensors[f"smooth_seq.{index}.affine_matrix_no_smooth"]
        )
    assert unsmoothed.smoothing_bias is None

    # reset starts a new video: frame 1 then gets its own bias, unmixed with frame 0's
    smoothed.reset()
    assert smoothed.smoothing_bias is None
    landmarks = tensors["smooth_seq.1.landmarks3"].numpy()
    fresh = smoothed.estimate_affine(landmarks)
    np.testing.assert_array_equal(fresh, FaceAligner(256).estimate_affine(landmarks))
    assert np.abs(fresh - tensors["smooth_seq.1.affine_matrix"].double().numpy()).max() > 1e-2


def test_bad_landmarks_raise():
    aligner = FaceAligner(256)
    with pytest.raises(NoFaceError, match="non-finite"):
        aligner.estimate_affine([[1.0, 2.0], [np.nan, 3.0], [4.0, 5.0]])
    with pytest.raises(NoFaceError, match="coincide"):
        aligner.estimate_affine([[10.0, 10.0]] * 3)
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        aligner.estimate_affine(np.zeros((5, 2)))


def test_aligned_crop_and_face_fp32_path_exact(tensors, frame, face_dir):
    aligner = FaceAligner(256)
    affine = tensors["affine_matrix_float32"]
    crop = aligner.warp_crops(torch.from_numpy(frame)[None], affine)[0].numpy()
    assert_images_equal(crop, tensors["aligned_face_280x210_fp32path"].numpy())
    face = aligner.align(frame, affine.numpy())
    assert face.dtype == np.uint8
    assert_images_equal(face, tensors["aligned_face_256_fp32path"].numpy())
    assert_images_equal(face, read_rgb(face_dir / "demo1_frame0_aligned_256.png"))


def test_crop_outside_the_frame_is_filled_with_127():
    frames = torch.full((1, 300, 300, 3), 200, dtype=torch.uint8)
    # crop pixel (x, y) samples frame pixel (x + 100, y + 50): crop columns from 200 on lie right of the frame
    crop = FaceAligner(256).warp_crops(frames, [[1.0, 0.0, -100.0], [0.0, 1.0, -50.0]])[0]
    assert crop.shape == (280, 210, 3)
    assert bool((crop[:240, :190] == 200).all())
    assert bool((crop[:, 205:] == 127).all()) and bool((crop[255:] == 127).all())


def test_aligned_face_fp16_path(tensors, frame):
    # Measured on CPU: identical to the fixture (matrix rounded to float16, warped values rounded to float16).
    face = FaceAligner(256).align(frame, tensors["affine_matrix_float32"].numpy(), dtype=torch.float16)
    difference = np.abs(face.astype(np.int16) - tensors["aligned_face_256_fp16path"].numpy().astype(np.int16))
    assert difference.max() <= 1
    assert (difference > 0).mean() <= 0.005


def test_align_batch_matches_single_frames(tensors, frame):
    aligner = FaceAligner(256)
    affines = np.stack([tensors[f"smooth_seq.{index}.affine_matrix"].double().numpy() for index in range(2)])
    frames = torch.from_numpy(np.stack([frame, frame[:, ::-1]]))
    faces = aligner.align_batch(frames, affines)
    assert faces.shape == (2, 256, 256, 3) and faces.dtype == torch.uint8
    for index in range(2):
        assert_images_equal(faces[index].numpy(), aligner.align(frames[index].numpy(), affines[index]))
    with pytest.raises(MediaError, match="uint8"):
        aligner.align(frame.astype(np.float32), affines[0])
    with pytest.raises(ValueError, match="2 frames but 1"):
        aligner.align_batch(frames, affines[:1])


def restore_face_in(tensors) -> torch.Tensor:
    """The fixture's restore input: the aligned crop colour-inverted, in [-1, 1], shape (3, 280, 210)."""
    crop = tensors["aligned_face_280x210_fp32path"].permute(2, 0, 1).float()
    return 1 - crop / 127.5


def test_paste_back_fp32_path_exact(tensors, frame, face_dir, face_json):
    affine = tensors["affine_matrix_float32"]
    np.testing.assert_array_equal(
        invert_affine(as_affine_batch(affine))[0].numpy(), tensors["restore.inverse_affine_matrix_fp32path"].numpy()
    )
    restored = paste_back(frame, restore_face_in(tensors), affine, face_crop_size=CROP_SIZE_256)
    assert restored.shape == frame.shape and restored.dtype == np.uint8
    assert_images_equal(restored[RESTORE_WINDOW], read_rgb(face_dir / "demo1_frame0_restored_fp32path_crop.png"))

    outside = restored.copy()
    outside[RESTORE_WINDOW] = frame[RESTORE_WINDOW]
    assert_images_equal(outside, frame)
    rows, cols = np.nonzero((restored != frame).any(axis=-1))
    bbox = face_json["alignment"]["restore"]["changed_pixel_bbox_inclusive"]
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (bbox["y0"], bbox["y1"], bbox["x0"], bbox["x1"])


def test_paste_back_fp16_path_statistics(tensors, frame, face_json):
    # The fixture stores only statistics of the reference's float16 restore against its float32 restore; the
    # emulation reproduces them closely (measured: 67,539 differing values vs 67,535, max 17 vs 17).
    face_in = restore_face_in(tensors)
    fp32 = paste_back(frame, face_in, tensors["affine_matrix_float32"], face_crop_size=CROP_SIZE_256)
    fp16 = paste_back(
        frame, face_in, tensors["affine_matrix_float16"], face_crop_size=CROP_SIZE_256, dtype=torch.float16
    )
    difference = np.abs(fp16.astype(np.int16) - fp32.astype(np.int16))
    expected = face_json["alignment"]["restore"]["fp32_vs_fp16_path_uint8_absdiff"]
    assert difference.max() == expected["max"]
    assert (difference > 0).mean() == pytest.approx(expected["frac_nonzero"], rel=0.005)
    assert difference.mean() == pytest.approx(expected["mean"], rel=0.005)


def test_paste_back_batch_matches_single_frames(tensors, frame):
    affines = np.stack([tensors[f"smooth_seq.{index}.affine_matrix"].double().numpy() for index in range(2)])
    frames = torch.from_numpy(np.stack([frame, frame]))
    faces = torch.rand((2, 3, 256, 256), generator=torch.Generator().manual_seed(0)) * 2 - 1
    restored = paste_back_batch(frames, faces, affines)
    assert restored.shape == frames.shape and restored.dtype == torch.uint8
    for index in range(2):
        assert_images_equal(restored[index].numpy(), paste_back(frame, faces[index], affines[index]))
    with pytest.raises(MediaError, match=r"\(b, 3, R, R\)"):
        paste_back_batch(frames, faces[:, :1], affines)


@pytest.mark.parametrize("resolution, min_psnr", [(256, 44.0), (512, 46.0)])
def test_align_then_restore_round_trip(tensors, frame, resolution, min_psnr):
    # Measured on demo1 frame 0: 46.1 dB at 256, 48.1 dB at 512 over the changed window.
    aligner = FaceAligner(resolution)
    affine = aligner.estimate_affine(tensors["landmarks3"].numpy())
    face = aligner.align(frame, affine)
    assert face.shape == (resolution, resolution, 3)
    restored = paste_back(frame, torch.from_numpy(face).permute(2, 0, 1).float() / 127.5 - 1, affine)

    rows, cols = np.nonzero((restored != frame).any(axis=-1))
    window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    error = restored[window].astype(np.float64) - frame[window]
    psnr = 10 * np.log10(255.0**2 / np.mean(error**2))
    assert psnr >= min_psnr, f"round trip PSNR {psnr:.2f} dB"
    # the face window sits where the eyebrows-to-chin region is, whatever the resolution
    assert 550 < rows.min() < rows.max() < 900 and 450 < cols.min() < cols.max() < 750


def test_mouth_mask_256(tensors, face_json):
    mask = MouthMask(256)
    assert mask.pixel.shape == (3, 256, 256) and mask.pixel.dtype == torch.float64
    expected = tensors["mask_256_uint8"].double() / 255.0
    for channel in range(3):
        assert torch.equal(mask.pixel[channel], expected)
    png = face_json["mask_png"]
    assert int((mask.pixel[0] == 0).sum()) == png["zero_pixel_count"]
    latent = mask.latent()
    assert latent.shape == (1, 32, 32)
    assert torch.equal(latent[0], tensors["mask_latent_32"])


def test_mouth_mask_512(tensors):
    mask = MouthMask(512)
    assert mask.pixel.shape == (3, 512, 512)
    assert torch.equal(mask.pixel[1], tensors["mask_512_uint8"].double() / 255.0)
    assert mask.pixel.unique().numel() == 136
    assert torch.equal(mask.latent(64)[0], tensors["mask_latent_64"])


def test_mask_image():
    mask = MouthMask(256)
    pixels = torch.ones((2, 3, 256, 256)) * 0.5
    masked = mask.mask_image(pixels)
    assert masked.shape == pixels.shape
    assert torch.equal(masked[1], 0.5 * mask.pixel)
    with pytest.raises(ValueError, match="256, 256"):
        mask.mask_image(torch.ones((3, 128, 128)))


def test_unreadable_mask_raises(tmp_path):
    broken = tmp_path / "mask.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(MediaError, match="not a readable image"):
        MouthMask(256, path=broken)
    with pytest.raises(MediaError, match="cannot read"):
        MouthMask(256, path=tmp_path / "missing.png")
