"""Recipe loading: typos, wrong types and missing files each give one line naming the key."""

from dataclasses import dataclass, field

import pytest

from mmgen.config import ConfigError, load_config, must_exist, read_recipe_key


@dataclass
class OptimConfig:
    learning_rate: float = 1e-3
    max_steps: int = 10
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])


@dataclass
class RecipeConfig:
    stage: str = "toy"
    data: str | None = must_exist(None)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if self.optim.max_steps < 0:
            raise ValueError(f"optim.max_steps must be >= 0, got {self.optim.max_steps}")


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def one_line_error(recipe_path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_config(RecipeConfig, recipe_path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_yaml_and_overrides_build_typed_config(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = write(tmp_path, f"data: {data_dir}\noptim:\n  learning_rate: 0.5\n")
    config = load_config(RecipeConfig, path, ["optim.max_steps=7", "optim.betas=[0.5,0.6]"])
    assert isinstance(config, RecipeConfig) and isinstance(config.optim, OptimConfig)
    assert config.optim.learning_rate == 0.5
    assert config.optim.max_steps == 7
    assert config.optim.betas == [0.5, 0.6]
    assert config.data == str(data_dir)


def test_defaults_without_recipe():
    assert load_config(RecipeConfig) == RecipeConfig()


def test_typo_names_closest_key(tmp_path):
    message = one_line_error(write(tmp_path, "optim:\n  lerning_rate: 0.1\n"))
    assert "optim.lerning_rate" in message and "did you mean 'optim.learning_rate'" in message
    assert "recipe.yaml" in message


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = one_line_error(write(tmp_path, "zzz: 1\n"))
    assert "unknown key 'zzz'" in message and "stage, data, optim" in message


def test_typo_in_override_is_rejected(tmp_path):
    message = one_line_error(write(tmp_path, "stage: toy\n"), ["optim.max_stepz=3"])
    assert message.startswith("command line:") and "did you mean 'optim.max_steps'" in message


@pytest.mark.parametrize("text", ["optim:\n  learning_rate: fast\n", "optim:\n  max_steps: 1.5\n"])
def test_wrong_type_names_key(tmp_path, text):
    message = one_line_error(write(tmp_path, text))
    assert "wrong type" in message and "optim." in message


def test_missing_path_names_key(tmp_path):
    message = one_line_error(write(tmp_path, "data: /no/such/dir\n"))
    assert "key 'data'" in message and "/no/such/dir" in message


def test_missing_recipe_file(tmp_path):
    message = one_line_error(tmp_path / "nope.yaml")
    assert "recipe not found" in message and "nope.yaml" in message


def test_post_init_check_is_reported(tmp_path):
    message = one_line_error(write(tmp_path, "optim: {max_steps: -1}\n"))
    assert "optim.max_steps must be >= 0" in message


@pytest.mark.parametrize("text", ["stage: [\n", "- 1\n- 2\n"])
def test_malformed_yaml(tmp_path, text):
    assert "recipe.yaml" in one_line_error(write(tmp_path, text))


def test_malformed_override(tmp_path):
    assert "key=value" in one_line_error(write(tmp_path, ""), ["optim.max_steps"])


def test_read_recipe_key(tmp_path):
    assert read_recipe_key(write(tmp_path, "stage: sft\nfoo: 1\n"), "stage") == "sft"


def test_extends_merges_base_first(tmp_path):
    (tmp_path / "base.yaml").write_text("stage: base\noptim:\n  learning_rate: 0.1\n  max_steps: 5\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\noptim:\n  max_steps: 9\n")
    config = load_config(RecipeConfig, child)
    assert (config.stage, config.optim.learning_rate, config.optim.max_steps) == ("base", 0.1, 9)
    assert read_recipe_key(child, "stage") == "base"


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    assert "cycle" in one_line_error(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    assert "missing.yaml" in one_line_error(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: base.yaml\noptim:\n  lerning_rate: 1\n")
    (tmp_path / "base.yaml").write_text("stage: x\n")
    message = one_line_error(tmp_path / "d.yaml")
    assert "d.yaml" in message and "did you mean 'optim.learning_rate'" in message


@dataclass
class Source:
    path: str = "x"
    task: str | None = None
    weight: float = 1.0


@dataclass
class Mixture:
    sources: list[Source] = field(default_factory=list)
    cond_dropout: float = 0.1


def test_overrides_address_list_items_by_index(tmp_path):
    recipe = tmp_path / "data.yaml"
    recipe.write_text("sources:\n  - path: a\n    task: t2i\n  - path: b\n    task: edit\n")
    config = load_config(Mixture, recipe, ["sources.1.weight=3.5", "sources.0.path=c", "cond_dropout=0.2"])
    assert [(s.path, s.task, s.weight) for s in config.sources] == [("c", "t2i", 1.0), ("b", "edit", 3.5)]
    assert config.cond_dropout == 0.2
    with pytest.raises(ConfigError, match=r"'sources.2.path': sources is a list of 2 item\(s\)"):
        load_config(Mixture, recipe, ["sources.2.path=x"])
    with pytest.raises(ConfigError, match="unknown key 'sources.0.pth'; did you mean 'sources.0.path'"):
        load_config(Mixture, recipe, ["sources.0.pth=x"])
    with pytest.raises(ConfigError, match=r"sources\[0\].weight. has the wrong type"):
        load_config(Mixture, recipe, ["sources.0.weight=heavy"])
