"""Training data: clip lists, cached audio features, the UNet and SyncNet datasets, and the preparation pipeline
(`train.data.prepare`, run as ``python -m train data prepare``)."""

from .clips import AudioFeatureCache, list_clips
from .datasets import SyncNetDataset, UNetDataset

__all__ = ["AudioFeatureCache", "SyncNetDataset", "UNetDataset", "list_clips"]
