"""`mmgen demo`: every stage the kit ships, end to end on the shapes world, in one run directory.

Each stage writes its artefacts under `<out>/<stage>/` and a `stage.json` with its summary when it finishes;
re-running the demo reuses finished stages (`--force` redoes them). A stage that was interrupted has no
`stage.json`, so it runs again (the training stages resume from their own checkpoints).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Path, Path], dict]  # (run directory, stage directory) -> summary (JSON-serialisable)
    headline: Callable[[dict], str]  # the one-line key metric of the summary
    command: str  # the CLI command that reproduces the stage (recorded in the report)


def _stage_data(run_dir: Path, stage_dir: Path) -> dict:
    from mmgen.data_engine.shapes.dataset import write_shapes_dataset

    write_shapes_dataset(stage_dir / "shapes", num=2000, size=64, seed=0)
    write_shapes_dataset(stage_dir / "shapes-edits", num=500, size=64, seed=0, edits=True)
    return {"train_images": 2000, "edit_triplets": 500, "size": 64}


def _stage_ground_truth(run_dir: Path, stage_dir: Path) -> dict:
    from mmgen.eval.shapes_benchmark import score_ground_truth

    results = score_ground_truth(out_dir=stage_dir, size=64)
    return {"overall": results["overall"], "tasks": results["tasks"], "images": sum(results["images"].values())}


STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        _stage_data,
        lambda s: f"{s['train_images']} images + {s['edit_triplets']} edit triplets at {s['size']}px",
        "mmgen data shapes --num 2000 --size 64 --out RUN/data/shapes",
    ),
    Stage(
        "ground_truth",
        _stage_ground_truth,
        lambda s: f"shapes benchmark on rendered ground truth: overall {s['overall']:.3f} ({s['images']} images)",
        "mmgen eval shapes --ground-truth --out RUN/ground_truth",
    ),
)


def run_demo(out: str | Path, force: bool = False, console: Console | None = None) -> dict:
    """Run (or reuse) every stage; returns `{stage: summary}` and writes `<out>/summary.json`."""
    import datasets

    datasets.disable_progress_bars()  # each stage shows one status line; per-shard bars would interleave with it
    console = console or Console()
    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    summaries = {}
    for index, stage in enumerate(STAGES, start=1):
        stage_dir = run_dir / stage.name
        marker = stage_dir / "stage.json"
        label = f"[{index}/{len(STAGES)}] {stage.name}"
        if marker.exists() and not force:
            summary = json.loads(marker.read_text())
            console.print(f"{label}: reused ({summary['seconds']:.1f}s earlier) - {stage.headline(summary)}")
        else:
            stage_dir.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            with console.status(f"{label}: running"):
                summary = stage.run(run_dir, stage_dir)
            summary["seconds"] = round(time.perf_counter() - start, 2)
            summary["command"] = stage.command
            _write_json_atomic(marker, summary)
            console.print(f"{label}: done in {summary['seconds']:.1f}s - {stage.headline(summary)}")
        summaries[stage.name] = summary
    _write_json_atomic(run_dir / "summary.json", summaries)
    return summaries


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
