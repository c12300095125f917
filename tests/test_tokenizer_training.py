"""Tokenizer training: the loss falls, checkpoints resume exactly, bad images are skipped and reported."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmgen.config import load_config
from mmgen.tokenizers import load_visual_tokenizer
from mmgen.train import tokenizer as stage
from mmgen.train.tokenizer import StepBatchSampler, TokenizerRecipe, train_tokenizer

TINY = [
    "model.image_size=16",
    "model.patch_size=1",
    "model.block_out_channels=[16,16]",
    "model.norm_num_groups=8",
    "model.latent_channels=8",
    "model.mid_block_add_attention=false",
    "model.quantizer.codebook_size=32",
    "data.num_images=64",
    "data.eval_images=16",
    "training.batch_size=8",
    "training.learning_rate=0.003",
    "training.warmup_steps=2",
    "training.log_every=1",
    "training.sample_every=100",
    "training.mixed_precision=fp32",
]


def tiny_recipe(tmp_path, *overrides):
    return load_config(TokenizerRecipe, None, [*TINY, f"output_dir={tmp_path}", *overrides])


def logged_losses(output_dir):
    return [json.loads(line)["recon"] for line in (output_dir / "train_log.jsonl").read_text().splitlines()]


def test_step_sampler_is_a_function_of_step():
    full = list(StepBatchSampler(20, 4, seed=3, start_step=0, max_steps=12))
    resumed = list(StepBatchSampler(20, 4, seed=3, start_step=7, max_steps=12))
    assert resumed == full[7:]
    assert sorted(sum(full[:5], [])) == list(range(20))  # one epoch covers every item once


def test_training_reduces_loss_and_saves_a_loadable_tokenizer(tmp_path):
    final = train_tokenizer(tiny_recipe(tmp_path, "training.max_steps=40", "training.checkpoint_every=20"),
                            progress=False)
    losses = logged_losses(tmp_path)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    tokenizer = load_visual_tokenizer(final)
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    assert tokenizer.encode(pixels).shape == (2, tokenizer.num_tokens)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_000020"]
    assert (tmp_path / "samples" / "step_000040.png").exists()
    _check_reconstruction_grid(final, tmp_path / "grid.png")


def _check_reconstruction_grid(tokenizer_dir, grid_path):
    """`mmgen tokenizer eval --grid`: eight held-out scenes above their reconstructions."""
    from mmgen.eval.tokenizer import encode_dataset

    from mmgen.cli import main
    from mmgen.images import tensor_to_pil
    from mmgen.tokenizers.tools import eval_dataset

    assert main(["tokenizer", "eval", "--tokenizer", str(tokenizer_dir), "--data", "shapes", "--num", "8",
                 "--grid", str(grid_path)]) == 0
    tokenizer = load_visual_tokenizer(tokenizer_dir)
    pixels, _, reconstructions = next(encode_dataset(tokenizer, eval_dataset("shapes", 16, 8), 8, True))
    cell = 16 + 2  # make_grid pads 2 px
    with Image.open(grid_path) as grid:
        assert grid.size == (8 * cell + 2, 2 * cell + 2)
        for column in (0, 7):
            top = grid.crop((2 + column * cell, 2, 2 + column * cell + 16, 18))
            bottom = grid.crop((2 + column * cell, 2 + cell, 2 + column * cell + 16, 18 + cell))
            assert np.array_equal(np.asarray(top), np.asarray(tensor_to_pil(pixels)[column]))
            assert np.array_equal(np.asarray(bottom), np.asarray(tensor_to_pil(reconstructions)[column]))


def test_killed_run_resumes_to_identical_weights(tmp_path, monkeypatch):
    steps = ["training.max_steps=12", "training.checkpoint_every=4"]
    reference = train_tokenizer(tiny_recipe(tmp_path / "straight", *steps), progress=False)

    real_step = stage._train_step

    def dies_at_step_7(recipe, step, *args):
        if step == 7:
            raise KeyboardInterrupt  # a kill between checkpoints 4 and 8
        return real_step(recipe, step, *args)

    monkeypatch.setattr(stage, "_train_step", dies_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_tokenizer(tiny_recipe(tmp_path / "killed", *steps), progress=False)
    assert not (tmp_path / "killed" / "tokenizer").exists()
    monkeypatch.setattr(stage, "_train_step", real_step)
    resumed = train_tokenizer(tiny_recipe(tmp_path / "killed", *steps), progress=False)

    expected = load_visual_tokenizer(reference).state_dict()
    got = load_visual_tokenizer(resumed).state_dict()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    # Steps 5-12 of the resumed run were logged again; the data they saw matches the straight run's.
    assert logged_losses(tmp_path / "killed")[-8:] == pytest.approx(logged_losses(tmp_path / "straight")[-8:],
                                                                    rel=1e-4)


def test_bad_images_are_skipped_and_reported(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(30):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(images / f"ok_{index:02d}.png")
    (images / "corrupt.png").write_bytes(b"not a png")
    Image.new("RGB", (1, 1)).save(images / "dot.png")
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(images / "deep.png")  # converted
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(images / "alpha.png")  # converted

    out = tmp_path / "run"
    recipe = tiny_recipe(out, f"data.source={images}", "data.eval_images=4", "training.max_steps=6",
                         "training.checkpoint_every=100")
    train_tokenizer(recipe, progress=False)
    report = json.loads((out / "skipped_images.json").read_text())
    skipped = sorted(row["row"].rsplit("/", 1)[-1] for row in report["rows"])
    # 6 steps x 8 images cover the 31 training files: both unreadable ones were drawn, each reported once.
    assert skipped == ["corrupt.png", "dot.png"] and report["count"] == 2
    assert all("corrupt.png: cannot read image" in row["reason"] or "1x1" in row["reason"] for row in report["rows"])
    assert (out / "tokenizer" / "model.safetensors").exists()


def test_a_folder_of_unreadable_images_says_so(tmp_path, capsys):
    from mmgen.cli import main

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(32))
    recipe = tmp_path / "tokenizer.yaml"
    recipe.write_text(f"stage: tokenizer\noutput_dir: {tmp_path / 'run'}\nmodel: {{image_size: 16, "
                      "block_out_channels: [8, 8], norm_num_groups: 4, latent_channels: 4, "
                      "mid_block_add_attention: false}\n"
                      f"data: {{source: {folder}}}\ntraining: {{max_steps: 2, batch_size: 2, warmup_steps: 1, "
                      "mixed_precision: fp32}\n")
    assert main(["train", str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no readable image in the first" in err or "none of the" in err, err
    assert main(["train", str(recipe), "training.batch_size=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"none of the 3 training images is readable ({folder / 'a.png'}: cannot read image" in err, err
