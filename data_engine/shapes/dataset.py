"""Hugging Face datasets of rendered shapes scenes: text-to-image pairs or edit triplets.

Row `i` draws from its own generator seeded by `(seed, i)`, so a dataset is reproducible bit for bit and a
smaller dataset is a prefix of a larger one with the same seed.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, Features, Image, Value

from .captions import GENEVAL_TASKS, describe, make_prompt, metadata_for_scene
from .edits import EDIT_TYPES, make_edit
from .scenes import FREE, Layout, free_scene, scene_for_prompt
from .world import Scene, render

DESCRIBE = "describe"
T2I_TASKS: tuple[str, ...] = (DESCRIBE, *GENEVAL_TASKS)

# Half of the default mix is free descriptions (varied wording and layouts); the rest is spread evenly over
# GenEval's six tasks so every prompt template is seen in training.
DESCRIBE_SHARE = 0.5

MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 256

T2I_FEATURES = Features(
    {
        "image": Image(),
        "caption": Value("string"),
        "metadata": Value("string"),
        "task": Value("string"),
        "scene": Value("string"),
    }
)
EDIT_FEATURES = Features(
    {
        "source_image": Image(),
        "instruction": Value("string"),
        "target_image": Image(),
        "edit_type": Value("string"),
        "source_scene": Value("string"),
        "target_scene": Value("string"),
    }
)


def _png(scene: Scene, size: int) -> dict:
    """The rendered scene as the datasets Image feature's storage dict (PNG bytes: lossless, deterministic)."""
    buffer = io.BytesIO()
    render(scene, size).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _scene_json(scene: Scene) -> str:
    return json.dumps(scene.to_dict())


def _t2i_row(rng: random.Random, size: int, tasks: Sequence[str] | None, layout: Layout) -> dict:
    if tasks:
        task = rng.choice(tasks)
    else:
        task = DESCRIBE if rng.random() < DESCRIBE_SHARE else rng.choice(GENEVAL_TASKS)
    if task == DESCRIBE:
        scene = free_scene(rng, layout=layout)
        caption = describe(scene, rng)
        metadata = {**metadata_for_scene(scene), "prompt": caption}
    else:
        metadata = make_prompt(task, rng)
        scene = scene_for_prompt(metadata, rng, layout)
        caption = metadata["prompt"]
    return {
        "image": _png(scene, size),
        "caption": caption,
        "metadata": json.dumps(metadata),
        "task": task,
        "scene": _scene_json(scene),
    }


def _edit_row(rng: random.Random, size: int, edit_types: Sequence[str] | None) -> dict:
    edit = make_edit(rng, rng.choice(edit_types or EDIT_TYPES))
    return {
        "source_image": _png(edit.source, size),
        "instruction": edit.instruction,
        "target_image": _png(edit.target, size),
        "edit_type": edit.edit_type,
        "source_scene": _scene_json(edit.source),
        "target_scene": _scene_json(edit.target),
    }


def _check_arguments(num: int, size: int, edits: bool, tasks: Sequence[str] | None, layout: Layout) -> None:
    if edits and layout != FREE:
        raise ValueError("edit triplets are drawn in the free layout only (moves and resizes leave any grid)")
    if num < 1:
        raise ValueError(f"num must be positive, got {num}")
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size}")
    known = EDIT_TYPES if edits else T2I_TASKS
    unknown = [t for t in tasks or () if t not in known]
    if unknown:
        raise ValueError(f"unknown {'edit types' if edits else 'tasks'} {unknown}; expected some of {', '.join(known)}")


def build_shapes_dataset(
    num: int, size: int = 64, seed: int = 0, edits: bool = False, tasks: Sequence[str] | None = None,
    layout: Layout = FREE,
) -> Dataset:
    """`num` rendered rows: text-to-image pairs, or edit triplets when `edits` is set.

    `tasks` restricts what is sampled (uniformly): t2i tasks from `T2I_TASKS`, or edit types from `EDIT_TYPES`
    when `edits` is set. None gives the default mix (half "describe", half GenEval tasks; all edit types).
    `layout` says where objects stand (`Layout(grid=8)`: on an 8 x 8 cell grid, see `Layout`).
    """
    _check_arguments(num, size, edits, tasks, layout)
    if edits:
        features, make_row = EDIT_FEATURES, lambda rng: _edit_row(rng, size, tasks)
    else:
        features, make_row = T2I_FEATURES, lambda rng: _t2i_row(rng, size, tasks, layout)
    rows = [make_row(random.Random(f"shapes:{seed}:{index}")) for index in range(num)]
    columns = {name: [row[name] for row in rows] for name in features}
    return Dataset.from_dict(columns, features=features)


def write_shapes_dataset(out_dir: str | Path, num: int, size: int = 64, seed: int = 0, edits: bool = False,
                         tasks: Sequence[str] | None = None, layout: Layout = FREE) -> Dataset:
    """Build a dataset and save it with `save_to_disk`, ready for `datasets.load_from_disk(out_dir)`."""
    dataset = build_shapes_dataset(num, size, seed, edits=edits, tasks=tasks, layout=layout)
    dataset.save_to_disk(str(out_dir))
    return dataset
