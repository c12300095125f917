"""The learning guard: a small but real chain (tokenizer -> vocabulary -> SFT -> GRPO, every stage trained from
scratch through the `mmgen` verbs) must show learning with a margin, so a change that breaks the SFT loss or turns
the reward around fails CI instead of sliding the demo's numbers.

What it asserts, on held-out benchmark prompts, several images each:
- SFT lifts the one-object tasks (single_object, colors), scored by the exact shapes detector, well above the
  untrained model, which draws noise;
- a few GRPO steps on that SFT model, rewarded by a user reward file (image brightness: dense, so a few steps
  move it far beyond its noise), raise the held-out mean reward; with the reward's sign flipped they lower it.
  GenEval's own score is not used for GRPO here: at this chain's size a few steps move it by less than its noise
  (docs/experiments/2026-12-07-demo-on-plain-cpu.md).

Sized for a plain 2-core CPU in fp32 (no native bf16): a slim tokenizer, a small Llama, one-object colour scenes.
Seeded; deterministic on one machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmgen.recipes import recipe_path

from mmgen.cli import main

pytestmark = pytest.mark.slow

ONE_OBJECT_TASKS = ("single_object", "colors")
GUARD = dict(scenes=4000, tokenizer_steps=700, sft_steps=300, benchmark_prompts=25,
             images_per_prompt=4, grpo_steps=12)
# A user reward, as a user writes one: the image's mean brightness in [0, 1].
BRIGHTNESS_REWARD = """
import numpy as np

def brightness(prompts, images, metadata):
    return [0.0 if image is None else float(np.asarray(image, dtype=np.float32).mean()) / 255.0 for image in images]
"""


# Brightness units (mean pixel / 255). The two runs must move apart by SPREAD, each one on its own side of the SFT
# model by SIDE. Measured: +0.0175 rewarded / -0.0133 negated on an AVX512 CPU, +0.0129 / -0.0064 on an AVX2 one
# (the same seeds; float arithmetic differs between the two, and so does this chain's path). A broken reward sign
# swaps the sides; a dead update leaves both runs at the SFT model's brightness.
GRPO_SPREAD = 0.010
GRPO_SIDE = 0.003

# fp32 everywhere: the guard must train and score the same numbers on CPUs with and without native bf16.
FP32 = "training.mixed_precision=fp32"


def _run(argv: list[str]) -> None:
    assert main([str(arg) for arg in argv]) == 0, f"`mmgen {' '.join(map(str, argv))}` failed"


def _one_object_score(model: Path, out: Path) -> float:
    """Mean detector score over the one-object tasks' first prompts, several seeded images each."""
    _run(["eval", "shapes", "--model", model, "--out", out, "--limit", GUARD["benchmark_prompts"],
          "--tasks", ",".join(ONE_OBJECT_TASKS), "--images-per-prompt", GUARD["images_per_prompt"], "--dtype", "fp32"])
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    return sum(tasks[task] for task in ONE_OBJECT_TASKS) / len(ONE_OBJECT_TASKS)


def _tiny_llama(out: Path) -> Path:
    from mmgen.data_engine.shapes.corpus import text_corpus

    from mmgen.tiny_lm import save_tiny_lm

    return save_tiny_lm(out, "llama", text_corpus(num=2000, seed=0), vocab_size=600, hidden_size=192, num_layers=2,
                        num_heads=6, num_kv_heads=2)


def _held_out_brightness(model: Path) -> float:
    """Mean brightness of images sampled for held-out benchmark prompts (both one-object tasks)."""
    import numpy as np
    from mmgen.eval.shapes_benchmark import benchmark_prompts

    from mmgen.sampling import ImageGenerator

    prompts = [p["prompt"] for _, p in benchmark_prompts(limit=GUARD["benchmark_prompts"], tasks=ONE_OBJECT_TASKS)]
    images = ImageGenerator.from_pretrained(model, dtype="fp32").generate(
        prompts, num_images=GUARD["images_per_prompt"], seed=123)
    return float(np.mean([np.asarray(image, dtype=np.float32).mean() / 255.0 for row in images for image in row]))


def _grpo(model: Path, out: Path, reward_file: Path, weight: float) -> Path:
    _run(["train", recipe_path("grpo/shapes-geneval.yaml"), f"model={model}", f"output_dir={out}",
          f"rewards=[{{name: '{reward_file}:brightness', weight: {weight}}}]",
          f"training.max_steps={GUARD['grpo_steps']}", "training.batch_size=32", "rollout.num_generations=8",
          "training.learning_rate=3e-4",
          "training.save_steps=100000", "training.logging_steps=1", "benchmark=null", FP32])
    return out / "model"


def test_sft_learns_to_draw_and_grpo_follows_its_reward_on_a_small_real_chain(tmp_path):
    data, tokenizer, model = tmp_path / "scenes", tmp_path / "tokenizer", tmp_path / "init"
    _run(["data", "shapes", "--num", GUARD["scenes"], "--size", 64, "--tasks", "colors", "--out", data])
    _run(["train", recipe_path("tokenizer/shapes-vq.yaml"), f"output_dir={tokenizer}",
          f"training.max_steps={GUARD['tokenizer_steps']}", f"data.source={data}", "data.eval_images=100",
          "model.block_out_channels=[16,32,48]", "model.norm_num_groups=16", "training.checkpoint_every=100000",
          "training.sample_every=100000", FP32])
    _run(["init", "--base", _tiny_llama(tmp_path / "base"), "--init", "codebook", "--tokenizer",
          tokenizer / "tokenizer", "--out", model])
    _run(["data", "tokenize", "--data", data, "--task", "t2i", "--tokenizer", model, "--out", tmp_path / "tokenized"])
    _run(["data", "build", recipe_path("data/shapes-t2i.yaml"), f"model={model}",
          f"sources=[{{path: {tmp_path / 'tokenized'}, task: t2i, weight: 1.0}}]", "eval_size=50",
          f"output_dir={tmp_path / 'built'}"])
    untrained = _one_object_score(model, tmp_path / "eval_untrained")

    _run(["train", recipe_path("sft/shapes-t2i.yaml"), f"model={model}", f"data={tmp_path / 'built'}",
          f"output_dir={tmp_path / 'sft'}", f"training.max_steps={GUARD['sft_steps']}", "training.warmup_steps=20",
          "training.eval_steps=100000", "training.save_steps=100000", "samples.prompts=[]", FP32])
    after_sft = _one_object_score(tmp_path / "sft" / "model", tmp_path / "eval_sft")
    assert after_sft >= untrained + 0.08, f"SFT did not learn to draw: {untrained:.3f} -> {after_sft:.3f}"

    reward_file = tmp_path / "brightness_reward.py"
    reward_file.write_text(BRIGHTNESS_REWARD)
    before = _held_out_brightness(tmp_path / "sft" / "model")
    brighter = _held_out_brightness(_grpo(tmp_path / "sft" / "model", tmp_path / "grpo_up", reward_file, 1.0))
    darker = _held_out_brightness(_grpo(tmp_path / "sft" / "model", tmp_path / "grpo_down", reward_file, -1.0))
    assert brighter - darker >= GRPO_SPREAD and brighter >= before + GRPO_SIDE and darker <= before - GRPO_SIDE, (
        f"GRPO did not follow its reward on held-out prompts: brightness {before:.4f} -> {brighter:.4f} (rewarded) "
        f"and {darker:.4f} (reward negated)")
