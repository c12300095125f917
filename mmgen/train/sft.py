"""SFT stage: TRL's `SFTTrainer` on a pre-tokenized dataset (`mmgen data build`), full / LoRA / QLoRA.

The dataset already holds `input_ids` and `completion_mask` (docs/architecture.md, "Sequences"), so TRL skips its own
tokenization and puts the loss on the completion (the image span, or the answer). This module adds what TRL does
not know about: loading a unified checkpoint, LoRA that trains only the *new* image-token rows of the embedding
table and LM head (the text rows stay bit-identical), resuming from the newest complete checkpoint, sample image
grids for fixed prompts while training, and writing a unified checkpoint at the end.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
from transformers import TrainerCallback, set_seed

from mmgen.checkpoint import UnifiedModel, causal_lm_class, load_causal_lm, load_unified
from mmgen.config import must_exist
from mmgen.errors import UserError
from mmgen.runtime import pick_attn_implementation
from mmgen.train.checkpoints import latest_complete_checkpoint, write_final_checkpoint
from mmgen.train.lora import LoraSettings, add_lora, without_row_tables
from mmgen.train.run_record import record_recipe
from mmgen.train.settings import TrainerSettings, announce_precision, check_recipe_head
from mmgen.train.train_log import TrainLogCallback

logger = logging.getLogger(__name__)

METHODS = ("full", "lora", "qlora")
OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit"}


@dataclass
class SFTTrainingConfig(TrainerSettings):
    optimizer: str = "adamw"  # "adamw", "adamw_8bit" / "paged_adamw_8bit" (bitsandbytes)
    eval_steps: int = 200
    dataloader_num_workers: int = 0

    POSITIVE: ClassVar[tuple[str, ...]] = (*TrainerSettings.POSITIVE, "eval_steps")

    def __post_init__(self):
        super().__post_init__()
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"training.optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")


@dataclass
class SampleSettings:
    """Image grids for fixed prompts, written at every evaluation: the fastest way to see training work."""

    prompts: list[str] = field(default_factory=list)
    num_images: int = 2
    cfg_scale: float = 3.0
    temperature: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass
class SFTRecipe:
    stage: str = "sft"
    model: str = must_exist("???")  # unified checkpoint (`mmgen init`)
    data: str = must_exist("???")  # pre-tokenized dataset (`mmgen data build`), with train/eval splits
    output_dir: str = "runs/sft"
    method: str = "lora"  # "full", "lora" or "qlora" (4-bit base, CUDA + bitsandbytes)
    save: str = "merged"  # LoRA/QLoRA: "merged" weights or the base + "adapter"
    lora: LoraSettings = field(default_factory=LoraSettings)
    training: SFTTrainingConfig = field(default_factory=SFTTrainingConfig)
    samples: SampleSettings = field(default_factory=SampleSettings)
    trust_remote_code: bool = False

    def __post_init__(self):
        check_recipe_head(self, "sft", METHODS)


# ---- entry point ---------------------------------------------------------------------------------------------


def train_sft(recipe: SFTRecipe, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Run (or resume) SFT; returns the final unified checkpoint directory `<output_dir>/model`."""
    from datasets import load_from_disk

    output_dir = Path(recipe.output_dir)
    check_requirements(recipe)
    announce_precision(recipe.training.precision(), output_dir, "sft")
    unified = load_unified(recipe.model, with_model=False)  # the LM is loaded for training below
    try:
        dataset = load_from_disk(recipe.data)
    except FileNotFoundError:
        raise UserError(f"data {recipe.data} is not a data set written by `mmgen data build` (no dataset_dict.json "
                        "or dataset_info.json); build one and point `data` at its output_dir") from None
    check_dataset(dataset, recipe.data, unified.meta)
    warning = repetition_warning(len(dataset["train"]), recipe.training.max_steps, recipe.training.batch_size)
    if warning:
        logger.warning(warning)
    set_seed(recipe.training.seed)  # LoRA's random init happens before the Trainer seeds anything
    model = load_model_for_training(recipe, unified)
    trainer = build_trainer(recipe, model, unified, dataset, callbacks or [])
    record_recipe(recipe, output_dir)
    resume = latest_complete_checkpoint(output_dir / "checkpoints")
    if resume:
        logger.warning("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        write_sft_checkpoint(recipe, trainer.model, unified, output_dir / "model")
    trainer.accelerator.wait_for_everyone()
    return output_dir / "model"


def check_requirements(recipe: SFTRecipe) -> None:
    """Refuse GPU-only options up front, with the fallback in the message."""
    cuda = torch.cuda.is_available()
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    if recipe.method == "qlora" and not (cuda and has_bnb):
        missing = "a CUDA GPU" if not cuda else "bitsandbytes (pip install 'mmgen-kit[bitsandbytes]')"
        raise UserError(f"method qlora (4-bit base weights) needs {missing}; use method: lora on this machine")
    if recipe.training.optimizer != "adamw" and not has_bnb:
        raise UserError(f"optimizer {recipe.training.optimizer} needs bitsandbytes "
                        "(pip install 'mmgen-kit[bitsandbytes]'); use optimizer: adamw")
    recipe.training.check_machine()


MANY_EPOCHS = 10  # passes over the train split beyond which a run mostly memorises its rows


def repetition_warning(train_rows: int, max_steps: int, batch_size: int) -> str | None:
    """A line for runs that would show each train row many times (a small folder with a large-corpus recipe)."""
    epochs = max_steps * batch_size / max(train_rows, 1)
    if epochs <= MANY_EPOCHS:
        return None
    return (f"{max_steps} steps x batch {batch_size} pass {epochs:.0f} times over the {train_rows} train rows: the "
            "model will memorise them; add data (`mmgen data build` train_size / more sources) or lower "
            "training.max_steps")


def check_dataset(dataset, path: str, meta: dict) -> None:
    """The data must be built for this model's image tokens, with the columns SFT reads."""
    splits = set(dataset.keys()) if hasattr(dataset, "keys") else set()
    if "train" not in splits:
        raise UserError(f"{path} has no 'train' split; build it with `mmgen data build`")
    missing = {"input_ids", "completion_mask"} - set(dataset["train"].column_names)
    if missing:
        raise UserError(f"{path} misses the columns {', '.join(sorted(missing))}; build it with `mmgen data build`")
    info_file = Path(path) / "build_info.json"
    if info_file.is_file():
        info = json.loads(info_file.read_text())
        if info.get("image_tokens") != meta["image_tokens"] or info.get("tokens_per_image") != meta[
                "tokens_per_image"]:
            raise UserError(f"{path} was built for other image tokens than {meta.get('base_model', 'this model')} "
                            "has (see build_info.json vs mmgen.json); rebuild the data with this model")


# ---- model ---------------------------------------------------------------------------------------------------


def load_model_for_training(recipe: SFTRecipe, unified: UnifiedModel):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    attn = recipe.training.attn_implementation
    if recipe.method == "qlora":
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=torch.bfloat16)
        model = AutoModelForCausalLM.from_pretrained(recipe.model, local_files_only=True, use_safetensors=True,
                                                     quantization_config=quantization,
                                                     attn_implementation=pick_attn_implementation(
                                                         attn, device, causal_lm_class(Path(recipe.model))),
                                                     trust_remote_code=recipe.trust_remote_code)
    else:
        # Master weights in fp32; bf16 comes from autocast (the Trainer's bf16=True).
        model = load_causal_lm(Path(recipe.model), torch.device("cpu"), "fp32", attn, recipe.trust_remote_code,
                               attn_device=device)
    if recipe.method == "full":
        return model
    return add_lora(model, recipe.lora, unified.vocab.start_id, quantized=recipe.method == "qlora",
                    gradient_checkpointing=recipe.training.gradient_checkpointing)


