"""Pre-tokenization (`mmgen data tokenize`): encode every image of a source to visual codes once.

Training then reads codes and text only, never pixels. The encoding is one `datasets.map(batched=True)` over the
source's rows; its output is cached under a key made of the source's and the visual tokenizer's fingerprints and
the shard's row range, so running the same command again loads the cached codes and encodes nothing. Bad rows do
not stop the run: each becomes a skip record (see `validation`), counted in `tokenize_info.json` and listed in
`skipped.jsonl`.

Sharding splits the rows into `num_shards` contiguous ranges; shard `i` writes `<out>/shard-0000i-of-0000N/`, so
processes or nodes sharing a file system split the work with no coordination (`tokenized.load_tokenized` reads
the finished shards as one data set, `tokenized.merge_tokenized` writes them as one directory).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset, Features, List, Value

from mmgen.errors import UserError
from mmgen.files import atomic_directory
from mmgen.tokenizers import VisualTokenizer

from .readers import IMAGE_FIELDS, TEXT_FIELDS
from .sources import Source, open_source, stable_hash
from .tokenized import CODE_COLUMNS, FORMAT_VERSION, INFO_NAME, SKIPPED_NAME, shard_dir_name, tokenizer_fingerprint
from .validation import SKIP_KINDS, RowSkip, SkippedRow, image_to_array, load_image_cell

DEFAULT_BATCH_SIZE = 64
SOURCE_ROW_COLUMN = "source_row"  # the row's index in the source: ties every code back to its image
SKIP_COLUMN = "skip"  # a SkippedRow as JSON, "" for a good row; only in the cached map output


def code_columns(task: str) -> dict[str, str]:
    """Image field -> the column holding its codes."""
    return dict(zip(IMAGE_FIELDS[task], CODE_COLUMNS[task], strict=True))


@dataclass
class TokenizeResult:
    path: Path  # the written directory (a shard's own directory in a sharded run)
    info: dict[str, Any]


def shard_bounds(num_rows: int, num_shards: int, index: int) -> tuple[int, int]:
    """Rows `[start, end)` of shard `index`: contiguous, sizes differ by at most one, all shards cover all rows."""
    base, extra = divmod(num_rows, num_shards)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


class RowEncoder:
    """The batched map function: read and validate each row, then encode all good images of the batch at once.

    Picklable for `num_proc > 1`: a worker loads its own copy of the visual tokenizer on first use.
    """

    def __init__(self, source: Source, tokenizer_dir: str, image_size: int, row_offset: int, device: str,
                 threads: int | None = None, tokenizer: VisualTokenizer | None = None):
        self.reader, self.base_dir, self.task = source.reader, source.base_dir, source.task
        self.confine = source.confine
        self.tokenizer_dir, self.image_size, self.row_offset = tokenizer_dir, image_size, row_offset
        self.device, self.threads = device, threads
        self._tokenizer, self._ready = tokenizer, False
        self.codes = code_columns(self.task)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None, "_ready": False}  # workers load their own: no pickled weights

    def tokenizer(self) -> VisualTokenizer:
        if not self._ready:
            if self.threads:
                # Before any torch op: a forked worker that runs OpenMP code with more than one thread waits forever
                # on the parent's thread pool, which the fork did not copy (libgomp is not fork-safe).
                torch.set_num_threads(self.threads)
            if self._tokenizer is None:
                from mmgen.tokenizers import load_visual_tokenizer

                self._tokenizer = load_visual_tokenizer(self.tokenizer_dir)
            # channels_last: the layout the CPU convolution kernels prefer (faster in our runs, same codes).
            self._tokenizer.to(self.device, memory_format=torch.channels_last).eval()
            self._ready = True
        return self._tokenizer

    def output_columns(self) -> list[str]:
        return [SOURCE_ROW_COLUMN, *TEXT_FIELDS[self.task], *self.codes.values(), *self.reader.extra_columns,
                SKIP_COLUMN]

    def __call__(self, *arguments: Any) -> dict[str, list]:
        *columns, indices = arguments
        out: dict[str, list] = {name: [] for name in self.output_columns()}
        pixels: list[np.ndarray] = []
        slots: list[tuple[int, str]] = []  # (position in the batch, code column) of each entry of `pixels`
        for position, values in enumerate(zip(*columns, strict=True)):
            source_row = self.row_offset + indices[position]
            row = dict(zip(self.reader.columns, values, strict=True))
            try:
                raw = self.reader.read(row)
                arrays = {self.codes[name]: image_to_array(load_image_cell(cell, f"row {source_row} {name}",
                                                                           self.base_dir, self.confine),
                                                           self.image_size)
                          for name, cell in raw.images.items()}
            except RowSkip as skip:
                self._append(out, source_row, {}, {}, SkippedRow(source_row, skip.kind, skip.reason, skip.file,
                                                                 self.reader.line_of(row)))
                continue
            for column, array in arrays.items():
                pixels.append(array)
                slots.append((position, column))
            self._append(out, source_row, raw.texts, raw.extras, None)
        if pixels:
            for (position, column), codes in zip(slots, self._encode(pixels), strict=True):
                out[column][position] = codes
        return out

    def _append(self, out: dict[str, list], source_row: int, texts: dict[str, str], extras: dict[str, str],
                skipped: SkippedRow | None) -> None:
        out[SOURCE_ROW_COLUMN].append(source_row)
        for name in TEXT_FIELDS[self.task]:
            out[name].append(texts.get(name, ""))
        for column in self.codes.values():
            out[column].append([])
        for name in self.reader.extra_columns:
            out[name].append(extras.get(name, ""))
        out[SKIP_COLUMN].append(skipped.to_json() if skipped else "")

    def _encode(self, arrays: list[np.ndarray]) -> list[list[int]]:
        tokenizer = self.tokenizer()
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        batch = batch.to(self.device).contiguous(memory_format=torch.channels_last)
        return tokenizer.encode(batch).cpu().tolist()


def output_features(source: Source, drop: Sequence[str]) -> Features:
    """The map output's schema: the source's other columns pass through, then row index, texts, codes, skip."""
    kept = {name: feature for name, feature in source.dataset.features.items() if name not in drop}
    new = {SOURCE_ROW_COLUMN: Value("int64")}
    new |= {name: Value("string") for name in TEXT_FIELDS[source.task]}
    new |= {column: List(Value("int32")) for column in CODE_COLUMNS[source.task]}
    new |= {name: Value("string") for name in source.reader.extra_columns}
    new[SKIP_COLUMN] = Value("string")
    return Features({**{k: v for k, v in kept.items() if k not in new}, **new})


def default_cache_dir() -> Path:
    """Next to `datasets`' own caches (HF_DATASETS_CACHE), so its usual clean-up habits apply."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE) / "mmgen_tokenize"


