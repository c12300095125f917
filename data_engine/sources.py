"""Sources for pre-tokenization: local data sets read as rows of one task, never downloaded.

A source is a `datasets.Dataset` holding one row per source row (images undecoded) plus a `RowReader` (see
`readers`) that turns a row into the task's normalized fields, or raises `RowSkip`. Kinds (`open_source`):
  - a captions table: a .jsonl / .json (a list of objects) / .csv file, or an image folder holding
    `captions.jsonl`, `captions.csv`, `metadata.jsonl` or `metadata.csv`; image paths are relative to the table;
  - a Hugging Face `datasets` directory (save_to_disk) or parquet file(s);
  - `shapes`: the procedural shapes world, rendered in-process (`num` rows from `seed`).
Each source has a fingerprint that changes whenever its rows would encode differently: the cache key of
pre-tokenization.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value
from datasets import Image as ImageFeature

from mmgen.errors import UserError

from .image_sources import is_saved_dataset, open_dataset
from .readers import (
    TABLE_ERROR_KEY,
    TABLE_LINE_KEY,
    TABLE_ROW_COLUMN,
    TASKS,
    RawRow,
    RowReader,
    TableRowReader,
    resolve_reader,
)
from .validation import RowSkip

TABLE_SUFFIXES = (".jsonl", ".json", ".csv")
CAPTION_TABLE_NAMES = ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv")
SHAPES = "shapes"
# The shapes world renders 32-256 px; smaller tokenizers get a 32 px render resized down like any image.
SHAPES_MIN_SIZE, SHAPES_MAX_SIZE = 32, 256


@dataclass
class Source:
    """Rows of one task from one place; `fingerprint` changes whenever the rows would encode differently."""

    dataset: Dataset
    reader: RowReader
    kind: str  # "table", "datasets" or "shapes"
    location: str
    fingerprint: str
    base_dir: Path | None = None  # relative image paths are read from here
    confine: bool = True  # image paths that lead outside base_dir are skipped (the user may opt out)

    @property
    def task(self) -> str:
        return self.reader.task

    def output_drop_columns(self) -> list[str]:
        """Source columns left out of the tokenized output: what the reader consumed, and every image column."""
        images = [name for name, feature in self.dataset.features.items() if _holds_image(feature)]
        return list(dict.fromkeys([*self.reader.columns, *images]))

    def iter_rows(self) -> Iterator[tuple[int, RawRow | RowSkip]]:
        """Every row as `(index, RawRow)` or `(index, RowSkip)`, images still unloaded."""
        for index, row in enumerate(self.dataset.select_columns(list(self.reader.columns))):
            try:
                yield index, self.reader.read(row)
            except RowSkip as skip:
                yield index, skip


def open_source(spec: str, task: str, *, num: int | None = None, seed: int = 0, image_size: int = 64,
                columns: Mapping[str, str] | None = None, allow_outside_paths: bool = False) -> Source:
    """`shapes`, a captions table (file, or an image folder holding one), a datasets directory or parquet file(s).

    Image paths the rows name must stay inside the source's folder unless `allow_outside_paths`."""
    source = _open_source(spec, task, num, seed, image_size, columns)
    if allow_outside_paths:
        source = dataclasses.replace(source, confine=False, fingerprint=stable_hash(source.fingerprint, "outside"))
    return source


def _open_source(spec: str, task: str, num: int | None, seed: int, image_size: int,
                 columns: Mapping[str, str] | None) -> Source:
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if spec == SHAPES:
        return open_shapes_source(task, num, seed, image_size)
    if num is not None:
        raise UserError("--num is for the shapes source only; other sources are read in full (use sharding to split)")
    path = Path(spec)
    if not path.exists():
        raise UserError(f"data source not found: {spec} (give 'shapes', a captions table, an image folder with "
                        f"{' / '.join(CAPTION_TABLE_NAMES)}, a datasets directory or parquet file)")
    if path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        return open_table_source(path, task, columns)
    if path.suffix == ".parquet" or is_saved_dataset(path) or (path.is_dir() and any(path.glob("*.parquet"))):
        return open_datasets_source(path, task, columns)
    if path.is_dir():
        table = next((path / name for name in CAPTION_TABLE_NAMES if (path / name).is_file()), None)
        if table is not None:
            return open_table_source(table, task, columns)
        raise UserError(f"{path}: an image folder needs a captions table ({', '.join(CAPTION_TABLE_NAMES)}) with "
                        "one row per image (columns file or image, and caption)")
    raise UserError(f"{path}: not a captions table (.jsonl, .json, .csv), datasets directory or parquet file")


