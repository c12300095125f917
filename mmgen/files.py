"""File helpers. Atomic writes: a reader sees the old file/directory or the new one, never a half-written one.
Strict JSON Lines reading: a bad line is reported with its file and line number."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_directory(path: str | os.PathLike, replace_marker: str | None = None) -> Iterator[Path]:
    """Yield a staging directory next to `path`; on success it takes `path`'s place with a rename.

    An existing `path` is replaced only if it is empty or holds `replace_marker` (a file that proves it is a
    previous output of the same kind), so a typo'd output path never wipes an unrelated directory.
    """
    path = Path(path)
    check_replaceable(path, replace_marker)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The staging directory sits in the same parent so the final rename stays on one filesystem (atomic).
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        yield staging
        staging.chmod(0o755)  # mkdtemp makes it private (0700); outputs should be readable like any directory
        if path.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.retired-", dir=path.parent))
            path.rename(retired / path.name)
            staging.rename(path)
            shutil.rmtree(retired)
        else:
            staging.rename(path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_replaceable(path: str | os.PathLike, replace_marker: str | None = None) -> None:
    """Raise OutputExistsError unless `atomic_directory(path, replace_marker)` may take `path`'s place; callers
    check before long work so a taken output path costs nothing."""
    from mmgen.errors import OutputExistsError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"cannot write {path}: it exists and is not a directory")
    if replace_marker and path.is_dir() and any(path.iterdir()) and not (path / replace_marker).exists():
        raise OutputExistsError(f"refusing to overwrite {path}: it is a non-empty directory without {replace_marker} "
                                "(not an earlier output of this command)")


def write_json_atomic(path: str | os.PathLike, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """`(line number, value)` for every non-blank line; a line that is not JSON raises naming `path:line`."""
    from mmgen.errors import UserError

    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{number}: not valid JSON ({err.msg})") from None


def broken_safetensors(directory: str | os.PathLike) -> list[str]:
    """The `*.safetensors` files in `directory` whose header does not cover the file (cut short, not safetensors).

    Reads only each header, so checking a checkpoint before resuming from it costs milliseconds."""
    from safetensors import SafetensorError, safe_open

    broken = []
    for file in sorted(Path(directory).glob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except (SafetensorError, OSError) as error:
            broken.append(f"{file.name} ({error})")
    return broken


def set_aside_damaged(checkpoint: Path, broken: list[str]) -> Path:
    """Move a checkpoint with damaged weights out of the resume path to `<name>.damaged`, kept for inspection."""
    import logging

    target = checkpoint.with_name(checkpoint.name + ".damaged")
    shutil.rmtree(target, ignore_errors=True)
    checkpoint.rename(target)
    logging.getLogger(__name__).warning("checkpoint %s has damaged weights (%s): moved to %s; resuming from the one "
                                        "before it", checkpoint, "; ".join(broken), target)
    return target