def _cache_files(cache_file: Path, num_proc: int | None) -> list[Path]:
    """The files `datasets.map` writes for `cache_file`: one, or one per worker with its rank suffix."""
    if not num_proc or num_proc <= 1:
        return [cache_file]
    return [cache_file.with_name(f"{cache_file.stem}_{rank:05d}_of_{num_proc:05d}{cache_file.suffix}")
            for rank in range(num_proc)]


def tokenize_source(source: Source, tokenizer_dir: str | os.PathLike, out: str | os.PathLike, *,
                    batch_size: int = DEFAULT_BATCH_SIZE, num_shards: int = 1, shard_index: int = 0,
                    num_proc: int | None = None, threads: int | None = None,
                    cache_dir: str | os.PathLike | None = None, device: str = "auto",
                    visual_tokenizer: VisualTokenizer | None = None) -> TokenizeResult:
    """Encode the images of `source` (or of its shard `shard_index` of `num_shards`) and write the result.

    `num_proc` worker processes (forked by `datasets`) encode in parallel with one torch thread each; without
    workers, `threads` sets torch's thread count in this process (default: left as it is).
    """
    from mmgen.runtime import pick_device
    from mmgen.tokenizers.tools import open_tokenizer

    _check_settings(batch_size, num_shards, shard_index, num_proc, threads)
    torch_device = pick_device(device)
    if torch_device.type == "cuda" and num_proc and num_proc > 1:
        raise UserError("--num-proc > 1 is for CPU encoding; on GPUs run one process per GPU with --num-shards")
    tokenizer = visual_tokenizer or open_tokenizer(tokenizer_dir)
    tokenizer_info = _tokenizer_info(tokenizer, Path(tokenizer_dir))
    start, end = shard_bounds(len(source.dataset), num_shards, shard_index)
    rows = source.dataset.select(range(start, end)) if num_shards > 1 else source.dataset
    if num_proc and num_proc > 1:
        num_proc = max(1, min(num_proc, len(rows)))  # what datasets would do; the cache file names depend on it
    key = _cache_key(source, tokenizer_info, start, end)
    cache_file = Path(cache_dir or default_cache_dir()) / f"encode-{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_hit = all(file.is_file() for file in _cache_files(cache_file, num_proc))
    workers = num_proc and num_proc > 1
    if workers and threads not in (None, 1):
        raise UserError("--threads is for single-process encoding: each --num-proc worker uses one thread "
                        "(OpenMP is not fork-safe)")
    threads = 1 if workers else threads or torch.get_num_threads()
    encoder = RowEncoder(source, str(tokenizer_dir), tokenizer.image_size, start, str(torch_device), threads,
                         None if workers else tokenizer)
    drop = source.output_drop_columns()
    started = time.perf_counter()
    encoded = rows.map(encoder, batched=True, batch_size=batch_size, with_indices=True,
                       input_columns=list(source.reader.columns), remove_columns=drop,
                       features=output_features(source, drop), num_proc=num_proc, cache_file_name=str(cache_file),
                       new_fingerprint=key, load_from_cache_file=True, desc=f"encoding {source.task} images")
    seconds = time.perf_counter() - started
    kept, skipped = _split_skipped(encoded)
    images = 0 if cache_hit else len(kept) * len(IMAGE_FIELDS[source.task])
    info = {
        "format_version": FORMAT_VERSION,
        "task": source.task,
        "columns": kept.column_names,
        "source": {"kind": source.kind, "location": source.location, "fingerprint": source.fingerprint,
                   "rows": len(source.dataset)},
        "visual_tokenizer": tokenizer_info,
        "shard": {"index": shard_index, "count": num_shards, "start": start, "end": end},
        "rows": {"read": end - start, "written": len(kept), "skipped": len(skipped)},
        "skipped_by_kind": {kind: sum(s.kind == kind for s in skipped) for kind in SKIP_KINDS},
        "images_encoded": images,
        "seconds": round(seconds, 3),
        "images_per_second": round(images / seconds, 1) if images and seconds > 0 else 0.0,
        "cache_hit": cache_hit,
        "batch_size": batch_size,
        "num_proc": num_proc or 1,
        "threads": threads,
        "device": str(torch_device),
    }
    target = Path(out) / shard_dir_name(shard_index, num_shards) if num_shards > 1 else Path(out)
    _write(target, kept, skipped, info)
    return TokenizeResult(target, info)


