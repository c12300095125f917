"""A pretrained diffusers `VQModel` used as a visual tokenizer (e.g. a VQ-GAN from a latent-diffusion pipeline).

The directory stays a plain diffusers directory (config.json with `_class_name: "VQModel"` + safetensors weights),
so `VQModel.from_pretrained` reads what `save_pretrained` writes and `load_visual_tokenizer` recognises it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import VQModel

from .base import VisualTokenizer, read_tokenizer_config, refuse_pickle_only, register_visual_tokenizer


@register_visual_tokenizer
class DiffusersVQTokenizer(VisualTokenizer):
    """Codes are the VQModel's codebook indices on its latent grid, row-major."""

    tokenizer_type = "diffusers_vq"

    def __init__(self, vq_model: VQModel) -> None:
        super().__init__()
        self.vq_model = vq_model
        config = vq_model.config
        sample_size = config.sample_size
        if isinstance(sample_size, (list, tuple)):
            if len(set(sample_size)) != 1:
                raise ValueError(f"only square VQModels are supported, got sample_size={list(sample_size)}")
            sample_size = sample_size[0]
        # diffusers' Encoder halves the resolution in every block but the last.
        downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        if sample_size % downsample_factor:
            raise ValueError(
                f"VQModel sample_size {sample_size} is not divisible by its downsampling {downsample_factor}"
            )
        side = sample_size // downsample_factor
        self.image_size = sample_size
        self.in_channels = config.in_channels
        self.grid_shape = (side, side)
        self.num_tokens = side * side
        self.codebook_size = config.num_vq_embeddings
        self.embed_dim = config.vq_embed_dim or config.latent_channels

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vq_model.encode(pixels).latents
        _, _, (_, _, indices) = self.vq_model.quantize(latents)  # indices come flat: [B * h * w]
        return indices.reshape(pixels.shape[0], self.num_tokens)

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        shape = (codes.shape[0], *self.grid_shape, self.embed_dim)
        flat_codes = codes.reshape(-1)
        if self.vq_model.config.lookup_from_codebook:
            return self.vq_model.decode(flat_codes, force_not_quantize=True, shape=shape).sample
        # Without lookup_from_codebook, VQModel.decode takes latents, not indices: look the vectors up first.
        latents = self.vq_model.quantize.get_codebook_entry(flat_codes, shape)
        return self.vq_model.decode(latents, force_not_quantize=True).sample

    def code_embeddings(self) -> torch.Tensor:
        return self.vq_model.quantize.embedding.weight.detach().clone()

    def get_config(self) -> dict[str, Any]:
        # Keys starting with "_" are diffusers' bookkeeping (e.g. which values were defaults), not architecture.
        vq_config = {key: value for key, value in self.vq_model.config.items() if not key.startswith("_")}
        return {"tokenizer_type": self.tokenizer_type, **vq_config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> DiffusersVQTokenizer:
        vq_config = {key: value for key, value in config.items() if key != "tokenizer_type"}
        return cls(VQModel.from_config(vq_config))

    def _write_files(self, directory: Path) -> None:
        self.vq_model.save_pretrained(directory, safe_serialization=True)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> DiffusersVQTokenizer:
        path = Path(path)
        config = read_tokenizer_config(path)
        if config.get("_class_name") != "VQModel":
            raise ValueError(f"{path} is not a diffusers VQModel directory (config _class_name is not 'VQModel')")
        refuse_pickle_only(path)
        return cls(VQModel.from_pretrained(path, use_safetensors=True)).eval()
