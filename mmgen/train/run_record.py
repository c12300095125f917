"""The recipe a training run started with, kept beside its checkpoints, so a re-run resumes only under the same
settings.

Without it, re-running a finished or killed run with a new learning rate silently resumed the old optimizer and
scheduler state. Only the step budget and how often the run logs, evaluates, samples and saves may change on resume:
they do not change what has been learned so far.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from mmgen.errors import UserError
from mmgen.files import write_json_atomic

logger = logging.getLogger(__name__)

RECIPE_RECORD = "recipe.json"
CHECKPOINTS_DIR = "checkpoints"  # every stage keeps its resumable state here (Trainer or image-loop layout)
# training.<key> a resumed run may change: the step budget and the bookkeeping cadence.
RESUMABLE_KEYS = frozenset({"max_steps", "logging_steps", "save_steps", "eval_steps", "checkpoint_every",
                            "sample_every", "log_every", "keep_checkpoints", "save_total_limit"})
# What a restart removes: the run's own outputs, nothing else in the folder.
RUN_OUTPUTS = (CHECKPOINTS_DIR, "train_log.jsonl", "samples", RECIPE_RECORD)


def flat_recipe(recipe: Any) -> dict[str, Any]:
    """`recipe` (a dataclass) as {"dotted.key": JSON value}."""
    plain = json.loads(json.dumps(dataclasses.asdict(recipe), default=str))
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(plain, "")
    return flat


def check_resume(recipe: Any, output_dir: str | Path, *, restart: bool = False, accept_changes: bool = False) -> None:
    """Before a stage starts: refuse to resume `output_dir`'s checkpoints under different settings.

    `restart` removes the earlier run's outputs first; `accept_changes` resumes under the new settings anyway (the
    stage then records them with `record_recipe`)."""
    output_dir = Path(output_dir)
    record = output_dir / RECIPE_RECORD
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun every process runs this; one writes
    if restart and main_process:
        _remove_run_outputs(output_dir)
    current = flat_recipe(recipe)
    checkpoints = output_dir / CHECKPOINTS_DIR
    if not restart and checkpoints.is_dir() and any(checkpoints.iterdir()) and record.is_file():
        recorded = _read_record(record)
        changed = {key: (recorded.get(key, "<unset>"), current.get(key, "<unset>"))
                   for key in sorted(set(recorded) | set(current)) if recorded.get(key) != current.get(key)}
        refused = {key: values for key, values in changed.items() if not _may_change_on_resume(key)}
        if refused and not accept_changes:
            listed = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in refused.items())
            raise UserError(f"{output_dir} holds checkpoints of a run with other settings ({listed}); resuming would "
                            "keep the old ones. Re-run with --restart to start afresh (removes that run's "
                            "checkpoints and log), --accept-changes to resume under the new settings, or choose "
                            "another output_dir")
        for key, (old, new) in changed.items():
            logger.warning("resuming with %s changed: %r -> %r", key, old, new)


def record_recipe(recipe: Any, output_dir: str | Path) -> None:
    """Called by each stage once its inputs are checked, before its first step: these are the run's settings."""
    if os.environ.get("RANK", "0") == "0":
        write_json_atomic(Path(output_dir) / RECIPE_RECORD, flat_recipe(recipe))


def _may_change_on_resume(key: str) -> bool:
    section, _, name = key.partition(".")
    return section == "training" and name in RESUMABLE_KEYS


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{path} (the settings this run started with) is unreadable: {error}; re-run with "
                        "--restart to start afresh") from error


def _remove_run_outputs(output_dir: Path) -> None:
    removed = [output_dir / name for name in RUN_OUTPUTS if (output_dir / name).exists()]
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    if removed:
        logger.warning("--restart: removed the earlier run's %s in %s", ", ".join(p.name for p in removed), output_dir)