# ---- captions tables ---------------------------------------------------------------------------------------------


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (a list of objects) or .csv file, each with its 1-based line number (JSONL, CSV).

    A UTF-8 byte-order mark (Excel's "CSV UTF-8", Notepad) is dropped. A malformed JSONL line, or a JSONL / CSV
    line that is not UTF-8, becomes an error row: that row is skipped and reported, the others are read.
    """
    suffix = path.suffix.lower()
    try:
        # surrogateescape keeps undecodable bytes as markers, so one Latin-1 byte costs its line, not the table.
        text = path.read_bytes().decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    except OSError as err:
        raise UserError(f"{path}: cannot read the table ({err})") from None
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".json":
        if _undecodable(text):
            raise UserError(f"{path}: not UTF-8 text ({_undecodable(text)}); save it as UTF-8")
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err}); a .json table is one list of objects") from None
        if not isinstance(rows, list):
            raise UserError(f"{path}: a .json table must be a list of objects, got a {type(rows).__name__}")
        return [row if isinstance(row, dict) else _error_row(f"{path.name} item {i + 1} of the list: not an object")
                for i, row in enumerate(rows)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if _undecodable(line):
            rows.append(_error_row(f"{path.name} line {number}: not UTF-8 text ({_undecodable(line)}); save the "
                                   "file as UTF-8", number))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append(_error_row(f"{path.name} line {number}: invalid JSON ({err.msg})", number))
            continue
        rows.append({**row, TABLE_LINE_KEY: number} if isinstance(row, dict)
                    else _error_row(f"{path.name} line {number}: not a JSON object", number))
    return rows


def _read_csv(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if reader.fieldnames and any(_undecodable(name) for name in reader.fieldnames if name):
            raise UserError(f"{path}: the header line is not UTF-8 text; save the file as UTF-8")
        start = 2  # line 1 is the header
        for row in reader:
            cells = " ".join(str(value) for value in row.values())
            if _undecodable(cells):
                rows.append(_error_row(f"{path.name} line {start}: not UTF-8 text ({_undecodable(cells)}); save "
                                       "the file as UTF-8", start))
            else:
                rows.append({**row, TABLE_LINE_KEY: start})
            start = reader.line_num + 1  # a quoted cell may span lines
    except csv.Error as err:
        raise UserError(f"{path}: not a valid CSV file near line {reader.line_num} ({err})") from None
    return rows


def _undecodable(text: str) -> str:
    """'' for clean text, else where the first byte that is not UTF-8 sits (as decoded with surrogateescape)."""
    for column, char in enumerate(text, start=1):
        if "\udc80" <= char <= "\udcff":
            return f"byte 0x{ord(char) - 0xDC00:02X} at column {column}"
    return ""


def _error_row(message: str, line: int | None = None) -> dict[str, Any]:
    return {TABLE_ERROR_KEY: message, **({TABLE_LINE_KEY: line} if line is not None else {})}


def open_table_source(path: Path, task: str, columns: Mapping[str, str] | None = None) -> Source:
    rows = read_table(path)
    if not rows:
        raise UserError(f"{path}: the table has no rows")
    # A CSV line with surplus fields files them under the key None: not a column name.
    keys = list(dict.fromkeys(key for row in rows for key in row
                              if isinstance(key, str) and key not in (TABLE_ERROR_KEY, TABLE_LINE_KEY)))
    reader = TableRowReader(resolve_reader(task, keys, columns, str(path)))
    dataset = Dataset.from_dict({TABLE_ROW_COLUMN: [json.dumps(row) for row in rows]},
                                features=Features({TABLE_ROW_COLUMN: Value("string")}))
    base_dir = path.parent.resolve()
    fingerprint = stable_hash("table", task, repr(reader), path.read_bytes(), _files_signature(rows, reader, base_dir))
    return Source(dataset, reader, "table", str(path.resolve()), fingerprint, base_dir)


def _files_signature(rows: list[dict], reader: TableRowReader, base_dir: Path) -> str:
    """Size and modification time of every image a table names: editing an image file invalidates the cache."""
    digest = hashlib.sha256()
    for row in rows:
        for cell in reader.inner.image_cells(row) if TABLE_ERROR_KEY not in row else []:
            if isinstance(cell, str) and cell:
                file = Path(cell) if Path(cell).is_absolute() else base_dir / cell
                stat = file.stat() if file.is_file() else None
                signature = f"{stat.st_size}:{stat.st_mtime_ns}" if stat else "missing"
                digest.update(f"{file}:{signature}\n".encode())
    return digest.hexdigest()


# ---- datasets directories and parquet ------------------------------------------------------------------------


def open_datasets_source(path: Path, task: str, columns: Mapping[str, str] | None = None) -> Source:
    dataset = _undecoded(open_dataset(str(path)))
    reader = resolve_reader(task, dataset.column_names, columns, str(path))
    base_dir = (path if path.is_dir() else path.parent).resolve()
    fingerprint = stable_hash("datasets", task, repr(reader), str(path.resolve()), dataset._fingerprint)
    return Source(dataset, reader, "datasets", str(path.resolve()), fingerprint, base_dir)


def _undecoded(dataset: Dataset) -> Dataset:
    """Image columns read as bytes/paths: decoding is ours, so a corrupt image is a counted skip, not a crash."""
    for name, feature in dataset.features.items():
        if _holds_image(feature):
            dataset = dataset.cast_column(name, _without_decoding(feature))
    return dataset


def _holds_image(feature: Any) -> bool:
    if isinstance(feature, ImageFeature):
        return True
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return _holds_image(inner)
    if isinstance(feature, dict):
        return any(_holds_image(value) for value in feature.values())
    return False


def _without_decoding(feature: Any) -> Any:
    if isinstance(feature, ImageFeature):
        return ImageFeature(decode=False)
    if getattr(feature, "feature", None) is not None:  # List / LargeList / Sequence of images
        return dataclasses.replace(feature, feature=_without_decoding(feature.feature))
    if isinstance(feature, dict):
        return {key: _without_decoding(value) for key, value in feature.items()}
    return feature


# ---- the shapes world --------------------------------------------------------------------------------------------


def open_shapes_source(task: str, num: int | None, seed: int, image_size: int) -> Source:
    """`num` procedural rows for `task`: t2i pairs, edit triplets, or questions with exact answers."""
    from mmgen import __version__

    from .shapes.dataset import build_shapes_dataset
    from .shapes.questions import build_shapes_vqa_dataset

    if num is None or num < 1:
        raise UserError("the shapes source needs --num (a positive number of rows)")
    size = min(max(image_size, SHAPES_MIN_SIZE), SHAPES_MAX_SIZE)
    if task == "understanding":
        dataset = build_shapes_vqa_dataset(num, size, seed)
    else:
        dataset = build_shapes_dataset(num, size, seed, edits=task == "edit")
    dataset = _undecoded(dataset)
    reader = resolve_reader(task, dataset.column_names, None, SHAPES)
    # Rendering is a pure function of these (and of the code version), so the cache key needs no pixels.
    fingerprint = stable_hash("shapes", task, num, seed, size, __version__)
    return Source(dataset, reader, "shapes", f"shapes(num={num}, seed={seed}, size={size})", fingerprint)


def stable_hash(*parts: Any) -> str:
    """A short hex digest of `parts` (bytes as they are, anything else by its repr): a cache key."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part if isinstance(part, bytes) else repr(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]