def tokenize(data: str, tokenizer: str | os.PathLike, out: str | os.PathLike, *, task: str = "t2i",
             num: int | None = None, seed: int = 0, columns: dict[str, str] | None = None,
             allow_outside_paths: bool = False, **settings: Any) -> TokenizeResult:
    """Open the source `data` for `task` (see `sources.open_source`) and tokenize it (see `tokenize_source`).

    `tokenizer` is a visual tokenizer directory, or a unified checkpoint (its `visual_tokenizer/` is used).
    """
    from mmgen.tokenizers.tools import open_tokenizer

    tokenizer = visual_tokenizer_dir(tokenizer)
    visual_tokenizer = open_tokenizer(tokenizer)
    source = open_source(data, task, num=num, seed=seed, image_size=visual_tokenizer.image_size, columns=columns,
                         allow_outside_paths=allow_outside_paths)
    return tokenize_source(source, tokenizer, out, visual_tokenizer=visual_tokenizer, **settings)


def visual_tokenizer_dir(path: str | os.PathLike) -> Path:
    """`path`, or the visual tokenizer inside it when `path` is a unified checkpoint (it has mmgen.json)."""
    path = Path(path)
    if (path / "mmgen.json").is_file():
        from mmgen.checkpoint import read_meta

        return path / read_meta(path)["visual_tokenizer"]
    return path


