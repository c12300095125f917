"""The shapes benchmark: GenEval-format prompts over the shapes world, each with a ground-truth scene.

Every line is GenEval metadata (tag, include, [exclude], prompt) plus `scene`, a `Scene.to_dict()` that
satisfies the prompt, so the scorer can be sanity-checked on renders of the ground truth.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .captions import GENEVAL_TASKS, make_prompt
from .scenes import scene_for_prompt

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "shapes_geneval.jsonl"

# Draws spent looking for a prompt not yet used in the current round before the round is declared complete.
MAX_PROMPT_DRAWS = 200


def _task_prompts(task: str, count: int, rng: random.Random) -> list[dict]:
    """`count` prompt specs, each distinct until the task's prompts run out, then repeating in a new round.

    Small tasks (single_object has only six prompts) therefore cover every prompt evenly instead of at random.
    """
    specs: list[dict] = []
    seen: set[str] = set()
    while len(specs) < count:
        for _ in range(MAX_PROMPT_DRAWS):
            spec = make_prompt(task, rng)
            if spec["prompt"] not in seen:
                break
        else:
            seen.clear()  # every prompt (with near certainty) is used: start the next round with this draw
        seen.add(spec["prompt"])
        specs.append(spec)
    return specs


def build_benchmark(per_task: int = 100, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for task in GENEVAL_TASKS:
        for spec in _task_prompts(task, per_task, rng):
            rows.append({**spec, "scene": scene_for_prompt(spec, rng).to_dict()})
    return rows


def write_benchmark(path: str | Path = DEFAULT_PATH, per_task: int = 100, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in build_benchmark(per_task, seed):
            f.write(json.dumps(row) + "\n")
    return path


def load_benchmark(path: str | Path | None = None) -> list[dict]:
    """The benchmark rows; defaults to the file packaged with mmgen."""
    with Path(path or DEFAULT_PATH).open() as f:
        return [json.loads(line) for line in f if line.strip()]
