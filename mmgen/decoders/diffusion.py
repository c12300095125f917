"""A diffusion decoder head: conditioning tokens -> image latents, by flow matching with a diffusers transformer.

SEED, LaVIT and BLIP3o-NEXT render pixels from a few semantic tokens (or from the LLM's hidden states) with a
diffusion model. This head is that model at any size: a `PixArtTransformer2DModel` (DiT with cross-attention)
denoises the latents of a *renderer* (a visual tokenizer's own continuous latent space, rendered to pixels by that
tokenizer's decoder, as Stable Diffusion renders through its VAE), conditioned through cross-attention on a
sequence of vectors:
  (a) the code embeddings of an image's codes (a de-tokenizer), or
  (b) the LLM's hidden states over the generated image span.
Optionally (SEED's de-tokenizer) a spatial map rides along: channels concatenated to the noisy latents, e.g. a semantic
tokenizer's own reconstruction of its features from the codes, which puts each object where it belongs from the
first step; cross-attention then only has to add what that blurry map lacks.

Training is rectified flow: x_t = (1 - t) x_0 + t noise, the transformer predicts the velocity noise - x_0, and
`FlowMatchEulerDiscreteScheduler` integrates it back in a few steps. Classifier-free guidance: the condition is
replaced by a learned null sequence for `cond_dropout` of the training rows.

On disk (diffusers format, safetensors only):
    decoder/decoder_config.json     conditioning kind, latent statistics, default sampling settings
    decoder/condition_encoder/      ConditionEncoder (config.json + diffusion_pytorch_model.safetensors)
    decoder/transformer/            PixArtTransformer2DModel
    decoder/scheduler/              FlowMatchEulerDiscreteScheduler config
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from mmgen.config import strict_from_dict
from mmgen.errors import UserError
from mmgen.files import atomic_directory

DECODER_CONFIG = "decoder_config.json"
CONDITIONINGS = ("codes", "hidden_states")
SPATIAL_CONDITIONS = ("none", "features")


@dataclass
class DiffusionDecoderConfig:
    """Shape of the head. The latent shape comes from the renderer; the condition shape from what conditions it.

    conditioning: "codes" (code embeddings of the image's codes) or "hidden_states" (the LLM's, over the image span).
    spatial_condition: "none", or "features" (a semantic tokenizer's decoded feature map, `spatial_channels` wide, on
    the latent grid; normalised per channel with `spatial_mean` / `spatial_std`, set from the training data).
    """

    conditioning: str = "codes"
    latent_channels: int = 4
    latent_size: int = 8
    cond_dim: int = 4  # size of one conditioning vector (code embedding or LLM hidden size)
    num_cond_tokens: int = 64  # conditioning sequence length (tokens per image)
    spatial_condition: str = "none"
    spatial_channels: int = 0
    spatial_mean: list[float] = field(default_factory=list)
    spatial_std: list[float] = field(default_factory=list)
    hidden_size: int = 128  # transformer width (num_heads * head_dim)
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 1
    cond_dropout: float = 0.1  # share of training rows that see the null condition (for CFG)
    num_inference_steps: int = 20
    guidance_scale: float = 1.5
    latent_mean: float = 0.0  # set from the training latents, so the transformer sees unit-scale targets
    latent_std: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # owner-specific notes (e.g. which tokenizer was used)

    def __post_init__(self):
        if self.conditioning not in CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}, got {self.conditioning!r}")
        if self.spatial_condition not in SPATIAL_CONDITIONS:
            raise ValueError(f"spatial_condition must be one of {', '.join(SPATIAL_CONDITIONS)}, got "
                             f"{self.spatial_condition!r}")
        has_map = self.spatial_condition != "none"
        if has_map != (self.spatial_channels > 0):
            raise ValueError(f"spatial_condition {self.spatial_condition!r} needs spatial_channels "
                             f"{'> 0' if has_map else '= 0'}, got {self.spatial_channels}")
        self.spatial_mean = [float(v) for v in self.spatial_mean] or [0.0] * self.spatial_channels
        self.spatial_std = [float(v) for v in self.spatial_std] or [1.0] * self.spatial_channels
        if not len(self.spatial_mean) == len(self.spatial_std) == self.spatial_channels:
            raise ValueError(f"spatial_mean and spatial_std need {self.spatial_channels} values each")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}")
        if self.latent_size % self.patch_size:
            raise ValueError(f"latent_size {self.latent_size} must be divisible by patch_size {self.patch_size}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {self.num_inference_steps}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiffusionDecoderConfig:
        return strict_from_dict(cls, data)


class ConditionEncoder(ModelMixin, ConfigMixin):
    """Conditioning vectors [B, N, cond_dim] -> cross-attention tokens [B, N, width], with learned positions.

    Positions matter: code embeddings say *what* each code is, not *where* it sits. The learned null sequence is
    the "no condition" input that classifier-free guidance contrasts with.
    """

    @register_to_config
    def __init__(self, cond_dim: int, num_tokens: int, width: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(cond_dim, width), nn.GELU(approximate="tanh"), nn.Linear(width, width))
        self.positions = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.null = nn.Parameter(torch.randn(num_tokens, width) * 0.02)
        self.norm = nn.LayerNorm(width)

    def forward(self, cond: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """`drop` [B] bool: rows that get the null sequence instead of their condition."""
        tokens = self.project(cond) + self.positions
        if drop is not None:
            tokens = torch.where(drop[:, None, None], self.null.to(tokens.dtype).expand_as(tokens), tokens)
        return self.norm(tokens)

    def null_tokens(self, batch: int) -> torch.Tensor:
        return self.norm(self.null.expand(batch, -1, -1))


class DiffusionDecoder(nn.Module):
    """Conditioning sequence -> latents of the renderer. `loss()` trains it; `sample()` draws latents."""

    def __init__(self, config: DiffusionDecoderConfig, condition_encoder: ConditionEncoder | None = None,
                 transformer: PixArtTransformer2DModel | None = None,
                 scheduler: FlowMatchEulerDiscreteScheduler | None = None):
        super().__init__()
        self.config = config
        head_dim = config.hidden_size // config.num_heads
        self.condition_encoder = condition_encoder or ConditionEncoder(
            cond_dim=config.cond_dim, num_tokens=config.num_cond_tokens, width=config.hidden_size)
        self.transformer = transformer or PixArtTransformer2DModel(
            num_attention_heads=config.num_heads, attention_head_dim=head_dim,
            in_channels=config.latent_channels + config.spatial_channels, out_channels=config.latent_channels,
            num_layers=config.num_layers,
            cross_attention_dim=config.hidden_size, sample_size=config.latent_size, patch_size=config.patch_size,
            use_additional_conditions=False, caption_channels=config.hidden_size, norm_type="ada_norm_single")
        self.scheduler = scheduler or FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)

    # ---- training ----------------------------------------------------------------------------------------------

    def forward(self, latents: torch.Tensor, cond: torch.Tensor, spatial: torch.Tensor | None = None) -> torch.Tensor:
        """The training loss (so a DDP-wrapped decoder all-reduces its gradients)."""
        return self.loss(latents, cond, spatial=spatial)

    def loss(self, latents: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None,
             spatial: torch.Tensor | None = None) -> torch.Tensor:
        """Flow-matching loss on a batch: latents [B, C, h, w] (renderer space), cond [B, N, cond_dim], and the
        spatial map [B, spatial_channels, h, w] when the decoder takes one."""
        self._check(latents, cond, spatial)
        x0 = self.normalize(latents)
        batch = x0.shape[0]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        # Logit-normal times (as in SD3): more training where the velocity is hardest to predict, mid-trajectory.
        t = torch.sigmoid(torch.randn(batch, generator=generator, device=x0.device))
        t_ = t.view(batch, 1, 1, 1).to(x0.dtype)
        noisy = (1 - t_) * x0 + t_ * noise
        drop = torch.rand(batch, generator=generator, device=x0.device) < self.config.cond_dropout
        tokens = self.condition_encoder(cond, drop)
        velocity = self._velocity(noisy, tokens, t, self._spatial_input(spatial, drop))
        return torch.nn.functional.mse_loss(velocity.float(), (noise - x0).float())

    # ---- sampling ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, num_inference_steps: int | None = None, guidance_scale: float | None = None,
               generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
               spatial: torch.Tensor | None = None) -> torch.Tensor:
        """Latents [B, C, h, w] for cond [B, N, cond_dim], from `noise` [B, C, h, w] if given (e.g. drawn per image
        from its own seed, so an image does not depend on its batch), else drawn from `generator`."""
        steps = num_inference_steps or self.config.num_inference_steps
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        if steps < 1 or not math.isfinite(scale) or scale < 0:
            raise UserError(f"decoder sampling needs num_inference_steps >= 1 and guidance_scale >= 0, got "
                            f"{steps} and {scale}")
        self._check(None, cond, spatial)
        batch, device = cond.shape[0], cond.device
        c = self.config
        shape = (batch, c.latent_channels, c.latent_size, c.latent_size)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device="cpu" if generator is None else generator.device)
        elif tuple(noise.shape) != shape:
            raise ValueError(f"expected noise of shape {list(shape)}, got {list(noise.shape)}")
        x = noise.to(device=device, dtype=cond.dtype)
        tokens = self.condition_encoder(cond)
        spatial = self._spatial_input(spatial)
        guided = scale != 1.0
        if guided:  # the null branch drops both conditions
            tokens = torch.cat([tokens, self.condition_encoder.null_tokens(batch).to(tokens.dtype)])
            spatial = None if spatial is None else torch.cat([spatial, torch.zeros_like(spatial)])
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)  # its own step counter
        scheduler.set_timesteps(steps, device=device)
        for timestep in scheduler.timesteps:
            t = (timestep / scheduler.config.num_train_timesteps).expand(len(tokens))
            model_input = torch.cat([x, x]) if guided else x
            velocity = self._velocity(model_input, tokens, t, spatial)
            if guided:
                cond_v, null_v = velocity.chunk(2)
                velocity = null_v + scale * (cond_v - null_v)
            x = scheduler.step(velocity, timestep, x).prev_sample
        return self.denormalize(x)

    # ---- helpers -----------------------------------------------------------------------------------------------

    def _velocity(self, noisy: torch.Tensor, tokens: torch.Tensor, t: torch.Tensor, spatial: torch.Tensor | None
                  ) -> torch.Tensor:
        if spatial is not None:
            noisy = torch.cat([noisy, spatial.to(noisy.dtype)], dim=1)
        # PixArt's timestep embedding expects diffusion-style timesteps in [0, 1000).
        return self.transformer(noisy, encoder_hidden_states=tokens, timestep=t * 1000, return_dict=False)[0]

    def _spatial_input(self, spatial: torch.Tensor | None, drop: torch.Tensor | None = None) -> torch.Tensor | None:
        """The normalised map; rows in `drop` get zeros (the training data's mean), the map's null condition."""
        if spatial is None:
            return None
        c = self.config
        mean = torch.tensor(c.spatial_mean, device=spatial.device).view(1, -1, 1, 1)
        std = torch.tensor(c.spatial_std, device=spatial.device).view(1, -1, 1, 1)
        normalized = (spatial.float() - mean) / std
        if drop is not None:
            normalized = torch.where(drop[:, None, None, None], torch.zeros_like(normalized), normalized)
        return normalized

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.config.latent_mean) / self.config.latent_std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.config.latent_std + self.config.latent_mean

    def _check(self, latents: torch.Tensor | None, cond: torch.Tensor, spatial: torch.Tensor | None = None) -> None:
        c = self.config
        if cond.ndim != 3 or cond.shape[1:] != (c.num_cond_tokens, c.cond_dim):
            raise ValueError(f"expected conditioning of shape [B, {c.num_cond_tokens}, {c.cond_dim}], "
                             f"got {list(cond.shape)}")
        expected = (c.latent_channels, c.latent_size, c.latent_size)
        if latents is not None and (latents.ndim != 4 or latents.shape[1:] != expected):
            raise ValueError(f"expected latents of shape [B, {', '.join(map(str, expected))}], "
                             f"got {list(latents.shape)}")
        if c.spatial_channels == 0:
            if spatial is not None:
                raise ValueError("this decoder takes no spatial map (spatial_condition 'none')")
            return
        expected_map = (len(cond), c.spatial_channels, c.latent_size, c.latent_size)
        if spatial is None or tuple(spatial.shape) != expected_map:
            got = "none" if spatial is None else list(spatial.shape)
            raise ValueError(f"this decoder also takes a {c.spatial_condition!r} map of shape {list(expected_map)}, "
                             f"got {got}")

    # ---- persistence (diffusers format) ------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        with atomic_directory(path, replace_marker=DECODER_CONFIG) as staging:
            self.write_to(staging)

    def write_to(self, directory: Path) -> None:
        """Write the files into an existing (staging) directory."""
        self.condition_encoder.save_pretrained(directory / "condition_encoder", safe_serialization=True)
        self.transformer.save_pretrained(directory / "transformer", safe_serialization=True)
        self.scheduler.save_pretrained(directory / "scheduler")
        (directory / DECODER_CONFIG).write_text(json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> DiffusionDecoder:
        path = Path(path)
        config_file = path / DECODER_CONFIG
        if not config_file.is_file():
            raise FileNotFoundError(f"no {DECODER_CONFIG} in {path}: not a diffusion decoder directory "
                                    "(train one with `mmgen train recipes/decoder/...`)")
        config = DiffusionDecoderConfig.from_dict(json.loads(config_file.read_text()))
        # use_safetensors=True: a directory holding only pickled weights is refused, never unpickled.
        condition_encoder = ConditionEncoder.from_pretrained(path / "condition_encoder", use_safetensors=True)
        transformer = PixArtTransformer2DModel.from_pretrained(path / "transformer", use_safetensors=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        return cls(config, condition_encoder, transformer, scheduler).eval()


def is_decoder_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / DECODER_CONFIG).is_file()
