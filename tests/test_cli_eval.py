"""`mmgen eval geneval / dpg / shapes` on the tiny random checkpoint: layouts, reports, resuming, seeding, and the
one-line errors that must come before the checkpoint is loaded. The tiny model draws noise, so scores are ~0: the
tests check structure, never quality."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import pytest
from mmgen.eval.dpg.scorer import CSV_COLUMNS
from mmgen.eval.geneval.rules import GENEVAL_TASKS
from PIL import Image
from tiny_vision import save_tiny_blip_vqa, single_threaded

from mmgen.cli import main
from mmgen.sampling import ImageGenerator

METADATA = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {"tag": "counting", "include": [{"class": "square", "count": 2}], "exclude": [{"class": "square", "count": 3}],
     "prompt": "a photo of two squares"},
    {"tag": "position", "include": [{"class": "star", "count": 1},
                                    {"class": "diamond", "count": 1, "position": ["left of", 0]}],
     "prompt": "a photo of a diamond left of a star"},
]
DPG_PROMPTS = {"p0": "A red circle above a blue square.", "p1": "Two green stars on a grey background."}
# (item_id, proposition_id, dependency, tuple, question); the official scorer skips the first row.
DPG_QUESTIONS = [
    ("skipped", 1, "0", "entity - whole (x)", "Is there an x?"),
    ("p0", 1, "0", "entity - whole (circle)", "Is there a circle?"),
    ("p0", 2, "1", "attribute - color (circle, red)", "Is the circle red?"),
    ("p1", 1, "0", "entity - whole (star)", "Is there a star?"),
    ("p1", 2, "1", "other - count (star, ==2)", "Are there two stars?"),
]
REPORTS = ("results.json", "results.md", "report.html")


@pytest.fixture
def bench(tmp_path) -> dict[str, Path]:
    """Small benchmark inputs written like the official files: GenEval metadata, DPG prompts and questions."""
    metadata = tmp_path / "evaluation_metadata.jsonl"
    metadata.write_text("".join(json.dumps(line) + "\n" for line in METADATA))
    coco = tmp_path / "coco_metadata.jsonl"
    coco.write_text(json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                                "prompt": "a photo of a cat"}) + "\n")
    prompts = tmp_path / "dpg_prompts"
    prompts.mkdir()
    for item_id, text in DPG_PROMPTS.items():
        (prompts / f"{item_id}.txt").write_text(text)
    questions = tmp_path / "dpg_bench.csv"
    with questions.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for item_id, pid, dependency, tuple_, question in DPG_QUESTIONS:
            writer.writerow([item_id, "text", "keywords", pid, dependency, "broad", "detailed", tuple_, question])
    return {"metadata": metadata, "coco": coco, "prompts": prompts, "questions": questions, "out": tmp_path / "out"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread on busy shared cores (see `tiny_vision.single_threaded`)."""
    with single_threaded():
        yield


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    return save_tiny_blip_vqa(tmp_path_factory.mktemp("blip-vqa"))


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the checkpoint is loaded: errors must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the inputs were checked")

    monkeypatch.setattr(ImageGenerator, "from_pretrained", refuse)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def sample_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("samples/*.png"))}


# ---- GenEval --------------------------------------------------------------------------------------------------


def test_geneval_writes_the_official_layout_resumes_and_scores_again(unified_dir, bench, capsys):
    out = bench["out"]
    argv = ["eval", "geneval", "--model", str(unified_dir), "--metadata", str(bench["metadata"]), "--out", str(out),
            "--images-per-prompt", "2", "--batch-prompts", "2", "--detector", "shapes", "--device", "cpu"]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "3 prompts generated, 0 already done" in stdout and "position" in stdout and "overall" in stdout
    for index, metadata in enumerate(METADATA):
        folder = out / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == metadata
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png"]
        assert Image.open(folder / "samples" / "0000.png").size == (16, 16)
        assert (folder / "grid.png").is_file()
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
    results = read_json(out / "results.json")
    assert results["benchmark"] == "GenEval" and set(results["tasks"]) == {"single_object", "counting", "position"}
    assert 0 <= results["overall"] <= 1 and results["details"]["model"] == str(unified_dir)
    assert all((out / name).is_file() for name in REPORTS)

    first = sample_bytes(out)
    assert main(argv) == 0  # nothing left to generate
    assert "0 prompts generated, 3 already done" in capsys.readouterr().out
    assert sample_bytes(out) == first

    # A lost prompt folder is regenerated with the same images (00002 was alone in its sampler call both times:
    # images are bit-identical only for the same batch, as padding shifts the float sums).
    shutil.rmtree(out / "00002")
    assert main(argv) == 0
    assert "1 prompts generated, 2 already done" in capsys.readouterr().out
    assert sample_bytes(out) == first

    (out / "results.json").unlink()
    assert main(["eval", "geneval", "--score-only", "--out", str(out), "--detector", "shapes"]) == 0
    assert read_json(out / "results.json")["tasks"].keys() == results["tasks"].keys()


