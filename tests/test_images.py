"""Image loading: every readable mode becomes RGB; unreadable files are rejected with their name."""

import numpy as np
import pytest
from PIL import Image

from mmgen.images import (
    ImageError,
    center_square,
    load_image,
    make_grid,
    pil_to_tensor,
    tensor_to_pil,
)


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "1", "LA"])
def test_modes_convert_to_rgb(tmp_path, rgb, mode):
    path = tmp_path / f"image.{'jpg' if mode == 'CMYK' else 'png'}"
    rgb.convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (50, 40)


def test_rgba_transparent_pixels_become_grey(tmp_path):
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    image.save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((3, 3)) == (128, 128, 128)


def test_16_bit_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(tmp_path / "deep.png")
    Image.fromarray(np.full((16, 16), 32768, dtype=np.uint16)).save(tmp_path / "half.png")
    assert load_image(tmp_path / "deep.png").getpixel((0, 0)) == (255, 255, 255)
    assert load_image(tmp_path / "half.png").getpixel((0, 0)) == (128, 128, 128)


def test_truncated_png_names_file(tmp_path, rgb):
    rgb.save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cut.png"):
        load_image(tmp_path / "cut.png")


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"definitely not a jpeg")
    with pytest.raises(ImageError, match="junk.jpg: cannot read image"):
        load_image(tmp_path / "junk.jpg")
    with pytest.raises(ImageError, match="missing.png: file not found"):
        load_image(tmp_path / "missing.png")


def test_tiny_and_huge_images_rejected(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ImageError, match="dot.png: image is 1x1"):
        load_image(tmp_path / "dot.png")
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")  # 100 MP, compresses to a few KB
    with pytest.raises(ImageError, match="bomb.png: image is 10000x10000"):
        load_image(tmp_path / "bomb.png")


def test_bytes_source(rgb):
    import io

    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG")
    assert load_image(buffer.getvalue()).size == (50, 40)


def test_center_square_and_tensor_round_trip(rgb):
    square = center_square(rgb, 32)
    assert square.size == (32, 32)
    pixels = pil_to_tensor([square, square])
    assert pixels.shape == (2, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    back = tensor_to_pil(pixels)[0]
    assert np.array_equal(np.asarray(back), np.asarray(square))


def test_make_grid_layout(rgb):
    tiles = [center_square(rgb, 16)] * 5
    grid = make_grid(tiles, columns=3, padding=2)
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)
