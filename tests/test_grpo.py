"""GRPO stage: on-policy image log-probs, rollouts, user rewards, error policy, recipes, a short real run."""

import json
import math

import pytest
import torch

from mmgen.cli import main
from mmgen.config import ConfigError, load_config
from mmgen.errors import UserError
from mmgen.train.grpo import GRPORecipe, build_trainer, load_policy
from mmgen.train.grpo_data import build_prompt_dataset

REWARD_FILE = '''
import numpy as np

SEEN = []

def brightness(prompts, images, metadata, scale=1.0):
    SEEN.append((list(prompts), [m.get("tag") for m in metadata]))
    return [scale * float(np.asarray(image).mean()) / 255.0 for image in images]

def crashes(prompts, images, metadata):
    raise RuntimeError("critic is down")

def nan_for_first(prompts, images, metadata):
    return [float("nan")] + [1.0] * (len(prompts) - 1)

def too_few(prompts, images, metadata):
    return [1.0]
'''


def _recipe(unified_dir, tmp_path, *extra: str, rewards: str = "[{name: format}]") -> GRPORecipe:
    text = (f"stage: grpo\nmodel: {unified_dir}\noutput_dir: {tmp_path / 'run'}\nmethod: lora\n"
            f"rewards: {rewards}\n"
            "prompts: {num_prompts: 8}\n"
            "rollout: {num_generations: 4, cfg_scale: 3.0, temperature: 1.0}\n"
            "training: {max_steps: 2, batch_size: 8, mixed_precision: fp32, logging_steps: 1, save_steps: 2,"
            " beta: 0.04, learning_rate: 0.01}\n"
            "benchmark: {benchmark: null}\n")
    path = tmp_path / "grpo.yaml"
    path.write_text(text)
    return load_config(GRPORecipe, path, list(extra))


def _trainer(recipe):
    from mmgen.checkpoint import load_unified

    unified = load_unified(recipe.model, with_model=False)
    torch.manual_seed(0)
    model = load_policy(recipe, unified)
    dataset = build_prompt_dataset(recipe.prompts, unified)
    return build_trainer(recipe, model, unified, dataset), unified, dataset


def _padded(trainer, prompts, completions):
    """prompt + completion ids padded the way TRL pads them (prompts left, completions right)."""
    pad = trainer.processing_class.pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p + c for p, c in zip(prompts, completions, strict=True)])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * (len(p) + len(c)) for p, c in zip(prompts, completions,
                                                                                         strict=True)])
    return ids, mask, len(completions[0])


