"""The pack's `ComfyExtension`: every node it registers."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .loaders import (
    LatentSyncAudioEncoderLoader,
    LatentSyncFaceDetectorLoader,
    LatentSyncLoRA,
    LatentSyncModelLoader,
    LatentSyncSyncNetLoader,
    LatentSyncVAELoader,
)
from .prepare import LatentSyncAudioEncode, LatentSyncFacePrepare, LatentSyncFaceTracks, LatentSyncSpeakerMap
from .sampler import LatentSyncLipSync, LatentSyncSampler, LatentSyncSpeed, LatentSyncVideoSampler
from .score import LatentSyncSyncScore
from .video import LatentSyncCreateVideo

NODES: list[type[io.ComfyNode]] = [
    LatentSyncModelLoader,
    LatentSyncLoRA,
    LatentSyncVAELoader,
    LatentSyncAudioEncoderLoader,
    LatentSyncAudioEncode,
    LatentSyncFaceDetectorLoader,
    LatentSyncFaceTracks,
    LatentSyncFacePrepare,
    LatentSyncSpeakerMap,
    LatentSyncSampler,
    LatentSyncVideoSampler,
    LatentSyncLipSync,
    LatentSyncSpeed,
    LatentSyncCreateVideo,
    LatentSyncSyncNetLoader,
    LatentSyncSyncScore,
]


class LatentSyncExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
