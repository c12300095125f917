"""Pre-tokenized data sets on disk (what `mmgen data tokenize` writes): layout, loading, shard merging.

One run writes a `datasets` directory (save_to_disk) plus two files:

    <dir>/data-*.arrow, state.json, dataset_info.json   the rows: codes + texts + metadata, no pixels
    <dir>/tokenize_info.json                            task, visual tokenizer, row and skip counts, speed
    <dir>/skipped.jsonl                                 one line per skipped row: row, kind, reason, file

A sharded run (`--num-shards N`) writes shard `i` to `<dir>/shard-0000i-of-0000N/`, each in the layout above;
`load_tokenized(<dir>)` reads all shards as one data set and `merge_tokenized` writes them as one directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets, load_from_disk

from mmgen.errors import UserError
from mmgen.files import atomic_directory

from .validation import SKIP_KINDS

FORMAT_VERSION = 1
INFO_NAME = "tokenize_info.json"
SKIPPED_NAME = "skipped.jsonl"
CODE_COLUMNS: dict[str, tuple[str, ...]] = {
    "t2i": ("codes",),
    "edit": ("source_codes", "target_codes"),
    "understanding": ("codes",),
}
SHARD_PATTERN = re.compile(r"shard-(\d{5})-of-(\d{5})")
# Keys that must agree across the shards of one run: they are the same data set only if all of these match.
SHARD_IDENTITY = ("task", "source", "visual_tokenizer")


def shard_dir_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}"


@dataclass
class Tokenized:
    """A loaded tokenized data set and its `tokenize_info.json` (shards merged)."""

    dataset: Dataset
    info: dict[str, Any]
    path: Path

    @property
    def task(self) -> str:
        return self.info["task"]

    @property
    def visual_tokenizer(self) -> dict[str, Any]:
        return self.info["visual_tokenizer"]


def read_info(directory: Path) -> dict[str, Any]:
    file = directory / INFO_NAME
    try:
        info = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{file}: cannot read tokenize info ({err})") from None
    if info.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{file} has format_version {info.get('format_version')!r}; this mmgen reads "
                        f"{FORMAT_VERSION}: re-run `mmgen data tokenize`")
    return info


def shard_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and SHARD_PATTERN.fullmatch(p.name)) if path.is_dir() else []


def load_tokenized(path: str | os.PathLike) -> Tokenized:
    """A tokenized directory, or the parent of a sharded run's `shard-*-of-*` directories (all must be done)."""
    path = Path(path)
    if (path / INFO_NAME).is_file():
        return Tokenized(load_from_disk(str(path)), read_info(path), path)
    shards = shard_dirs(path)
    if not shards:
        raise UserError(f"{path} is not a tokenized data set (no {INFO_NAME} and no shard-*-of-* directories); "
                        "create it with `mmgen data tokenize`")
    counts = {int(SHARD_PATTERN.fullmatch(p.name).group(2)) for p in shards}
    if len(counts) != 1:
        raise UserError(f"{path} mixes shard directories of runs split {sorted(counts)} ways; keep one run's shards")
    count = counts.pop()
    done = {int(SHARD_PATTERN.fullmatch(p.name).group(1)): p for p in shards if (p / INFO_NAME).is_file()}
    missing = [index for index in range(count) if index not in done]
    if missing:
        raise UserError(f"{path}: shard(s) {', '.join(map(str, missing))} of {count} are not finished; run "
                        f"`mmgen data tokenize ... --num-shards {count} --shard-index I` for each")
    infos = [read_info(done[index]) for index in range(count)]
    for index, info in enumerate(infos[1:], start=1):
        different = [key for key in SHARD_IDENTITY if _identity(info, key) != _identity(infos[0], key)]
        if different:
            raise UserError(f"{done[index]} differs from {done[0]} in {', '.join(different)}: the shards belong "
                            "to different runs")
    dataset = concatenate_datasets([load_from_disk(str(done[index])) for index in range(count)])
    return Tokenized(dataset, merge_infos(infos), path)


def _identity(info: dict[str, Any], key: str) -> Any:
    value = info.get(key)
    if key == "visual_tokenizer" and isinstance(value, dict):
        return value.get("fingerprint")
    return value


def merge_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """One info for shards of one run: row, skip and image counts summed, speed over the summed time."""
    merged = {key: value for key, value in infos[0].items() if key not in ("shard", "rows", "skipped_by_kind")}
    merged["rows"] = {key: sum(info["rows"][key] for info in infos) for key in infos[0]["rows"]}
    merged["skipped_by_kind"] = {kind: sum(info["skipped_by_kind"].get(kind, 0) for info in infos)
                                 for kind in SKIP_KINDS}
    merged["images_encoded"] = sum(info["images_encoded"] for info in infos)
    merged["seconds"] = round(sum(info["seconds"] for info in infos), 3)
    merged["images_per_second"] = round(merged["images_encoded"] / merged["seconds"], 1) if merged["seconds"] else 0.0
    merged["cache_hit"] = all(info["cache_hit"] for info in infos)
    merged["shards"] = [info["shard"] for info in infos]
    return merged


def skipped_lines(path: str | os.PathLike) -> list[str]:
    """The lines of `skipped.jsonl` of a tokenized directory, or of all shards of a sharded run."""
    path = Path(path)
    directories = [path] if (path / INFO_NAME).is_file() else shard_dirs(path)
    lines: list[str] = []
    for directory in directories:
        file = directory / SKIPPED_NAME
        if file.is_file():
            lines += [line for line in file.read_text().splitlines() if line.strip()]
    return lines


def merge_tokenized(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the shards under `path` as one tokenized directory `out` (info and skip report included)."""
    tokenized = load_tokenized(path)
    out = Path(out)
    if out.resolve() == Path(path).resolve():
        raise UserError("--out must differ from the sharded directory: the shards are read while writing")
    with atomic_directory(out, replace_marker=INFO_NAME) as staging:
        tokenized.dataset.save_to_disk(str(staging), num_shards=1 if len(tokenized.dataset) == 0 else None)
        lines = skipped_lines(path)
        (staging / SKIPPED_NAME).write_text("".join(line + "\n" for line in lines))
        (staging / INFO_NAME).write_text(json.dumps(tokenized.info, indent=2) + "\n")
    return out


def empty_split_shards(splits: DatasetDict) -> dict[str, int]:
    """`save_to_disk` shard counts that keep empty splits loadable: `datasets` writes an empty split as zero shards,
    which `load_from_disk` then fails to read; one (empty) shard reads back fine."""
    return {name: 1 for name, split in splits.items() if len(split) == 0}


def tokenizer_fingerprint(path: str | os.PathLike) -> str:
    """A hash of a visual tokenizer's weights (tensor names, dtypes, shapes and values, in name order).

    It names the codes' meaning: two directories with equal fingerprints encode images identically, wherever they
    live (a unified checkpoint's `visual_tokenizer/` copy matches the directory it was made from).
    """
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    files = sorted(Path(path).glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in sorted(handle.keys()):
                tensor = handle.get_tensor(name).contiguous()
                digest.update(f"{name}:{tensor.dtype}:{list(tensor.shape)}\n".encode())
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16] if files else ""
