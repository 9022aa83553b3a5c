"""LoRA training of the UNet with peft: target presets, injection, and export to the LatentSync LoRA format.

Presets (peft ``target_modules`` regular expressions, matched against full module names):

* ``audio``: the audio cross-attention projections ``attn2.to_q / to_k / to_v / to_out.0`` of every spatial
  transformer (what maps speech to mouth shapes; the usual choice for a new language or speaker);
* ``motion``: the temporal self-attention projections of the motion modules (temporal consistency);
* ``both``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from torch import nn

from latentsync.errors import ConfigError

_PROJECTIONS = r"(to_q|to_k|to_v|to_out\.0)"
LORA_PRESET_PATTERNS = {
    "audio": rf".*\.attn2\.{_PROJECTIONS}",
    "motion": rf".*motion_modules\.\d+\.temporal_transformer\.transformer_blocks\.\d+\.attention_blocks\.\d+\.{_PROJECTIONS}",
}
LORA_PRESET_PATTERNS["both"] = f"(?:{LORA_PRESET_PATTERNS['audio']})|(?:{LORA_PRESET_PATTERNS['motion']})"
_HASH_CHUNK = 1 << 24


def target_pattern(preset: str, extra: list[str]) -> str:
    """The regular expression of a preset plus the extra patterns."""
    return "|".join(f"(?:{p})" for p in [LORA_PRESET_PATTERNS[preset], *extra])


def inject_lora(unet: nn.Module, preset: str, rank: int, alpha: float, dropout: float, extra: list[str]) -> list[str]:
    """Freeze ``unet`` and add LoRA layers (peft ``inject_adapter_in_model``) to the preset's linear layers.

    Returns:
        The names of the adapted modules.

    Raises:
        ConfigError: the preset matches no linear layer (e.g. ``motion`` on a stage-1 UNet).
    """
    from peft import LoraConfig, inject_adapter_in_model

    pattern = target_pattern(preset, extra)
    targets = [name for name, module in unet.named_modules() if isinstance(module, nn.Linear) and re.fullmatch(pattern, name)]
    if not targets:
        raise ConfigError(
            f"LoRA preset {preset!r} (pattern {pattern!r}) matches no linear layer of this UNet; "
            "'motion' needs a UNet with motion modules."
        )
    unet.requires_grad_(False)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, unet)
    return targets


def file_sha256(path: str) -> str:
    """SHA-256 of a file (the LoRA's base checkpoint), or ``"none"`` for a fresh UNet."""
    if not path:
        return "none"
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
