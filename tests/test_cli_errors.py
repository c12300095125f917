"""Expected failures end in one `mmgen VERB: error:` line and exit 2, never a traceback."""

import shutil

import pytest
import torch

from mmgen.cli import main


def last_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines, "nothing on stderr"
    assert not any(line.startswith("Traceback") for line in lines)
    return lines[-1]


def pickle_only_copy(source, target):
    """`source` with its safetensors weights replaced by a pickle file (what an old or hostile upload holds)."""
    shutil.copytree(source, target)
    for weights in target.glob("*.safetensors"):
        weights.unlink()
    torch.save({"weight": torch.zeros(1)}, target / "pytorch_model.bin")
    return target


def test_pickle_only_weights_are_one_line_in_init_generate_export_and_train(
        tiny_lm_dir, unified_dir, tiny_visual_tokenizer_dir, tmp_path, capsys):
    base = pickle_only_copy(tiny_lm_dir, tmp_path / "pickled-base")
    assert main(["init", "--base", str(base), "--tokenizer", str(tiny_visual_tokenizer_dir),
                 "--out", str(tmp_path / "init")]) == 2
    assert last_error_line(capsys).startswith("mmgen init: error: refusing to load pickle checkpoint pytorch_model.bin")
    model = pickle_only_copy(unified_dir, tmp_path / "pickled-unified")
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--out", str(tmp_path / "g")]) == 2
    assert "mmgen generate: error: refusing to load pickle" in last_error_line(capsys)
    assert main(["export", "--model", str(model), "--out", str(tmp_path / "e")]) == 2
    assert "mmgen export: error: refusing to load pickle" in last_error_line(capsys)
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(f"stage: sft\nmodel: {model}\ndata: {tmp_path}\nmethod: full\noutput_dir: {tmp_path / 's'}\n")
    assert main(["train", str(recipe), "training.mixed_precision=fp32"]) == 2
    assert last_error_line(capsys).startswith(f"mmgen train: error: data {tmp_path} is not a data set written by")
    data = built_data(unified_dir, tmp_path)
    assert main(["train", str(recipe), "training.mixed_precision=fp32", f"data={data}"]) == 2
    assert "mmgen train: error: refusing to load pickle" in last_error_line(capsys)


def built_data(unified_dir, tmp_path):
    """A few SFT rows for the tiny unified model, saved the way `mmgen data build` saves them."""
    import json

    from datasets import Dataset, DatasetDict

    from mmgen.checkpoint import load_unified, read_meta

    unified = load_unified(unified_dir, with_model=False)
    rows = [unified.prompts.text_to_image_example("a red circle", [3] * unified.num_image_tokens)] * 4
    out = tmp_path / "built"
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(out)
    meta = read_meta(unified_dir)
    (out / "build_info.json").write_text(json.dumps({"image_tokens": meta["image_tokens"],
                                                     "tokens_per_image": meta["tokens_per_image"]}))
    return out


def test_init_into_a_folder_holding_other_files_is_one_line(tiny_visual_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["init", "--tiny-llm", "llama", "--tokenizer", str(tiny_visual_tokenizer_dir),
                 "--out", str(out)]) == 2
    assert last_error_line(capsys).startswith(f"mmgen init: error: refusing to overwrite {out}")
    assert (out / "notes.txt").read_text() == "mine"


def test_damaged_model_weights_are_one_line_naming_the_file(unified_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(unified_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--out", str(tmp_path / "g")]) == 2
    line = last_error_line(capsys)
    assert line.startswith(f"mmgen generate: error: {model} has damaged weights: model.safetensors"), line


@pytest.mark.parametrize("given", ["llm", "unified"])
def test_a_model_folder_given_as_the_visual_tokenizer_says_what_it_is(given, tiny_lm_dir, unified_dir, tmp_path,
                                                                      capsys):
    folder = tiny_lm_dir if given == "llm" else unified_dir
    assert main(["init", "--tiny-llm", "llama", "--tokenizer", str(folder), "--out", str(tmp_path / "m")]) == 2
    line = last_error_line(capsys)
    expected = "is a transformers model" if given == "llm" else "its visual tokenizer is"
    assert line.startswith(f"mmgen init: error: {folder} ") and expected in line, line


def test_generate_into_its_earlier_folder_replaces_it_whole_and_refuses_any_other(unified_dir, tmp_path, capsys):
    out = tmp_path / "images"
    common = ["generate", "--model", str(unified_dir), "--dtype", "fp32", "--out", str(out)]
    assert main([*common, "--prompt", "a red circle", "--prompt", "a blue square", "--num-images", "2"]) == 0
    assert len(list((out / "images").iterdir())) == 4
    assert main([*common, "--prompt", "a green star", "--num-images", "1"]) == 0
    import json

    listed = [row["file"] for row in json.loads((out / "settings.json").read_text())["images"]]
    assert sorted(f"images/{p.name}" for p in (out / "images").iterdir()) == listed == ["images/0000_00.png"]
    capsys.readouterr()
    taken = tmp_path / "holiday-photos"
    taken.mkdir()
    (taken / "beach.jpg").write_bytes(b"mine")
    assert main(["generate", "--model", str(unified_dir), "--prompt", "x", "--out", str(taken)]) == 2
    line = last_error_line(capsys)
    assert line.startswith(f"mmgen generate: error: refusing to overwrite {taken}") and "sampling" not in line
    assert [p.name for p in taken.iterdir()] == ["beach.jpg"]
