"""DPG-Bench generation: four images per prompt, saved as one 2x2 grid `<out>/<item_id>.png`, resumably.

Prompts are the files `<item_id>.txt` of ELLA's `dpg_bench/prompts/` (1,065 of them; whitespace stripped). The
grid has no padding, so the official scorer's crops (`resolution` px squares at the four corners) are exactly the
four images, row-major. A grid is written under a temporary name and renamed, so an existing `<item_id>.png` is
complete and is skipped on resume.

Seeding: prompts are numbered in sorted item_id order, and image `k` of prompt `i` comes from the random stream
`seed + 4 * i + k` (see `mmgen.eval.generation`), whatever the batching or resuming.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmgen.eval.generation import GenerateImages, call_seed, consecutive_batches, generate_checked
from PIL import Image
from tqdm.auto import tqdm

from mmgen.errors import UserError
from mmgen.images import make_grid

IMAGES_PER_PROMPT = 4  # the official scorer splits each grid into 2x2 crops


def load_dpg_prompts(prompts_dir: str | os.PathLike) -> dict[str, str]:
    """`{item_id: prompt}` from the `<item_id>.txt` files, in sorted item_id order."""
    prompts_dir = Path(prompts_dir)
    if not prompts_dir.is_dir():
        raise UserError(f"{prompts_dir}: no such DPG-Bench prompts directory (ELLA's dpg_bench/prompts/)")
    prompts = {}
    for path in sorted(prompts_dir.glob("*.txt")):
        try:
            text = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError as err:
            raise UserError(f"{path}: not UTF-8 text ({err.reason})") from None
        if not text:
            raise UserError(f"{path}: empty prompt")
        prompts[path.stem] = text
    if not prompts:
        raise UserError(f"{prompts_dir}: no <item_id>.txt prompt files")
    return prompts


def grid_path(out_dir: str | os.PathLike, item_id: str) -> Path:
    return Path(out_dir) / f"{item_id}.png"


def dpg_grid(images: list[Image.Image]) -> Image.Image:
    """Four same-size square images as a 2x2 grid without padding (the layout the official crops assume)."""
    sizes = {image.size for image in images}
    if len(images) != IMAGES_PER_PROMPT or len(sizes) != 1 or (size := sizes.pop())[0] != size[1]:
        raise ValueError(f"a DPG-Bench grid needs {IMAGES_PER_PROMPT} square images of one size, got sizes "
                         f"{[image.size for image in images]}")
    return make_grid(images, columns=2, padding=0)


def run_dpg(generate_images: GenerateImages, prompts_dir: str | os.PathLike, out_dir: str | os.PathLike,
            seed: int = 42, batch_prompts: int = 8, progress: bool = True) -> dict:
    """Generate a 2x2 grid for every DPG-Bench prompt not yet in `out_dir`; returns counts and the resolution."""
    prompts = load_dpg_prompts(prompts_dir)
    item_ids = list(prompts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.png.tmp"):  # left by a run killed while writing
        stale.unlink()
    pending = [index for index, item_id in enumerate(item_ids) if not grid_path(out_dir, item_id).is_file()]
    resolution = None
    bar = tqdm(total=len(pending), desc="dpg-bench", unit="prompt", disable=not progress or not pending)
    for batch in consecutive_batches(pending, batch_prompts):
        texts = [prompts[item_ids[index]] for index in batch]
        images = generate_checked(generate_images, texts, IMAGES_PER_PROMPT,
                                  call_seed(seed, batch[0], IMAGES_PER_PROMPT))
        for index, prompt_images in zip(batch, images, strict=True):
            grid = dpg_grid(prompt_images)
            resolution = prompt_images[0].width
            final = grid_path(out_dir, item_ids[index])
            tmp = final.with_name(f".{final.name}.tmp")
            grid.save(tmp, format="PNG")
            tmp.replace(final)
        bar.update(len(batch))
    bar.close()
    return {"prompts": len(prompts), "generated": len(pending), "skipped": len(prompts) - len(pending),
            "resolution": resolution, "out_dir": str(out_dir)}
