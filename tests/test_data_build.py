"""`mmgen data build`: PromptBuilder's sequences, loss masks, caption dropout, mixture shares, splits, refusals."""

import json
import os
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from mmgen.data_engine.build import BUILD_INFO_NAME, DataBuildRecipe, MixtureSource, build_dataset
from mmgen.data_engine.pretokenize import tokenize
from mmgen.data_engine.tokenized import load_tokenized
from mmgen.recipes import recipe_path

from mmgen.checkpoint import load_text_tokenizer, read_meta
from mmgen.cli import main
from mmgen.config import ConfigError, load_config
from mmgen.errors import UserError
from mmgen.sequences import PromptBuilder
from mmgen.vocab import ImageVocab

ROWS = {"t2i": 30, "edit": 8, "understanding": 12}


@pytest.fixture(scope="session")
def tokenized_dirs(tmp_path_factory, tiny_visual_tokenizer_dir) -> dict[str, Path]:
    """One small tokenized shapes source per task, encoded with the tokenizer the unified checkpoint holds."""
    root = tmp_path_factory.mktemp("tokenized")
    return {task: tokenize("shapes", tiny_visual_tokenizer_dir, root / task, task=task, num=num,
                           cache_dir=root / "cache").path for task, num in ROWS.items()}


def prompts_for(model: Path) -> PromptBuilder:
    meta = read_meta(model)
    return PromptBuilder(load_text_tokenizer(model), ImageVocab.from_dict(meta["image_tokens"]), meta["prompt_format"])


def recipe(model, out, sources, **settings) -> DataBuildRecipe:
    return DataBuildRecipe(model=str(model), output_dir=str(out),
                           sources=[MixtureSource(path=str(p), weight=w) for p, w in sources], **settings)


def expected_example(prompts: PromptBuilder, task: str, row: dict, uncond: bool = False) -> dict:
    if task == "t2i":
        return prompts.text_to_image_example(None if uncond else row["caption"], row["codes"])
    if task == "edit":
        return prompts.edit_example(row["source_codes"], None if uncond else row["instruction"], row["target_codes"])
    return prompts.understanding_example(row["codes"], row["question"], row["answer"])


def by_source_row(path: Path) -> dict[int, dict]:
    return {row["source_row"]: row for row in load_tokenized(path).dataset}


@pytest.mark.parametrize("task", ["t2i", "edit", "understanding"])
def test_sequences_and_masks_are_prompt_builders(task, unified_dir, tokenized_dirs, tmp_path):
    out = build_dataset(recipe(unified_dir, tmp_path / "built", [(tokenized_dirs[task], 1)], cond_dropout=0.0,
                               eval_size=2), log=lambda line: None)
    built = datasets.load_from_disk(str(out))
    prompts, rows = prompts_for(unified_dir), by_source_row(tokenized_dirs[task])
    vocab = prompts.vocab
    assert len(built["train"]) == ROWS[task] - 2 and len(built["eval"]) == 2
    for split in ("train", "eval"):
        for example in built[split]:
            row = rows[example["source_row"]]
            assert {k: example[k] for k in ("input_ids", "completion_mask")} == expected_example(prompts, task, row)
            assert example["task"] == task and not example["uncond"]
            completion = [i for i, m in zip(example["input_ids"], example["completion_mask"], strict=True) if m]
            if task == "understanding":  # the loss is on the answer (and EOS), never on the image
                assert not vocab.is_code(torch.tensor(completion)).any()
            else:  # the loss is on the (target) image's codes and <|image_end|>
                codes = row["codes"] if task == "t2i" else row["target_codes"]
                assert completion == [vocab.first_code_id + c for c in codes] + [vocab.end_id]
    info = json.loads((out / BUILD_INFO_NAME).read_text())
    meta = read_meta(unified_dir)
    assert info["image_tokens"] == meta["image_tokens"] and info["tokens_per_image"] == meta["tokens_per_image"]


def test_cond_dropout_share_and_determinism(unified_dir, tokenized_dirs, tmp_path):
    sources = [(tokenized_dirs["t2i"], 1), (tokenized_dirs["understanding"], 1)]
    settings = {"cond_dropout": 0.25, "train_size": 200, "eval_size": 0, "seed": 3}
    first = datasets.load_from_disk(str(build_dataset(recipe(unified_dir, tmp_path / "a", sources, **settings),
                                                      log=lambda line: None)))["train"]
    t2i = [row for row in first if row["task"] == "t2i"]
    assert sum(row["uncond"] for row in t2i) == 25  # exactly 25% of the 100 t2i rows
    assert not any(row["uncond"] for row in first if row["task"] == "understanding")
    prompts, rows = prompts_for(unified_dir), by_source_row(tokenized_dirs["t2i"])
    for row in t2i:
        expected = expected_example(prompts, "t2i", rows[row["source_row"]], uncond=row["uncond"])
        assert row["input_ids"] == expected["input_ids"] and row["completion_mask"] == expected["completion_mask"]
    again = datasets.load_from_disk(str(build_dataset(recipe(unified_dir, tmp_path / "b", sources, **settings),
                                                      log=lambda line: None)))["train"]
    assert again["input_ids"] == first["input_ids"] and again["uncond"] == first["uncond"]
    other = datasets.load_from_disk(str(build_dataset(recipe(unified_dir, tmp_path / "c", sources,
                                                             **{**settings, "seed": 4}), log=lambda line: None)))
    assert other["train"]["uncond"] != first["uncond"]