def _check_settings(batch_size: int, num_shards: int, shard_index: int, num_proc: int | None,
                    threads: int | None) -> None:
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if num_shards < 1:
        raise UserError(f"--num-shards must be at least 1, got {num_shards}")
    if not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index must be in [0, {num_shards - 1}] for {num_shards} shard(s), got {shard_index}")
    if num_proc is not None and num_proc < 1:
        raise UserError(f"--num-proc must be at least 1, got {num_proc}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")


def _tokenizer_info(tokenizer: VisualTokenizer, path: Path) -> dict[str, Any]:
    return {
        "path": str(path.resolve()),
        "type": tokenizer.tokenizer_type,
        "codebook_size": tokenizer.codebook_size,
        "num_tokens": tokenizer.num_tokens,
        "grid_shape": list(tokenizer.grid_shape),
        "image_size": tokenizer.image_size,
        "fingerprint": tokenizer_fingerprint(path),
    }


def _cache_key(source: Source, tokenizer_info: dict[str, Any], start: int, end: int) -> str:
    """Changes with the rows (source fingerprint, shard range) or the codes' meaning (tokenizer weights, size)."""
    return stable_hash(FORMAT_VERSION, source.fingerprint, source.confine, tokenizer_info["fingerprint"],
                       tokenizer_info["image_size"], start, end)


def _split_skipped(encoded: Dataset) -> tuple[Dataset, list[SkippedRow]]:
    skips = encoded[SKIP_COLUMN]
    skipped = [SkippedRow.from_json(text) for text in skips if text]
    if skipped:
        encoded = encoded.select([index for index, text in enumerate(skips) if not text])
    return encoded.remove_columns(SKIP_COLUMN), skipped


def _write(target: Path, kept: Dataset, skipped: list[SkippedRow], info: dict[str, Any]) -> None:
    try:
        with atomic_directory(target, replace_marker=INFO_NAME) as staging:
            kept.save_to_disk(str(staging), num_shards=1 if len(kept) == 0 else None)  # see empty_split_shards
            (staging / SKIPPED_NAME).write_text("".join(row.to_json() + "\n" for row in skipped))
            (staging / INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
    except FileExistsError as err:
        raise UserError(f"{err}; pick another --out") from None


def summary_line(info: dict[str, Any]) -> str:
    """One line for the terminal: rows written and skipped (by kind), and the encoding speed."""
    rows = info["rows"]
    kinds = ", ".join(f"{kind} {count}" for kind, count in info["skipped_by_kind"].items() if count)
    skipped = f"{rows['skipped']} skipped ({kinds})" if rows["skipped"] else "0 skipped"
    if info["cache_hit"]:
        speed = "codes reused from the cache, nothing encoded"
    else:
        speed = (f"{info['images_encoded']} images in {info['seconds']:.1f}s = {info['images_per_second']:.1f} "
                 f"images/s (batch {info['batch_size']}, {info['num_proc']} proc x {info['threads']} threads, "
                 f"{info['device']})")
    return f"{rows['written']} of {rows['read']} rows written, {skipped}; {speed}"
