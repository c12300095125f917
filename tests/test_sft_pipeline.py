"""The whole SFT chain on a folder with 1% corrupt images: tokenize -> build -> train to the end."""

import json

from mmgen.data_engine.shapes.scenes import free_scene
from mmgen.data_engine.shapes.world import render

from mmgen.cli import main


def test_one_percent_corrupt_images_are_reported_and_training_finishes(unified_dir, tmp_path):
    import random

    folder = tmp_path / "photos"
    folder.mkdir()
    rows = []
    rng = random.Random(0)
    for index in range(100):
        name = f"{index:03d}.png"
        if index == 37:
            (folder / name).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")  # the 1%
        else:
            render(free_scene(rng), 16).save(folder / name)
        rows.append({"file": name, "caption": f"scene number {index}"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tokens, built, run = tmp_path / "tokens", tmp_path / "built", tmp_path / "run"

    assert main(["data", "tokenize", "--data", str(folder), "--tokenizer", str(unified_dir), "--out", str(tokens),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    skipped = [json.loads(line) for line in (tokens / "skipped.jsonl").read_text().splitlines()]
    assert [(row["row"], row["file"].endswith("037.png")) for row in skipped] == [(37, True)]

    recipe = tmp_path / "data.yaml"
    recipe.write_text(f"stage: data\nmodel: {unified_dir}\nsources:\n  - path: {tokens}\n    task: t2i\n"
                      f"output_dir: {built}\neval_size: 4\n")
    assert main(["data", "build", str(recipe)]) == 0
    sft = tmp_path / "sft.yaml"
    sft.write_text(f"stage: sft\nmodel: {unified_dir}\ndata: {built}\noutput_dir: {run}\nmethod: lora\n"
                   "training:\n  max_steps: 3\n  batch_size: 8\n  save_steps: 3\n  eval_steps: 3\n"
                   "  mixed_precision: fp32\n")
    assert main(["train", str(sft)]) == 0
    state = json.loads((run / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and (run / "model" / "mmgen.json").is_file()
