"""`mmgen demo`: every stage the kit ships, end to end on the shapes world, in one run directory.

Each stage writes its artefacts under `<out>/<stage>/` and a `stage.json` with its summary when it finishes;
re-running the demo reuses finished stages (`--force` redoes them). A stage that was interrupted has no
`stage.json`, so it runs again (the training stages resume from their own checkpoints).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from mmgen.files import write_json_atomic


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Path, Path, bool], dict]  # (run directory, stage directory, quick) -> summary (JSON)
    headline: Callable[[dict], str]  # the one-line key metric of the summary
    command: str  # the CLI command that reproduces the stage (recorded in the report)


def _stage_data(run_dir: Path, stage_dir: Path, quick: bool) -> dict:
    from mmgen.data_engine.shapes.dataset import write_shapes_dataset

    write_shapes_dataset(stage_dir / "shapes", num=2000, size=64, seed=0)
    write_shapes_dataset(stage_dir / "shapes-edits", num=500, size=64, seed=0, edits=True)
    return {"train_images": 2000, "edit_triplets": 500, "size": 64}


def _stage_ground_truth(run_dir: Path, stage_dir: Path, quick: bool) -> dict:
    from mmgen.eval.shapes_benchmark import score_ground_truth

    results = score_ground_truth(out_dir=stage_dir, size=64)
    return {"overall": results["overall"], "tasks": results["tasks"], "images": sum(results["images"].values())}


TOKENIZER_RECIPE = "tokenizer/shapes-vq.yaml"


# `--quick`: the same pipeline on toy budgets, to check an installation end to end in about a minute.
QUICK_TOKENIZER = ["training.max_steps=30", "training.checkpoint_every=10", "data.num_images=2000"]


def _stage_tokenizer(run_dir: Path, stage_dir: Path, quick: bool) -> dict:
    from mmgen.config import load_config
    from mmgen.recipes import recipe_path
    from mmgen.tokenizers.tools import evaluate_on
    from mmgen.train.tokenizer import TokenizerRecipe, train_tokenizer

    overrides = [f"output_dir={stage_dir}", *(QUICK_TOKENIZER if quick else [])]
    recipe = load_config(TokenizerRecipe, recipe_path(TOKENIZER_RECIPE), overrides)
    tokenizer_dir = train_tokenizer(recipe)
    metrics = evaluate_on(str(tokenizer_dir), "shapes", num=50 if quick else 500)
    write_json_atomic(stage_dir / "eval.json", metrics)
    return {"tokenizer": str(tokenizer_dir), **metrics}


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
    Stage(
        "tokenizer",
        _stage_tokenizer,
        lambda s: (f"{s['tokens_per_image']} codes/image, detector fidelity {s['detector_fidelity']:.3f}, "
                   f"PSNR {s['psnr']:.1f} dB, codebook usage {s['codebook_usage']:.2f}"),
        f"mmgen tokenizer train recipes/{TOKENIZER_RECIPE} output_dir=RUN/tokenizer && "
        "mmgen tokenizer eval --tokenizer RUN/tokenizer/tokenizer --data shapes --num 500",
    ),
)


def run_demo(out: str | Path, force: bool = False, quick: bool = False, console: Console | None = None) -> dict:
    """Run (or reuse) every stage; returns `{stage: summary}` and writes `<out>/summary.json`.

    `quick` runs the training stages on toy budgets (the numbers are then meaningless; the plumbing is checked).
    """
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
        previous = json.loads(marker.read_text()) if marker.exists() else None
        if previous is not None and not force and previous.get("quick", False) == quick:
            summary = previous
            console.print(f"{label}: reused ({summary['seconds']:.1f}s earlier) - {stage.headline(summary)}")
        else:
            started = stage_dir / "started.json"
            interrupted_same_mode = started.exists() and json.loads(started.read_text())["quick"] == quick
            if stage_dir.exists() and (previous is not None or not interrupted_same_mode):
                shutil.rmtree(stage_dir)  # only an interrupted run of the same mode may be resumed
            stage_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(started, {"quick": quick})
            start = time.perf_counter()
            console.print(f"{label}: running")
            summary = stage.run(run_dir, stage_dir, quick)
            summary["seconds"] = round(time.perf_counter() - start, 2)
            summary["command"] = stage.command
            summary["quick"] = quick
            write_json_atomic(marker, summary)
            console.print(f"{label}: done in {summary['seconds']:.1f}s - {stage.headline(summary)}")
        summaries[stage.name] = summary
    write_json_atomic(run_dir / "summary.json", summaries)
    return summaries
