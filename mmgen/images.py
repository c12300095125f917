"""Image IO: robust loading of user images, tensor conversion and grids.

User data is messy: truncated PNGs, palette or 16-bit files, alpha channels, 1x1 thumbnails and
decompression bombs all show up in real datasets. `load_image` turns every readable image into RGB and
rejects the rest with an `ImageError` that names the file, so a data pipeline can skip and count it.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mmgen.errors import UserError

MIN_SIDE = 8
MAX_PIXELS = 64_000_000  # larger images are rejected before decoding (a 64 MP photo is ~200 MB as RGB)

# Transparent pixels are composited onto this colour: mid grey is neutral for tokenizers trained on shapes.
ALPHA_BACKGROUND = (128, 128, 128)


class ImageError(UserError):
    """An image that cannot be used; the message names the file and the reason."""


def load_image(source: str | os.PathLike | bytes | Image.Image, name: str | None = None) -> Image.Image:
    """Open an image file (or bytes, or a PIL image) and return it as 8-bit RGB.

    Converts grayscale, palette, alpha, CMYK and 16/32-bit images; raises `ImageError` for unreadable,
    truncated, too small (< 8 px a side) or too large (> 64 MP) images.
    """
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "<image>")
    try:
        if isinstance(source, Image.Image):
            image = source
        else:
            with warnings.catch_warnings():  # we check the size ourselves, with a message naming the file
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source))
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(f"{label}: image is {width}x{height}, larger than {MAX_PIXELS:,} pixels; downscale it")
        if min(width, height) < MIN_SIDE:
            raise ImageError(f"{label}: image is {width}x{height}, smaller than {MIN_SIDE} px on a side")
        image.load()  # decode now, so truncated files fail here and not inside a training step
        image = ImageOps.exif_transpose(image)
        return to_rgb(image)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{label}: file not found") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{label}: image is too large to decode safely; downscale it") from None
    except (OSError, ValueError, SyntaxError) as err:  # PIL reports corrupt or truncated data as these
        raise ImageError(f"{label}: cannot read image ({err})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB; alpha is composited onto a neutral grey, high bit depths are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def center_square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to `size` x `size` (box filter when shrinking: no aliasing)."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    if side == size:
        return square
    resample = Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC
    return square.resize((size, size), resample)


def pil_to_tensor(images: list[Image.Image]):
    """RGB PIL images of one size -> float tensor [B, 3, H, W] in [-1, 1]."""
    import torch

    array = np.stack([np.asarray(to_rgb(image), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def tensor_to_pil(pixels) -> list[Image.Image]:
    """Float tensor [B, 3, H, W] in [-1, 1] -> RGB PIL images."""
    array = pixels.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to("cpu").byte()
    return [Image.fromarray(image.permute(1, 2, 0).numpy(), mode="RGB") for image in array]


def make_grid(images: list[Image.Image], columns: int | None = None, padding: int = 2) -> Image.Image:
    """Tile same-sized images into one grid image (row-major), `columns` wide (default: square-ish)."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    width, height = images[0].size
    grid = Image.new("RGB", (columns * (width + padding) + padding, rows * (height + padding) + padding), "white")
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid.paste(image.convert("RGB"), (padding + column * (width + padding), padding + row * (height + padding)))
    return grid
