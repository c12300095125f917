"""The demo's chain is consistent: its scenes stand on the tokenizer's own code grid, and the tokenizer is
judged on scenes it did not train on."""

from pathlib import Path

from mmgen.recipes import recipe_path
from omegaconf import OmegaConf

from mmgen.demo.stages import FULL, GRID, STAGES, TOKENIZER_PATCH, DemoRun
from mmgen.tokenizers.vq_grid import GridTokenizerConfig


def _commands(name: str, run: Path) -> list[list[str]]:
    stage = next(stage for stage in STAGES if stage.name == name)
    return stage.commands(run, DemoRun(FULL))


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_the_tokenizer_code_grid_is_the_scene_grid(tmp_path):
    recipe = OmegaConf.to_container(OmegaConf.load(recipe_path("tokenizer/shapes-vq.yaml")))
    config = GridTokenizerConfig(image_size=recipe["model"]["image_size"], patch_size=TOKENIZER_PATCH,
                                 block_out_channels=recipe["model"]["block_out_channels"])
    assert config.grid_size == GRID
    train = _commands("tokenizer", tmp_path)[0]
    assert f"model.patch_size={TOKENIZER_PATCH}" in train
    assert all(_option(command, "--grid") == str(GRID) for command in _commands("data", tmp_path))


def test_the_tokenizer_trains_on_the_demo_scenes_and_is_judged_on_held_out_ones(tmp_path):
    train, evaluate, ceiling = _commands("tokenizer", tmp_path)
    data = [_option(command, "--out") for command in _commands("data", tmp_path)]
    assert f"data.source={data[0]}" in train
    assert _option(evaluate, "--data") == data[1] != data[0]
    assert _option(ceiling, "--grid") == str(GRID)
