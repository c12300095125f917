"""`mmgen demo --quick`: the whole pipeline runs end to end on toy budgets, writes the report, and a second run
reuses every finished stage."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from mmgen.demo.stages import STAGES

pytestmark = pytest.mark.slow


def test_quick_demo_runs_every_stage_writes_the_report_then_reuses_them(tmp_path):
    out = tmp_path / "demo"
    first = subprocess.run([sys.executable, "-m", "mmgen", "demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, check=True)
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == [stage.name for stage in STAGES]
    assert summary["ground_truth"]["overall"] == 1.0
    assert 0.0 <= summary["tokenizer"]["detector_fidelity"] <= 1.0
    assert summary["sft"]["steps"] > 0 and summary["grpo"]["steps"] > 0
    for model in ("vocab/model", "sft/model", "grpo/model"):
        assert (out / model / "model.safetensors").exists()
    assert first.stdout.count("done in") == len(STAGES)

    report = json.loads((out / "report.json").read_text())
    assert report["quick"] is True
    assert set(report["benchmark"]) == {"ceiling", "images", "before_rl", "after_rl", "gain"}
    assert all((out / path).exists() for path in report["figures"].values())
    assert (out / "report.html").stat().st_size > 10_000 and (out / "report.md").exists()
    for stage in report["stages"]:
        assert all(command.startswith("mmgen ") for command in stage["commands"])

    if shutil.which("chromium"):
        loaded, total = _images_loaded_in_chromium(out / "report.html", tmp_path / "check.html")
        assert loaded == total == len(report["figures"])

    again = subprocess.run([sys.executable, "-m", "mmgen", "demo", "--quick", "--out", str(out)],
                           capture_output=True, text=True, check=True)
    assert again.stdout.count("reused") == len(STAGES)


# Debian's `chromium`, headless, counts the images of the page that decoded (where chromium is installed).
IMAGE_CHECK = """<script>window.addEventListener("load", () => { const images = [...document.images];
document.body.insertAdjacentHTML("afterbegin", "<p id=image-check>" +
  images.filter(i => i.complete && i.naturalWidth > 0).length + "/" + images.length + "</p>"); });</script>"""


def _images_loaded_in_chromium(report, copy):
    copy.write_text(report.read_text() + IMAGE_CHECK)
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    loaded, total = re.search(r"<p id=\"?image-check\"?>(\d+)/(\d+)", dom).groups()
    return int(loaded), int(total)
