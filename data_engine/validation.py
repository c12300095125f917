"""Row validation while reading: a row either yields clean inputs or a `RowSkip` that says what is wrong.

Real data sets hold missing files, corrupt or truncated images, 1x1 thumbnails, decompression bombs and empty
captions. None of them may stop a run over a million rows: each bad row is skipped, counted by kind and written to
the run's report with its source row index and file, so the user can fix or drop exactly those rows.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmgen.images import ImageError, center_square, load_image

# What went wrong, coarsely: the counts per kind are what a user scans first in tokenize_info.json.
MISSING_IMAGE = "missing_image"  # no image in the row, or the file does not exist
BAD_IMAGE = "bad_image"  # unreadable: corrupt, truncated, too small, too large
EMPTY_TEXT = "empty_text"  # empty or whitespace-only caption / instruction / answer
BAD_ROW = "bad_row"  # the row itself is malformed (bad JSON line, wrong number of images, no user turn)
OUTSIDE_FOLDER = "outside_folder"  # the row names a file outside the data's folder (../x.jpg, /etc/hostname)
SKIP_KINDS = (MISSING_IMAGE, BAD_IMAGE, EMPTY_TEXT, BAD_ROW, OUTSIDE_FOLDER)


class RowSkip(Exception):
    """Raised while reading one row: the row is skipped and reported, the run goes on."""

    def __init__(self, kind: str, reason: str, file: str | None = None):
        super().__init__(reason)
        self.kind, self.reason, self.file = kind, reason, file


@dataclass(frozen=True)
class SkippedRow:
    """One line of `skipped.jsonl`."""

    row: int  # 0-based index of the row in the source (before sharding): its `source_row`
    kind: str
    reason: str
    file: str | None = None
    line: int | None = None  # 1-based line of the captions file (JSONL, CSV) the row came from

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SkippedRow:
        return cls(**json.loads(text))


def require_text(value: Any, field: str) -> str:
    """The text stripped of surrounding whitespace; an empty, whitespace-only or missing text skips the row."""
    if value is None:
        raise RowSkip(EMPTY_TEXT, f"no {field}")
    if not isinstance(value, str):
        raise RowSkip(BAD_ROW, f"{field} is a {type(value).__name__}, not text")
    text = value.strip()
    if not text:
        raise RowSkip(EMPTY_TEXT, f"empty {field}")
    return text


def load_image_cell(value: Any, name: str, base_dir: Path | None = None, confine: bool = False) -> Image.Image:
    """An image cell as validated RGB: datasets' `{"bytes", "path"}` dict, a path, raw bytes or a PIL image.

    Relative paths are read relative to `base_dir` (the folder of the captions file or of the dataset); with
    `confine`, a path that leads outside it (`../x.jpg`, an absolute path, a symlink out) is skipped, never read. Odd
    modes (palette, alpha, 16-bit, CMYK) are converted by `load_image`; everything unreadable raises `RowSkip`.
    """
    if isinstance(value, dict):  # datasets.Image(decode=False): bytes win, the path is a fallback
        if value.get("bytes"):
            return _load(value["bytes"], name, file=value.get("path"))
        value = value.get("path")
    if value is None or (isinstance(value, (str, bytes)) and not value):
        raise RowSkip(MISSING_IMAGE, f"{name}: no image in the row")
    if isinstance(value, (bytes, Image.Image)):
        return _load(value, name, file=None)
    if not isinstance(value, (str, os.PathLike)):
        raise RowSkip(BAD_ROW, f"{name}: unsupported image cell of type {type(value).__name__}")
    path = Path(value)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if confine and base_dir is not None and not path.resolve().is_relative_to(base_dir.resolve()):
        raise RowSkip(OUTSIDE_FOLDER, f"{name}: {value} is outside {base_dir}; image paths in a data file stay "
                      "inside its folder (mmgen data tokenize --allow-outside-paths reads them anyway)",
                      file=str(value))
    if not path.is_file():
        raise RowSkip(MISSING_IMAGE, f"{path}: file not found", file=str(path))
    return _load(path, str(path), file=str(path))


def _load(value: bytes | Path | Image.Image, name: str, file: str | None) -> Image.Image:
    try:
        return load_image(value, name=name)
    except ImageError as err:
        raise RowSkip(BAD_IMAGE, str(err), file=file) from None


def image_to_array(image: Image.Image, size: int) -> np.ndarray:
    """Centre-cropped, resized uint8 array [size, size, 3]: what the visual tokenizer sees."""
    return np.asarray(center_square(image, size), dtype=np.uint8)
