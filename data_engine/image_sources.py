"""Image sources for stages that read pixels only (tokenizer training and evaluation).

A source is an indexable collection of images that may contain bad rows. `load(i)` returns an RGB image or
raises `ImageError` naming the row; `ImageTensorDataset` turns bad rows into skip records instead of crashes,
so a corrupt file in a million-row dataset is counted and reported, never fatal.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from mmgen.errors import UserError
from mmgen.images import ImageError, center_square, load_image

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


class ImageSource(Protocol):
    def __len__(self) -> int: ...

    def load(self, index: int) -> Image.Image: ...

    def describe(self, index: int) -> str: ...


class ShapesImageSource:
    """Procedural shapes-world scenes; row `i` is always the same scene for the same seed."""

    def __init__(self, num: int, size: int, seed: int = 0):
        self.num, self.size, self.seed = num, size, seed

    def __len__(self) -> int:
        return self.num

    def scene(self, index: int):
        from mmgen.data_engine.shapes.scenes import free_scene

        if not 0 <= index < self.num:
            raise IndexError(index)
        return free_scene(random.Random(f"shapes-images:{self.seed}:{index}"))

    def load(self, index: int) -> Image.Image:
        from mmgen.data_engine.shapes.world import render

        return render(self.scene(index), self.size)

    def describe(self, index: int) -> str:
        return f"shapes(seed={self.seed}) row {index}"


class FolderImageSource:
    """Every image file under a folder (recursively), in sorted order."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not self.files:
            raise UserError(f"{self.root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) found")

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> Image.Image:
        return load_image(self.files[index])

    def describe(self, index: int) -> str:
        return str(self.files[index])


class DatasetImageSource:
    """An image column of a Hugging Face `datasets` directory (save_to_disk) or parquet file(s).

    Images are read undecoded (bytes) so a corrupt row raises our `ImageError` naming the row, instead of
    failing inside `datasets`' decoder.
    """

    def __init__(self, path: str | os.PathLike, column: str = "image"):
        import datasets

        self.path = str(path)
        dataset = open_dataset(self.path)
        if column not in dataset.column_names:
            raise UserError(f"{self.path}: no column '{column}' (columns: {', '.join(dataset.column_names)})")
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.column = dataset, column

    def __len__(self) -> int:
        return len(self.dataset)

    def load(self, index: int) -> Image.Image:
        value = self.dataset[index][self.column]
        name = self.describe(index)
        if isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes"):
                return load_image(value["bytes"], name=name)
            if value.get("path"):
                return load_image(value["path"], name=name)
            raise ImageError(f"{name}: empty image cell")
        if isinstance(value, (str, bytes, Image.Image)):
            return load_image(value, name=name)
        raise ImageError(f"{name}: unsupported image cell of type {type(value).__name__}")

    def describe(self, index: int) -> str:
        return f"{self.path} row {index}"


def open_dataset(path: str):
    """A `datasets` directory (save_to_disk; a DatasetDict gives its train split) or parquet file(s) as a Dataset."""
    import datasets

    target = Path(path)
    if target.is_file() and target.suffix == ".parquet":
        return datasets.load_dataset("parquet", data_files=str(target), split="train")
    if is_saved_dataset(target):
        loaded = datasets.load_from_disk(str(target))
        if isinstance(loaded, datasets.DatasetDict):
            return loaded["train"] if "train" in loaded else next(iter(loaded.values()))
        return loaded
    if target.is_dir() and any(target.glob("*.parquet")):
        return datasets.load_dataset("parquet", data_files=str(target / "*.parquet"), split="train")
    raise UserError(f"{path}: not a datasets directory (save_to_disk) or parquet file")


def is_saved_dataset(path: Path) -> bool:
    """A `save_to_disk` directory: a Dataset has state.json, a DatasetDict has dataset_dict.json."""
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def open_image_source(spec: str, *, size: int, num: int = 0, seed: int = 0, column: str = "image") -> ImageSource:
    """`"shapes"` (procedural), an image folder, a `datasets` directory or a parquet file."""
    if spec == "shapes":
        if num <= 0:
            raise UserError("the shapes source needs a positive number of images")
        return ShapesImageSource(num=num, size=size, seed=seed)
    path = Path(spec)
    if not path.exists():
        raise UserError(f"image source not found: {spec} (give 'shapes', an image folder, or a dataset path)")
    if path.is_dir() and not is_saved_dataset(path) and not any(path.glob("*.parquet")):
        return FolderImageSource(path)
    return DatasetImageSource(path, column=column)


@dataclass(frozen=True)
class SkippedImage:
    name: str
    reason: str


class ImageTensorDataset(torch.utils.data.Dataset):
    """uint8 tensors [3, size, size] from a source; a bad row yields a `SkippedImage` instead of a crash."""

    def __init__(self, source: ImageSource, size: int, indices: list[int] | None = None):
        self.source, self.size = source, size
        self.indices = list(range(len(source))) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> torch.Tensor | SkippedImage:
        index = self.indices[position]
        try:
            image = center_square(self.source.load(index), self.size)
        except ImageError as err:
            return SkippedImage(self.source.describe(index), str(err))
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def collate_images(items: list) -> tuple[torch.Tensor, list[SkippedImage]]:
    """Stack the good images, hand back the skipped ones for counting."""
    good = [item for item in items if isinstance(item, torch.Tensor)]
    skipped = [item for item in items if isinstance(item, SkippedImage)]
    batch = torch.stack(good) if good else torch.empty(0, 3, 0, 0, dtype=torch.uint8)
    return batch, skipped


def to_pixels(batch: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1], the tokenizers' input range."""
    return batch.float().div(127.5).sub(1.0)