def test_mixture_shares_repetition_and_disjoint_eval(unified_dir, tokenized_dirs, tmp_path):
    sources = [(tokenized_dirs["t2i"], 3), (tokenized_dirs["understanding"], 1)]
    out = build_dataset(recipe(unified_dir, tmp_path / "mix", sources, train_size=100, eval_size=8),
                        log=lambda line: None)
    built = datasets.load_from_disk(str(out))
    assert Counter(built["train"]["task"]) == {"t2i": 75, "understanding": 25}
    assert Counter(built["eval"]["task"]) == {"t2i": 6, "understanding": 2}
    # The 10 understanding train rows fill 25 places: each appears 2 or 3 times.
    repeats = Counter(row["source_row"] for row in built["train"] if row["task"] == "understanding")
    assert len(repeats) == ROWS["understanding"] - 2 and set(repeats.values()) == {2, 3}
    train_keys = {(row["source"], row["source_row"]) for row in built["train"]}
    eval_keys = {(row["source"], row["source_row"]) for row in built["eval"]}
    assert len(eval_keys) == 8 and not train_keys & eval_keys
    info = json.loads((out / BUILD_INFO_NAME).read_text())
    assert [s["train_rows"] for s in info["sources"]] == [75, 25] and info["splits"] == {"train": 100, "eval": 8}
    assert all(s["tokenizer_matches_model"] for s in info["sources"])  # the checkpoint's copy has the same weights


