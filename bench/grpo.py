"""GRPO step time, split into its phases: rollout, decode, reward, log-prob, update.

The stage runs the demo recipe (recipes/grpo/shapes-geneval.yaml: 8 prompts x 8 completions per step, CFG, the
exact shapes detector as the reward) on the demo-sized tiny Llama with the demo tokenizer's shape (1000 FSQ codes,
64 per image; random weights: speed does not depend on them, and random codes still decode and get scored), with
only the model, steps, checkpointing and precision overridden. Each phase is timed by wrapping the trainer's own
methods for the duration of the run:

- rollout: `_generate_single_turn` (mmgen's KV-cached, CFG-guided code sampler inside the trainer)
- decode: the visual tokenizer turning completions into images (inside the reward call)
- reward: `_calculate_rewards` less the decode (the detector and the reward functions)
- log-prob: `_get_per_token_logps_and_entropies` outside the loss (TRL's old/reference log-probs; none when
  `beta` is 0 and generation is aligned with the optimizer step, as in the recipe)
- update: the rest of the optimizer step after `_prepare_inputs` (the loss's forward, backward, clip, AdamW)
- other: what `_prepare_inputs` does besides the above (prompt batching, advantages, metrics, logging)

Baseline measured in the same run: the same sampler called directly on the same prompts and settings, outside the
trainer (the floor a rollout can reach without a faster sampler). A figure is the median over the timed steps, after
one warm-up step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import TrainerCallback

from bench.sft import build_checkpoint, precisions

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "grpo" / "shapes-geneval.yaml"
PHASES = ("rollout", "decode", "reward", "log-prob", "update", "other")


class PhaseClock:
    """Seconds spent per phase in the current optimizer step, and the finished steps' splits."""

    def __init__(self):
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []
        self.in_loss = False


