"""Tokenizer speed: bf16 autocast against fp32 on this machine, for training steps and encode+decode.

The demo tokenizer (recipes/tokenizer/shapes-vq.yaml) is benchmarked on shapes images; both precisions run in
the same process on the same batches, so the ratio column is the speed-up bf16 autocast buys here.
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import torch
from mmgen.data_engine.image_sources import ShapesImageSource
from rich.console import Console
from rich.table import Table

from mmgen.config import load_config
from mmgen.images import pil_to_tensor
from mmgen.tokenizers.losses import reconstruction_loss
from mmgen.tokenizers.vq_grid import GridTokenizer
from mmgen.train.tokenizer import TokenizerRecipe

RECIPE = "recipes/tokenizer/shapes-vq.yaml"


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (oneDNN picks kernels on first use)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def run(batch_size: int = 64, repeats: int = 5) -> dict:
    recipe = load_config(TokenizerRecipe, RECIPE)
    source = ShapesImageSource(num=batch_size, size=recipe.model.image_size, seed=0)
    pixels = pil_to_tensor([source.load(i) for i in range(batch_size)])
    torch.manual_seed(0)
    model = GridTokenizer(recipe.model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step(precision):
        def step():
            with _autocast(precision):
                reconstruction, aux, _ = model(pixels)
                loss = reconstruction_loss(reconstruction.float(), pixels, "l1+l2") + aux.float()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    def round_trip(precision):
        def step():
            with torch.no_grad(), _autocast(precision):
                model.decode(model.encode(pixels))
        return step

    figures = {}
    for task, make in (("train step", train_step), ("encode+decode", round_trip)):
        model.train(task == "train step")
        seconds = {p: _time(make(p), repeats) for p in ("fp32", "bf16")}
        figures[task] = {f"{p}_images_per_s": round(batch_size / s, 1) for p, s in seconds.items()}
        figures[task]["ratio"] = round(seconds["fp32"] / seconds["bf16"], 2)

    table = Table(title=f"tokenizer ({RECIPE}, batch {batch_size}, {torch.get_num_threads()} threads)")
    for column in ("task", "fp32 images/s (baseline)", "bf16 autocast images/s", "ratio bf16/fp32"):
        table.add_column(column, justify="right")
    for task, f in figures.items():
        table.add_row(task, str(f["fp32_images_per_s"]), str(f["bf16_images_per_s"]), f"{f['ratio']:.2f}x")
    Console().print(table)
    return figures