def test_rows_over_max_length_are_skipped_and_counted(unified_dir, tokenized_dirs, tmp_path):
    prompts = prompts_for(unified_dir)
    lengths = sorted(len(expected_example(prompts, "t2i", row)["input_ids"])
                     for row in by_source_row(tokenized_dirs["t2i"]).values())
    limit = lengths[len(lengths) // 2]
    too_long = sum(length > limit for length in lengths)
    assert 0 < too_long < len(lengths)
    messages = []
    out = build_dataset(recipe(unified_dir, tmp_path / "short", [(tokenized_dirs["t2i"], 1)], max_length=limit,
                               eval_size=0, cond_dropout=0.0), log=messages.append)
    built = datasets.load_from_disk(str(out))
    assert len(built["train"]) == len(lengths) - too_long
    assert max(len(ids) for ids in built["train"]["input_ids"]) <= limit
    assert json.loads((out / BUILD_INFO_NAME).read_text())["skipped_too_long"] == too_long
    assert any(f"skipped {too_long} of {len(lengths)} rows longer than max_length {limit}" in m for m in messages)


def tiny_grid_tokenizer(path: Path, levels: list[int], seed: int) -> Path:
    from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, QuantizerConfig

    torch.manual_seed(seed)
    GridTokenizer(GridTokenizerConfig(image_size=16, block_out_channels=(8, 16), norm_num_groups=4, latent_channels=8,
                                      quantizer=QuantizerConfig(kind="fsq", levels=levels))).save_pretrained(path)
    return path


def test_refuses_codes_of_another_shape_and_warns_on_other_weights(unified_dir, tmp_path):
    smaller = tiny_grid_tokenizer(tmp_path / "smaller", levels=[4, 4], seed=0)  # 16 codes, the model has 64
    tokenize("shapes", smaller, tmp_path / "codes", num=3, cache_dir=tmp_path / "cache")
    with pytest.raises(UserError, match=r"16 codes, 16 tokens per image.*expects 64 codes and 16 tokens"):
        build_dataset(recipe(unified_dir, tmp_path / "built", [(tmp_path / "codes", 1)]), log=lambda line: None)
    assert not (tmp_path / "built").exists()
    # Same shape, other weights (a retrained tokenizer): the codes fit but may mean other images, so warn.
    retrained = tiny_grid_tokenizer(tmp_path / "retrained", levels=[4, 4, 4], seed=1)
    tokenize("shapes", retrained, tmp_path / "codes-2", num=3, cache_dir=tmp_path / "cache")
    messages = []
    out = build_dataset(recipe(unified_dir, tmp_path / "built", [(tmp_path / "codes-2", 1)]), log=messages.append)
    assert any(m.startswith("warning:") and "weights differ" in m for m in messages)
    assert json.loads((out / BUILD_INFO_NAME).read_text())["sources"][0]["tokenizer_matches_model"] is False


def test_recipe_validation_and_cli_errors_are_one_line(unified_dir, tokenized_dirs, tmp_path, capsys):
    file = tmp_path / "recipe.yaml"
    base = f"model: {unified_dir}\noutput_dir: {tmp_path / 'out'}\nsources:\n  - path: {tokenized_dirs['t2i']}\n"
    for extra, message in [("    wieght: 2\n", "Did you mean: 'weight'"),
                           ("cond_dropot: 0.2\n", "did you mean 'cond_dropout'"),
                           ("eval_size: 3\neval_fraction: 0.1\n", "eval_size or eval_fraction, not both"),
                           ("  - path: /no/such/dir\n", "key 'sources[1].path' points to a missing path")]:
        file.write_text(base + extra)
        assert main(["data", "build", str(file)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    file.write_text(base + "    task: edit\n")
    assert main(["data", "build", str(file)]) == 2
    assert "says task edit but was tokenized for t2i" in capsys.readouterr().err
    file.write_text(base)
    assert main(["data", "build", str(file), "eval_size=1"]) == 0
    assert "train 29 rows, eval 1 rows" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="unknown key 'method'"):
        file.write_text(base + "method: lora\n")
        load_config(DataBuildRecipe, file)


@pytest.mark.parametrize("name", ["data/shapes-t2i.yaml", "data/shapes-mix.yaml"])
def test_shipped_recipes_build_from_the_documented_chain(name, unified_dir, tiny_visual_tokenizer_dir, tmp_path,
                                                         monkeypatch):
    """The header's chain writes exactly the paths the recipe reads; then the recipe loads and builds."""
    monkeypatch.chdir(tmp_path)
    Path("runs/init").mkdir(parents=True)
    os.symlink(unified_dir, "runs/init/shapes")  # stands in for `mmgen init ... --out runs/init/shapes`
    for task, num in [("t2i", 12), ("edit", 6), ("understanding", 6)]:
        assert main(["data", "tokenize", "--data", "shapes", "--num", str(num), "--task", task, "--tokenizer",
                     "runs/init/shapes", "--out", f"data/tokenized/shapes-{task}",
                     "--cache-dir", str(tmp_path / "cache")]) == 0
    config = load_config(DataBuildRecipe, recipe_path(name), ["train_size=40", "eval_size=3"])
    out = build_dataset(config, log=lambda line: None)
    assert out == Path(config.output_dir) and (out / BUILD_INFO_NAME).is_file()
    built = datasets.load_from_disk(str(out))
    assert len(built["train"]) == 40 and len(built["eval"]) == 3
    assert set(built["train"]["task"]) == {s.task for s in config.sources}


def test_an_eval_size_for_a_large_corpus_leaves_a_small_one_for_training(unified_dir, tokenized_dirs, tmp_path):
    """The README's recipe (eval_size 200) on a 30-row folder used to hold out 29 rows and train on one."""
    lines = []
    out = build_dataset(recipe(unified_dir, tmp_path / "out", [(tokenized_dirs["t2i"], 1.0)], eval_size=200),
                        log=lines.append)
    info = json.loads((out / BUILD_INFO_NAME).read_text())
    assert info["splits"] == {"train": 23, "eval": 7}  # a quarter of 30, rounded down, held out
    assert any("eval_size 200 would hold out 200 of 30 rows; holding out 7" in line for line in lines)
    assert info["sources"][0]["uncond_rows"] == 2  # cond_dropout 0.1 of 23 train rows


def test_too_few_rows_for_any_unconditional_row_is_said(unified_dir, tokenized_dirs, tmp_path):
    lines = []
    build_dataset(recipe(unified_dir, tmp_path / "out", [(tokenized_dirs["t2i"], 1.0)], train_size=3),
                  log=lines.append)
    assert any("too few for cond_dropout 0.1" in line and "CFG" in line for line in lines)


def test_a_source_whose_every_row_was_skipped_is_refused_by_name(unified_dir, tiny_visual_tokenizer_dir, tmp_path,
                                                                 capsys):
    """`data tokenize` of a folder of corrupt images says so and exits non-zero; `data build` names the source."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    (folder / "captions.jsonl").write_text('{"file": "a.png", "caption": "x"}\n{"file": "b.png", "caption": "y"}\n')
    tokenized = tmp_path / "tokenized"
    assert main(["data", "tokenize", "--data", str(folder), "--tokenizer", str(tiny_visual_tokenizer_dir),
                 "--out", str(tokenized), "--cache-dir", str(tmp_path / "cache")]) == 2
    captured = capsys.readouterr()
    assert "0 of 2 rows written" in captured.out
    error = captured.err.strip().splitlines()[-1]  # after the progress bars
    assert error.startswith("mmgen data: error: no usable rows: all 2 rows"), error
    assert (tokenized / "skipped.jsonl").read_text().count("\n") == 2  # written, for the user to inspect
    file = tmp_path / "recipe.yaml"
    file.write_text(f"model: {unified_dir}\noutput_dir: {tmp_path / 'built'}\nsources:\n  - path: {tokenized}\n")
    assert main(["data", "build", str(file)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"mmgen data: error: sources[0] ({tokenized}) has no rows: 2 were skipped"), error
    assert not (tmp_path / "built").exists()
