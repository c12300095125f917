"""GRPO stage: TRL's `GRPOTrainer` with image rollouts, image rewards and an on-policy image log-prob.

What TRL does unchanged: grouping, advantages, clipping, KL to the reference (under LoRA the reference is the same
model with the adapter disabled, so there is one copy in memory), optimisation, checkpoints, logging. What
`ImageGRPOTrainer` replaces, each at the narrowest method:

* `_tokenize_prompts`: prompts arrive as token ids built by `PromptBuilder` (caption text never becomes image or
  control tokens), so nothing is re-tokenized.
* `_generate_single_turn`: rollouts are exactly N codes then `<|image_end|>`, drawn by mmgen's sampler: cond and
  uncond rows in one batched forward with a KV cache, guidance on the code logits.
* `_get_per_token_logps_and_entropies`: the log-prob of each code under the distribution it was actually drawn
  from: `log_softmax((uncond + s * (cond - uncond)) / T)` over the code rows, with both branches in the graph. TRL's
  default (unguided logits over the whole vocabulary) would make every rollout off-policy. `<|image_end|>` is
  forced, so its log-prob is 0 under both the sampler and the loss.
* `_calculate_rewards`: samples a reward failed on (with `on_reward_error: skip`) are left out of the update.

Rollouts sample the full guided distribution (no top-k / top-p): a truncated distribution gives a log-prob of -inf
to tokens outside the reference's or the updated policy's cut, which breaks the KL and the ratio.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import TrainerCallback, set_seed

from mmgen.checkpoint import UnifiedModel, load_causal_lm, load_unified
from mmgen.config import must_exist
from mmgen.errors import UserError
from mmgen.rewards.scoring import ON_ERROR, RewardSet
from mmgen.sampling import CodeHead, ImageGenerator, SamplingConfig, guide, left_pad
from mmgen.train.checkpoints import latest_complete_checkpoint, write_final_checkpoint
from mmgen.train.grpo_data import PromptSettings, build_prompt_dataset
from mmgen.train.lora import LoraSettings, add_lora, without_row_tables
from mmgen.train.run_record import record_recipe
from mmgen.train.settings import TrainerSettings, announce_precision, check_recipe_head
from mmgen.train.train_log import TrainLogCallback

logger = logging.getLogger(__name__)

METHODS = ("full", "lora")


@dataclass
class RewardSpec:
    name: str = "???"  # a built-in (geneval, shapes, clip_score, edit_consistency, format), pkg.mod:fn or file.py:fn
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the reward (factory)
    label: str | None = None  # the name it is logged under; default: the reward's name


@dataclass
class RolloutSettings:
    num_generations: int = 8  # completions per prompt: the group GRPO normalises rewards over
    cfg_scale: float = 3.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.num_generations < 2:
            raise ValueError(f"rollout.num_generations must be >= 2 (GRPO compares completions of one prompt), "
                             f"got {self.num_generations}")
        if self.temperature <= 0:
            raise ValueError(f"rollout.temperature must be > 0 (RL needs sampled rollouts), got {self.temperature}")
        if self.cfg_scale < 0:
            raise ValueError(f"rollout.cfg_scale must be >= 0, got {self.cfg_scale}")


@dataclass
class GRPOTrainingConfig(TrainerSettings):
    max_steps: int = 100
    learning_rate: float = 1e-5
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    logging_steps: int = 5
    save_steps: int = 50
    beta: float = 0.0  # KL coefficient (0: no reference model is used at all)
    epsilon: float = 0.2  # clipping of the probability ratio
    num_iterations: int = 1  # updates per batch of rollouts
    trl: dict[str, Any] = field(default_factory=dict)  # any other GRPOConfig option, passed through to TRL

    POSITIVE: ClassVar[tuple[str, ...]] = (*TrainerSettings.POSITIVE, "num_iterations")


@dataclass
class BenchmarkGuard:
    """The held-out check against reward hacking: every `every` steps, score the shapes benchmark (or a prompt file
    in its format) with the exact detector and log it next to the training reward; sample grids are saved."""

    benchmark: str | None = "shapes"  # "shapes", a benchmark JSONL path, or null to turn the check off
    every: int = 50
    limit: int | None = 4  # prompts per task (None: all)
    images_per_prompt: int = 1
    seed: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)  # overrides of the checkpoint's sampling defaults

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"benchmark.every must be >= 1, got {self.every} (benchmark=null turns the check off)")


@dataclass
class GRPORecipe:
    stage: str = "grpo"
    model: str = must_exist("???")  # unified checkpoint (after SFT)
    output_dir: str = "runs/grpo"
    method: str = "lora"  # "full" or "lora"
    save: str = "merged"  # LoRA: "merged" weights or the base + "adapter"
    lora: LoraSettings = field(default_factory=LoraSettings)
    prompts: PromptSettings = field(default_factory=PromptSettings)
    rewards: list[RewardSpec] = field(default_factory=list)
    on_reward_error: str = "stop"  # "stop" the run, or "skip" the samples a reward fails on
    rollout: RolloutSettings = field(default_factory=RolloutSettings)
    training: GRPOTrainingConfig = field(default_factory=GRPOTrainingConfig)
    benchmark: BenchmarkGuard | None = field(default_factory=BenchmarkGuard)  # null: no held-out check
    trust_remote_code: bool = False

    def __post_init__(self):
        check_recipe_head(self, "grpo", METHODS)
        if self.on_reward_error not in ON_ERROR:
            raise ValueError(f"on_reward_error must be one of {', '.join(ON_ERROR)}, got {self.on_reward_error!r}")
        if not self.rewards:
            raise ValueError("rewards: give at least one, e.g. [{name: geneval, weight: 1.0}]")
        if self.training.batch_size % self.rollout.num_generations:
            raise ValueError(f"training.batch_size ({self.training.batch_size}) must be a multiple of "
                             f"rollout.num_generations ({self.rollout.num_generations}): every prompt's group of "
                             "completions is scored together")


# Options mmgen sets from the recipe's own keys: passing them through `training.trl` would be ambiguous.
_OWNED_TRL_OPTIONS = {
    "output_dir": "output_dir", "max_steps": "training.max_steps", "per_device_train_batch_size": "training.batch_size",
    "gradient_accumulation_steps": "training.gradient_accumulation_steps",
    "learning_rate": "training.learning_rate", "lr_scheduler_type": "training.lr_scheduler",
    "warmup_steps": "training.warmup_steps", "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm", "beta": "training.beta", "epsilon": "training.epsilon",
    "num_iterations": "training.num_iterations", "bf16": "training.mixed_precision",
    "fp16": "training.mixed_precision", "seed": "training.seed", "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps", "save_total_limit": "training.save_total_limit",
    "report_to": "training.report_to", "num_generations": "rollout.num_generations",
    "temperature": "rollout.temperature", "max_completion_length": "(the image length)",
    "gradient_checkpointing": "training.gradient_checkpointing", "use_cpu": "(chosen by the machine)",
    "reward_weights": "rewards[].weight",
}
# Generation knobs of TRL's transformers/vLLM paths that mmgen's sampler does not read.
_UNUSED_TRL_OPTIONS = ("top_k", "top_p", "min_p", "repetition_penalty", "generation_kwargs", "use_vllm",
                       "use_transformers_paged", "cache_implementation", "vllm_mode")


def trl_config(recipe: GRPORecipe, tokens_per_image: int):
    from trl import GRPOConfig

    t = recipe.training
    extra = dict(t.trl)
    known = {f.name for f in dataclasses.fields(GRPOConfig)}
    for key in extra:
        if key in _OWNED_TRL_OPTIONS:
            raise UserError(f"training.trl.{key}: set it as {_OWNED_TRL_OPTIONS[key]} in the recipe instead")
        if key in _UNUSED_TRL_OPTIONS:
            raise UserError(f"training.trl.{key}: mmgen's image sampler does the rollouts and does not use it "
                            "(rollouts sample the full guided code distribution; see rollout.*)")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise UserError(f"training.trl.{key}: not a GRPOConfig option of the installed TRL{hint}")
    return GRPOConfig(
        **t.trainer_arguments(Path(recipe.output_dir) / "checkpoints"),
        beta=t.beta,
        epsilon=t.epsilon,
        num_iterations=t.num_iterations,
        num_generations=recipe.rollout.num_generations,
        temperature=recipe.rollout.temperature,
        max_completion_length=tokens_per_image + 1,
        reward_weights=[spec.weight for spec in recipe.rewards],
        remove_unused_columns=False,  # the rewards read caption / metadata / source_codes
        **extra,
    )


# ---- entry point ---------------------------------------------------------------------------------------------


def train_grpo(recipe: GRPORecipe, callbacks: list[TrainerCallback] | None = None) -> Path:
    """Run (or resume) GRPO; returns the final unified checkpoint directory `<output_dir>/model`."""
    output_dir = Path(recipe.output_dir)
    check_requirements(recipe)
    announce_precision(recipe.training.precision(), output_dir, "grpo")
    unified = load_unified(recipe.model, with_model=False)
    set_seed(recipe.training.seed)
    model = load_policy(recipe, unified)
    dataset = build_prompt_dataset(recipe.prompts, unified)
    trainer = build_trainer(recipe, model, unified, dataset, callbacks or [])
    record_recipe(recipe, output_dir)
    resume = latest_complete_checkpoint(output_dir / "checkpoints")
    if resume:
        logger.warning("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    if trainer.is_world_process_zero():
        details = {"method": recipe.method, "prompts": dataclasses.asdict(recipe.prompts),
                   "rewards": [dataclasses.asdict(r) for r in recipe.rewards], "steps": recipe.training.max_steps}
        write_final_checkpoint(trainer.model, unified, output_dir / "model", base_path=recipe.model,
                               method=recipe.method, save=recipe.save, stage="grpo", details=details)
    trainer.accelerator.wait_for_everyone()
    return output_dir / "model"


def check_recipe_parts(recipe: GRPORecipe) -> None:
    """What `--dry-run` checks beyond the schema: the `training.trl` pass-through options and every reward (names,
    files, options; built-ins load their models here)."""
    from mmgen.rewards import build_reward

    trl_config(recipe, tokens_per_image=1)
    for spec in recipe.rewards:
        build_reward(spec.name, spec.options)


def check_requirements(recipe: GRPORecipe) -> None:
    recipe.training.check_machine()


def load_policy(recipe: GRPORecipe, unified: UnifiedModel):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_causal_lm(Path(recipe.model), torch.device("cpu"), "fp32", recipe.training.attn_implementation,
                           recipe.trust_remote_code, attn_device=device)
    if recipe.method == "full":
        return model
    return add_lora(model, recipe.lora, unified.vocab.start_id,
                    gradient_checkpointing=recipe.training.gradient_checkpointing)


def build_trainer(recipe: GRPORecipe, model, unified: UnifiedModel, dataset, extra_callbacks=()):
    decode = completion_decoder(unified)
    rewards = RewardSet.from_specs(recipe.rewards, decode, recipe.on_reward_error,
                                   extra_metadata=source_images_for(unified))
    args = trl_config(recipe, unified.num_image_tokens)
    if unified.tokenizer.pad_token is None:  # TRL pads prompts with it; the attention mask hides it
        unified.tokenizer.pad_token = unified.tokenizer.eos_token
    callbacks = [TrainLogCallback(recipe.output_dir), *extra_callbacks]
    guard = None
    if recipe.benchmark is not None and recipe.benchmark.benchmark:
        guard = BenchmarkCallback(recipe, unified, Path(recipe.output_dir) / "benchmark")
        callbacks.append(guard)
    trainer = ImageGRPOTrainer(
        model=model,
        reward_funcs=rewards.trl_functions(),
        args=args,
        train_dataset=dataset,
        processing_class=unified.tokenizer,
        callbacks=callbacks,
        unified=unified,
        rollout=recipe.rollout,
        reward_set=rewards,
    )
    if guard is not None:
        guard.trainer = trainer
    return trainer


def completion_decoder(unified: UnifiedModel):
    """completion ids -> images; a completion that is not N codes + `<|image_end|>` gives None."""
    vocab, n = unified.vocab, unified.num_image_tokens

    @torch.no_grad()
    def decode(completion_ids: list[list[int]]):
        from mmgen.images import tensor_to_pil

        images = [None] * len(completion_ids)
        valid = [i for i, ids in enumerate(completion_ids)
                 if len(ids) == n + 1 and ids[-1] == vocab.end_id and all(t in vocab.code_ids for t in ids[:n])]
        if valid:
            codes = torch.tensor([completion_ids[i][:n] for i in valid]) - vocab.first_code_id
            tokenizer = unified.visual_tokenizer
            pixels = torch.cat([tokenizer.decode(chunk) for chunk in codes.split(64)])
            for i, image in zip(valid, tensor_to_pil(pixels), strict=True):
                images[i] = image
        return images

    return decode


def source_images_for(unified: UnifiedModel):
    """Edit prompts: the source image (decoded from its codes) joins each row's metadata as `source_image`."""

    @torch.no_grad()
    def extra(columns: dict[str, list]) -> list[dict]:
        from mmgen.images import tensor_to_pil

        sources = columns.get("source_codes") or []
        out = [{} for _ in sources]
        rows = [i for i, codes in enumerate(sources) if codes]
        if rows:
            pixels = unified.visual_tokenizer.decode(torch.tensor([sources[i] for i in rows]))
            for i, image in zip(rows, tensor_to_pil(pixels), strict=True):
                out[i]["source_image"] = image
        return out

    return extra


