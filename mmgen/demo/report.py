"""The demo's report: `report.json` (every number, under stable keys), `report.md` and a self-contained
`report.html` (figures embedded, opens offline), plus the figures as PNG files under `figures/`."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from PIL import Image

from mmgen.demo import figures
from mmgen.demo.stages import STAGES
from mmgen.files import write_json_atomic
from mmgen.train.train_log import read_train_log

FIGURES_DIR = "figures"
SAMPLE_PROMPTS_PER_TASK = 2
FIGURE_CAPTIONS = {
    "task_scores": "Shapes benchmark per task, after SFT and after GRPO (same prompts, seeds and settings).",
    "before_after": "The same benchmark prompts and seeds after SFT (top) and after GRPO (bottom); "
                    "the exact detector's verdict under each image.",
    "tokenizer_reconstructions": "Held-out scenes (top) and their tokenizer reconstructions (bottom).",
    "tokenizer_loss": "Tokenizer training: reconstruction loss.",
    "sft_loss": "SFT: training and eval loss (image tokens only).",
    "grpo_reward": "GRPO: mean reward of the rollouts, and the benchmark guard's score during training.",
}


def write_report(run_dir: Path, summaries: dict[str, dict], machine: dict | None = None) -> dict:
    """Write the figures and the three report files for a finished run; returns the report. `machine` is this run's
    machine line (`mmgen.hardware.machine_summary` plus the resolved precision); each stage keeps its own."""
    report = {
        "quick": summaries["data"].get("quick", False),
        "machine": machine,
        "total_seconds": round(sum(summary["seconds"] for summary in summaries.values()), 1),
        "stages": [{"name": stage.name, "title": stage.title, "seconds": summaries[stage.name]["seconds"],
                    "headline": stage.headline(summaries[stage.name]), "commands": summaries[stage.name]["commands"],
                    "precision": _stage_precision(summaries[stage.name]),
                    "machine": summaries[stage.name].get("machine")}
                   for stage in STAGES],
        "tokenizer": _without(summaries["tokenizer"], "commands", "quick", "seconds", "machine"),
        "model": _without(summaries["vocab"], "commands", "quick", "seconds", "machine"),
        "sft": _without(summaries["sft"], "commands", "quick", "seconds", "machine"),
        "grpo": _without(summaries["grpo"], "commands", "quick", "seconds", "machine"),
        "benchmark": _benchmark(summaries),
    }
    figure_paths, report["samples"] = _figures(run_dir, report["benchmark"])
    report["figures"] = {name: str(path.relative_to(run_dir)) for name, path in figure_paths.items()}
    write_json_atomic(run_dir / "report.json", report)
    (run_dir / "report.md").write_text(render_markdown(report))
    (run_dir / "report.html").write_text(render_html(report, run_dir))
    return report


def _stage_precision(summary: dict) -> str | None:
    """The precision a stage trained or sampled in, as its own outputs recorded it (None: no model ran)."""
    precision = summary.get("precision")
    if isinstance(precision, dict):
        return precision["name"]
    return precision


def _machine_text(machine: dict | None) -> str:
    from mmgen.hardware import machine_line

    if not machine:
        return "machine not recorded"
    return f"{machine_line(machine)}; {machine['precision']['name']} ({machine['precision']['reason']})"


def _without(summary: dict, *keys: str) -> dict:
    return {key: value for key, value in summary.items() if key not in keys}


def _benchmark(summaries: dict[str, dict]) -> dict:
    before, after = summaries["benchmark_sft"], summaries["benchmark_grpo"]
    return {
        "ceiling": summaries["ground_truth"]["overall"],
        "images": before["images"],
        "before_rl": {"overall": before["overall"], "tasks": before["tasks"]},
        "after_rl": {"overall": after["overall"], "tasks": after["tasks"]},
        "gain": {"overall": round(after["overall"] - before["overall"], 4),
                 "tasks": {task: round(after["tasks"][task] - before["tasks"][task], 4) for task in before["tasks"]}},
    }


# ---- figures -------------------------------------------------------------------------------------------------


def _figures(run_dir: Path, benchmark: dict) -> tuple[dict[str, Path], list[dict]]:
    """The figures that have data, and the detector's verdicts on the before/after samples."""
    out = run_dir / FIGURES_DIR
    before_after, samples = _before_after(run_dir, out / "before_after.png")
    made = {
        "task_scores": figures.plot_task_scores(out / "task_scores.png", benchmark["before_rl"]["tasks"],
                                                benchmark["after_rl"]["tasks"], ("after SFT", "after GRPO")),
        "before_after": before_after,
        "tokenizer_reconstructions": _reconstructions(run_dir, out / "tokenizer_reconstructions.png"),
        "tokenizer_loss": figures.plot_curves(out / "tokenizer_loss.png", [_series(
            run_dir / "tokenizer" / "train_log.jsonl", "recon", "reconstruction (train)")],
            "Visual tokenizer", "loss", log_y=True),
        "sft_loss": figures.plot_curves(out / "sft_loss.png", [
            _series(run_dir / "sft" / "train_log.jsonl", "loss", "train"),
            _series(run_dir / "sft" / "train_log.jsonl", "eval_loss", "eval", marker="o")], "SFT", "loss"),
        "grpo_reward": figures.plot_curves(out / "grpo_reward.png", [
            _series(run_dir / "grpo" / "train_log.jsonl", "reward", "reward (rollouts)"),
            _guard_series(run_dir / "grpo" / "benchmark" / "history.json")], "GRPO", "score"),
    }
    return {name: path for name, path in made.items() if path is not None}, samples


