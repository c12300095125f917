"""One quantizer API over vector-quantize-pytorch's VQ, FSQ, LFQ and residual VQ, chosen by name.

Every kind maps a latent map [B, C, h, w] to quantized latents, integer codes and an auxiliary loss. Codes always
live in ONE id space [0, codebook_size), ready to be offset into the LLM vocabulary: for residual VQ the code of
depth d is shifted by d * codes_per_level, so each depth keeps its own block of ids.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from vector_quantize_pytorch import FSQ, LFQ, ResidualVQ, VectorQuantize

from mmgen.config import strict_from_dict

QUANTIZER_KINDS = ("vq", "fsq", "lfq", "rvq")
DEFAULT_CODEBOOK_SIZE = 512


@dataclass
class QuantizerConfig:
    """How latents become codes.

    kind: "vq" (EMA k-means codebook), "fsq" (finite scalar levels), "lfq" (binary, lookup-free) or "rvq"
        (residual VQ: `num_quantizers` codes per position).
    codebook_size: vq/lfq: number of codes (lfq: a power of two); rvq: codes per depth; fsq: prod(levels).
        None picks 512 (fsq: prod(levels)).
    codebook_dim: vq/rvq: size of a code vector (None: the tokenizer's latent channels); a small value
        (e.g. 8) with `use_cosine_sim` gives the factorized, l2-normalised codebook that keeps usage high.
    levels: fsq only: levels per latent channel, each >= 3, e.g. [8, 5, 5, 5] (1000 codes).
    num_quantizers: rvq only: residual depth q.
    commitment_weight: weight of the loss pulling encoder outputs to their codes (vq, rvq, lfq).
    decay: EMA decay of the vq/rvq codebook (the codebook learns by EMA, not by the optimizer).
    dead_code_threshold: vq/rvq codes whose EMA usage falls below this are re-seeded from the batch (0: off).
    kmeans_init: vq/rvq: initialise the codebook with k-means on the first batch seen.
    use_cosine_sim: vq/rvq: compare l2-normalised vectors.
    entropy_loss_weight: lfq: weight of the entropy loss that spreads usage over the codebook.
    """

    kind: str = "vq"
    codebook_size: int | None = None
    codebook_dim: int | None = None
    levels: list[int] | None = None
    num_quantizers: int = 2
    commitment_weight: float = 0.25
    decay: float = 0.99
    dead_code_threshold: float = 2.0
    kmeans_init: bool = True
    use_cosine_sim: bool = False
    entropy_loss_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in QUANTIZER_KINDS:
            raise ValueError(f"quantizer kind must be one of {', '.join(QUANTIZER_KINDS)}, got {self.kind!r}")
        if self.kind == "fsq":
            self._resolve_fsq_levels()
        elif self.levels is not None:
            raise ValueError(f"levels only apply to kind='fsq', got levels={self.levels} with kind={self.kind!r}")
        # `codebook_size` stays as given (None = default) and `codes_per_level` resolves it: a config that
        # rewrote its own fields would leak the vq default into a later `kind: fsq` override of the same recipe.
        size = self.codes_per_level
        if not isinstance(size, int) or size < 2:
            raise ValueError(f"codebook_size must be an integer >= 2, got {self.codebook_size!r}")
        if self.kind == "lfq" and size & (size - 1):
            raise ValueError(f"lfq codebook_size must be a power of two (one bit per latent channel), got {size}")
        if self.codebook_dim is not None:
            if self.kind not in ("vq", "rvq"):
                raise ValueError(f"codebook_dim only applies to vq/rvq; {self.kind} derives its dimension itself")
            if self.codebook_dim < 1:
                raise ValueError(f"codebook_dim must be >= 1, got {self.codebook_dim}")
        if self.use_cosine_sim and self.kind not in ("vq", "rvq"):
            raise ValueError(f"use_cosine_sim only applies to vq/rvq, got kind={self.kind!r}")
        if self.num_quantizers < 1:
            raise ValueError(f"num_quantizers must be >= 1, got {self.num_quantizers}")
        if not 0.0 < self.decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {self.decay}")
        for name in ("commitment_weight", "dead_code_threshold", "entropy_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def _resolve_fsq_levels(self) -> None:
        if not self.levels:
            raise ValueError("kind='fsq' needs levels, e.g. levels=[8, 5, 5, 5] (1000 codes) or [8, 8, 8] (512)")
        self.levels = list(self.levels)
        if any(not isinstance(level, int) or level < 3 for level in self.levels):
            # FSQ's default bounding is asymmetric at 2 levels; binary latents are what lfq is for.
            raise ValueError(f"fsq levels must be integers >= 3 (use kind='lfq' for binary), got {self.levels}")
        implied_size = math.prod(self.levels)
        if self.codebook_size is not None and self.codebook_size != implied_size:
            raise ValueError(
                f"fsq codebook_size is prod(levels) = {implied_size} for levels {self.levels}, "
                f"got codebook_size={self.codebook_size}; leave it unset"
            )

    def vector_dim(self, latent_channels: int) -> int:
        """Channels of the vectors the quantizer compares: fixed by the code structure for fsq/lfq."""
        if self.kind == "fsq":
            return len(self.levels)
        if self.kind == "lfq":
            return int(math.log2(self.codes_per_level))
        return self.codebook_dim or latent_channels

    @property
    def codes_per_level(self) -> int:
        """Codes in one codebook: fsq prod(levels), otherwise `codebook_size` (default 512)."""
        if self.kind == "fsq":
            return math.prod(self.levels)
        return DEFAULT_CODEBOOK_SIZE if self.codebook_size is None else self.codebook_size

    @property
    def codes_per_position(self) -> int:
        return self.num_quantizers if self.kind == "rvq" else 1

    @property
    def total_codebook_size(self) -> int:
        """Size of the single id space the codes live in (rvq: one block of ids per depth)."""
        return self.codes_per_level * self.codes_per_position

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantizerConfig:
        return strict_from_dict(cls, data)


class Quantizer(nn.Module):
    """A vector-quantize-pytorch quantizer behind one interface.

    forward(z [B, dim, h, w]) -> (z_q [B, dim, h, w], codes [B, h, w] or [B, h, w, q], aux_loss scalar)
    codes_to_latents(codes) -> z_q, code_vectors() -> [codebook_size, vector dim].
    """

    def __init__(self, config: QuantizerConfig, dim: int) -> None:
        super().__init__()
        self.config = config
        self.dim = dim
        self.codes_per_level = config.codes_per_level
        self.codes_per_position = config.codes_per_position
        self.codebook_size = config.total_codebook_size
        self.quantizer = _build_library_quantizer(config, dim)
        depth_offsets = torch.arange(self.codes_per_position) * self.codes_per_level
        self.register_buffer("depth_offsets", depth_offsets, persistent=False)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, _, height, width = z.shape
        # Nearest-code search under bf16 autocast would flip codes; the library only guards CUDA autocast.
        with torch.autocast(device_type=z.device.type, enabled=False):
            vectors = z.float().flatten(2).transpose(1, 2)  # [B, h*w, dim]: every library accepts sequences
            quantized, indices, aux_loss = self._quantize(vectors)
        z_q = quantized.transpose(1, 2).reshape(batch, -1, height, width)
        codes = indices.long().reshape(batch, height, width, self.codes_per_position) + self.depth_offsets
        if self.codes_per_position == 1:
            codes = codes.squeeze(-1)
        return z_q, codes, aux_loss

    def _quantize(self, vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        kind = self.config.kind
        if kind == "fsq":
            quantized, indices = self.quantizer(vectors)
            return quantized, indices, vectors.new_zeros(())
        quantized, indices, aux_loss = self.quantizer(vectors)
        if kind == "rvq":
            aux_loss = aux_loss.sum()  # one commitment loss per depth
        return quantized, indices, aux_loss

    def codes_to_latents(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] (rvq: [B, h, w, q]) in the single id space -> quantized latents [B, dim, h, w]."""
        expected_ndim = 4 if self.config.kind == "rvq" else 3
        if codes.ndim != expected_ndim or (expected_ndim == 4 and codes.shape[-1] != self.codes_per_position):
            per_position = f", {self.codes_per_position}" if expected_ndim == 4 else ""
            raise ValueError(f"expected codes of shape [B, h, w{per_position}], got {list(codes.shape)}")
        batch, height, width = codes.shape[:3]
        indices = codes.long().reshape(batch, height, width, self.codes_per_position) - self.depth_offsets
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codes_per_level):
            size = self.codes_per_level
            depth_rule = f" with depth d in [d*{size}, (d+1)*{size})" if expected_ndim == 4 else ""
            raise ValueError(f"codes out of range: expected codes in [0, {self.codebook_size}){depth_rule}")
        indices = indices.reshape(batch, height * width, self.codes_per_position)
        kind = self.config.kind
        if kind == "rvq":
            vectors = self.quantizer.get_output_from_indices(indices)
        elif kind == "vq":
            vectors = self.quantizer.get_output_from_indices(indices.squeeze(-1))
        else:  # fsq and lfq rebuild their codes arithmetically from the index
            vectors = self.quantizer.indices_to_codes(indices.squeeze(-1))
        return vectors.transpose(1, 2).reshape(batch, -1, height, width)

    def code_vectors(self) -> torch.Tensor:
        """Row i is the vector code i stands for (in code space, before any library projection).

        [codebook_size, D]; rvq stacks its depths' codebooks, so row d * codes_per_level + k is depth d's code k.
        """
        kind = self.config.kind
        if kind == "rvq":
            vectors = self.quantizer.codebooks.reshape(self.codebook_size, -1)
        elif kind == "fsq":
            vectors = self.quantizer.implicit_codebook
        else:  # vq's learned codebook, lfq's fixed +-1 bit patterns
            vectors = self.quantizer.codebook
        return vectors.detach().clone()


def _build_library_quantizer(config: QuantizerConfig, dim: int) -> nn.Module:
    ema_codebook = dict(
        codebook_size=config.codes_per_level,
        codebook_dim=config.codebook_dim,
        decay=config.decay,
        commitment_weight=config.commitment_weight,
        kmeans_init=config.kmeans_init,
        threshold_ema_dead_code=config.dead_code_threshold,
        use_cosine_sim=config.use_cosine_sim,
    )
    if config.kind == "vq":
        return VectorQuantize(dim=dim, **ema_codebook)
    if config.kind == "rvq":
        return ResidualVQ(dim=dim, num_quantizers=config.num_quantizers, **ema_codebook)
    if config.kind == "fsq":
        return FSQ(levels=config.levels, dim=dim)
    return LFQ(
        dim=dim,
        codebook_size=config.codes_per_level,
        entropy_loss_weight=config.entropy_loss_weight,
        commitment_loss_weight=config.commitment_weight,
    )