# ---- trainer -------------------------------------------------------------------------------------------------


# Below this size the batch's full logits cost little memory, and computing them in one matmul is faster than TRL's
# chunked LM head, which (off Triton devices) scores every position tile by tile and recomputes the logits in the
# backward pass. Above it (large vocabularies, long sequences) the chunked head's memory saving matters more.
PLAIN_LOGITS_MAX_BYTES = 256 * 2**20


def _trainer_class():
    from trl import SFTTrainer

    class MMGenSFTTrainer(SFTTrainer):
        """TRL's SFTTrainer; embedding tables trained through `modules_to_save` get no weight decay, and batches
        whose logits are small take the plain LM head (see PLAIN_LOGITS_MAX_BYTES)."""

        def get_decay_parameter_names(self, model) -> list[str]:
            return without_row_tables(super().get_decay_parameter_names(model))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.get("labels")
            if return_outputs or labels is None or not plain_logits_fit(labels, self.model.config):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False)
            targets = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(outputs.logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                                     ignore_index=-100, reduction="sum")
            tokens = (targets != -100).sum() if num_items_in_batch is None else num_items_in_batch
            loss = loss / torch.as_tensor(tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages the gradients
            return loss

    return MMGenSFTTrainer


def plain_logits_fit(labels: torch.Tensor, config) -> bool:
    return labels.numel() * config.get_text_config().vocab_size * 4 <= PLAIN_LOGITS_MAX_BYTES


def build_trainer(recipe: SFTRecipe, model, unified: UnifiedModel, dataset, extra_callbacks=()):
    from trl import SFTConfig

    t = recipe.training
    output_dir = Path(recipe.output_dir)
    has_eval = "eval" in dataset and len(dataset["eval"]) > 0
    config = SFTConfig(
        **t.trainer_arguments(output_dir / "checkpoints"),
        per_device_eval_batch_size=t.batch_size,
        optim=OPTIMIZERS[t.optimizer],
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps,
        dataloader_num_workers=t.dataloader_num_workers,
        completion_only_loss=True,
        max_length=None,  # sequences were length-checked by `mmgen data build`; never truncate an image span
        dataset_num_proc=None,
        remove_unused_columns=True,
    )
    callbacks = [TrainLogCallback(output_dir)]
    if recipe.samples.prompts:
        callbacks.append(SampleGridCallback(recipe, unified, output_dir / "samples"))
    return _trainer_class()(
        model=model,
        args=config,
        train_dataset=dataset["train"].select_columns(["input_ids", "completion_mask"]),
        eval_dataset=dataset["eval"].select_columns(["input_ids", "completion_mask"]) if has_eval else None,
        processing_class=unified.tokenizer,
        callbacks=callbacks + list(extra_callbacks),
    )


# ---- final output --------------------------------------------------------------------------------------------


class SampleGridCallback(TrainerCallback):
    """At every evaluation (and at the end), sample the recipe's prompts and save a grid per step."""

    def __init__(self, recipe: SFTRecipe, unified: UnifiedModel, out_dir: Path):
        self.settings = recipe.samples
        self.unified = unified
        self.out_dir = out_dir

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None:
            self.write_grid(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero and model is not None and not (self.out_dir / _grid_name(
                state.global_step)).exists():
            self.write_grid(model, state.global_step)

    @torch.no_grad()
    def write_grid(self, model, step: int) -> Path:
        from mmgen.images import make_grid
        from mmgen.sampling import ImageGenerator

        was_training = model.training
        current = dataclasses.replace(self.unified, model=model)
        s = self.settings
        try:
            with torch.autocast(next(model.parameters()).device.type, enabled=False):
                images = ImageGenerator(current, merge_adapter=False).generate(
                    s.prompts, num_images=s.num_images, cfg_scale=s.cfg_scale, temperature=s.temperature,
                    top_k=s.top_k, seed=s.seed)
        finally:
            model.train(was_training)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / _grid_name(step)
        make_grid([image for row in images for image in row], columns=s.num_images).save(path)
        (self.out_dir / "prompts.json").write_text(json.dumps(s.prompts, indent=2) + "\n")
        return path


def _grid_name(step: int) -> str:
    return f"step_{step:06d}.png"


def write_sft_checkpoint(recipe: SFTRecipe, model, unified: UnifiedModel, out_dir: Path) -> Path:
    details = {"method": recipe.method, "data": recipe.data, "steps": recipe.training.max_steps}
    return write_final_checkpoint(model, unified, out_dir, base_path=recipe.model, method=recipe.method,
                                  save=recipe.save, stage="sft", details=details)
