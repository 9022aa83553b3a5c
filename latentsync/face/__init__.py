"""Face alignment, the fixed mouth mask and paste-back, reproducing LatentSync's face pipeline.

`FaceAligner` turns three landmarks per frame into frame → crop matrices and aligned ``R x R`` faces,
`MouthMask` holds the region the UNet regenerates, and `paste_back` / `paste_back_batch` blend generated faces
into the frames. Face detection lives in `latentsync.face.detectors`.
"""

from .align import (
    CROP_FILL_VALUE,
    CROP_SIZE_256,
    CROP_SIZE_512,
    FACE_TEMPLATE_256,
    FACE_TEMPLATE_512,
    SUPPORTED_RESOLUTIONS,
    FaceAligner,
    as_affine_batch,
    check_resolution,
    crop_size,
    face_template,
    invert_affine,
    similarity_transform,
    warp_affine,
)
from .mask import MASK_PATH, MouthMask, read_mask_image
from .restore import paste_back, paste_back_batch, resize_face

__all__ = [
    "CROP_FILL_VALUE",
    "CROP_SIZE_256",
    "CROP_SIZE_512",
    "FACE_TEMPLATE_256",
    "FACE_TEMPLATE_512",
    "MASK_PATH",
    "SUPPORTED_RESOLUTIONS",
    "FaceAligner",
    "MouthMask",
    "as_affine_batch",
    "check_resolution",
    "crop_size",
    "face_template",
    "invert_affine",
    "paste_back",
    "paste_back_batch",
    "read_mask_image",
    "resize_face",
    "similarity_transform",
    "warp_affine",
]
