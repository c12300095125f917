"""What every Trainer-based stage's recipe shares (SFT, GRPO): the `training:` section, which each stage's config
extends, and the checks of the recipe's head (stage, method, save)."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mmgen.errors import UserError
from mmgen.files import write_json_atomic
from mmgen.runtime import PRECISIONS, Precision, resolve_precision

REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
TRACKER_INSTALL = {"tensorboard": "pip install 'mmgen-kit[tracking]'", "trackio": "pip install 'mmgen-kit[tracking]'",
                   "wandb": "pip install wandb"}


def warn_on_long_warmup(warmup_steps: int, max_steps: int) -> None:
    if warmup_steps >= max_steps:
        logging.getLogger("mmgen.train").warning(
            "training.warmup_steps (%d) >= training.max_steps (%d): the learning rate never reaches "
            "training.learning_rate; lower warmup_steps (e.g. %d) or raise max_steps", warmup_steps, max_steps,
            max(max_steps // 10, 0))


@dataclass
class TrainerSettings:
    max_steps: int = 1000
    batch_size: int = 16  # per device
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-4
    lr_scheduler: str = "cosine"
    warmup_steps: int = 20
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # "auto" (bf16 where the hardware has it natively, else fp32), "fp32", "bf16", "fp16"
    gradient_checkpointing: bool = False
    attn_implementation: str = "auto"  # "auto": flash-attn on CUDA when installed, else sdpa, else eager
    seed: int = 0
    logging_steps: int = 10
    save_steps: int = 200
    save_total_limit: int = 2
    report_to: str = "none"  # "none", "tensorboard", "trackio", "wandb"

    POSITIVE: ClassVar[tuple[str, ...]] = ("max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps",
                                           "save_steps", "save_total_limit")

    def __post_init__(self):
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"training.mixed_precision must be one of {', '.join(PRECISIONS)}, got "
                             f"{self.mixed_precision!r}")
        if self.report_to not in REPORT_TO:
            raise ValueError(f"training.report_to must be one of {', '.join(REPORT_TO)}, got {self.report_to!r}")
        for name in self.POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"training.{name} must be >= 1, got {getattr(self, name)}")
        warn_on_long_warmup(self.warmup_steps, self.max_steps)

    def check_machine(self) -> None:
        """Refuse up front, with the fallback named, what this machine cannot run (rather than failing once the
        model is loaded)."""
        import torch

        if self.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("mixed_precision fp16 needs CUDA; "
                            "use auto (bf16 where this CPU has it natively, else fp32)")
        if self.report_to != "none" and importlib.util.find_spec(self.report_to) is None:
            raise UserError(f"training.report_to: {self.report_to} is not installed ({TRACKER_INSTALL[self.report_to]}"
                            "); or set training.report_to=none")

    def precision(self) -> Precision:
        return resolve_precision(self.mixed_precision)

    def trainer_arguments(self, output_dir: Path) -> dict:
        """The `transformers.TrainingArguments` these settings map to (TRL's configs extend them)."""
        import torch

        precision = self.precision().name
        return dict(
            output_dir=str(output_dir),
            max_steps=self.max_steps,
            per_device_train_batch_size=self.batch_size,
            gradient_accumulation_steps=self.gradient_accumulation_steps,
            learning_rate=self.learning_rate,
            lr_scheduler_type=self.lr_scheduler,
            warmup_steps=self.warmup_steps,
            weight_decay=self.weight_decay,
            max_grad_norm=self.max_grad_norm,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=not torch.cuda.is_available(),
            gradient_checkpointing=self.gradient_checkpointing,
            seed=self.seed,
            data_seed=self.seed,
            logging_steps=self.logging_steps,
            save_strategy="steps",
            save_steps=self.save_steps,
            save_total_limit=self.save_total_limit,
            report_to=[] if self.report_to == "none" else [self.report_to],
            save_only_model=False,  # optimizer, scheduler and RNG state too: a killed run resumes exactly
            disable_tqdm=False,
        )


PRECISION_FILE = "precision.json"


def announce_precision(precision: Precision, output_dir: Path, stage: str) -> None:
    """Print the resolved precision and why, and record it beside the stage's outputs (`precision.json`)."""
    print(f"{stage}: {precision.line()}", flush=True)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / PRECISION_FILE, precision.to_dict())


SAVE_MODES = ("merged", "adapter")


def check_recipe_head(recipe, stage: str, methods: tuple[str, ...]) -> None:
    """`stage` names this trainer, `method` is one it offers, `save` is merged weights or base + adapter."""
    if recipe.stage != stage:
        raise ValueError(f"stage must be {stage!r} for this recipe, got {recipe.stage!r}")
    if recipe.method not in methods:
        raise ValueError(f"method must be one of {', '.join(methods)}, got {recipe.method!r}")
    if recipe.save not in SAVE_MODES:
        raise ValueError(f"save must be 'merged' or 'adapter', got {recipe.save!r}")
