"""SFT stage on TRL: LoRA trains only LoRA weights and the new image rows; full FT learns; resume; errors."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, TrainerCallback

from mmgen.checkpoint import load_unified, read_meta
from mmgen.config import load_config
from mmgen.errors import UserError
from mmgen.train.sft import SFTRecipe, latest_complete_checkpoint, train_sft
from mmgen.train.train_log import TRAIN_LOG, read_train_log

COLORS = {"red": 5, "blue": 9, "green": 17, "yellow": 33}


@pytest.fixture(scope="module")
def sft_data(unified_dir, tmp_path_factory):
    """A learnable toy task: the caption's colour word fixes every code of the image."""
    from datasets import Dataset, DatasetDict

    unified = load_unified(unified_dir)
    prompts = unified.prompts
    rows = []
    for i in range(64):
        color = list(COLORS)[i % len(COLORS)]
        codes = [COLORS[color]] * unified.num_image_tokens
        caption = None if i % 10 == 9 else f"a {color} circle"
        rows.append({**prompts.text_to_image_example(caption, codes), "task": "t2i"})
    out = tmp_path_factory.mktemp("sft-data") / "data"
    DatasetDict({"train": Dataset.from_list(rows[:56]), "eval": Dataset.from_list(rows[56:])}).save_to_disk(out)
    meta = read_meta(unified_dir)
    (out / "build_info.json").write_text(json.dumps({"image_tokens": meta["image_tokens"],
                                                     "tokens_per_image": meta["tokens_per_image"]}))
    return out


def recipe(unified_dir, data, out, **overrides):
    base = [f"model={unified_dir}", f"data={data}", f"output_dir={out}", "training.max_steps=6",
            "training.batch_size=8", "training.learning_rate=5e-3", "training.warmup_steps=0",
            "training.logging_steps=1", "training.save_steps=3", "training.eval_steps=3",
            "training.mixed_precision=fp32", "lora.r=4", "lora.alpha=8"]
    return load_config(SFTRecipe, None, base + [f"{k}={v}" for k, v in overrides.items()])


def test_lora_changes_only_lora_weights_and_new_image_rows(unified_dir, sft_data, tmp_path):
    final = train_sft(recipe(unified_dir, sft_data, tmp_path / "run", save="adapter"))
    meta = read_meta(final)
    start = meta["image_tokens"]["start_id"]
    adapter = load_file(final / "adapter" / "adapter_model.safetensors")
    base = load_file(unified_dir / "model.safetensors")
    lora = {k: v for k, v in adapter.items() if "lora_" in k}
    tables = {k: v for k, v in adapter.items() if "lora_" not in k}
    assert lora and all(v.abs().sum() > 0 for v in lora.values())
    assert {k.split(".")[-2] for k in tables} <= {"embed_tokens", "lm_head"} and tables
    for name, trained in tables.items():
        base_name = name.removeprefix("base_model.model.")
        original = base.get(base_name, base["model.embed_tokens.weight"])  # a tied lm_head is the embedding
        assert torch.equal(trained[:start], original[:start]), f"text rows of {name} moved"
        assert not torch.equal(trained[start:], original[start:]), f"image rows of {name} did not train"
    # The base weights shipped next to the adapter are the untouched base.
    assert all(torch.equal(v, base[k]) for k, v in load_file(final / "model.safetensors").items())