# A stand-in for GenEval's `evaluation/evaluate_images.py` (same arguments): it judges every sample correct and writes
# the official results format, with `metadata` as a JSON string.
FAKE_OFFICIAL_SCRIPT = """
import argparse, json, os
parser = argparse.ArgumentParser()
parser.add_argument("imagedir")
parser.add_argument("--outfile")
parser.add_argument("--model-path")
parser.add_argument("--options", nargs="*")
args = parser.parse_args()
with open(args.outfile, "w") as out:
    for sub in sorted(name for name in os.listdir(args.imagedir) if name.isdigit()):
        folder = os.path.join(args.imagedir, sub)
        metadata = json.load(open(os.path.join(folder, "metadata.jsonl")))
        for name in sorted(os.listdir(os.path.join(folder, "samples"))):
            out.write(json.dumps({"filename": os.path.join(folder, "samples", name), "tag": metadata["tag"],
                                  "prompt": metadata["prompt"], "correct": True, "reason": "",
                                  "metadata": json.dumps(metadata), "details": "{}"}) + "\\n")
"""


def test_geneval_score_only_with_the_official_script(bench, tmp_path, no_loading):
    from mmgen.eval.geneval.official import OFFICIAL_DETECTOR
    from mmgen.eval.geneval.runner import run_geneval

    out = bench["out"]
    run_geneval(lambda texts, n, seed: [[Image.new("RGB", (8, 8))] * n for _ in texts], bench["metadata"], out,
                images_per_prompt=2, progress=False)
    script = tmp_path / "evaluate_images.py"
    script.write_text(FAKE_OFFICIAL_SCRIPT)
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{OFFICIAL_DETECTOR}.pth").write_bytes(b"weights")
    assert main(["eval", "geneval", "--score-only", "--out", str(out), "--official-script", str(script),
                 "--official-python", sys.executable, "--official-model-dir", str(models)]) == 0
    assert len((out / "results_official.jsonl").read_text().splitlines()) == 6
    results = read_json(out / "results.json")
    assert results["overall"] == 1.0 and results["prompts"] == {"single_object": 1, "counting": 1, "position": 1}


# ---- DPG-Bench ------------------------------------------------------------------------------------------------


def test_dpg_generates_grids_scores_with_a_blip_judge_and_resumes(unified_dir, bench, blip_dir, capsys):
    out = bench["out"]
    argv = ["eval", "dpg", "--model", str(unified_dir), "--prompts", str(bench["prompts"]), "--questions",
            str(bench["questions"]), "--judge", f"blip:{blip_dir}", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    assert "2 prompts generated, 0 already done" in capsys.readouterr().out
    assert Image.open(out / "p0.png").size == (32, 32)  # 2x2 grid of 16 px images
    grids = {name: (out / name).read_bytes() for name in ("p0.png", "p1.png")}
    assert main(argv) == 0
    assert "0 prompts generated, 2 already done" in capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in grids} == grids
    records = [json.loads(line) for line in (out / "dpg_results.jsonl").read_text().splitlines()]
    assert sorted(record["item_id"] for record in records) == ["p0", "p1"]
    assert all(len(question["answers"]) == 4 for record in records for question in record["questions"])
    results = read_json(out / "results.json")
    assert results["benchmark"] == "DPG-Bench" and results["scale"] == 100.0
    assert 0 <= results["overall"] <= 100 and set(results["tasks"]) <= {"entity", "attribute", "other"}
    assert all((out / name).is_file() for name in REPORTS)
    assert DPG_PROMPTS["p0"] in (out / "report.html").read_text()


