"""The accelerate loop shared by the image-model stages (grid tokenizer, semantic tokenizer, diffusion decoder).

Each stage builds its model, optimizer and scheduler, prepares them on an `Accelerator`, and hands this loop a
`train_step(step, pixels) -> metrics` closure. The loop owns what every stage needs the same way: the data order
(a pure function of (seed, step)), exact resume from the newest complete checkpoint, a JSONL log, sample images
every `sample_every` steps, staged checkpoints and the report of unreadable images.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from mmgen.data_engine.image_sources import (
    ImageTensorDataset,
    SkippedImage,
    collate_images,
    open_image_source,
    to_pixels,
)
from mmgen.errors import UserError
from mmgen.files import broken_safetensors, set_aside_damaged, write_json_atomic
from mmgen.runtime import PRECISIONS, resolve_precision
from mmgen.train.settings import announce_precision, warn_on_long_warmup
from mmgen.train.train_log import TRAIN_LOG, drop_lines_after


@dataclass
class ImageDataConfig:
    source: str = "shapes"  # "shapes" (procedural), an image folder, a `datasets` directory or a parquet file
    image_column: str = "image"
    num_images: int = 20000  # shapes only: size of the procedural training set
    eval_source: str | None = None  # None: held-out shapes scenes, or the last `eval_images` rows of `source`
    eval_images: int = 500
    seed: int = 0


@dataclass
class ImageTrainingConfig:
    max_steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    # "auto" (bf16 where the hardware has it natively, else fp32), "fp32", "bf16" or "fp16" (CUDA only). Not
    # accelerate's "no": YAML reads a bare `no` as the boolean false.
    mixed_precision: str = "auto"
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    sample_every: int = 500  # sample images of fixed eval images
    checkpoint_every: int = 250
    keep_checkpoints: int = 2

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"training.mixed_precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.mixed_precision!r}")
        for name in ("max_steps", "batch_size", "log_every", "sample_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        warn_on_long_warmup(self.warmup_steps, self.max_steps)


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


EMPTY_BATCHES_BEFORE_GIVING_UP = 10  # all-unreadable batches at the start of a run: the source is broken


def _too_few_images(train_set, batch_size: int) -> str:
    """Why a training set smaller than one batch is too small, telling unreadable images from missing ones."""
    items = [train_set[i] for i in range(len(train_set))]
    unreadable = [item for item in items if isinstance(item, SkippedImage)]
    if items and len(unreadable) == len(items):
        examples = "; ".join(item.reason for item in unreadable[:2])  # each reason names its file
        return f"none of the {len(items)} training images is readable ({examples})"
    found = f"{len(items)} images" + (f" ({len(unreadable)} of them unreadable)" if unreadable else "")
    return f"the training set has {found}, fewer than one batch of {batch_size}; add images or lower " \
           "training.batch_size"


def build_image_datasets(data: ImageDataConfig, size: int) -> tuple[ImageTensorDataset, ImageTensorDataset]:
    """Training and held-out images. Bad paths fail here, before anything is written."""
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


def make_accelerator(cfg: ImageTrainingConfig, output_dir: Path, stage: str) -> Accelerator:
    precision = resolve_precision(cfg.mixed_precision)
    announce_precision(precision, output_dir, stage)
    accelerator = Accelerator(
        mixed_precision="no" if precision.name == "fp32" else precision.name,
        cpu=not torch.cuda.is_available(),
        project_dir=str(output_dir),
    )
    set_seed(cfg.seed)
    return accelerator


def make_optimizer(parameters, cfg: ImageTrainingConfig):
    optimizer = torch.optim.AdamW(parameters, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.warmup_steps, cfg.max_steps))
    return optimizer, scheduler


def warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest `step_N` (written under a staging name, then renamed: never half-written) with whole weights; one
    damaged later is moved aside and the one before it is used."""
    for checkpoint in reversed(sorted((output_dir / "checkpoints").glob("step_*[0-9]"))):
        broken = broken_safetensors(checkpoint)
        if not broken:
            return checkpoint
        set_aside_damaged(checkpoint, broken)
    return None