def test_full_finetune_learns_and_writes_a_loadable_unified_checkpoint(unified_dir, sft_data, tmp_path):
    out = tmp_path / "run"
    final = train_sft(recipe(unified_dir, sft_data, out, method="full", **{
        "training.max_steps": 30, "training.learning_rate": 1e-2, "training.eval_steps": 10,
        "training.save_steps": 15, "samples.prompts": "[a red circle]"}))
    state = json.loads((out / "checkpoints" / "checkpoint-30" / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert losses[-1] < 0.5 * losses[0]
    assert any("eval_loss" in entry for entry in state["log_history"])
    AutoModelForCausalLM.from_pretrained(final)  # plain transformers
    assert read_meta(final)["sft"]["method"] == "full"
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["step_000010.png", "step_000020.png",
                                                                       "step_000030.png"]
    from mmgen.sampling import ImageGenerator

    codes = ImageGenerator.from_pretrained(final).generate_codes(["a blue circle"], temperature=0)
    assert (codes == COLORS["blue"]).float().mean() > 0.9  # it learned the task


class StopAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated kill")


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(unified_dir, sft_data, tmp_path):
    whole = train_sft(recipe(unified_dir, sft_data, tmp_path / "whole"))
    cut = recipe(unified_dir, sft_data, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        train_sft(cut, callbacks=[StopAfter(4)])
    assert latest_complete_checkpoint(tmp_path / "cut" / "checkpoints").name == "checkpoint-3"
    (tmp_path / "cut" / "checkpoints" / "checkpoint-5").mkdir()  # a checkpoint killed mid-save
    resumed = train_sft(cut)
    assert not (tmp_path / "cut" / "checkpoints" / "checkpoint-5").exists()
    state = json.loads((tmp_path / "cut" / "checkpoints" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4, 5, 6]
    # train_log.jsonl dropped the step logged after checkpoint-3 before the resumed run logged it again
    assert [row["step"] for row in read_train_log(tmp_path / "cut" / TRAIN_LOG) if "loss" in row] == [1, 2, 3, 4, 5, 6]
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_a_checkpoint_killed_while_writing_its_trainer_state_is_not_resumed_from(tmp_path):
    """The kill can land after trainer_state.json is created but before its content is written."""
    for step, state in ((2, '{"global_step": 2}'), (4, ""), (6, '{"global_st')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]


def test_a_checkpoint_whose_weights_were_cut_short_later_is_set_aside(tmp_path):
    """Damaged after it was complete (disk full, a bad copy): kept for inspection, and the one before it is used."""
    from safetensors.torch import save_file

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
        save_file({"w": torch.zeros(64, 64)}, tmp_path / f"checkpoint-{step}" / "model.safetensors")
    weights = tmp_path / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4.damaged"]
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-2"  # the damaged one is never tried again


def test_gpu_only_options_fail_clearly_on_cpu(unified_dir, sft_data, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(UserError, match="qlora .* needs a CUDA GPU; use method: lora"):
        train_sft(recipe(unified_dir, sft_data, tmp_path, method="qlora"))
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        train_sft(recipe(unified_dir, sft_data, tmp_path, **{"training.mixed_precision": "fp16"}))


def test_a_missing_tracker_is_refused_with_the_install_line(monkeypatch):
    from mmgen.train import settings

    real = settings.importlib.util.find_spec
    monkeypatch.setattr(settings.importlib.util, "find_spec",
                        lambda name, *args: None if name == "wandb" else real(name, *args))
    with pytest.raises(UserError, match=r"report_to: wandb is not installed \(pip install wandb\); or set "
                                        r"training.report_to=none"):
        settings.TrainerSettings(report_to="wandb").check_machine()
    settings.TrainerSettings(report_to="none").check_machine()


def test_data_built_for_another_model_is_refused(unified_dir, sft_data, tmp_path):
    import shutil

    other = tmp_path / "data"
    shutil.copytree(sft_data, other)
    info = json.loads((other / "build_info.json").read_text())
    info["tokens_per_image"] += 1
    (other / "build_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="built for other image tokens"):
        train_sft(recipe(unified_dir, other, tmp_path / "run"))


@pytest.mark.slow
def test_two_process_ddp_on_cpu_keeps_ranks_identical(unified_dir, sft_data, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    overrides = [f"model={unified_dir}", f"data={sft_data}", f"output_dir={tmp_path / 'run'}", "training.max_steps=4",
                 "training.batch_size=4", "training.save_steps=4", "training.eval_steps=4",
                 "training.mixed_precision=fp32", "method=full"]
    worker = Path(__file__).with_name("ddp_sft_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", "29517", str(worker), str(tmp_path), *overrides],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [4, 4]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    base = AutoModelForCausalLM.from_pretrained(unified_dir)
    assert any(abs(float(p.detach().double().sum()) - ranks[0]["weights"][n]) > 1e-6
               for n, p in base.named_parameters())
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")  # rank 0 wrote the final checkpoint


SFT_RECIPES = sorted(str(p) for p in (Path(__file__).parents[1] / "recipes" / "sft").glob("*.yaml"))


@pytest.mark.parametrize("recipe_path", SFT_RECIPES, ids=lambda p: Path(p).stem)
def test_shipped_sft_recipes_validate_in_a_dry_run(recipe_path, unified_dir, sft_data, tmp_path, capsys):
    from mmgen.cli import main

    assert main(["train", recipe_path, f"model={unified_dir}", f"data={sft_data}", f"output_dir={tmp_path}",
                 "--dry-run"]) == 0
    assert f"recipe OK: {recipe_path}" in capsys.readouterr().out
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    assert main(["train", recipe_path, "--dry-run"]) == 2  # the weights are not on this machine: named paths
    assert "points to a missing path" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkilled_cli_run_resumes_with_the_same_result(unified_dir, sft_data, tmp_path):
    """A real `mmgen train` process killed with SIGKILL after its first checkpoint; the same command resumes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    recipe_file = tmp_path / "sft.yaml"
    recipe_file.write_text(f"stage: sft\nmodel: {unified_dir}\ndata: {sft_data}\nmethod: full\n")
    settings = ["training.max_steps=8", "training.batch_size=8", "training.save_steps=2", "training.eval_steps=100",
                "training.mixed_precision=fp32", "training.learning_rate=5e-3", "training.warmup_steps=0"]

    def command(out):
        return [sys.executable, "-m", "mmgen", "train", str(recipe_file), f"output_dir={out}", *settings]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "whole"), check=True, capture_output=True, env=env, timeout=600)
    victim = subprocess.Popen(command(tmp_path / "cut"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = tmp_path / "cut" / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    assert first.exists() and not (tmp_path / "cut" / "model").exists()
    subprocess.run(command(tmp_path / "cut"), check=True, capture_output=True, env=env, timeout=600)
    state = json.loads((tmp_path / "cut" / "checkpoints" / "checkpoint-8" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    a, b = load_file(tmp_path / "whole" / "model" / "model.safetensors"), load_file(
        tmp_path / "cut" / "model" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_a_run_that_repeats_its_few_rows_many_times_is_warned_about():
    from mmgen.train.sft import repetition_warning

    assert repetition_warning(train_rows=1000, max_steps=300, batch_size=32) is None  # under 10 passes
    line = repetition_warning(train_rows=1, max_steps=30, batch_size=32)
    assert "pass 960 times over the 1 train rows" in line and "training.max_steps" in line


def test_warmup_longer_than_the_run_is_said(unified_dir, sft_data, tmp_path, caplog):
    with caplog.at_level("WARNING"):
        recipe(unified_dir, sft_data, tmp_path, **{"training.warmup_steps": 50})
    assert "training.warmup_steps (50) >= training.max_steps (6)" in caplog.text


def test_the_plain_lm_head_gives_trls_loss_and_gradients(unified_dir, sft_data, tmp_path, monkeypatch):
    """Small batches skip TRL's chunked head (faster on CPU); the loss and its gradients must not change."""
    from datasets import load_from_disk

    from mmgen.train import sft

    run = recipe(unified_dir, sft_data, tmp_path, method="full")
    unified = load_unified(unified_dir, with_model=False)
    model = sft.load_model_for_training(run, unified)
    trainer = sft.build_trainer(run, model, unified, load_from_disk(str(sft_data)))
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()  # prompt masked, completion scored

    from trl import SFTTrainer

    chunked_calls = []
    chunked = SFTTrainer.compute_loss
    monkeypatch.setattr(SFTTrainer, "compute_loss", lambda *a, **k: chunked_calls.append(1) or chunked(*a, **k))

    def loss_and_grads(plain: bool):
        monkeypatch.setattr(sft, "PLAIN_LOGITS_MAX_BYTES", 2**40 if plain else 0)
        chunked_calls.clear()
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        assert len(chunked_calls) == (0 if plain else 1)  # each side really took its own head
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain_loss, plain_grads = loss_and_grads(True)
    fused_loss, fused_grads = loss_and_grads(False)
    torch.testing.assert_close(plain_loss, fused_loss, rtol=1e-5, atol=1e-6)
    assert len(plain_grads) == len(fused_grads) > 0
    for a, b in zip(plain_grads, fused_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
