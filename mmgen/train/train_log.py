"""`<output_dir>/train_log.jsonl`: every metric the trainer logs, one JSON line per log call.

The same file the tokenizer trainer writes, so loss and reward curves of every stage are read the same way (the
demo's report plots them). A resumed run first drops the lines logged after the checkpoint it resumes from: they
belong to steps that are trained again.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from transformers import TrainerCallback

TRAIN_LOG = "train_log.jsonl"


def read_train_log(path: str | Path) -> list[dict]:
    """The lines of a train_log.jsonl; a missing file has none, a torn last line (killed writer) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def drop_lines_after(path: str | Path, step: int) -> None:
    """Keep only the lines of steps <= `step`: a run resuming from checkpoint `step` trains the later ones again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [row for row in read_train_log(path) if row.get("step", 0) <= step]
    path.write_text("".join(json.dumps(row) + "\n" for row in kept))


class TrainLogCallback(TrainerCallback):
    """Appends `{"step": ..., **logs}` to `<output_dir>/train_log.jsonl` on the main process."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / TRAIN_LOG

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        drop_lines_after(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, **{key: _plain(value) for key, value in logs.items()}}
        with self.path.open("a") as log:
            log.write(json.dumps(row) + "\n")


def _plain(value):
    """JSON has no NaN/inf: write them as null rather than producing a file strict readers reject."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
