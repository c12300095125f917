"""The demo's runner and report, on a fabricated finished run (the real pipeline runs in the slow test_demo.py).

The "after SFT" benchmark draws blank images and the "after GRPO" one draws the exact ground truth, so every
score, gain and verdict in the report is known in advance.
"""

import json
import re

import pytest
from mmgen.data_engine.shapes.benchmark import load_benchmark
from mmgen.eval.shapes_benchmark import render_ground_truth, score_generator
from PIL import Image

from mmgen.demo.report import FIGURE_CAPTIONS, write_report
from mmgen.demo.runner import command_line, run_demo
from mmgen.demo.stages import STAGES, Stage
from mmgen.errors import UserError

LIMIT = 2  # prompts per task: the report's before/after grid shows the first two of each task


def _generator(perfect: bool):
    scenes = {prompt["prompt"]: prompt for prompt in load_benchmark()}

    def generate(prompts, images_per_prompt, seed):
        if perfect:
            return [render_ground_truth([scenes[text]], 64) * images_per_prompt for text in prompts]
        return [[Image.new("RGB", (64, 64), "white")] * images_per_prompt for _ in prompts]

    return generate


def _write_log(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    before = score_generator(_generator(False), run / "benchmark_sft", limit=LIMIT, progress=False)
    after = score_generator(_generator(True), run / "benchmark_grpo", limit=LIMIT, progress=False)
    _write_log(run / "tokenizer" / "train_log.jsonl", [{"step": s, "recon": 1.0 / s} for s in range(10, 60, 10)])
    _write_log(run / "sft" / "train_log.jsonl", [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 9)]
               + [{"step": 8, "eval_loss": 4.5}])
    _write_log(run / "grpo" / "train_log.jsonl", [{"step": s, "reward": s / 10} for s in range(1, 5)])
    (run / "grpo" / "benchmark").mkdir(parents=True)
    (run / "grpo" / "benchmark" / "history.json").write_text(json.dumps(
        [{"step": 0, "benchmark/overall": 0.1}, {"step": 4, "benchmark/overall": 0.3}]))
    Image.new("RGB", (146, 38), "gray").save(run / "tokenizer" / "reconstructions.png")
    common = {"seconds": 1.0, "commands": ["mmgen x"], "quick": False}
    scores = {name: {"overall": s["overall"], "tasks": s["tasks"], "images": sum(s["images"].values())}
              for name, s in (("before", before), ("after", after))}
    summaries = {
        "data": {"images": 10, "size": 64, "tasks": "colors"},
        "ground_truth": {"overall": 1.0, "tasks": {}, "images": 600},
        "tokenizer": {"tokens_per_image": 64, "codebook_size": 1000, "detector_fidelity": 0.9, "psnr": 30.0,
                      "codebook_usage": 0.9, "steps": 50, "benchmark_ceiling": 0.8,
                      "precision": {"name": "fp32", "reason": "asked for", "cpu_capability": "AVX2"}},
        "vocab": {"vocab_size": 1495, "codebook_size": 1000, "tokens_per_image": 64, "parameters": 4_600_000,
                  "init": "codebook"},
        "sft_data": {"images_per_second": 300.0, "skipped": 0, "train_rows": 8, "eval_rows": 2},
        "sft": {"steps": 8, "first_loss": 4.9, "final_loss": 4.2, "eval_loss": 4.5},
        "benchmark_sft": scores["before"],
        "grpo": {"steps": 4, "first_reward": 0.1, "final_reward": 0.4, "guard": []},
        "benchmark_grpo": scores["after"],
    }
    report = write_report(run, {name: {**summary, **common} for name, summary in summaries.items()}, MACHINE)
    return run, report


MACHINE = {"cpu": "Test CPU", "cpu_capability": "AVX2", "native_bf16": False, "threads": 2, "cuda": None,
           "fp32_gflops": 120.0, "bf16_gflops": 1.3,
           "precision": {"name": "fp32", "reason": "auto: this CPU has no native bf16", "cpu_capability": "AVX2"}}


def test_report_names_the_machine_and_each_stage_precision(finished_run):
    run, report = finished_run
    assert report["machine"] == MACHINE
    assert {stage["name"]: stage["precision"] for stage in report["stages"]}["tokenizer"] == "fp32"
    line = "Test CPU, AVX2, no native bf16 (emulated), 2 threads: matmul fp32 120 / bf16 1 GFLOP/s"
    for name in ("report.md", "report.html"):
        assert line in (run / name).read_text()


def test_report_json_holds_the_scores_and_the_gain(finished_run):
    run, report = finished_run
    assert report == json.loads((run / "report.json").read_text())
    benchmark = report["benchmark"]
    assert benchmark["before_rl"]["overall"] == 0.0
    assert benchmark["after_rl"]["overall"] == 1.0
    assert benchmark["gain"]["overall"] == 1.0
    assert set(benchmark["gain"]["tasks"].values()) == {1.0}
    assert benchmark["images"] == 6 * LIMIT
    assert [stage["name"] for stage in report["stages"]] == [stage.name for stage in STAGES]
    assert report["total_seconds"] == len(STAGES)


