"""Benchmark reports: `results.json` (stable keys), `results.md` (a table) and `report.html` (self-contained).

Every benchmark reduces to an overall score, per-task scores and scored prompts with their images:
```
results.json  {"benchmark", "overall", "tasks": {task: score}, "scale", "prompts": {task: count}, "details": {...}}
results.md    one table: overall and each task, with prompt counts
report.html   the table, then per task its best and worst prompts with their images (embedded as base64 PNG
              thumbnails, so the file works when moved or mailed)
```
`scale` is 1 for GenEval and the shapes benchmark (accuracies in 0..1) and 100 for DPG-Bench (its official
0..100 scale). Adapters turn each benchmark's per-image results into report items.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mmgen.files import write_json_atomic


@dataclass
class ReportItem:
    """One prompt's result in one task: its score (same scale as the task's), images and a short note."""

    task: str
    prompt: str
    score: float
    images: list[Path | Image.Image] = field(default_factory=list)
    note: str = ""


def write_reports(report_dir: str | os.PathLike, benchmark: str, overall: float | None, tasks: dict[str, float],
                  items: Sequence[ReportItem] = (), scale: float = 1.0, details: dict | None = None,
                  top_k: int = 3, thumbnail: int = 160) -> dict[str, Path]:
    """Write the three report files into `report_dir`; returns their paths by name."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    counts = defaultdict(int)
    for item in items:
        counts[item.task] += 1
    results = {"benchmark": benchmark, "overall": overall, "tasks": dict(tasks), "scale": scale,
               "prompts": dict(counts), "details": details or {}}
    paths = {"json": report_dir / "results.json", "markdown": report_dir / "results.md",
             "html": report_dir / "report.html"}
    write_json_atomic(paths["json"], _jsonable(results))
    _write_text(paths["markdown"], _markdown(benchmark, overall, tasks, counts, scale))
    _write_text(paths["html"], _html(benchmark, overall, tasks, counts, scale, items, top_k, thumbnail))
    return paths


def format_score(score: float | None, scale: float) -> str:
    if score is None:
        return "n/a"
    return f"{score:.2f}" if scale >= 100 else f"{score:.3f}"


def _markdown(benchmark: str, overall, tasks: dict, counts: dict, scale: float) -> str:
    lines = [f"# {benchmark} results", "", "| Task | Score | Prompts |", "| --- | ---: | ---: |",
             f"| **overall** | **{format_score(overall, scale)}** | {sum(counts.values()) or ''} |"]
    lines += [f"| {task} | {format_score(score, scale)} | {counts.get(task, '')} |" for task, score in tasks.items()]
    return "\n".join(lines) + "\n"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-bottom: 2em; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.item { display: inline-block; vertical-align: top; width: 360px; margin: 0 1em 1em 0; }