@contextmanager
def timed(clock: PhaseClock, phase: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        clock.current[phase] += time.perf_counter() - start


@contextmanager
def phase_timers(clock: PhaseClock):
    """Wrap the trainer's methods (and the completion decoder it builds) so that each call adds to its phase."""
    import mmgen.train.grpo as grpo

    trainer_cls = grpo.ImageGRPOTrainer
    originals = {name: getattr(trainer_cls, name) for name in (
        "_prepare_inputs", "_generate_single_turn", "_calculate_rewards", "_get_per_token_logps_and_entropies",
        "compute_loss")}
    make_decoder = grpo.completion_decoder

    def wrap(name, phase=None, *, flag_loss=False):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            if flag_loss:
                clock.in_loss = True
                try:
                    return original(self, *args, **kwargs)
                finally:
                    clock.in_loss = False
            if phase == "log-prob" and clock.in_loss:
                return original(self, *args, **kwargs)
            with timed(clock, phase):
                return original(self, *args, **kwargs)

        return wrapper

    def timed_decoder(unified):
        decode = make_decoder(unified)

        def wrapper(completion_ids):
            with timed(clock, "decode"):
                return decode(completion_ids)

        return wrapper

    trainer_cls._prepare_inputs = wrap("_prepare_inputs", "prepare")
    trainer_cls._generate_single_turn = wrap("_generate_single_turn", "rollout")
    trainer_cls._calculate_rewards = wrap("_calculate_rewards", "reward+decode")
    trainer_cls._get_per_token_logps_and_entropies = wrap("_get_per_token_logps_and_entropies", "log-prob")
    trainer_cls.compute_loss = wrap("compute_loss", flag_loss=True)
    grpo.completion_decoder = timed_decoder
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(trainer_cls, name, original)
        grpo.completion_decoder = make_decoder


class StepSplit(TrainerCallback):
    """At each optimizer step's end: the step's wall time and its phases (update and other by difference)."""

    def __init__(self, clock: PhaseClock):
        self.clock = clock
        self._last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()
        self.clock.current.clear()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        spent = dict(self.clock.current)
        total = now - self._last
        prepare = spent.get("prepare", 0.0)
        reward_and_decode = spent.get("reward+decode", 0.0)
        split = {"rollout": spent.get("rollout", 0.0), "decode": spent.get("decode", 0.0),
                 "reward": reward_and_decode - spent.get("decode", 0.0), "log-prob": spent.get("log-prob", 0.0),
                 "update": total - prepare}
        split["other"] = prepare - split["rollout"] - reward_and_decode - split["log-prob"]
        split["step"] = total
        self.clock.steps.append(split)
        self.clock.current.clear()
        self._last = now


def time_stage(model_dir: Path, out: Path, precision: str, steps: int, overrides: tuple[str, ...] = ()):
    from mmgen.config import load_config
    from mmgen.train.grpo import GRPORecipe, train_grpo

    recipe = load_config(GRPORecipe, RECIPE, [
        f"model={model_dir}", f"output_dir={out}", f"training.max_steps={steps}",
        f"training.save_steps={steps + 1000}", f"training.mixed_precision={precision}", "benchmark.benchmark=null",
        "prompts.num_prompts=256", *overrides])
    clock = PhaseClock()
    with phase_timers(clock):
        train_grpo(recipe, callbacks=[StepSplit(clock)])
    return clock.steps, recipe


def time_bare_sampler(model_dir: Path, recipe, precision: str, repeats: int) -> list[float]:
    """The sampler alone on one step's prompts (8 prompts x 8 completions), with the recipe's rollout settings."""
    import random

    from mmgen.data_engine.shapes.captions import GENEVAL_TASKS, make_prompt

    from mmgen.checkpoint import load_unified
    from mmgen.sampling import ImageGenerator, SamplingConfig

    unified = load_unified(model_dir, dtype=precision)
    generator = ImageGenerator(unified)
    rng = random.Random(0)
    per_step = recipe.training.batch_size // recipe.rollout.num_generations
    tasks = recipe.prompts.tasks or list(GENEVAL_TASKS)
    captions = [make_prompt(rng.choice(tasks), rng)["prompt"] for _ in range(per_step)]
    prompts = [unified.prompts.text_to_image(c) for c in captions for _ in range(recipe.rollout.num_generations)]
    uncond = [unified.prompts.unconditional_of(p) for p in prompts]
    config = SamplingConfig(num_images=1, cfg_scale=recipe.rollout.cfg_scale,
                            temperature=recipe.rollout.temperature, seed=0, batch_size=len(prompts))
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            generator.sample_codes(prompts, uncond, config)
            times.append(time.perf_counter() - start)
    return times


def measure(warmup: int = 1, steps: int = 4, layers: int | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """The split in each precision (fp32; bf16 where native); returns the figures. `layers` shrinks the LM and
    `overrides` the recipe, for quick tests."""
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_checkpoint(tmp / "model", layers)
        for precision in precisions():
            splits, recipe = time_stage(model_dir, tmp / f"run-{precision}", precision, warmup + steps,
                                        overrides)
            timed_steps = splits[warmup:]
            row = {key: round(statistics.median(s[key] for s in timed_steps), 4) for key in (*PHASES, "step")}
            row["bare_sampler"] = round(statistics.median(
                time_bare_sampler(model_dir, recipe, precision, repeats=1 + steps)[1:]), 4)
            figures[precision] = row
    return {"completions_per_step": recipe.training.batch_size, "num_generations": recipe.rollout.num_generations,
            "cfg_scale": recipe.rollout.cfg_scale, "timed_steps": steps, "threads": torch.get_num_threads(),
            "precisions": figures}


def print_table(result: dict) -> None:
    console = Console()
    for precision, f in result["precisions"].items():
        table = Table(title=f"GRPO step split, {precision}: {result['completions_per_step']} completions per step "
                            f"({result['num_generations']} per prompt, CFG {result['cfg_scale']}), "
                            f"{result['threads']} threads, median of {result['timed_steps']} steps")
        for column in ("phase", "seconds", "share of step", "ratio vs bare sampler (baseline)"):
            table.add_column(column, justify="right")
        table.add_row("bare sampler, same prompts (baseline)", f"{f['bare_sampler']:.3f}", "",
                      "1.00x")
        for phase in PHASES:
            ratio = f"{f[phase] / f['bare_sampler']:.2f}x" if f["bare_sampler"] else ""
            table.add_row(phase, f"{f[phase]:.3f}", f"{f[phase] / f['step']:.1%}", ratio)
        table.add_row("whole step", f"{f['step']:.3f}", "100%", f"{f['step'] / f['bare_sampler']:.2f}x")
        console.print(table)


def run(warmup: int = 1, steps: int = 4) -> dict:
    result = measure(warmup, steps)
    print_table(result)
    return result