def test_before_after_samples_carry_the_detector_verdicts(finished_run):
    _, report = finished_run
    samples = report["samples"]
    assert len(samples) == 6 * LIMIT
    assert not any(sample["correct_after_sft"] for sample in samples)
    assert all(sample["correct_after_grpo"] for sample in samples)


def test_every_figure_is_written(finished_run):
    run, report = finished_run
    assert set(report["figures"]) == set(FIGURE_CAPTIONS)
    for path in report["figures"].values():
        with Image.open(run / path) as image:
            assert image.format == "PNG" and image.width > 100


def test_html_is_self_contained(finished_run):
    run, report = finished_run
    page = (run / "report.html").read_text()
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == len(report["figures"])
    assert all(source.startswith("data:image/png;base64,") for source in sources)
    assert "http" not in page  # nothing to fetch: it opens offline
    assert "<td>single_object</td><td class='num'>0.000</td><td class='num'>1.000</td>" in page


def test_markdown_has_the_table_and_the_figures(finished_run):
    run, report = finished_run
    text = (run / "report.md").read_text()
    assert "| single_object | 0.000 | 1.000 | +1.000 |" in text
    assert "| **overall** | **0.000** | **1.000** | **+1.000** |" in text
    for path in report["figures"].values():
        assert f"]({path})" in text


# ---- the runner: reuse, redo, failures ------------------------------------------------------------------------


def _stage(name: str, calls: list[str], resumable: bool = False, fail: bool = False, rows: int = 2) -> Stage:
    def commands(run, budget):
        return [["data", "shapes", "--num", "0" if fail else str(rows), "--out", str(run / name / "rows")]]

    def summarize(run):
        calls.append(name)
        seen = run / name / "seen.txt"  # survives only while the stage directory is kept
        seen.write_text(seen.read_text() + "x" if seen.exists() else "x")
        return {"runs": len(seen.read_text())}

    return Stage(name, name, commands, summarize, lambda summary: f"{summary['runs']} run(s)", resumable)


@pytest.fixture
def no_report(monkeypatch):
    monkeypatch.setattr("mmgen.demo.report.write_report", lambda run_dir, summaries, machine: summaries)
    monkeypatch.setattr("mmgen.hardware.machine_summary", lambda: {**MACHINE, "precision": None})


def test_finished_stages_are_reused_and_a_redone_stage_redoes_the_later_ones(tmp_path, no_report):
    calls: list[str] = []
    stages = (_stage("a", calls), _stage("b", calls), _stage("c", calls))
    run_demo(tmp_path, stages=stages)
    assert calls == ["a", "b", "c"]
    run_demo(tmp_path, stages=stages)
    assert calls == ["a", "b", "c"]  # everything reused
    (tmp_path / "b" / "stage.json").unlink()  # as if b had been interrupted
    run_demo(tmp_path, stages=stages)
    assert calls == ["a", "b", "c", "b", "c"]
    run_demo(tmp_path, stages=stages, force=True)
    assert calls[-3:] == ["a", "b", "c"]
    changed = (stages[0], _stage("b", calls, rows=3), stages[2])  # b's commands changed (another budget)
    run_demo(tmp_path, stages=changed)
    assert calls[-2:] == ["b", "c"]


def test_an_interrupted_training_stage_keeps_its_files_and_others_start_over(tmp_path, no_report):
    calls: list[str] = []
    stages = (_stage("train", calls, resumable=True), _stage("plain", calls))
    run_demo(tmp_path, stages=stages)
    for name in ("train", "plain"):
        (tmp_path / name / "stage.json").unlink()
    summaries = run_demo(tmp_path, stages=stages)
    assert summaries["train"]["runs"] == 2  # its directory (checkpoints) survived the restart
    assert summaries["plain"]["runs"] == 1  # wiped and redone
    (tmp_path / "train" / "stage.json").unlink()
    summaries = run_demo(tmp_path, stages=(_stage("train", calls, resumable=True, rows=3), stages[1]))
    assert summaries["train"]["runs"] == 1  # other commands: nothing to resume, started over


def test_a_failing_command_stops_the_demo_naming_the_stage_and_the_command(tmp_path, no_report, capsys):
    stages = (_stage("broken", [], fail=True),)
    with pytest.raises(UserError, match=r"demo stage 'broken' stopped: `mmgen data shapes --num 0"):
        run_demo(tmp_path, stages=stages)
    assert not (tmp_path / "broken" / "stage.json").exists()


def test_command_lines_show_paths_under_the_working_directory_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", str(tmp_path / "recipes" / "r.yaml"), f"output_dir={tmp_path / 'runs' / 'x'}", "a b"]
    assert command_line(argv) == "mmgen train recipes/r.yaml output_dir=runs/x 'a b'"