# ---- the trainer ---------------------------------------------------------------------------------------------


def _base_trainer():
    from trl import GRPOTrainer

    return GRPOTrainer


class ImageGRPOTrainer(_base_trainer()):
    """`GRPOTrainer` for image completions (see the module docstring for what it overrides and why)."""

    def __init__(self, *args, unified: UnifiedModel, rollout: RolloutSettings, reward_set: RewardSet | None = None,
                 **kwargs):
        self.unified = unified
        self.rollout = rollout
        self.reward_set = reward_set
        super().__init__(*args, **kwargs)
        end = unified.vocab.end_id
        if end not in self.eos_token_ids:  # completions end with <|image_end|>: not "truncated" in TRL's logs
            self.eos_token_ids = [*self.eos_token_ids, end]
        policy = self.accelerator.unwrap_model(self.model)
        with torch.no_grad():
            self._exact_code_head = CodeHead(policy, unified.vocab).exact

    # -- prompts and rollouts --

    def _tokenize_prompts(self, prompts: list):
        return [list(p) for p in prompts], None, {}

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        from trl.models import unwrap_model_for_generation

        config = self.sampling_config(len(prompt_ids))
        uncond = [self.unified.prompts.unconditional_of(list(p)) for p in prompt_ids] if config.guided else None
        with (
            unwrap_model_for_generation(self.model_wrapped, self.accelerator,
                                        gather_deepspeed3_params=self.args.ds3_gather_for_generation) as model,
            torch.no_grad(),
            self.accelerator.autocast(),  # rollouts sample in the training precision (bf16 only where native)
        ):
            was_training = model.training
            try:
                sampler = ImageGenerator(dataclasses.replace(self.unified, model=model), merge_adapter=False,
                                         exact_code_head=self._exact_code_head)
                codes, logprobs = sampler.sample_codes([list(p) for p in prompt_ids], uncond, config,
                                                       return_logprobs=True)
            finally:
                model.train(was_training)
        end = self.unified.vocab.end_id
        completions = [row + [end] for row in (codes + self.unified.vocab.first_code_id).tolist()]
        return completions, [row + [0.0] for row in logprobs.tolist()]

    def sampling_config(self, rows: int) -> SamplingConfig:
        """One random stream per rollout row, fresh at every step and every process, reproducible from the seed."""
        step_seed = (self.args.seed * 1_000_003 + self.state.global_step * 10_007
                     + self.accelerator.process_index * 1_000_000_007) % (2**62)
        return SamplingConfig(num_images=1, cfg_scale=self.rollout.cfg_scale, temperature=self.rollout.temperature,
                              seed=step_seed, batch_size=max(rows, 1))

    # -- the loss's log-probs: the sampler's distribution --

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **_multimodal):
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            chunk = slice(start, start + batch_size)
            lp, ent = self._image_logps(model, input_ids[chunk], attention_mask[chunk], logits_to_keep,
                                        compute_entropy)
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    def _image_logps(self, model, input_ids, attention_mask, logits_to_keep, compute_entropy):
        """Per completion token: log p(code) under the guided, temperature-scaled code distribution; 0 for the forced
        `<|image_end|>` and for padding."""
        vocab, n = self.unified.vocab, self.unified.num_image_tokens
        prompt_len = input_ids.size(1) - logits_to_keep
        completion = input_ids[:, prompt_len:]
        codes = completion[:, :n] - vocab.first_code_id
        if (codes < 0).any() or (codes >= vocab.codebook_size).any():
            raise RuntimeError("a completion holds a non-code token inside the image span")
        prompts = [row[:prompt_len][mask[:prompt_len].bool()].tolist()
                   for row, mask in zip(input_ids, attention_mask, strict=True)]
        guided = self.rollout.cfg_scale != 1.0
        rows = [p + completion[i, :n - 1].tolist() for i, p in enumerate(prompts)]
        if guided:
            rows += [self.unified.prompts.unconditional_of(p) + completion[i, :n - 1].tolist()
                     for i, p in enumerate(prompts)]
        ids, mask = left_pad(rows, vocab.end_id, input_ids.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        with self.accelerator.autocast():
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions, output_hidden_states=True,
                        logits_to_keep=1, use_cache=False)
        hidden = out.hidden_states[-1][:, -n:]
        policy = self.accelerator.unwrap_model(model)
        head = CodeHead(policy, vocab, verify=False, full_head=not self._exact_code_head)
        logits = head(hidden)
        if guided:
            batch = len(prompts)
            logits = guide(logits[:batch], logits[batch:], self.rollout.cfg_scale)
        log_p = (logits / self.rollout.temperature).log_softmax(-1)
        token_logps = log_p.gather(-1, codes[..., None])[..., 0]
        per_token = torch.zeros(completion.shape, dtype=token_logps.dtype, device=token_logps.device)
        per_token[:, :n] = token_logps
        entropy = None
        if compute_entropy:
            entropy = torch.zeros_like(per_token)
            entropy[:, :n] = -(log_p.exp() * log_p).sum(-1)
        return per_token, entropy

    # -- rewards --

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.reward_set is not None and self.reward_set.skipped:
            offset = self.accelerator.process_index * len(prompts)
            rows = torch.tensor(sorted(self.reward_set.skipped), device=rewards.device) + offset
            rewards[rows] = torch.nan  # all rewards NaN: TRL leaves the sample out (advantage 0)
        return rewards

    def get_decay_parameter_names(self, model) -> list[str]:
        return without_row_tables(super().get_decay_parameter_names(model))


