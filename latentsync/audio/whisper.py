"""Whisper audio features for LatentSync: the OpenAI Whisper audio encoder and the reference's 30-second windowing.

LatentSync conditions its UNet on the hidden states of Whisper's audio encoder (fixture README §4):

1. log-mel of the whole file (n_fft 400, hop 160, reflect-padded, last frame dropped; clamped at the file's
   global maximum - 8 in log10 units; scaled as ``(x + 4) / 4``) -> ``(n_mels, num_samples // 160)``;
2. the mel columns in windows of 3000 (30 s), each zero-padded to 3000 columns;
3. per window, the encoder's embedding and the output of every residual block, stacked
   -> ``(1500, n_audio_layer + 1, d)`` (the final ``ln_post`` is not applied);
4. the first ``(end - start) // 2`` rows of each window, concatenated -> ``(num_samples // 320, L, d)``,
   one row per 20 ms.

Checkpoints are OpenAI's ``torch.save({"dims": {...}, "model_state_dict": {...}})`` files (``tiny.pt``,
``small.pt``); the module keys are theirs, so the files load strictly without renaming.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_state_dict_strict, read_checkpoint
from ..conventions import MODEL_SAMPLE_RATE
from ..errors import CheckpointError, ConfigError
from ..models.attention import multi_head_attention
from ..models.identify import CHECKPOINT_KINDS, UNKNOWN, WHISPER, identify_checkpoint
from .mel import as_waveform, mel_filterbank, stft

N_FFT = 400
HOP_LENGTH = 160
# log-mel values are floored at 1e-10 and then at (global maximum - 8) in log10 units
LOG_MEL_FLOOR = 1e-10
LOG_MEL_DYNAMIC_RANGE = 8.0
FEATURES_PER_SECOND = MODEL_SAMPLE_RATE // HOP_LENGTH // 2  # 50: conv2 halves the 100 mel columns per second
# the fewest samples that give one feature row (two mel columns)
MIN_SAMPLES = 2 * HOP_LENGTH

ENCODER_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer")
TEXT_DIMS = ("n_vocab", "n_text_ctx", "n_text_state", "n_text_head", "n_text_layer")

# Checkpoint keys that are deliberately not loaded: OpenAI files also hold the text decoder, which LatentSync never
# runs (it only reads the audio encoder's hidden states). Every `encoder.*` key must fit exactly.
IGNORED_KEY_PREFIXES = ("decoder.",)


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's positional table ``[sin(p * w_i), cos(p * w_i)]``, ``w_i = max_timescale^(-i / (channels/2 - 1))``.

    Returns:
        float32 tensor of shape ``(length, channels)``.
    """
    log_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(channels // 2))
    angles = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype (as OpenAI's Whisper does), result in the input dtype."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        normed = F.layer_norm(hidden_states.float(), self.normalized_shape, weight, bias, self.eps)
        return normed.to(hidden_states.dtype)


class WhisperAttention(nn.Module):
    """Multi-head self-attention with OpenAI's projections: ``query``/``value``/``out`` biased, ``key`` unbiased."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``(b, s, d) -> (b, s, d)``.

        OpenAI scales q and k by ``head_dim^-0.25`` each; that is the usual ``1 / sqrt(head_dim)`` softmax scale of
        `scaled_dot_product_attention` on unscaled q and k.
        """
        query, key, value = self.query(hidden_states), self.key(hidden_states), self.value(hidden_states)
        return self.out(multi_head_attention(query, key, value, self.n_head))


class WhisperEncoderBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(attn_ln(x))``, then ``x + mlp(mlp_ln(x))`` with a 4x GELU MLP."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.attn = WhisperAttention(n_state, n_head)
        self.attn_ln = Float32LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = Float32LayerNorm(n_state)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states + self.attn(self.attn_ln(hidden_states))
        return hidden_states + self.mlp(self.mlp_ln(hidden_states))


class WhisperAudioEncoder(nn.Module):
    """OpenAI Whisper's audio encoder, returning the stack of its hidden states.

    Parameter names are those of OpenAI's ``AudioEncoder`` (``conv1.weight``, ``blocks.0.attn.query.weight``, ...),
    i.e. the checkpoint keys without their ``encoder.`` prefix. ``ln_post`` is kept so that checkpoints load
    strictly, but LatentSync uses the hidden states before it, so `forward` does not apply it.

    Args:
        n_mels: mel bins of the input.
        n_audio_ctx: output positions per window (1500; the input window has ``2 * n_audio_ctx`` columns).
        n_audio_state: hidden size ``d`` (384 for tiny, 768 for small).
        n_audio_head: attention heads.
        n_audio_layer: residual blocks.
    """

    def __init__(
        self,
        n_mels: int = 80,
        n_audio_ctx: int = 1500,
        n_audio_state: int = 384,
        n_audio_head: int = 6,
        n_audio_layer: int = 4,
    ):
        super().__init__()
        if n_audio_state % n_audio_head or n_audio_state % 2:
            raise ConfigError(
                f"n_audio_state ({n_audio_state}) must be even and divisible by n_audio_head ({n_audio_head})"
            )
        self.n_audio_ctx = n_audio_ctx
        self.conv1 = nn.Conv1d(n_mels, n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_audio_state, n_audio_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(n_audio_ctx, n_audio_state))
        self.blocks = nn.ModuleList([WhisperEncoderBlock(n_audio_state, n_audio_head) for _ in range(n_audio_layer)])
        self.ln_post = Float32LayerNorm(n_audio_state)

    @classmethod
    def from_dims(cls, dims: Mapping[str, int]) -> "WhisperAudioEncoder":
        """Build from an OpenAI ``dims`` dict (its text-decoder entries are ignored)."""
        return cls(**{name: int(dims[name]) for name in ENCODER_DIMS})

    @property
    def num_hidden_states(self) -> int:
        """``L``: the embedding plus one output per block."""
        return len(self.blocks) + 1

    @property
    def window_columns(self) -> int:
        """Mel columns per input window (3000 = 30 s)."""
        return 2 * self.n_audio_ctx

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Hidden states of one batch of mel windows.

        Args:
            mel: ``(b, n_mels, 2 * n_audio_ctx)``.

        Returns:
            ``(b, n_audio_ctx, L, d)``: index 0 of ``L`` is the embedding (convs + positions), index ``i`` the output
            of block ``i - 1``.
        """
        # 1. embedding: two GELU convs (the second with stride 2) and the positional table
        hidden_states = F.gelu(self.conv1(mel))
        hidden_states = F.gelu(self.conv2(hidden_states)).transpose(1, 2)
        if hidden_states.shape[1:] != self.positional_embedding.shape:
            raise ValueError(
                f"mel window of {mel.shape[-1]} columns gives {hidden_states.shape[1]} positions, "
                f"expected {self.window_columns} columns"
            )
        hidden_states = (hidden_states + self.positional_embedding).to(hidden_states.dtype)

        # 2. residual blocks, keeping every intermediate state
        all_states = [hidden_states]
        for block in self.blocks:
            hidden_states = block(hidden_states)
            all_states.append(hidden_states)
        return torch.stack(all_states, dim=2)


class WhisperFeatureExtractor(nn.Module):
    """Waveform -> LatentSync audio features, with the reference's windowing for audio of any length.

    Its state-dict keys are the ``encoder.*`` keys of an OpenAI checkpoint. Build it with `load_whisper`.
    The log-mel is always computed on the CPU in float32; the encoder runs on the module's device and dtype.
    """

    def __init__(self, encoder: WhisperAudioEncoder, dims: Mapping[str, int] | None = None):
        super().__init__()
        self.encoder = encoder
        self.dims = dict(dims) if dims is not None else None
        n_mels = encoder.conv1.in_channels
        self.mel_filters = torch.from_numpy(mel_filterbank(MODEL_SAMPLE_RATE, N_FFT, n_mels))

    @property
    def hidden_size(self) -> int:
        """``d`` of the features."""
        return self.encoder.conv2.out_channels

    @property
    def num_hidden_states(self) -> int:
        """``L`` of the features (5 for whisper tiny)."""
        return self.encoder.num_hidden_states

    def log_mel(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel spectrogram of a whole file, clamped at the file's global maximum.

        Args:
            waveform: 16 kHz mono samples ``(num_samples,)``, full scale +-1.

        Returns:
            float32 CPU tensor ``(n_mels, num_samples // 160)``.
        """
        samples = as_waveform(waveform, torch.float32, min_samples=MIN_SAMPLES)
        power = stft(samples, N_FFT, HOP_LENGTH)[:, :-1].abs() ** 2
        log_mel = torch.clamp(self.mel_filters @ power, min=LOG_MEL_FLOOR).log10()
        log_mel = torch.maximum(log_mel, log_mel.max() - LOG_MEL_DYNAMIC_RANGE)
        return (log_mel + 4.0) / 4.0

    @torch.no_grad()
    def encode(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """LatentSync's audio features (the reference's ``Audio2Feature.audio2feat``).

        Args:
            waveform: 16 kHz mono samples ``(num_samples,)``, full scale +-1, at least 320 samples (20 ms).

        Returns:
            float32 CPU tensor ``(num_samples // 320, L, d)``; row ``k`` covers 20 ms starting at ``k * 0.02`` s.

        Raises:
            MediaError: empty, too short, multi-channel or non-finite audio.
        """
        log_mel = self.log_mel(waveform)
        parameter = next(self.encoder.parameters())
        window_columns = self.encoder.window_columns
        total_columns = log_mel.shape[1]

        features = []
        for start in range(0, total_columns, window_columns):
            window = log_mel[:, start : start + window_columns]
            kept_rows = window.shape[1] // 2
            window = F.pad(window, (0, window_columns - window.shape[1]))
            hidden_states = self.encoder(window[None].to(device=parameter.device, dtype=parameter.dtype))
            features.append(hidden_states[0, :kept_rows].to(device="cpu", dtype=torch.float32))
        return torch.cat(features)


def _validated_dims(dims: object, source: str, keys: tuple[str, ...]) -> dict[str, int]:
    if not isinstance(dims, Mapping):
        raise CheckpointError(
            f"{source} has no Whisper 'dims' entry. OpenAI Whisper checkpoints are "
            "{'dims': {...}, 'model_state_dict': {...}}; use the official checkpoints/whisper/tiny.pt (or small.pt)."
        )
    missing = [key for key in keys if key not in dims]
    if missing:
        raise CheckpointError(f"{source}: Whisper 'dims' lacks {', '.join(missing)} (it has {sorted(dims)}).")
    return {key: int(value) for key, value in dims.items()}


def _describe_foreign(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A sentence saying what a file without Whisper encoder keys seems to be."""
    kind = identify_checkpoint(state_dict)
    if kind not in (WHISPER, UNKNOWN):
        return f"It looks like {CHECKPOINT_KINDS[kind]}; pick the Whisper file (checkpoints/whisper/tiny.pt)."
    return "It is not an OpenAI Whisper checkpoint (expected keys such as encoder.conv1.weight)."


def load_whisper(
    path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> WhisperFeatureExtractor:
    """Load an OpenAI Whisper checkpoint (``tiny.pt``, ``small.pt``) as a `WhisperFeatureExtractor`.

    Args:
        path: ``torch.save({"dims": ..., "model_state_dict": ...})`` file, read with ``weights_only=True``.
        device: where the encoder runs (default CPU).
        dtype: encoder dtype (default float32; the float16 weights of the official files are up-cast exactly).

    Raises:
        CheckpointError: unreadable file, no ``dims``, or encoder weights that do not fit the dims exactly.
            ``decoder.*`` keys are ignored (see `IGNORED_KEY_PREFIXES`).
    """
    try:
        checkpoint = read_checkpoint(path, container_keys=("model_state_dict",))
    except CheckpointError as error:
        raise CheckpointError(
            f"{error} Expected an OpenAI Whisper checkpoint such as checkpoints/whisper/tiny.pt."
        ) from error
    source = str(checkpoint.path)
    if not any(key.startswith("encoder.") for key in checkpoint.state_dict):
        raise CheckpointError(f"{source} holds no Whisper encoder weights. {_describe_foreign(checkpoint.state_dict)}")
    dims = _validated_dims(checkpoint.extra.get("dims"), source, ENCODER_DIMS)

    with torch.device("meta"):
        encoder = WhisperAudioEncoder.from_dims(dims)
    extractor = WhisperFeatureExtractor(encoder, dims)
    encoder_state = {k: v for k, v in checkpoint.state_dict.items() if not k.startswith(IGNORED_KEY_PREFIXES)}
    load_state_dict_strict(
        extractor, encoder_state, source=source, hint=f"The Whisper dims in the file are {dims}."
    )
    extractor.to(device=device or "cpu", dtype=dtype or torch.float32)
    return extractor.eval().requires_grad_(False)


def save_whisper_checkpoint(
    path: str | os.PathLike, dims: Mapping[str, int], state_dict: Mapping[str, torch.Tensor]
) -> None:
    """Write ``{"dims": dims, "model_state_dict": state_dict}`` the way OpenAI's files are written.

    The file appears atomically: it is written under the same name in a temporary folder beside ``path`` (so the
    archive inside carries the final name, as ``torch.save`` records it) and then moved into place.
    """
    path = Path(path)
    dims = _validated_dims(dims, "dims", ENCODER_DIMS + TEXT_DIMS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as staging:
        staged = Path(staging) / path.name
        torch.save({"dims": dims, "model_state_dict": dict(state_dict)}, staged)
        os.replace(staged, path)


def _openai_whisper_shapes(dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Every key of an OpenAI Whisper state dict (encoder and text decoder), in OpenAI's order, with its shape."""
    with torch.device("meta"):
        encoder = WhisperAudioEncoder.from_dims(dims)
        text_block = WhisperEncoderBlock(dims["n_text_state"], dims["n_text_head"])
        cross_attention = WhisperAttention(dims["n_text_state"], dims["n_text_head"])
    shapes = {f"encoder.{key}": tuple(value.shape) for key, value in encoder.state_dict().items()}

    width = (dims["n_text_state"],)
    shapes["decoder.positional_embedding"] = (dims["n_text_ctx"], dims["n_text_state"])
    shapes["decoder.token_embedding.weight"] = (dims["n_vocab"], dims["n_text_state"])
    # a decoder block is an encoder block with cross-attention (and its LayerNorm) between attention and MLP
    self_part = {k: tuple(v.shape) for k, v in text_block.state_dict().items() if k.startswith("attn")}
    mlp_part = {k: tuple(v.shape) for k, v in text_block.state_dict().items() if k.startswith("mlp")}
    cross_part = {f"cross_attn.{k}": tuple(v.shape) for k, v in cross_attention.state_dict().items()}
    cross_part.update({"cross_attn_ln.weight": width, "cross_attn_ln.bias": width})
    for index in range(dims["n_text_layer"]):
        for part in (self_part, cross_part, mlp_part):
            shapes.update({f"decoder.blocks.{index}.{key}": shape for key, shape in part.items()})
    shapes.update({"decoder.ln.weight": width, "decoder.ln.bias": width})
    return shapes


def random_tiny_whisper_state(dims: Mapping[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A complete random OpenAI-format Whisper state dict (encoder and decoder), float16 like the official files.

    Scheme of fixture README §2: weights with >= 2 dims ~ N(0, 1/fan_in), LayerNorm scales 1 + 0.1 N(0, 1), biases
    0.05 N(0, 1); ``encoder.positional_embedding`` is the sinusoid table. Saved with `save_whisper_checkpoint`,
    the result has the same layout as ``checkpoints/whisper/tiny.pt``.
    """
    dims = _validated_dims(dims, "dims", ENCODER_DIMS + TEXT_DIMS)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _openai_whisper_shapes(dims).items():
        if key == "encoder.positional_embedding":
            value = sinusoids(*shape)
        elif len(shape) >= 2:
            value = torch.randn(shape, generator=generator) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".weight"):  # every 1-D weight of Whisper is a LayerNorm scale
            value = 1.0 + 0.1 * torch.randn(shape, generator=generator)
        else:
            value = 0.05 * torch.randn(shape, generator=generator)
        state[key] = value.to(torch.float16)
    return state
