"""The official-script mode, against a fake `evaluate_images.py` that writes results the way the official one does."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from mmgen.eval.geneval.official import OFFICIAL_DETECTOR, official_command, run_official_geneval
from mmgen.eval.geneval.rules import GenEvalConfig
from mmgen.eval.geneval.runner import run_geneval
from PIL import Image

from mmgen.errors import UserError

# The official argument layout, parsed as the official script parses it; one results line per sample, with
# `metadata` and `details` as JSON strings and slashes escaped (pandas' `to_json`). A sample is judged correct
# when its file number is even; the arguments are recorded next to the results for the test to check.
FAKE_SCRIPT = textwrap.dedent('''
    import argparse, json, os, re, sys
    parser = argparse.ArgumentParser()
    parser.add_argument("imagedir")
    parser.add_argument("--outfile", default="results.jsonl")
    parser.add_argument("--model-config", default=None)
    parser.add_argument("--model-path", default="./")
    parser.add_argument("--options", nargs="*", default=[])
    args = parser.parse_args()
    options = dict(opt.split("=", 1) for opt in args.options)
    if options.get("fail"):
        sys.exit("CUDA error: no kernel image is available")
    assert os.path.isfile(os.path.join(args.model_path, options.get("model", "{detector}") + ".pth"))
    lines = []
    for sub in os.listdir(args.imagedir):
        folder = os.path.join(args.imagedir, sub)
        if not os.path.isdir(folder) or not sub.isdigit():
            continue
        metadata = json.load(open(os.path.join(folder, "metadata.jsonl")))
        for name in os.listdir(os.path.join(folder, "samples")):
            if not re.match(r"\\d+\\.png", name):
                continue
            correct = int(name.split(".")[0]) % 2 == 0
            record = {{"filename": os.path.join(folder, "samples", name), "tag": metadata["tag"],
                       "prompt": metadata["prompt"], "correct": correct, "reason": "" if correct else "expected x",
                       "metadata": json.dumps(metadata), "details": json.dumps({{"cat": [[1.0, 2.0, 3.0, 4.0, 0.9]]}})}}
            lines.append(json.dumps(record).replace("/", "\\\\/"))
    with open(args.outfile, "w") as fp:
        fp.write("\\n".join(lines) + "\\n")
    json.dump({{"argv": sys.argv[1:], "options": options}}, open(args.outfile + ".args.json", "w"))
''').format(detector=OFFICIAL_DETECTOR)

PROMPTS = [
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
     "prompt": "a photo of two dogs"},
]


@pytest.fixture
def setup(tmp_path):
    metadata = tmp_path / "meta.jsonl"
    metadata.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    images = tmp_path / "images"
    run_geneval(lambda texts, n, seed: [[Image.new("RGB", (8, 8))] * n for _ in texts], metadata, images,
                images_per_prompt=4, progress=False)
    script = tmp_path / "geneval" / "evaluation" / "evaluate_images.py"
    script.parent.mkdir(parents=True)
    script.write_text(FAKE_SCRIPT)
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{OFFICIAL_DETECTOR}.pth").write_bytes(b"weights")
    return images, script, models


def test_runs_the_official_layout_and_scores_its_results(setup):
    images, script, models = setup
    summary = run_official_geneval(images, script, models, python=sys.executable)
    # even-numbered samples are correct: half of each task
    assert summary["tasks"] == {"single_object": 0.5, "counting": 0.5} and summary["overall"] == 0.5
    assert summary["images"] == {"single_object": 4, "counting": 4} and summary["prompt_accuracy"] == 1.0
    recorded = json.loads((images / "results_official.jsonl.args.json").read_text())
    results = images.resolve() / "results_official.jsonl"
    assert recorded["argv"][:5] == [str(images.resolve()), "--outfile", str(results), "--model-path",
                                    str(models.resolve())]
    assert "\\/" in results.read_text()  # pandas-style escaped slashes read back fine
    assert recorded["options"] == {"threshold": "0.3", "counting_threshold": "0.9", "max_objects": "16",
                                   "max_overlap": "1.0", "position_threshold": "0.1"}


def test_options_and_outfile_are_passed_through(setup, tmp_path):
    images, script, models = setup
    outfile = tmp_path / "results" / "official.jsonl"
    outfile.parent.mkdir()
    run_official_geneval(images, script, models, outfile=outfile, config=GenEvalConfig(threshold=0.5),
                         options={"clip_model": "ViT-B-32"})
    options = json.loads((tmp_path / "results" / "official.jsonl.args.json").read_text())["options"]
    assert options["threshold"] == "0.5" and options["clip_model"] == "ViT-B-32"


def test_command_layout():
    command = official_command("imgs", "/g/evaluation/evaluate_images.py", "/models", "/out/r.jsonl", python="py",
                               model_config="/cfg.py")
    assert command[0] == "py" and command[1] == "/g/evaluation/evaluate_images.py"
    assert command[3:9] == ["--outfile", "/out/r.jsonl", "--model-path", "/models", "--model-config", "/cfg.py"]
    assert command[9] == "--options" and "max_overlap=1.0" in command[10:]


def test_script_failure_shows_its_error(setup):
    images, script, models = setup
    with pytest.raises(UserError, match="exit status 1(.|\n)*CUDA error: no kernel image"):
        run_official_geneval(images, script, models, options={"fail": "1"})


def test_inputs_are_checked_before_running(setup, tmp_path):
    images, script, models = setup
    with pytest.raises(UserError, match="expected the official GenEval script"):
        run_official_geneval(images, tmp_path / "missing.py", models)
    with pytest.raises(UserError, match=f"holds no {OFFICIAL_DETECTOR}.pth"):
        run_official_geneval(images, script, tmp_path)
    with pytest.raises(UserError, match="no such Python executable"):
        run_official_geneval(images, script, models, python=str(tmp_path / "bin" / "python"))
    with pytest.raises(UserError, match="no prompt folders"):
        run_official_geneval(models, script, models)
