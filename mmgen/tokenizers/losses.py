"""Training losses for pixel tokenizers: reconstruction, LPIPS perceptual distance, PatchGAN adversarial.

LPIPS (Zhang et al. 2018) is a VGG16 feature distance with learned per-channel weights. Its weights are
loaded from a local safetensors file (no download, no pickle); `LPIPS_KEYS` documents the expected names:
torchvision's `vgg16().features` state dict plus LPIPS' linear heads `lin0..lin4`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from mmgen.errors import UserError

# VGG16 `features` layout: conv channel widths, "M" = max-pool. LPIPS taps the ReLU after the last conv of
# each of the five stages.
_VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_STAGE_WIDTHS = (64, 128, 256, 512, 512)
# ImageNet statistics in LPIPS' [-1, 1] input convention.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(reconstruction, target)
    if kind == "l2":
        return F.mse_loss(reconstruction, target)
    if kind == "l1+l2":
        return F.l1_loss(reconstruction, target) + F.mse_loss(reconstruction, target)
    raise ValueError(f"reconstruction loss must be 'l1', 'l2' or 'l1+l2', got {kind!r}")


def gradient_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 distance between horizontal and vertical finite differences of the two images.

    Pixel losses are dominated by flat regions; this term lives on edges and corners, so it pushes the decoder
    toward sharp outlines early (a rounded hexagon reads as a circle; a blurred star as a blob).
    """
    dx = lambda image: image[..., :, 1:] - image[..., :, :-1]  # noqa: E731
    dy = lambda image: image[..., 1:, :] - image[..., :-1, :]  # noqa: E731
    return F.l1_loss(dx(reconstruction), dx(target)) + F.l1_loss(dy(reconstruction), dy(target))


class LPIPS(nn.Module):
    """LPIPS-VGG distance; frozen. `forward(a, b)` takes images in [-1, 1] and returns the batch mean."""

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, item, 3, padding=1), nn.ReLU(inplace=False)]
                in_channels = item
        self.features = nn.Sequential(*layers)
        self.taps = [i for i, layer in enumerate(layers) if isinstance(layer, nn.ReLU)]
        self.taps = [self.taps[k] for k in (1, 3, 6, 9, 12)]  # last ReLU of each VGG stage
        self.lins = nn.ModuleList(nn.Conv2d(width, 1, 1, bias=False) for width in _STAGE_WIDTHS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LPIPS:
        path = Path(path)
        if path.suffix != ".safetensors":
            raise UserError(f"{path}: LPIPS weights must be a .safetensors file (pickle files are refused)")
        state = load_file(str(path))
        renamed = {}
        for key, value in state.items():
            if key.startswith("lin") and ".model.1." in key:  # LPIPS' own naming: lin{k}.model.1.weight
                key = f"lins.{key[3]}.weight"
            renamed[key] = value
        model = cls()
        missing, unexpected = model.load_state_dict(renamed, strict=False)
        if missing or unexpected:
            raise UserError(
                f"{path}: not LPIPS-VGG weights (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}); "
                "expected torchvision vgg16 'features.*' keys plus 'lin0.model.1.weight' ... 'lin4.model.1.weight'"
            )
        return model.eval()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x, y = (a - self.shift) / self.scale, (b - self.shift) / self.scale
        total = a.new_zeros(())
        stage = 0
        for index, layer in enumerate(self.features):
            x, y = layer(x), layer(y)
            if index in self.taps:
                fx, fy = _unit_normalize(x), _unit_normalize(y)
                total = total + self.lins[stage]((fx - fy) ** 2).mean()
                stage += 1
                if stage == len(self.taps):
                    break
        return total


def _unit_normalize(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017): one real/fake logit per receptive-field patch."""

    def __init__(self, in_channels: int = 3, width: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width
        for index in range(1, num_layers):
            out = width * min(2**index, 8)
            layers += [nn.Conv2d(channels, out, 4, 2, 1, bias=False), nn.GroupNorm(8, out), nn.LeakyReLU(0.2)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.net(pixels)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
