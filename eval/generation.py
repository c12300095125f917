"""What the benchmark runners share: the generator callable, batch-independent seeding, checked outputs.

Seeding contract. A runner numbers its prompts `0..N-1` (a metadata line, a sorted file stem) and wants image `k` of
prompt `i` drawn from the random stream `seed + i * images_per_prompt + k`, whatever the batching and however often
a run was resumed. The generator (`ImageGenerator.generate`, wrapped by `mmgen eval`) gives image `k` of the `j`-th
prompt of one call the stream `call_seed + j * images_per_prompt + k`, so a runner calls it only with runs of
consecutive prompts and `call_seed = seed + first_index * images_per_prompt`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from PIL import Image

# prompts, images_per_prompt, seed -> images[prompt][k]
GenerateImages = Callable[[list[str], int, int], list[list[Image.Image]]]


def consecutive_batches(indices: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Split sorted prompt indices into batches of at most `batch_size` consecutive indices.

    A resumed run leaves gaps (prompts already done); a batch never spans one, so every prompt keeps its seed.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    batch: list[int] = []
    for index in indices:
        if batch and (index != batch[-1] + 1 or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def call_seed(seed: int, first_index: int, images_per_prompt: int) -> int:
    """The seed to pass with a batch starting at prompt `first_index` (see the module's seeding contract)."""
    return seed + first_index * images_per_prompt


def generate_checked(generate_images: GenerateImages, prompts: list[str], images_per_prompt: int,
                     seed: int) -> list[list[Image.Image]]:
    """Call the generator and check it returned `images_per_prompt` PIL images for each prompt, in RGB."""
    output = generate_images(list(prompts), images_per_prompt, seed)
    if not isinstance(output, (list, tuple)) or len(output) != len(prompts):
        got = len(output) if isinstance(output, (list, tuple)) else type(output).__name__
        raise ValueError(f"generate_images returned {got} image lists for {len(prompts)} prompts")
    checked = []
    for prompt, images in zip(prompts, output, strict=True):
        if not isinstance(images, (list, tuple)) or len(images) != images_per_prompt:
            got = len(images) if isinstance(images, (list, tuple)) else type(images).__name__
            raise ValueError(f"generate_images returned {got} images for {prompt!r}, expected {images_per_prompt}")
        for image in images:
            if not isinstance(image, Image.Image):
                raise ValueError(f"generate_images returned a {type(image).__name__} for {prompt!r}, not a PIL image")
        checked.append([image.convert("RGB") for image in images])
    return checked
