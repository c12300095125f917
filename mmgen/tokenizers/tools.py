"""Tokenizer operations behind the `mmgen tokenizer` verbs: evaluate, statistics, encode and decode files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from PIL import Image

from mmgen.data_engine.image_sources import ImageTensorDataset, open_image_source
from mmgen.errors import UserError
from mmgen.images import center_square, load_image, pil_to_tensor, tensor_to_pil

from .base import VisualTokenizer, load_visual_tokenizer

# Held-out procedural scenes: a seed no training recipe uses by default.
EVAL_SHAPES_SEED = 10_000


def open_tokenizer(path: str | os.PathLike) -> VisualTokenizer:
    """`load_visual_tokenizer` with its errors turned into one-line user errors."""
    try:
        return load_visual_tokenizer(path)
    except (FileNotFoundError, ValueError) as err:
        raise UserError(str(err)) from None


def eval_dataset(data: str, size: int, num: int) -> ImageTensorDataset:
    source = open_image_source(data, size=size, num=num, seed=EVAL_SHAPES_SEED)
    indices = list(range(min(num, len(source))))
    return ImageTensorDataset(source, size, indices)


def evaluate_on(tokenizer: VisualTokenizer, data: str, num: int = 500, detector: bool = True) -> dict:
    from mmgen.eval.detectors.shapes import ShapesDetector
    from mmgen.eval.tokenizer import evaluate_tokenizer

    dataset = eval_dataset(data, tokenizer.image_size, num)
    return evaluate_tokenizer(tokenizer, dataset, detector=ShapesDetector() if detector else None)


def reconstruction_grid(tokenizer: VisualTokenizer, data: str, num: int = 8) -> Image.Image:
    """The first `num` evaluation images (top row) above their reconstructions (bottom row)."""
    from mmgen.eval.tokenizer import encode_dataset
    from mmgen.images import make_grid

    dataset = eval_dataset(data, tokenizer.image_size, num)
    pixels, _, reconstructions = next(encode_dataset(tokenizer, dataset, batch_size=num, keep_reconstructions=True))
    originals = tensor_to_pil(pixels)
    return make_grid(originals + tensor_to_pil(reconstructions), columns=len(originals))


def statistics_on(tokenizer: VisualTokenizer, data: str, num: int = 2000) -> dict:
    from mmgen.eval.tokenizer import code_statistics, encode_dataset

    dataset = eval_dataset(data, tokenizer.image_size, num)
    codes = torch.cat([codes for _, codes, _ in encode_dataset(tokenizer, dataset)])
    return code_statistics(codes, tokenizer.codebook_size)


def encode_image(tokenizer_path: str, image_path: str) -> list[int]:
    tokenizer = open_tokenizer(tokenizer_path)
    image = center_square(load_image(image_path), tokenizer.image_size)
    return tokenizer.encode(pil_to_tensor([image]))[0].tolist()


def decode_codes(tokenizer_path: str, codes_path: str) -> Image.Image:
    tokenizer = open_tokenizer(tokenizer_path)
    try:
        data = json.loads(Path(codes_path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{codes_path}: cannot read codes JSON ({err})") from None
    codes = data["codes"] if isinstance(data, dict) and "codes" in data else data
    if not isinstance(codes, list) or not all(isinstance(c, int) for c in codes):
        raise UserError(f"{codes_path}: expected a JSON list of integer codes or {{\"codes\": [...]}}")
    try:
        pixels = tokenizer.decode(torch.tensor([codes]))
    except ValueError as err:
        raise UserError(f"{codes_path}: {err}") from None
    return tensor_to_pil(pixels)[0]