def _series(log_path: Path, key: str, label: str, marker: str | None = None) -> figures.Curve:
    rows = [row for row in read_train_log(log_path) if row.get(key) is not None]
    return figures.Curve(label, [row["step"] for row in rows], [row[key] for row in rows], marker)


def _guard_series(history_path: Path) -> figures.Curve:
    history = json.loads(history_path.read_text()) if history_path.exists() else []
    return figures.Curve("benchmark guard (overall)", [row["step"] for row in history],
                         [row["benchmark/overall"] for row in history], marker="o")


def _before_after(run_dir: Path, path: Path) -> tuple[Path, list[dict]]:
    """The first prompts of each task, both models' first image for each, with the detector's verdict."""
    from mmgen.eval.shapes_benchmark import benchmark_prompts, score_images

    columns, marks, samples = [], [], []
    for index, prompt in benchmark_prompts(limit=SAMPLE_PROMPTS_PER_TASK):
        images = [Image.open(run_dir / f"benchmark_{name}" / "samples" / f"{index:05d}_00.png").convert("RGB")
                  for name in ("sft", "grpo")]
        verdicts = [record["correct"] for record in score_images(images, [prompt, prompt])[0]]
        columns.append((prompt["prompt"], images))
        marks.append(verdicts)
        samples.append({"prompt": prompt["prompt"], "task": prompt["tag"], "line": index,
                        "correct_after_sft": verdicts[0], "correct_after_grpo": verdicts[1]})
    return figures.image_table(path, columns, ("after SFT", "after GRPO"), marks), samples