def run_image_loop(accelerator: Accelerator, cfg: ImageTrainingConfig, output_dir: Path,
                   train_set: torch.utils.data.Dataset, eval_set: torch.utils.data.Dataset,
                   train_step: Callable[[int, Any], dict], write_samples: Callable[[int, Any], None],
                   lr: Callable[[], float], desc: str, progress: bool = True,
                   collate: Callable[[list], tuple[Any, list]] = collate_images,
                   prepare: Callable[[Any], Any] | None = None) -> dict[str, str]:
    """Run (or resume) steps up to `cfg.max_steps`; everything prepared on `accelerator` is checkpointed.

    By default the datasets yield images (uint8 tensors or skipped-image records) and the steps get pixels in
    [-1, 1] on the device; other data brings its own `collate` (items -> (batch, skipped)) and `prepare`
    (batch -> step input). Returns the unreadable rows skipped (row -> reason), also in `skipped_images.json`.
    """
    if prepare is None:
        def prepare(batch):
            return to_pixels(batch).to(accelerator.device)
    checkpoint = latest_checkpoint(output_dir)
    state = json.loads((checkpoint / "trainer_state.json").read_text()) if checkpoint else {}
    start_step = state.get("step", 0)
    if len(train_set) < cfg.batch_size:
        raise UserError(_too_few_images(train_set, cfg.batch_size))
    sampler = StepBatchSampler(len(train_set), cfg.batch_size, cfg.seed, start_step, cfg.max_steps)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=cfg.num_workers)
    # Starting the loader draws its base seed from the global RNG. Restore the checkpoint's RNG state after that
    # draw, so the resumed run's random stream (dead-code restarts, dropout, noise) is the uninterrupted run's.
    batches = iter(loader)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        accelerator.print(f"resuming from {checkpoint} (step {start_step})")
    fixed_eval = prepare(collate([eval_set[i] for i in range(min(16, len(eval_set)))])[0])
    skipped: dict[str, str] = state.get("skipped", {})  # row -> reason; a row is reported once
    log_path = output_dir / TRAIN_LOG
    if accelerator.is_main_process:
        drop_lines_after(log_path, start_step)
    bar = tqdm(total=cfg.max_steps, initial=start_step, desc=desc, disable=not progress or
               not accelerator.is_main_process, dynamic_ncols=True)
    step, started = start_step, time.perf_counter()
    trained_any, empty_batches = False, 0
    for batch, bad in batches:
        skipped.update((item.name, item.reason) for item in bad)
        if len(batch) == 0:
            empty_batches += 1
            if not trained_any and empty_batches >= min(sampler.steps_per_epoch, EMPTY_BATCHES_BEFORE_GIVING_UP):
                examples = "; ".join(list(skipped.values())[:2])  # each reason names its file
                bar.close()
                raise UserError(f"no readable image in the first {empty_batches} batches of {cfg.batch_size} "
                                f"({len(skipped)} unreadable, e.g. {examples}); check the image source")
            step += 1
            continue
        trained_any = True
        metrics = train_step(step, prepare(batch))
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            elapsed = time.perf_counter() - started
            metrics.update(step=step, lr=lr(), images_per_s=round((step - start_step) * cfg.batch_size / elapsed, 1))
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if accelerator.is_main_process:
                with log_path.open("a") as log:
                    log.write(json.dumps(metrics) + "\n")
        if (step % cfg.sample_every == 0 or step == cfg.max_steps) and accelerator.is_main_process:
            write_samples(step, fixed_eval)
        if step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
            save_checkpoint(accelerator, output_dir, step, cfg.keep_checkpoints, skipped)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        rows = [{"row": row, "reason": reason} for row, reason in skipped.items()]
        write_json_atomic(output_dir / "skipped_images.json", {"count": len(rows), "rows": rows})
    if skipped:
        accelerator.print(f"skipped {len(skipped)} unreadable images (see {output_dir / 'skipped_images.json'})")
    return skipped


def save_checkpoint(accelerator, output_dir: Path, step: int, keep: int, skipped: dict[str, str]) -> None:
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
