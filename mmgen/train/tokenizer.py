"""Tokenizer training stage: an accelerate loop with checkpoints, exact resume and reconstruction grids.

`mmgen tokenizer train RECIPE.yaml` (or `mmgen train` with `stage: tokenizer`) runs `train_tokenizer`.
The data order is a pure function of (seed, step), and every checkpoint holds model, optimizer, scheduler and
RNG states, so a killed run re-run with the same command continues exactly where its last checkpoint was.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mmgen.config import must_exist
from mmgen.data_engine.image_sources import ImageTensorDataset, collate_images, open_image_source, to_pixels
from mmgen.errors import UserError
from mmgen.files import write_json_atomic
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


@dataclass
class TokenizerDataConfig:
    source: str = "shapes"  # "shapes" (procedural), an image folder, a `datasets` directory or a parquet file
    image_column: str = "image"
    num_images: int = 20000  # shapes only: size of the procedural training set
    eval_source: str | None = None  # None: held-out shapes scenes, or the last `eval_images` rows of `source`
    eval_images: int = 500
    seed: int = 0


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
class TokenizerTrainingConfig:
    max_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    # "fp32", "bf16" or "fp16" (CUDA only). Not accelerate's "no": YAML reads a bare `no` as the boolean false.
    mixed_precision: str = "bf16"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    sample_every: int = 500  # reconstruction grid of fixed eval images
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.mixed_precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"training.mixed_precision must be 'fp32', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")


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


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches for steps [start_step, max_steps): epoch e is a permutation seeded by (seed, e).

    Because batch k depends only on (seed, k), resuming at step k replays exactly the batches an
    uninterrupted run would have seen.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start_step: int, max_steps: int):
        if num_items < batch_size:
            raise UserError(f"the training set has {num_items} images, fewer than one batch of {batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.max_steps = start_step, max_steps
        self.steps_per_epoch = num_items // batch_size  # drop the ragged tail: every batch is full

    def __len__(self) -> int:
        return max(self.max_steps - self.start_step, 0)

    def __iter__(self):
        epoch, permutation = -1, None
        for step in range(self.start_step, self.max_steps):
            step_epoch, offset = divmod(step, self.steps_per_epoch)
            if step_epoch != epoch:
                epoch = step_epoch
                generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                permutation = torch.randperm(self.num_items, generator=generator).tolist()
            yield permutation[offset * self.batch_size : (offset + 1) * self.batch_size]


def build_datasets(recipe: TokenizerRecipe) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    data, size = recipe.data, recipe.model.image_size
    train_source = open_image_source(data.source, size=size, num=data.num_images, seed=data.seed,
                                     column=data.image_column)
    if data.eval_source is not None:
        eval_source = open_image_source(data.eval_source, size=size, num=data.eval_images, seed=data.seed + 1,
                                        column=data.image_column)
        return ImageTensorDataset(train_source, size), ImageTensorDataset(eval_source, size)
    if data.source == "shapes":  # held-out scenes: another seed, never seen in training
        eval_source = open_image_source("shapes", size=size, num=data.eval_images, seed=data.seed + 10_000)
        return ImageTensorDataset(train_source, size), ImageTensorDataset(eval_source, size)
    total = len(train_source)
    held_out = min(data.eval_images, total // 10)
    train_indices, eval_indices = list(range(total - held_out)), list(range(total - held_out, total))
    return ImageTensorDataset(train_source, size, train_indices), ImageTensorDataset(train_source, size, eval_indices)


def latest_checkpoint(output_dir: Path) -> Path | None:
    checkpoints = sorted((output_dir / "checkpoints").glob("step_*[0-9]"))
    return checkpoints[-1] if checkpoints else None


def train_tokenizer(recipe: TokenizerRecipe, progress: bool = True) -> Path:
    """Train (or resume) and save the final tokenizer to `<output_dir>/tokenizer`; returns that path."""
    cfg = recipe.training
    output_dir = Path(recipe.output_dir)
    train_set, eval_set = build_datasets(recipe)  # bad data paths fail here, before anything is written
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(
        mixed_precision="no" if cfg.mixed_precision == "fp32" else cfg.mixed_precision,
        cpu=not torch.cuda.is_available(),
        project_dir=str(output_dir),
    )
    set_seed(cfg.seed)
    model = GridTokenizer(recipe.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(cfg.warmup_steps, cfg.max_steps))
    discriminator, disc_optimizer = _adversary(recipe)
    lpips = LPIPS.from_file(recipe.loss.lpips_path) if recipe.loss.perceptual_weight > 0 else None

    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if discriminator is not None:
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    if lpips is not None:
        lpips = lpips.to(accelerator.device)

    checkpoint = latest_checkpoint(output_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text()) if checkpoint else {}
    start_step = state.get("step", 0)
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, start_step, cfg.max_steps)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate_images,
                                         num_workers=cfg.num_workers)
    # Starting the loader draws its base seed from the global RNG. Restore the checkpoint's RNG state after that
    # draw, so the resumed run's random stream (dead-code restarts, dropout) is the uninterrupted run's.
    batches = iter(loader)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resuming from {checkpoint} (step {start_step})")
    fixed_eval = to_pixels(collate_images([eval_set[i] for i in range(min(16, len(eval_set)))])[0])
    skipped: dict[str, str] = state.get("skipped", {})  # row -> reason; a row is reported once
    log_path = output_dir / "train_log.jsonl"
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc="tokenizer", disable=not progress or
               not accelerator.is_main_process, dynamic_ncols=True)
    step, started = start_step, time.perf_counter()
    model.train()
    for batch, bad in batches:
        skipped.update((item.name, item.reason) for item in bad)
        if batch.shape[0] == 0:
            step += 1
            continue
        pixels = to_pixels(batch).to(accelerator.device)
        metrics = _train_step(recipe, step, model, optimizer, scheduler, pixels, accelerator, lpips,
                              discriminator, disc_optimizer)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            metrics.update(step=step, lr=scheduler.get_last_lr()[0],
                           images_per_s=round((step - start_step) * cfg.batch_size / (time.perf_counter() - started),
                                              1))
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if accelerator.is_main_process:
                with log_path.open("a") as log:
                    log.write(json.dumps(metrics) + "\n")
        if step % cfg.sample_every == 0 or step == cfg.max_steps:
            _write_reconstructions(accelerator.unwrap_model(model), fixed_eval, output_dir / "samples", step,
                                   accelerator)
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            _save_checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints, skipped)
    bar.close()

    final_dir = output_dir / "tokenizer"
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        tokenizer = accelerator.unwrap_model(model)
        tokenizer.eval()
        tokenizer.save_pretrained(final_dir)
        rows = [{"row": row, "reason": reason} for row, reason in skipped.items()]
        write_json_atomic(output_dir / "skipped_images.json", {"count": len(rows), "rows": rows})
    if skipped:
        accelerator.print(f"skipped {len(skipped)} unreadable images (see {output_dir / 'skipped_images.json'})")
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


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@torch.no_grad()
def _write_reconstructions(model, pixels, samples_dir: Path, step: int, accelerator) -> None:
    if not accelerator.is_main_process or pixels.shape[0] == 0:
        return
    codes = model.encode(pixels.to(accelerator.device))
    reconstruction = model.decode(codes)
    originals, decoded = tensor_to_pil(pixels), tensor_to_pil(reconstruction)
    # Rows alternate original / reconstruction so each pair sits one above the other.
    columns = 8
    tiles = []
    for start in range(0, len(originals), columns):
        tiles += originals[start:start + columns] + decoded[start:start + columns]
    samples_dir.mkdir(parents=True, exist_ok=True)
    make_grid(tiles, columns=columns).save(samples_dir / f"step_{step:06d}.png")


def _save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, skipped: dict[str, str]) -> None:
    """Write to a staging name, then rename: a kill mid-save leaves no checkpoint that looks complete."""
    checkpoints = output_dir / "checkpoints"
    staging = checkpoints / f".step_{step:06d}.partial"
    final = checkpoints / f"step_{step:06d}"
    if accelerator.is_main_process and staging.exists():  # left over by a run killed while saving
        shutil.rmtree(staging)
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        write_json_atomic(staging / "trainer_state.json", {"step": step, "skipped": skipped})
        staging.rename(final)
        for old in sorted(checkpoints.glob("step_*[0-9]"))[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()

