"""A re-run of a stage whose output_dir holds checkpoints resumes only under the settings that run started with."""

import json

import pytest

from mmgen.cli import main
from mmgen.errors import UserError
from mmgen.train.run_record import RECIPE_RECORD, check_resume, record_recipe
from mmgen.train.tokenizer import TokenizerRecipe

TOKENIZER_RECIPE = """\
stage: tokenizer
model:
  image_size: 16
  block_out_channels: [8, 8]
  norm_num_groups: 4
  latent_channels: 4
  mid_block_add_attention: false
  quantizer: {kind: fsq, levels: [4, 4]}
data: {num_images: 64, eval_images: 4}
training:
  max_steps: 4
  batch_size: 4
  warmup_steps: 0
  mixed_precision: fp32
  checkpoint_every: 2
  sample_every: 1000
  log_every: 1
"""


@pytest.fixture
def tokenizer_recipe(tmp_path):
    path = tmp_path / "tokenizer.yaml"
    path.write_text(TOKENIZER_RECIPE + f"output_dir: {tmp_path / 'run'}\n")
    return path


def checkpoint_steps(run) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in (run / "checkpoints").glob("step_*"))


def logged_steps(run) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_changed_learning_rate_on_a_finished_run_is_refused_naming_the_key_and_the_flags(tokenizer_recipe, tmp_path,
                                                                                         capsys):
    run = tmp_path / "run"
    assert main(["tokenizer", "train", str(tokenizer_recipe)]) == 0
    capsys.readouterr()
    assert main(["train", str(tokenizer_recipe), "training.learning_rate=1e-5", "training.max_steps=6"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "training.learning_rate: 0.002 -> 1e-05" in err and "--restart" in err and "--accept-changes" in err
    assert "max_steps" not in err  # the step budget may change
    assert checkpoint_steps(run) == [2] and logged_steps(run) == [1, 2, 3, 4]  # nothing ran
    assert json.loads((run / RECIPE_RECORD).read_text())["training.learning_rate"] == 0.002


def test_a_longer_step_budget_resumes(tokenizer_recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tokenizer_recipe)]) == 0
    assert main(["train", str(tokenizer_recipe), "training.max_steps=6", "training.checkpoint_every=3"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert checkpoint_steps(run) == [2, 3] and logged_steps(run) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / RECIPE_RECORD).read_text())["training.max_steps"] == 6


def test_accept_changes_resumes_and_restart_starts_afresh(tokenizer_recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tokenizer_recipe)]) == 0
    capsys.readouterr()
    assert main(["train", str(tokenizer_recipe), "training.learning_rate=1e-4", "training.max_steps=6",
                 "--accept-changes"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((run / RECIPE_RECORD).read_text())["training.learning_rate"] == 1e-4

    assert checkpoint_steps(run) == [2, 4]

    assert main(["train", str(tokenizer_recipe), "training.learning_rate=2e-4", "training.max_steps=3",
                 "--restart"]) == 0
    assert "resuming from" not in capsys.readouterr().out
    assert checkpoint_steps(run) == [2] and logged_steps(run) == [1, 2, 3]  # the earlier run's steps are gone


def test_a_run_without_checkpoints_takes_any_settings(tmp_path, tokenizer_recipe):
    from mmgen.config import load_config

    run = tmp_path / "run"
    first = load_config(TokenizerRecipe, tokenizer_recipe, [])
    check_resume(first, run)
    assert not run.exists()  # checking writes nothing: a run refused later leaves no trace
    record_recipe(first, run)
    changed = load_config(TokenizerRecipe, tokenizer_recipe, ["training.learning_rate=0.5"])
    check_resume(changed, run)  # killed before its first checkpoint: nothing to keep
    record_recipe(changed, run)
    assert json.loads((run / RECIPE_RECORD).read_text())["training.learning_rate"] == 0.5
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    with pytest.raises(UserError, match="training.learning_rate: 0.5 -> 0.002"):
        check_resume(load_config(TokenizerRecipe, tokenizer_recipe, []), run)


def test_an_image_stage_resumes_past_a_checkpoint_damaged_after_it_was_written(tokenizer_recipe, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tokenizer_recipe), "training.max_steps=6"]) == 0  # checkpoints at 2 and 4
    weights = next((run / "checkpoints" / "step_000004").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["train", str(tokenizer_recipe), "training.max_steps=6"]) == 0
    assert "step_000002 (step 2)" in capsys.readouterr().out
    assert (run / "checkpoints" / "step_000004.damaged").is_dir()
    assert logged_steps(run)[-4:] == [3, 4, 5, 6] and len(logged_steps(run)) == 6
