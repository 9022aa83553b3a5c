"""Training for LatentSync: UNet stage 1 / stage 2 / LoRA and SyncNet on accelerate (DDP or DeepSpeed), and the
data pipeline that turns raw talking-head videos into aligned 25 fps / 16 kHz training clips.

Command line: ``python -m train stage1|stage2|lora|syncnet --config FILE [section.key=value ...]`` and
``python -m train data prepare --input DIR --output DIR``; see ``train/README.md``.
"""