.item img { margin: 2px; image-rendering: pixelated; border: 1px solid #ddd; }
.note { color: #a33; font-size: 0.85em; white-space: pre-line; }
h3 { margin-bottom: 0.3em; }
"""


def _html(benchmark: str, overall, tasks: dict, counts: dict, scale: float, items: Sequence[ReportItem],
          top_k: int, thumbnail: int) -> str:
    escape = html.escape
    rows = [f"<tr><th>overall</th><td class='num'><b>{format_score(overall, scale)}</b></td>"
            f"<td class='num'>{sum(counts.values()) or ''}</td></tr>"]
    rows += [f"<tr><td>{escape(task)}</td><td class='num'>{format_score(score, scale)}</td>"
             f"<td class='num'>{counts.get(task, '')}</td></tr>" for task, score in tasks.items()]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(benchmark)} report</title>",
             f"<style>{_STYLE}</style></head><body><h1>{escape(benchmark)} report</h1>",
             "<table><tr><th>Task</th><th>Score</th><th>Prompts</th></tr>", *rows, "</table>"]
    by_task: dict[str, list[ReportItem]] = defaultdict(list)
    for item in items:
        by_task[item.task].append(item)
    for task in list(tasks) + sorted(set(by_task) - set(tasks)):
        ranked = sorted(by_task.get(task, []), key=lambda item: (-item.score, item.prompt))
        if not ranked:
            continue
        parts.append(f"<h2>{escape(task)}</h2>")
        worst = ranked[::-1][:top_k]
        for title, chosen in (("Best", ranked[:top_k]), ("Worst", worst)):
            parts.append(f"<h3>{title}</h3><div>")
            parts += [_html_item(item, scale, thumbnail) for item in chosen]
            parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_item(item: ReportItem, scale: float, thumbnail: int) -> str:
    images = "".join(_img_tag(image, thumbnail) for image in item.images)
    note = f"<div class='note'>{html.escape(item.note)}</div>" if item.note else ""
    return (f"<div class='item'><div>{images}</div><div><b>{format_score(item.score, scale)}</b> "
            f"{html.escape(item.prompt)}</div>{note}</div>")


def _img_tag(image: Path | Image.Image, thumbnail: int) -> str:
    """An `<img>` with the image inlined as a PNG data URI, downscaled to at most `thumbnail` px a side."""
    try:
        picture = image.copy() if isinstance(image, Image.Image) else Image.open(image)
        picture = picture.convert("RGB")
    except OSError:
        return f"<span class='note'>missing image {html.escape(str(image))}</span>"
    if max(picture.size) > thumbnail:
        picture.thumbnail((thumbnail, thumbnail))
    elif max(picture.size) < thumbnail // 2:  # tiny shapes-world images: enlarge (pixelated) to be visible
        factor = thumbnail // 2 // max(picture.size)
        picture = picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f"<img src='data:image/png;base64,{data}' width='{picture.width}' height='{picture.height}'>"


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _jsonable(value):
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


# ---- adapters -------------------------------------------------------------------------------------------------


def geneval_items(records: Iterable[dict], images: Sequence[Image.Image] | None = None) -> list[ReportItem]:
    """One item per prompt from GenEval result records (ours, the official script's, or the shapes benchmark's):
    score = share of its images judged correct; images = the records' `filename`s, or `images[i]` for record i."""
    grouped: dict[str, list[tuple[dict, Path | Image.Image | None]]] = defaultdict(list)
    for index, record in enumerate(records):
        metadata = record.get("metadata", record["prompt"])
        key = metadata if isinstance(metadata, str) else json.dumps(metadata, sort_keys=True)
        image = images[index] if images is not None else (Path(record["filename"]) if "filename" in record else None)
        grouped[key].append((record, image))
    items = []
    for group in grouped.values():
        first = group[0][0]
        failures = sorted({record["reason"] for record, _ in group if not record["correct"] and record.get("reason")})
        items.append(ReportItem(task=first["tag"], prompt=first["prompt"],
                                score=float(np.mean([bool(record["correct"]) for record, _ in group])),
                                images=[image for _, image in group if image is not None], note="\n".join(failures)))
    return items


def dpg_items(records: Iterable[dict]) -> list[ReportItem]:
    """One item per (prompt, first-level category) from DPG-Bench image records: score (0..100) = the mean over
    that category's questions of their cascaded scores averaged over the four crops."""
    items = []
    for record in records:
        by_broad: dict[str, list[dict]] = defaultdict(list)
        for question in record["questions"]:
            by_broad[question["category"].split("-")[0].strip()].append(question)
        for broad, questions in by_broad.items():
            failed = [q["question"] for q in questions if np.mean(q["scores"]) < 1]
            items.append(ReportItem(task=broad, prompt=record.get("prompt", record["item_id"]),
                                    score=float(np.mean([np.mean(q["scores"]) for q in questions])) * 100,
                                    images=[Path(record["image"])] if record.get("image") else [],
                                    note="failed: " + "; ".join(failed) if failed else ""))
    return items


def geneval_report(report_dir: str | os.PathLike, summary: dict, records: Sequence[dict],
                   images: Sequence[Image.Image] | None = None, benchmark: str = "GenEval") -> dict[str, Path]:
    """Reports from `score_results`' summary and the per-image records (GenEval and the shapes benchmark)."""
    tasks = {**summary["tasks"], **summary.get("other_tasks", {})}
    return write_reports(report_dir, benchmark, summary["overall"], tasks, geneval_items(records, images),
                         scale=1.0, details=summary)


def dpg_report(report_dir: str | os.PathLike, summary: dict, records: Sequence[dict],
               prompts: dict[str, str] | None = None) -> dict[str, Path]:
    """Reports from `score_dpg_folder`'s summary and its per-image records (`prompts` maps item_id to text)."""
    if prompts:
        records = [{**record, "prompt": prompts.get(record["item_id"], record["item_id"])} for record in records]
    return write_reports(report_dir, "DPG-Bench", summary["overall"], summary["tasks"], dpg_items(records),
                         scale=100.0, details=summary)
