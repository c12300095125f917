"""Tokenizer training stage: an accelerate loop with checkpoints, exact resume and reconstruction grids.

`mmgen tokenizer train RECIPE.yaml` (or `mmgen train` with `stage: tokenizer`) runs `train_tokenizer`.
The data order is a pure function of (seed, step), and every checkpoint holds model, optimizer, scheduler and
RNG states, so a killed run re-run with the same command continues exactly where its last checkpoint was.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.config import must_exist
from mmgen.images import make_grid, tensor_to_pil
from mmgen.tokenizers.losses import (
    LPIPS,
    PatchDiscriminator,
    gradient_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    reconstruction_loss,
)
from mmgen.tokenizers.vq_grid import GridTokenizer, GridTokenizerConfig
from mmgen.train.image_loop import (
    ImageDataConfig,
    ImageTrainingConfig,
    StepBatchSampler,
    build_image_datasets,
    make_accelerator,
    make_optimizer,
    run_image_loop,
)
from mmgen.train.run_record import record_recipe

# The tokenizer recipe's `data:` and `training:` sections are the shared image-stage ones.
TokenizerDataConfig = ImageDataConfig
TokenizerTrainingConfig = ImageTrainingConfig
__all__ = ["StepBatchSampler", "TokenizerRecipe", "train_tokenizer", "write_pairs"]


@dataclass
class TokenizerLossConfig:
    reconstruction: str = "l1"  # "l1", "l2" or "l1+l2"
    gradient_weight: float = 0.0  # L1 on image gradients: sharper edges and corners
    perceptual_weight: float = 0.0  # LPIPS; needs `lpips_path`
    lpips_path: str | None = must_exist(None)  # LPIPS-VGG weights as safetensors (see mmgen/tokenizers/losses.py)
    adversarial_weight: float = 0.0  # PatchGAN hinge loss; off by default
    adversarial_start: int = 0  # step at which the adversarial loss starts

    def __post_init__(self):
        if self.reconstruction not in ("l1", "l2", "l1+l2"):
            raise ValueError(f"loss.reconstruction must be 'l1', 'l2' or 'l1+l2', got {self.reconstruction!r}")
        if self.perceptual_weight > 0 and not self.lpips_path:
            raise ValueError("loss.perceptual_weight > 0 needs loss.lpips_path (LPIPS-VGG weights, safetensors)")


@dataclass
class TokenizerRecipe:
    stage: str = "tokenizer"
    output_dir: str = "runs/tokenizer"
    model: GridTokenizerConfig = field(default_factory=GridTokenizerConfig)
    data: TokenizerDataConfig = field(default_factory=TokenizerDataConfig)
    loss: TokenizerLossConfig = field(default_factory=TokenizerLossConfig)
    training: TokenizerTrainingConfig = field(default_factory=TokenizerTrainingConfig)

    def __post_init__(self):
        if self.stage != "tokenizer":
            raise ValueError(f"stage must be 'tokenizer' for this recipe, got {self.stage!r}")


def train_tokenizer(recipe: TokenizerRecipe, progress: bool = True) -> Path:
    """Train (or resume) and save the final tokenizer to `<output_dir>/tokenizer`; returns that path."""
    cfg = recipe.training
    output_dir = Path(recipe.output_dir)
    train_set, eval_set = build_image_datasets(recipe.data, recipe.model.image_size)
    accelerator = make_accelerator(cfg, output_dir, "tokenizer")
    model = GridTokenizer(recipe.model)
    optimizer, scheduler = make_optimizer(model.parameters(), cfg)
    discriminator, disc_optimizer = _adversary(recipe)
    lpips = LPIPS.from_file(recipe.loss.lpips_path) if recipe.loss.perceptual_weight > 0 else None

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if discriminator is not None:
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    if lpips is not None:
        lpips = lpips.to(accelerator.device)

    def train_step(step: int, pixels: torch.Tensor) -> dict:
        return _train_step(recipe, step, model, optimizer, scheduler, pixels, accelerator, lpips, discriminator,
                           disc_optimizer)

    def write_samples(step: int, pixels: torch.Tensor) -> None:
        _write_reconstructions(accelerator.unwrap_model(model), pixels, output_dir / "samples", step)

    model.train()
    record_recipe(recipe, recipe.output_dir)
    run_image_loop(accelerator, cfg, output_dir, train_set, eval_set, train_step, write_samples,
                   lambda: scheduler.get_last_lr()[0], desc="tokenizer", progress=progress)
    final_dir = output_dir / "tokenizer"
    if accelerator.is_main_process:
        tokenizer = accelerator.unwrap_model(model)
        tokenizer.eval()
        tokenizer.save_pretrained(final_dir)
    return final_dir


def _train_step(recipe, step, model, optimizer, scheduler, pixels, accelerator, lpips, discriminator,
                disc_optimizer) -> dict:
    loss_cfg = recipe.loss
    with accelerator.autocast():
        reconstruction, aux_loss, _ = model(pixels)
        reconstruction = reconstruction.float()
        recon = reconstruction_loss(reconstruction, pixels, loss_cfg.reconstruction)
        loss = recon + aux_loss.float()
        metrics = {"recon": recon.item(), "aux": aux_loss.item()}
        if loss_cfg.gradient_weight > 0:
            edges = gradient_loss(reconstruction, pixels)
            loss = loss + loss_cfg.gradient_weight * edges
            metrics["gradient"] = edges.item()
        if lpips is not None:
            perceptual = lpips(reconstruction, pixels)
            loss = loss + loss_cfg.perceptual_weight * perceptual
            metrics["lpips"] = perceptual.item()
        adversarial_on = discriminator is not None and step >= loss_cfg.adversarial_start
        if adversarial_on:
            generator_loss = hinge_generator_loss(discriminator(reconstruction))
            loss = loss + loss_cfg.adversarial_weight * generator_loss
            metrics["g_adv"] = generator_loss.item()
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if recipe.training.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), recipe.training.grad_clip)
    optimizer.step()
    scheduler.step()
    if adversarial_on:
        with accelerator.autocast():
            disc_loss = hinge_discriminator_loss(discriminator(pixels), discriminator(reconstruction.detach()))
        disc_optimizer.zero_grad(set_to_none=True)
        accelerator.backward(disc_loss)
        disc_optimizer.step()
        metrics["d_adv"] = disc_loss.item()
    metrics["loss"] = loss.item()
    return metrics


def _adversary(recipe: TokenizerRecipe):
    if recipe.loss.adversarial_weight <= 0:
        return None, None
    discriminator = PatchDiscriminator(in_channels=recipe.model.in_channels)
    optimizer = torch.optim.AdamW(discriminator.parameters(), lr=recipe.training.learning_rate, betas=(0.5, 0.9))
    return discriminator, optimizer


@torch.no_grad()
def _write_reconstructions(model, pixels, samples_dir: Path, step: int) -> None:
    if pixels.shape[0] == 0:
        return
    write_pairs(pixels, model.decode(model.encode(pixels)), samples_dir / f"step_{step:06d}.png")


def write_pairs(originals: torch.Tensor, decoded: torch.Tensor, path: Path) -> None:
    """Rows alternate original / decoded, so each pair sits one above the other."""
    originals, decoded = tensor_to_pil(originals), tensor_to_pil(decoded)
    columns = 8
    tiles = []
    for start in range(0, len(originals), columns):
        tiles += originals[start:start + columns] + decoded[start:start + columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(tiles, columns=columns).save(path)
