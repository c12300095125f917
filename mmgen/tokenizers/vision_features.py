"""Patch features from a frozen `transformers` vision model loaded from a local directory.

SEED reads its images through a frozen pretrained vision encoder; this is that option for the semantic tokenizer.
Any vision transformer `AutoModel` loads (CLIP / SigLIP vision towers or their dual-encoder checkpoints, DINOv2,
ViT, ...): the features are the last hidden states of the patch tokens (class and register tokens dropped).
Images arrive as the kit's pixels in [-1, 1] at the tokenizer's size; they are resized to the model's input size
and normalised with the mean/std of the directory's image processor, read by `AutoImageProcessor` (which finds it in
`preprocessor_config.json` or inside a processor's `processor_config.json`); 0.5 / 0.5 when there is none.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


class VisionFeatureEncoder(nn.Module):
    """Frozen vision model -> patch features [B, num_features, channels]."""

    def __init__(self, model: nn.Module, image_processor=None):
        """`image_processor`: the model's transformers image processor, for its mean/std (None: 0.5 / 0.5)."""
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        vision_config = getattr(model.config, "vision_config", model.config)
        self.image_size = _as_int(vision_config.image_size)
        self.patch_size = _as_int(vision_config.patch_size)
        self.channels = vision_config.hidden_size
        self.num_features = (self.image_size // self.patch_size) ** 2
        mean = getattr(image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        std = getattr(image_processor, "image_std", None) or [0.5, 0.5, 0.5]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.image_processor = image_processor

    @property
    def vision(self) -> nn.Module:
        """The image tower: dual encoders (CLIPModel, SiglipModel) keep it in `vision_model`, as do the towers'
        own classes; other vision models are the tower."""
        return getattr(self.model, "vision_model", self.model)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VisionFeatureEncoder:
        """Load a local `transformers` vision model directory (safetensors weights only, no remote code)."""
        from transformers import AutoImageProcessor, AutoModel

        from .base import refuse_pickle_only

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"feature encoder {path} is not a transformers model directory (no config.json)")
        refuse_pickle_only(path)
        model = AutoModel.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
        vision_config = getattr(model.config, "vision_config", model.config)
        if not all(hasattr(vision_config, key) for key in ("image_size", "patch_size", "hidden_size")):
            raise ValueError(f"feature encoder {path} ({type(model).__name__}) is not a vision transformer: its "
                             "config has no image_size / patch_size / hidden_size")
        try:
            image_processor = AutoImageProcessor.from_pretrained(path)
        except (OSError, ValueError):  # no image processor saved with the model
            image_processor = None
        return cls(model, image_processor)

    def train(self, mode: bool = True) -> VisionFeatureEncoder:
        super().train(mode)
        self.model.eval()  # frozen: no dropout, whatever the tokenizer around it does
        return self

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, C, H, W] in [-1, 1] -> patch features [B, num_features, channels] (float32)."""
        if pixels.shape[-1] != self.image_size or pixels.shape[-2] != self.image_size:
            pixels = F.interpolate(pixels, size=(self.image_size, self.image_size), mode="bicubic",
                                   align_corners=False, antialias=True)
        inputs = ((pixels + 1) / 2 - self.mean) / self.std
        dtype = next(self.model.parameters()).dtype
        hidden = self.vision(pixel_values=inputs.to(dtype)).last_hidden_state
        # class and register tokens come first in these models; the patch tokens are the last num_features
        return hidden[:, -self.num_features:].float()

    def save_pretrained(self, directory: Path) -> None:
        """The model in `transformers` format (safetensors) and its image processor, if it had one."""
        self.model.save_pretrained(directory, safe_serialization=True)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(directory)


def _as_int(value) -> int:
    """Some configs give sizes as (h, w); the kit works on square images."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"only square vision model inputs are supported, got {tuple(value)}")
        return int(value[0])
    return int(value)

