"""Diffusion decoder stage (`mmgen train` with `stage: decoder`).

Trains a `DiffusionDecoder` that renders a visual tokenizer's codes: conditioned on the code embeddings of an
image's codes, it learns to generate that image's latents in the tokenizer's renderer space (the tokenizer stays
frozen). Writes `<output_dir>/decoder` (diffusers format) and, for a semantic tokenizer, `<output_dir>/tokenizer`:
the tokenizer with the decoder attached, which then decodes through it (`mmgen init --tokenizer` takes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.config import must_exist
from mmgen.data_engine.image_sources import collate_images, to_pixels
from mmgen.decoders.diffusion import DiffusionDecoder, DiffusionDecoderConfig
from mmgen.errors import UserError
from mmgen.tokenizers import VisualTokenizer, load_visual_tokenizer
from mmgen.tokenizers.semantic import SemanticTokenizer
from mmgen.train.image_loop import (
    ImageDataConfig,
    ImageTrainingConfig,
    build_image_datasets,
    make_accelerator,
    make_optimizer,
    run_image_loop,
)
from mmgen.train.tokenizer import write_pairs

STATS_IMAGES = 512  # training images whose latents set the decoder's normalisation (the same on every resume)


@dataclass
class DecoderModelConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 1
    cond_dropout: float = 0.1
    num_inference_steps: int = 20  # default sampling steps (flow-matching Euler)
    guidance_scale: float = 1.5  # default decoder CFG


@dataclass
class DecoderRecipe:
    stage: str = "decoder"
    output_dir: str = "runs/decoder"
    tokenizer: str = must_exist("runs/tokenizer/semantic/tokenizer")  # the visual tokenizer whose codes it renders
    conditioning: str = "codes"
    model: DecoderModelConfig = field(default_factory=DecoderModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    training: ImageTrainingConfig = field(default_factory=ImageTrainingConfig)

    def __post_init__(self):
        if self.stage != "decoder":
            raise ValueError(f"stage must be 'decoder' for this recipe, got {self.stage!r}")
        if self.conditioning != "codes":
            raise ValueError(f"conditioning {self.conditioning!r} is not available in this version; use 'codes' "
                             "(the code embeddings of the image's codes)")


def load_renderable_tokenizer(path: str) -> VisualTokenizer:
    tokenizer = load_visual_tokenizer(path)
    if not hasattr(tokenizer, "image_latents"):
        raise UserError(f"tokenizer {path} ({tokenizer.tokenizer_type}) has no latent space to render from; the "
                        "diffusion decoder needs a grid or semantic tokenizer")
    return tokenizer


def condition_on_codes(tokenizer: VisualTokenizer, codes: torch.Tensor) -> torch.Tensor:
    """Codes [B, N] -> their code embeddings [B, N, D], the decoder's conditioning sequence."""
    return tokenizer.code_embeddings().to(codes.device)[codes]


def build_decoder(recipe: DecoderRecipe, tokenizer: VisualTokenizer, train_set) -> DiffusionDecoder:
    channels, size, _ = tokenizer.latent_shape
    sample, _ = collate_images([train_set[i] for i in range(min(STATS_IMAGES, len(train_set)))])
    latents = tokenizer.image_latents(to_pixels(sample))
    m = recipe.model
    config = DiffusionDecoderConfig(
        conditioning="codes", latent_channels=channels, latent_size=size,
        cond_dim=tokenizer.code_embeddings().shape[1], num_cond_tokens=tokenizer.num_tokens,
        hidden_size=m.hidden_size, num_layers=m.num_layers, num_heads=m.num_heads, patch_size=m.patch_size,
        cond_dropout=m.cond_dropout, num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
        latent_mean=float(latents.mean()), latent_std=float(latents.std().clamp_min(1e-6)),
        extra={"tokenizer_type": tokenizer.tokenizer_type})
    return DiffusionDecoder(config)


def train_decoder(recipe: DecoderRecipe, progress: bool = True) -> Path:
    """Train (or resume); returns `<output_dir>/tokenizer` for a semantic tokenizer, else `<output_dir>/decoder`."""
    cfg = recipe.training
    output_dir = Path(recipe.output_dir)
    tokenizer = load_renderable_tokenizer(recipe.tokenizer)
    train_set, eval_set = build_image_datasets(recipe.data, tokenizer.image_size)
    accelerator = make_accelerator(cfg, output_dir)
    torch.manual_seed(cfg.seed)
    decoder = build_decoder(recipe, tokenizer, train_set)
    tokenizer.to(accelerator.device)
    optimizer, scheduler = make_optimizer(decoder.parameters(), cfg)
    model, optimizer, scheduler = accelerator.prepare(decoder, optimizer, scheduler)
    decoder = accelerator.unwrap_model(model)

    def train_step(step: int, pixels: torch.Tensor) -> dict:
        codes = tokenizer.encode(pixels)
        latents = tokenizer.image_latents(pixels)
        with accelerator.autocast():
            loss = decoder.loss(latents, condition_on_codes(tokenizer, codes))
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return {"loss": loss.item()}

    def write_samples(step: int, pixels: torch.Tensor) -> None:
        decoded = render_codes(decoder, tokenizer, tokenizer.encode(pixels))
        write_pairs(pixels, decoded, output_dir / "samples" / f"step_{step:06d}.png")

    model.train()
    run_image_loop(accelerator, cfg, output_dir, train_set, eval_set, train_step, write_samples,
                   lambda: scheduler.get_last_lr()[0], desc="decoder", progress=progress)
    decoder.eval()
    if not accelerator.is_main_process:
        return output_dir / "decoder"
    decoder.save_pretrained(output_dir / "decoder")
    if isinstance(tokenizer, SemanticTokenizer):
        tokenizer.attach_decoder(decoder)
        tokenizer.save_pretrained(output_dir / "tokenizer")
        return output_dir / "tokenizer"
    return output_dir / "decoder"


@torch.no_grad()
def render_codes(decoder: DiffusionDecoder, tokenizer: VisualTokenizer, codes: torch.Tensor, seed: int = 0,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None) -> torch.Tensor:
    """Codes -> pixels through the diffusion decoder and the tokenizer's renderer."""
    was_training = decoder.training
    decoder.eval()
    generator = torch.Generator(device=codes.device).manual_seed(seed)
    latents = decoder.sample(condition_on_codes(tokenizer, codes), num_inference_steps, guidance_scale, generator)
    decoder.train(was_training)
    return tokenizer.render(latents)