def _reconstructions(run_dir: Path, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figures.upscale(Image.open(run_dir / "tokenizer" / "reconstructions.png"), 3).save(path)
    return path


# ---- text renderings -----------------------------------------------------------------------------------------


def _score_rows(benchmark: dict) -> list[tuple[str, str, str, str]]:
    before, after, gain = benchmark["before_rl"], benchmark["after_rl"], benchmark["gain"]
    rows = [(task, f"{before['tasks'][task]:.3f}", f"{after['tasks'][task]:.3f}", f"{gain['tasks'][task]:+.3f}")
            for task in before["tasks"]]
    return [*rows, ("**overall**", f"**{before['overall']:.3f}**", f"**{after['overall']:.3f}**",
                    f"**{gain['overall']:+.3f}**")]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def render_markdown(report: dict) -> str:
    benchmark = report["benchmark"]
    lines = ["# mmgen demo report", ""]
    if report["quick"]:
        lines += ["**Quick run (toy budgets): the numbers below check the plumbing and mean nothing.**", ""]
    lines += [f"Shapes benchmark overall: **{benchmark['before_rl']['overall']:.3f} after SFT -> "
              f"{benchmark['after_rl']['overall']:.3f} after GRPO ({benchmark['gain']['overall']:+.3f})** on "
              f"{benchmark['images']} images; rendered ground truth scores {benchmark['ceiling']:.3f}. "
              f"The stages took {_minutes(report['total_seconds'])}.", "",
              f"Machine: {_machine_text(report.get('machine'))}.", "",
              "## Shapes benchmark before and after RL", "", "| task | after SFT | after GRPO | gain |",
              "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in _score_rows(benchmark)]
    lines += ["", "## Figures", ""]
    for name, path in report["figures"].items():
        lines += [f"![{name}]({path})", "", f"*{FIGURE_CAPTIONS[name]}*", ""]
    lines += ["## Stages", "", "| stage | time | precision | result |", "|---|---|---|---|"]
    lines += [f"| {stage['title']} | {_minutes(stage['seconds'])} | {stage.get('precision') or '-'} | "
              f"{stage['headline']} |" for stage in report["stages"]]
    lines += ["", "## Commands that reproduce each stage", ""]
    for stage in report["stages"]:
        lines += [f"{stage['title']}:", "", "```bash", *stage["commands"], "```", ""]
    return "\n".join(lines)


HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; } pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; }
.warning { background: #fff3cd; padding: 0.6em; border: 1px solid #e0c36c; }
"""


def render_html(report: dict, run_dir: Path) -> str:
    """The report as one HTML file; the figures are embedded as data URIs, so it opens anywhere, offline."""
    e = html.escape
    benchmark = report["benchmark"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>mmgen demo report</title>"
             f"<style>{HTML_STYLE}</style></head><body><h1>mmgen demo report</h1>"]
    if report["quick"]:
        parts.append("<p class='warning'>Quick run (toy budgets): the numbers check the plumbing and mean nothing.</p>")
    parts.append(f"<p>Shapes benchmark overall: <b>{benchmark['before_rl']['overall']:.3f} after SFT &rarr; "
                 f"{benchmark['after_rl']['overall']:.3f} after GRPO ({benchmark['gain']['overall']:+.3f})</b> on "
                 f"{benchmark['images']} images; rendered ground truth scores {benchmark['ceiling']:.3f}. "
                 f"The stages took {_minutes(report['total_seconds'])}.</p>")
    parts.append(f"<p>Machine: {e(_machine_text(report.get('machine')))}.</p>")
    parts.append("<h2>Shapes benchmark before and after RL</h2><table><tr><th>task</th><th>after SFT</th>"
                 "<th>after GRPO</th><th>gain</th></tr>")
    for row in _score_rows(benchmark):
        cells = [cell.strip("*") for cell in row]
        tag = "th" if row[0].startswith("**") else "td"
        parts.append("<tr>" + f"<{tag}>{e(cells[0])}</{tag}>" +
                     "".join(f"<{tag} class='num'>{e(cell)}</{tag}>" for cell in cells[1:]) + "</tr>")
    parts.append("</table><h2>Figures</h2>")
    for name, path in report["figures"].items():
        data = base64.b64encode((run_dir / path).read_bytes()).decode("ascii")
        parts.append(f"<figure id='{e(name)}'><img alt='{e(name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(FIGURE_CAPTIONS[name])}</figcaption></figure>")
    parts.append("<h2>Stages</h2><table><tr><th>stage</th><th>time</th><th>precision</th><th>result</th></tr>")
    for stage in report["stages"]:
        parts.append(f"<tr><td>{e(stage['title'])}</td><td class='num'>{_minutes(stage['seconds'])}</td>"
                     f"<td>{e(stage.get('precision') or '-')}</td><td>{e(stage['headline'])}</td></tr>")
    parts.append("</table><h2>Commands that reproduce each stage</h2>")
    for stage in report["stages"]:
        parts.append(f"<h3>{e(stage['title'])}</h3><pre>{e(chr(10).join(stage['commands']))}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