# ---- shapes ---------------------------------------------------------------------------------------------------


def test_shapes_scores_a_model_at_its_own_size_with_the_ground_truth_ceiling(unified_dir, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["eval", "shapes", "--model", str(unified_dir), "--out", str(out), "--limit", "1",
                 "--batch-prompts", "1", "--batch-size", "8", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    assert "overall" in stdout and "the ceiling" in stdout
    results = read_json(out / "results.json")
    assert results["benchmark"] == "shapes" and list(results["tasks"]) == list(GENEVAL_TASKS)
    assert results["prompts"] == dict.fromkeys(GENEVAL_TASKS, 1)
    details = results["details"]
    assert details["size"] == 16 and details["source"] == "generated" and details["sampling"]["batch_size"] == 8
    assert 0.5 <= details["ground_truth_overall"] <= 1  # the same prompts' ground truth at 16 px
    samples = sorted((out / "samples").iterdir())
    assert len(samples) == len(GENEVAL_TASKS) and Image.open(samples[0]).size == (16, 16)
    assert "data:image/png" in (out / "report.html").read_text()

    # Seeds follow the prompt's line in the benchmark file, so a larger --limit redraws the same first images.
    more = tmp_path / "two"
    assert main(["eval", "shapes", "--model", str(unified_dir), "--out", str(more), "--limit", "2",
                 "--batch-prompts", "1", "--device", "cpu"]) == 0
    assert len(list((more / "samples").iterdir())) == 2 * len(GENEVAL_TASKS)
    assert all((more / "samples" / sample.name).read_bytes() == sample.read_bytes() for sample in samples)


def test_shapes_ground_truth_still_scores_one_and_writes_reports(tmp_path, capsys):
    assert main(["eval", "shapes", "--ground-truth", "--out", str(tmp_path), "--limit", "10"]) == 0
    assert "1.000" in capsys.readouterr().out
    results = read_json(tmp_path / "results.json")
    assert results["overall"] == 1.0 and set(results["tasks"].values()) == {1.0}
    assert results["details"]["source"] == "ground truth" and results["details"]["size"] == 64
    assert all((tmp_path / name).is_file() for name in REPORTS)


def test_shapes_ground_truth_on_a_grid_redraws_the_prompts_and_still_scores_one(tmp_path):
    assert main(["eval", "shapes", "--ground-truth", "--grid", "4", "--out", str(tmp_path), "--limit", "10"]) == 0
    results = read_json(tmp_path / "results.json")
    assert results["overall"] == 1.0
    assert "4 x 4 grid, objects 1 cells wide" in results["details"]["source"]


def test_shapes_tasks_keeps_only_the_named_tasks_and_averages_over_them(unified_dir, tmp_path):
    truth = tmp_path / "truth"
    assert main(["eval", "shapes", "--ground-truth", "--out", str(truth), "--limit", "3",
                 "--tasks", "single_object,colors"]) == 0
    results = read_json(truth / "results.json")
    assert results["prompts"] == {"single_object": 3, "colors": 3} and results["details"]["selected_tasks"] == [
        "single_object", "colors"]

    out = tmp_path / "model"
    assert main(["eval", "shapes", "--model", str(unified_dir), "--out", str(out), "--limit", "1", "--tasks",
                 "position", "--device", "cpu"]) == 0
    results = read_json(out / "results.json")
    assert list(results["tasks"]) == ["position"] and results["overall"] == results["tasks"]["position"]
    assert len(list((out / "samples").iterdir())) == 1


# ---- errors before anything is loaded or generated ------------------------------------------------------------

GENEVAL = ["eval", "geneval", "--model", "{model}", "--metadata", "{metadata}", "--out", "{out}"]
DPG = ["eval", "dpg", "--model", "{model}", "--prompts", "{prompts}", "--questions", "{questions}", "--out", "{out}"]
SHAPES = ["eval", "shapes", "--out", "{out}"]
OFFICIAL = ["--official-script", "{missing}", "--official-python", "python3", "--official-model-dir", "{missing}"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (GENEVAL, "give a --detector"),
        (GENEVAL + ["--detector", "owlv2:{missing}"], "no such directory"),
        (GENEVAL + ["--detector", "owlv2:{model}"], "holds a model of type"),
        (GENEVAL + ["--detector", "yolo"], "unknown detector 'yolo'"),
        (GENEVAL + ["--detector", "shapes", "--color-classifier", "clip:{missing}"], "no such directory"),
        (GENEVAL + OFFICIAL, "expected the official GenEval script"),
        (GENEVAL + OFFICIAL[:2] + ["--detector", "shapes"], "choose one scorer"),
        (GENEVAL + OFFICIAL[:2], "needs --official-script, --official-python and --official-model-dir"),
        (["eval", "geneval", "--out", "{out}", "--detector", "shapes"], "generating needs --model and --metadata"),
        (["eval", "geneval", "--model", "{missing}", "--metadata", "{metadata}", "--out", "{out}", "--detector",
          "shapes"], "model directory not found"),
        (["eval", "geneval", "--model", "{lm}", "--metadata", "{metadata}", "--out", "{out}", "--detector", "shapes"],
         "is not an mmgen unified checkpoint"),
        (["eval", "geneval", "--model", "{model}", "--metadata", "{missing}", "--out", "{out}", "--detector",
          "shapes"], "no such GenEval metadata file"),
        (["eval", "geneval", "--model", "{model}", "--metadata", "{coco}", "--out", "{out}", "--detector", "shapes"],
         "names classes the detector does not know ('cat')"),
        (GENEVAL + ["--detector", "shapes", "--top-p", "0"], "top_p must be in (0, 1]"),
        (GENEVAL + ["--detector", "shapes", "--cfg", "-1"], "cfg_scale must be >= 0"),
        (DPG + ["--judge", "blip:{missing}"], "no such directory"),
        (DPG + ["--judge", "blip:{model}"], "holds a model of type"),
        (DPG + ["--judge", "mplug:{model}"], "unknown VQA judge"),
        (["eval", "dpg", "--model", "{model}", "--prompts", "{prompts}", "--questions", "{missing}", "--out", "{out}",
          "--judge", "blip:{blip}"], "no such DPG-Bench questions file"),
        (["eval", "dpg", "--model", "{model}", "--prompts", "{missing}", "--questions", "{questions}", "--out",
          "{out}", "--judge", "blip:{blip}"], "no such DPG-Bench prompts directory"),
        (["eval", "dpg", "--questions", "{questions}", "--out", "{out}", "--judge", "blip:{blip}"],
         "generating needs --model and --prompts"),
        (DPG + ["--judge", "blip:{blip}", "--temperature", "-1"], "temperature must be >= 0"),
        (SHAPES + ["--model", "{missing}"], "model directory not found"),
        (SHAPES + ["--model", "{lm}"], "is not an mmgen unified checkpoint"),
        (SHAPES + ["--model", "{model}", "--size", "32"],
         "--size, --degrade, --through-tokenizer and --grid apply to --ground-truth"),
        (SHAPES + ["--model", "{model}", "--grid", "4"],
         "--size, --degrade, --through-tokenizer and --grid apply to --ground-truth"),
        (SHAPES + ["--ground-truth", "--grid", "2"], "--grid: grid 2 with objects 1 cells wide gives size 0.500"),
        (SHAPES + ["--model", "{model}", "--prompts", "{missing}"], "no such shapes benchmark prompt file"),
        (SHAPES + ["--model", "{model}", "--top-k", "-2"], "top_k must be >= 0"),
        (SHAPES + ["--model", "{model}", "--tasks", "colours"], "no task 'colours' (did you mean 'colors'?)"),
    ],
)
def test_bad_input_is_one_line_before_the_checkpoint_loads(argv, expected, unified_dir, tiny_lm_dir, blip_dir, bench,
                                                            no_loading, capsys):
    paths = {**bench, "model": unified_dir, "lm": tiny_lm_dir, "blip": blip_dir, "missing": bench["out"] / "missing"}
    assert main([arg.format(**paths) for arg in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and expected in err, err
    assert not bench["out"].exists()  # nothing was generated


@pytest.mark.parametrize("suite", ["geneval", "dpg", "shapes"])
def test_every_suite_has_help(suite, capsys):
    with pytest.raises(SystemExit) as info:
        main(["eval", suite, "--help"])
    assert info.value.code == 0
    assert f"usage: mmgen eval {suite}" in capsys.readouterr().out