def _write_grid(step_dir: Path, columns: int = 8, rows: int = 4) -> None:
    """The first samples of a benchmark pass side by side (`grid.png`): the same prompts at every step."""
    from PIL import Image

    from mmgen.images import make_grid

    files = sorted((step_dir / "samples").glob("*.png"))[:columns * rows]
    if files:
        make_grid([Image.open(f).convert("RGB") for f in files], columns=columns).save(step_dir / "grid.png")


# ---- the reward-hacking guard --------------------------------------------------------------------------------


class BenchmarkCallback(TrainerCallback):
    """Scores the held-out benchmark at step 0 and every `benchmark.every` steps; logs `benchmark/overall` and
    `benchmark/<task>` beside the training reward and writes the report and samples under `<out>/step_NNNNNN/`."""

    def __init__(self, recipe: GRPORecipe, unified: UnifiedModel, out_dir: Path):
        self.settings = recipe.benchmark
        self.unified = unified
        self.out_dir = out_dir
        self.trainer = None
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self._score(model, state)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.settings.every == 0 or state.global_step == state.max_steps:
            self._score(model, state)

    @torch.no_grad()
    def _score(self, model, state) -> None:
        if model is None or not state.is_world_process_zero:
            return
        from mmgen.eval.shapes_benchmark import score_generator

        s = self.settings
        was_training = model.training
        try:
            generator = ImageGenerator(dataclasses.replace(self.unified, model=model), merge_adapter=False)
            config = generator.config(**s.sampling)

            # The guard samples in the training precision, as the rollouts do.
            autocast = self.trainer.accelerator.autocast if self.trainer is not None else contextlib.nullcontext

            def generate_images(prompts, images_per_prompt, seed):
                with autocast():
                    return generator.generate(prompts, config, num_images=images_per_prompt, seed=seed)

            step_dir = self.out_dir / f"step_{state.global_step:06d}"
            summary = score_generator(generate_images, step_dir, s.images_per_prompt, s.seed, s.limit,
                                      benchmark_path=None if s.benchmark == "shapes" else s.benchmark,
                                      details={"step": state.global_step}, progress=False)
        finally:
            model.train(was_training)
        _write_grid(step_dir)
        metrics = {"benchmark/overall": summary["overall"],
                   **{f"benchmark/{task}": value for task, value in summary["tasks"].items()}}
        self.history.append({"step": state.global_step, **metrics})
        (self.out_dir / "history.json").write_text(json.dumps(self.history, indent=2) + "\n")
        logger.warning("step %d: benchmark overall %.3f", state.global_step, summary["overall"])
        if self.trainer is not None and state.global_step > 0:
            self.trainer.log(metrics)
