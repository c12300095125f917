"""The `mmgen` entry point: verbs, help, honest refusals and one-line errors."""

import json
import subprocess
import sys

import pytest
from mmgen.recipes import RECIPES_DIR as RECIPES

from mmgen.cli import main

VERBS = ["data", "tokenizer", "init", "train", "generate", "edit", "eval", "export", "demo"]


def test_help_lists_every_verb():
    result = subprocess.run([sys.executable, "-m", "mmgen", "--help"], capture_output=True, text=True, check=True)
    for verb in VERBS:
        assert f"    {verb}" in result.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    assert "usage: mmgen " + verb in capsys.readouterr().out


def test_user_error_is_one_line(capsys):
    assert main(["data", "shapes", "--num", "0", "--out", "/tmp/never"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--num" in err


@pytest.mark.parametrize(("extra", "expected"), [
    (["--grid", "4", "--edits"], "--grid applies to images, not --edits or --questions"),
    (["--span", "1"], "--span needs --grid N"),
    (["--grid", "8", "--span", "1"], "--grid/--span: grid 8 with objects 1 cells wide gives size 0.125"),
])
def test_data_shapes_grid_errors(extra, expected, tmp_path, capsys):
    assert main(["data", "shapes", "--num", "2", "--out", str(tmp_path / "never"), *extra]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_data_shapes_on_a_grid(tmp_path):
    import datasets

    assert main(["data", "shapes", "--num", "4", "--grid", "4", "--out", str(tmp_path / "grid")]) == 0
    scenes = [json.loads(row["scene"]) for row in datasets.load_from_disk(str(tmp_path / "grid"))]
    assert all(obj["size"] == 0.25 for scene in scenes for obj in scene["objects"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.lerning_rate=0.1", "did you mean 'training.learning_rate'"),
        ("training.batch_size=big", "key 'training.batch_size' has the wrong type"),
        ("data.source=/no/such/images", "image source not found: /no/such/images"),
        ("loss.lpips_path=/no/lpips.safetensors", "key 'loss.lpips_path' points to a missing path"),
    ],
)
def test_bad_recipe_input_is_one_line_naming_the_key(override, expected, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"extends: {RECIPES / 'tokenizer' / 'shapes-vq.yaml'}\noutput_dir: {tmp_path / 'out'}\n")
    result = subprocess.run([sys.executable, "-m", "mmgen", "train", str(recipe), override],
                            capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp_path / "out").exists()  # nothing started


def test_missing_recipe_file_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mmgen", "train", str(tmp_path / "nope.yaml")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "recipe not found" in result.stderr and result.stderr.count("\n") == 1
