"""The report's figures: training curves and image grids as PNG files (matplotlib, headless)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: the demo runs on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402


@dataclass(frozen=True)
class Curve:
    label: str
    steps: Sequence[float]
    values: Sequence[float]
    marker: str | None = None  # sparse series (eval loss, benchmark passes) read better with markers


def plot_curves(path: Path, curves: Sequence[Curve], title: str, ylabel: str, log_y: bool = False) -> Path | None:
    """One line plot of `curves` against training step; None (no file) when no curve has a point."""
    curves = [curve for curve in curves if len(curve.steps) > 0]
    if not curves:
        return None
    figure, axes = plt.subplots(figsize=(6, 3.4), dpi=100)
    for curve in curves:
        axes.plot(curve.steps, curve.values, label=curve.label, marker=curve.marker, linewidth=1.5)
    axes.set(title=title, xlabel="step", ylabel=ylabel)
    if log_y:
        axes.set_yscale("log")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_task_scores(path: Path, before: dict[str, float], after: dict[str, float], labels: tuple[str, str]) -> Path:
    """Grouped bars: the benchmark's score per task before and after."""
    tasks = list(before)
    figure, axes = plt.subplots(figsize=(7, 3.4), dpi=100)
    width = 0.38
    for offset, (scores, label) in enumerate(((before, labels[0]), (after, labels[1]))):
        positions = [i + (offset - 0.5) * width for i in range(len(tasks))]
        bars = axes.bar(positions, [scores.get(task, 0.0) for task in tasks], width, label=label)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
    axes.set_xticks(range(len(tasks)), [task.replace("_", " ") for task in tasks], fontsize=8)
    axes.set(ylim=(0, 1.08), ylabel="score", title="Shapes benchmark per task")
    axes.legend()
    figure.tight_layout()
    return _save(figure, path)


def image_table(path: Path, columns: Sequence[tuple[str, Sequence[Image.Image]]], row_titles: Sequence[str],
                marks: Sequence[Sequence[bool | None]] | None = None, title: str | None = None) -> Path:
    """A table of images: one column per `(caption, images)` entry, one image per row title in it. `marks[c][r]`
    puts a green check (True) or a red cross (False) under an image."""
    figure, grid = plt.subplots(len(row_titles), len(columns), squeeze=False, dpi=100,
                                figsize=(1.35 * len(columns), 1.55 * len(row_titles) + 0.6))
    for c, (caption, images) in enumerate(columns):
        for r, row_title in enumerate(row_titles):
            axes = grid[r][c]
            axes.imshow(images[r], interpolation="nearest")
            axes.set_xticks([])
            axes.set_yticks([])
            if r == 0:
                axes.set_title(textwrap.fill(caption, 16), fontsize=7)
            if c == 0:
                axes.set_ylabel(row_title, fontsize=9)
            mark = marks[c][r] if marks is not None else None
            if mark is not None:
                axes.set_xlabel("\u2713" if mark else "\u2717", color="green" if mark else "red", fontsize=10)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """Nearest-neighbour enlargement: 64-pixel samples stay crisp in a browser."""
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
