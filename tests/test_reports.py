"""Benchmark reports: results.json with stable keys, a markdown table, a self-contained HTML page."""

from __future__ import annotations

import json
import re

import pytest
from mmgen.data_engine.shapes.benchmark import load_benchmark
from mmgen.data_engine.shapes.world import Scene, render
from mmgen.eval.dpg import ScriptedJudge, read_dpg_results, score_dpg_folder
from mmgen.eval.geneval.results import read_results
from mmgen.eval.reports import ReportItem, dpg_report, geneval_items, geneval_report, write_reports
from mmgen.eval.shapes_benchmark import score_images
from PIL import Image


def image_sources(page: str) -> list[str]:
    return re.findall(r"<img src='([^']*)'", page)


def test_generic_report_files(tmp_path):
    items = [ReportItem("counting", f"prompt {i}", score=i / 4, images=[Image.new("RGB", (32, 32), (i * 60, 0, 0))],
                        note="expected cat>=2" if i < 4 else "") for i in range(5)]
    items.append(ReportItem("position", "a <b>bold</b> prompt", 1.0, images=[tmp_path / "missing.png"]))
    paths = write_reports(tmp_path / "report", "toy", 0.625, {"counting": 0.5, "position": 0.75}, items, top_k=2)
    results = json.loads(paths["json"].read_text())
    assert results == {"benchmark": "toy", "overall": 0.625, "tasks": {"counting": 0.5, "position": 0.75},
                       "scale": 1.0, "prompts": {"counting": 5, "position": 1}, "details": {}}
    markdown = paths["markdown"].read_text()
    assert "| **overall** | **0.625** | 6 |" in markdown and "| counting | 0.500 | 5 |" in markdown
    page = paths["html"].read_text()
    assert all(src.startswith("data:image/png;base64,") for src in image_sources(page))
    assert len(image_sources(page)) == 4  # best 2 and worst 2 of counting; position's image is missing
    counting = page[page.index("<h2>counting</h2>"):page.index("<h2>position</h2>")]
    best, worst = counting.split("<h3>Worst</h3>")
    assert "prompt 4" in best and "prompt 3" in best and "prompt 0" in worst and "prompt 1" in worst
    assert "prompt 2" not in counting
    assert "a &lt;b&gt;bold&lt;/b&gt; prompt" in page and "missing image" in page


def test_geneval_report_from_a_scored_folder(tmp_path):
    from mmgen.eval.detectors import ShapesDetector
    from mmgen.eval.geneval.runner import run_geneval, score_geneval_folder

    prompts = [p for p in load_benchmark() if p["tag"] == "counting"][:2]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    scenes = {p["prompt"]: Scene.from_dict(p["scene"]) for p in prompts}

    def half_right(texts, n, seed):  # the first image right, the second blank
        return [[render(scenes[t], 64), Image.new("RGB", (64, 64), (128, 128, 128))] for t in texts]

    run_geneval(half_right, tmp_path / "meta.jsonl", tmp_path / "out", images_per_prompt=2, progress=False)
    summary = score_geneval_folder(tmp_path / "out", ShapesDetector())
    paths = geneval_report(tmp_path / "report", summary, read_results(tmp_path / "out" / "results.jsonl"))
    results = json.loads(paths["json"].read_text())
    assert results["overall"] == 0.5 and results["tasks"] == {"counting": 0.5}
    assert results["prompts"] == {"counting": 2} and results["details"]["image_accuracy"] == 0.5
    assert "| counting | 0.500 | 2 |" in paths["markdown"].read_text()
    page = paths["html"].read_text()
    assert prompts[0]["prompt"] in page and "expected" in page  # the blank image's failure reason
    assert len(image_sources(page)) == 8  # two prompts, shown as best and as worst, two images each


def test_shapes_benchmark_report_with_in_memory_images(tmp_path):
    prompts = [p for p in load_benchmark() if p["tag"] == "position"][:3]
    images = [render(Scene.from_dict(p["scene"]), 64) for p in prompts]
    records, summary = score_images(images, prompts)
    paths = geneval_report(tmp_path, summary, records, images=images, benchmark="shapes")
    assert json.loads(paths["json"].read_text())["tasks"] == {"position": 1.0}
    assert "# shapes results" in paths["markdown"].read_text()
    assert len(geneval_items(records, images)) == 3


def test_dpg_report(tmp_path):
    import csv

    from mmgen.eval.dpg.scorer import CSV_COLUMNS

    with (tmp_path / "q.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for item, pid, dep, tuple_, question in [("x", 1, "0", "entity - whole (x)", "skipped"),
                                                 ("cat", 1, "0", "entity - whole (cat)", "Is there a cat?"),
                                                 ("cat", 2, "1", "attribute - color (cat)", "Is the cat red?")]:
            writer.writerow([item, "t", "k", pid, dep, "b", "d", tuple_, question])
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "cat.png")
    judge = ScriptedJudge({"Is there a cat?": "yes", "Is the cat red?": ["yes", "no", "no", "no"]})
    summary = score_dpg_folder(images, tmp_path / "q.csv", judge)
    records = read_dpg_results(images / "dpg_results.jsonl")
    paths = dpg_report(tmp_path / "report", summary, records, prompts={"cat": "A red cat on a mat."})
    results = json.loads(paths["json"].read_text())
    assert results["benchmark"] == "DPG-Bench" and results["scale"] == 100.0
    assert results["overall"] == pytest.approx(62.5)  # crops: 1, .5, .5, .5
    assert results["tasks"] == {"attribute": 0.0, "entity": 100.0}  # last crop's answers
    assert "| **overall** | **62.50** | 2 |" in paths["markdown"].read_text()
    page = paths["html"].read_text()
    assert "A red cat on a mat." in page and "failed: Is the cat red?" in page