def _perturb_adapter(model):
    """Move LoRA B and the trainable image rows off their initial values, so the adapter changes the output."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)


def test_loss_logprobs_equal_the_samplers_guided_code_logprobs(unified_dir, tmp_path):
    """The tokens the sampler drew get, in the loss, exactly the log-probs the sampler drew them with (guided,
    temperature-scaled, code rows only), for text-to-image and edit prompts alike."""
    recipe = _recipe(unified_dir, tmp_path, "rollout.temperature=0.8")
    trainer, unified, dataset = _trainer(recipe)
    _perturb_adapter(trainer.model)
    prompts = [dataset[i]["prompt"] for i in range(3)]
    prompts.append(unified.prompts.edit(list(range(unified.num_image_tokens)), "make the circle red"))
    completions, sampler_logps = trainer._generate_single_turn(prompts, None, {}, 1)
    n = unified.num_image_tokens
    assert all(len(c) == n + 1 and c[-1] == unified.vocab.end_id for c in completions)
    assert all(t in unified.vocab.code_ids for c in completions for t in c[:n])
    ids, mask, keep = _padded(trainer, prompts, completions)
    loss_logps, entropies, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep,
                                                                          compute_entropy=True)
    torch.testing.assert_close(loss_logps, torch.tensor(sampler_logps), atol=1e-4, rtol=0)
    assert (loss_logps[:, :n] < 0).all() and (loss_logps[:, n] == 0).all()  # image_end is forced
    assert (entropies[:, :n] > 0).all()
    # Gradients reach the trainable weights through both CFG branches.
    loss_logps.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n_, p in trainer.model.named_parameters()
               if "lora_" in n_)


def test_reference_is_the_same_model_with_the_adapter_disabled(unified_dir, tmp_path):
    from peft import PeftModel
    from trl.trainer.utils import use_adapter

    from mmgen.checkpoint import load_causal_lm

    recipe = _recipe(unified_dir, tmp_path)
    trainer, unified, dataset = _trainer(recipe)
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None  # one copy of the weights
    _perturb_adapter(trainer.model)
    prompts = [dataset[i]["prompt"] for i in range(2)]
    completions, _ = trainer._generate_single_turn(prompts, None, {}, 1)
    ids, mask, keep = _padded(trainer, prompts, completions)
    with torch.no_grad():
        policy, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        with use_adapter(trainer.model, adapter_name=None):
            reference, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
        trainer.model = load_causal_lm(unified_dir, torch.device("cpu"), "fp32")
        base, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
    torch.testing.assert_close(reference, base, atol=1e-5, rtol=0)
    assert (policy - base).abs().max() > 1e-3


def test_grpo_run_with_a_user_reward_file_trains_and_saves(unified_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    recipe = _recipe(unified_dir, tmp_path, rewards="[{name: 'my_rewards.py:brightness', weight: 0.5, "
                                                     "options: {scale: 2.0}}, {name: format, weight: 0.1}]")
    trainer, unified, _ = _trainer(recipe)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "rewards/brightness/mean" in entry]
    assert len(history) == 2
    assert 0 < history[0]["rewards/brightness/mean"] <= 2.0 and history[0]["rewards/format/mean"] == 1.0
    torch.testing.assert_close(trainer.reward_weights, torch.tensor([0.5, 0.1]))
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "modules_to_save" in n for n in changed)
    first_new = unified.vocab.start_id
    for name, param in trainer.model.named_parameters():
        if "modules_to_save" in name and param.dim() == 2:
            torch.testing.assert_close(param[:first_new], before[name][:first_new], atol=0, rtol=0)
    import sys

    seen = next(m for name, m in sys.modules.items() if name.startswith("mmgen_user_reward_")).SEEN
    assert seen and len(seen[0][0]) == 8 and all(tag for tag in seen[0][1])  # captions + GenEval metadata


def test_grpo_cli_writes_a_loadable_unified_checkpoint(unified_dir, tmp_path):
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(f"stage: grpo\nmodel: {unified_dir}\noutput_dir: {tmp_path / 'run'}\nmethod: full\n"
                      "rewards: [{name: shapes}, {name: geneval, weight: 0.5}]\nprompts: {num_prompts: 4}\n"
                      "rollout: {num_generations: 2}\n"
                      "training: {max_steps: 1, batch_size: 4, mixed_precision: fp32, save_steps: 1}\n"
                      "benchmark: {limit: 1, every: 1}\n")
    assert main(["train", str(recipe)]) == 0
    from mmgen.sampling import ImageGenerator

    meta = json.loads((tmp_path / "run" / "model" / "mmgen.json").read_text())
    assert meta["grpo"]["rewards"][0]["name"] == "shapes"
    images = ImageGenerator.from_pretrained(tmp_path / "run" / "model").generate(["a photo of a red circle"])
    assert images[0][0].size == (16, 16)
    history = json.loads((tmp_path / "run" / "benchmark" / "history.json").read_text())
    assert [h["step"] for h in history] == [0, 1] and 0 <= history[0]["benchmark/overall"] <= 1
    assert (tmp_path / "run" / "benchmark" / "step_000001" / "results.json").is_file()
    assert (tmp_path / "run" / "benchmark" / "step_000001" / "grid.png").is_file()


@pytest.mark.parametrize("function, message", [
    ("crashes", "reward 'crashes' raised RuntimeError: critic is down"),
    ("too_few", "reward 'too_few' returned 1 scores for 8 images"),
    ("nan_for_first", "reward 'nan_for_first' returned nan for prompt"),
])
def test_a_failing_reward_stops_the_run_with_its_name_and_prompt(unified_dir, tmp_path, monkeypatch, function,
                                                                 message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    recipe = _recipe(unified_dir, tmp_path, rewards=f"[{{name: 'my_rewards.py:{function}'}}]")
    trainer, _, _ = _trainer(recipe)
    with pytest.raises(UserError, match="prompt") as caught:
        trainer.train()
    assert message in str(caught.value)


def test_skip_policy_leaves_failed_samples_out_of_the_update(unified_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    recipe = _recipe(unified_dir, tmp_path, "on_reward_error=skip", "training.max_steps=1",
                     rewards="[{name: 'my_rewards.py:nan_for_first'}, {name: format}]")
    trainer, _, _ = _trainer(recipe)
    scored = []
    original = trainer._calculate_rewards
    trainer._calculate_rewards = lambda *args: scored.append(original(*args)) or scored[-1]
    trainer.train()
    entry = next(e for e in trainer.state.log_history if "rewards/nan_for_first/skipped" in e)
    assert entry["rewards/nan_for_first/skipped"] == 1
    rewards = scored[0]
    assert rewards[0].isnan().all() and not rewards[1:].isnan().any()  # the whole sample is left out


def test_recipe_checks(unified_dir, tmp_path):
    with pytest.raises(ConfigError, match="multiple of rollout.num_generations"):
        _recipe(unified_dir, tmp_path, "training.batch_size=6")
    with pytest.raises(ConfigError, match="at least one"):
        _recipe(unified_dir, tmp_path, rewards="[]")
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        _recipe(unified_dir, tmp_path, "rollout.temperature=0")
    recipe = _recipe(unified_dir, tmp_path, "training.trl.scale_rewards=batch")
    from mmgen.train.grpo import trl_config

    assert trl_config(recipe, 16).scale_rewards == "batch"
    for key, message in [("scale_reward", "did you mean 'scale_rewards'"), ("beta", "set it as training.beta"),
                         ("top_k", "does not use it")]:
        bad = _recipe(unified_dir, tmp_path, f"training.trl.{key}=1")
        with pytest.raises(UserError, match=message):
            trl_config(bad, 16)


def test_reward_specs_fail_at_start_with_what_to_do(tmp_path, monkeypatch):
    from mmgen.rewards import build_reward

    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text(REWARD_FILE)
    with pytest.raises(UserError, match="did you mean 'geneval'"):
        build_reward("genevel")
    with pytest.raises(UserError, match="no such file"):
        build_reward("missing.py:fn")
    with pytest.raises(UserError, match="has no function 'nope'.*brightness"):
        build_reward("my_rewards.py:nope")
    with pytest.raises(UserError, match="unknown option.*'scaling'"):
        build_reward("my_rewards.py:brightness", {"scaling": 2})
    with pytest.raises(UserError, match="unknown option"):
        build_reward("shapes", {"detector": "owlv2:/x"})
    assert build_reward("my_rewards.py:brightness", {"scale": 2.0}) is not None


def test_unconditional_prompt_of_each_task(unified_dir):
    from mmgen.checkpoint import load_unified

    prompts = load_unified(unified_dir, with_model=False).prompts
    codes = list(range(16))
    assert prompts.unconditional_of(prompts.text_to_image("a red circle")) == prompts.text_to_image(None)
    assert prompts.unconditional_of(prompts.edit(codes, "make it blue")) == prompts.edit(codes, None)
    with pytest.raises(ValueError):
        prompts.unconditional_of(prompts.understanding(codes, "what is it?"))


def test_prompt_file_with_metadata_and_edit_sources(unified_dir, tmp_path):
    import random

    from mmgen.data_engine.shapes.scenes import free_scene
    from mmgen.data_engine.shapes.world import render

    from mmgen.checkpoint import load_unified
    from mmgen.train.grpo_data import PromptSettings

    render(free_scene(random.Random(0)), 16).save(tmp_path / "src.png")
    lines = [{"prompt": "a photo of a red circle <|image_start|>", "tag": "colors",
              "include": [{"class": "circle", "count": 1, "color": "red"}]},
             {"prompt": "make the square blue", "source_image": "src.png", "target_image": "src.png"}]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    unified = load_unified(unified_dir, with_model=False)
    dataset = build_prompt_dataset(PromptSettings(source=str(tmp_path / "prompts.jsonl")), unified)
    first, second = dataset[0], dataset[1]
    assert unified.vocab.start_id not in first["prompt"][:-1]  # the caption's marker stays text
    assert json.loads(first["metadata"])["include"][0]["color"] == "red" and first["source_codes"] == []
    assert len(second["source_codes"]) == unified.num_image_tokens and second["task"] == "edit"
    assert json.loads(second["metadata"])["target_image"] == str(tmp_path / "src.png")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x", "source_image": "nope.png"}\n')
    with pytest.raises(UserError, match="bad.jsonl:1: source_image"):
        build_prompt_dataset(PromptSettings(source=str(tmp_path / "bad.jsonl")), unified)


def test_builtin_rewards_on_known_images():
    import random

    from mmgen.data_engine.shapes.benchmark import load_benchmark
    from mmgen.data_engine.shapes.edits import make_edit
    from mmgen.data_engine.shapes.world import Scene, render

    from mmgen.rewards import build_reward

    two = next(p for p in load_benchmark() if p["tag"] == "color_attr")
    truth = render(Scene.from_dict(two["scene"]), 64)
    half = Scene.from_dict(two["scene"])
    half = half.with_objects(half.objects[:1])
    import dataclasses

    wrong = dataclasses.replace(half.objects[0], color=next(c for c in ("red", "blue") if c != half.objects[0].color))
    recoloured = half.with_objects([wrong])
    geneval, shapes = build_reward("geneval"), build_reward("shapes")
    # partial credit: both clauses right; one right, one missing; one with the wrong colour, one missing
    assert geneval(["p"] * 4, [truth, render(half, 64), render(recoloured, 64), None], [two] * 4) == [
        1.0, 0.5, 0.25, 0.0]
    assert shapes(["p"] * 3, [truth, render(half, 64), None], [two] * 3) == [1.0, 0.0, 0.0]
    assert build_reward("format")(["p"] * 2, [truth, None], [{}, {}]) == [1.0, 0.0]

    edit = make_edit(random.Random(3), "recolour")
    meta = {"source_scene": edit.source.to_dict(), "target_scene": edit.target.to_dict()}
    consistency = build_reward("edit_consistency")
    target, source = render(edit.target, 64), render(edit.source, 64)
    scores = consistency(["e"] * 2, [target, source], [meta] * 2)
    assert scores[0] == 1.0 and scores[1] < 1.0
    pixel_meta = {"source_image": source, "target_image": target}
    pixel = consistency(["e"] * 2, [target, source], [pixel_meta] * 2)
    assert pixel[0] == pytest.approx(1.0, abs=1e-3) and pixel[1] < 0.99  # tiny in-threshold differences
    with pytest.raises(UserError, match="edit_consistency needs"):
        consistency(["e"], [target], [{}])
    with pytest.raises(UserError, match="GenEval"):
        geneval(["p"], [truth], [{}])
    assert not math.isnan(scores[1])


def test_editing_grpo_conditions_on_source_codes_and_scores_edits(unified_dir, tmp_path):
    recipe = _recipe(unified_dir, tmp_path, "prompts.edits=true", "training.max_steps=1",
                     rewards="[{name: edit_consistency}]")
    trainer, unified, dataset = _trainer(recipe)
    assert all(len(codes) == unified.num_image_tokens for codes in dataset["source_codes"])
    seen = []
    reward = trainer.reward_set.rewards[0]
    original = reward.function
    reward.function = lambda prompts, images, metadata: seen.append(metadata) or original(prompts, images, metadata)
    trainer.train()
    assert seen and all(m["source_image"].size == (16, 16) and "target_scene" in m for m in seen[0])
    entry = next(e for e in trainer.state.log_history if "rewards/edit_consistency/mean" in e)
    assert 0 <= entry["rewards/edit_consistency/mean"] <= 1


def test_a_reward_with_the_wrong_signature_fails_the_dry_run(unified_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_rewards.py").write_text("def two_args(images, metadata):\n    return [0.0] * len(images)\n")
    recipe = tmp_path / "grpo.yaml"
    _recipe(unified_dir, tmp_path)  # writes grpo.yaml
    assert main(["train", str(recipe), "rewards=[{name: 'my_rewards.py:two_args'}]", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "reward 'my_rewards.py:two_args' is defined as two_args(images, metadata)" in err
    assert "fn(prompts, images, metadata, **options)" in err


def test_the_benchmark_guard_turns_off_with_benchmark_null(unified_dir, tmp_path):
    assert _recipe(unified_dir, tmp_path, "benchmark=null").benchmark is None
    with pytest.raises(ConfigError, match=r"benchmark.every must be >= 1, got 0 \(benchmark=null turns"):
        _recipe(unified_dir, tmp_path, "benchmark.every=0")
