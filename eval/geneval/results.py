"""GenEval's per-image results file: one JSON object a line, as the official `evaluate_images.py` writes it.

Each line holds `filename`, `tag`, `prompt`, `correct`, `reason`, and `metadata` and `details` as JSON *strings*
(the official script serialises them with `json.dumps` before pandas writes the records), so the official
`summary_scores.py` can group by the metadata string. Files written here read there, and the other way round.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from mmgen.errors import UserError
from mmgen.files import read_jsonl

RESULT_KEYS: tuple[str, ...] = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")


def to_official_record(record: dict, filename: str) -> dict:
    """An `evaluate_image` record in the official line format (metadata and details as JSON strings)."""
    return {
        "filename": filename,
        "tag": record["tag"],
        "prompt": record["prompt"],
        "correct": bool(record["correct"]),
        "reason": record["reason"],
        "metadata": record["metadata"] if isinstance(record["metadata"], str) else json.dumps(record["metadata"]),
        "details": record["details"] if isinstance(record["details"], str) else json.dumps(record["details"]),
    }


def write_results(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write official-format records as JSON lines, atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    tmp.replace(path)
    return path


def read_results(path: str | os.PathLike) -> list[dict]:
    """Read a results JSONL (ours or the official script's); `metadata` and `details` come back as dicts."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such results file")
    records = []
    for number, record in read_jsonl(path):
        missing = [key for key in ("tag", "prompt", "correct") if key not in record]
        if missing:
            raise UserError(f"{path}:{number}: a GenEval result needs {', '.join(missing)}")
        for key in ("metadata", "details"):
            if isinstance(record.get(key), str):
                try:
                    record[key] = json.loads(record[key])
                except json.JSONDecodeError as err:
                    raise UserError(f"{path}:{number}: field {key!r} is not valid JSON ({err.msg})") from None
        records.append(record)
    if not records:
        raise UserError(f"{path}: holds no results")
    return records
