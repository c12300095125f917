"""Questions with exact answers about shapes scenes: the understanding task's data (image -> question -> answer).

The scene graph is known, so every answer is true by construction. Kinds: counting ("how many circles are
there?"), colour ("what colour is the star?", only for a shape that appears once), presence ("is there a red
square?", half of them asked about an absent object so "no" is as common as "yes") and description (the scene's
free caption).
"""

from __future__ import annotations

import random

from datasets import Dataset, Features, Image, Value

from .captions import NUMBER_WORDS, describe, plural, with_article

# Same PNG and scene encodings as the t2i and edit datasets, so all three read alike.
from .dataset import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, _png, _scene_json
from .scenes import free_scene
from .world import COLORS, SHAPES, Scene

QUESTION_KINDS: tuple[str, ...] = ("count", "color", "presence", "describe")

VQA_FEATURES = Features(
    {
        "image": Image(),
        "question": Value("string"),
        "answer": Value("string"),
        "kind": Value("string"),
        "scene": Value("string"),
    }
)


def ask(scene: Scene, kind: str, rng: random.Random) -> tuple[str, str]:
    """A `(question, answer)` pair of `kind` about `scene`, answered from the scene graph."""
    if kind == "count":
        shape = rng.choice(SHAPES)
        count = sum(obj.shape == shape for obj in scene.objects)
        return f"how many {plural(shape)} are there?", NUMBER_WORDS.get(count, "zero")
    if kind == "color":
        once = [obj for obj in scene.objects if sum(o.shape == obj.shape for o in scene.objects) == 1]
        if not once:  # every shape repeats: the colour question would be ambiguous, so describe instead
            return ask(scene, "describe", rng)
        obj = rng.choice(once)
        return f"what colour is the {obj.shape}?", obj.color
    if kind == "presence":
        present = {(obj.color, obj.shape) for obj in scene.objects}
        if rng.random() < 0.5:
            color, shape = rng.choice(sorted(present))
        else:
            absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
            color, shape = rng.choice(absent)
        return f"is there {with_article(f'{color} {shape}')}?", "yes" if (color, shape) in present else "no"
    if kind == "describe":
        return "what is in the image?", describe(scene, rng)
    raise ValueError(f"unknown question kind {kind!r}; expected one of {', '.join(QUESTION_KINDS)}")


def build_shapes_vqa_dataset(num: int, size: int = 64, seed: int = 0) -> Dataset:
    """`num` rows of image, question, answer (kinds drawn uniformly); row `i` depends only on `(seed, i)`."""
    if num < 1:
        raise ValueError(f"num must be positive, got {num}")
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise ValueError(f"image size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {size}")
    rows = []
    for index in range(num):
        rng = random.Random(f"shapes-vqa:{seed}:{index}")
        scene = free_scene(rng)
        kind = rng.choice(QUESTION_KINDS)
        question, answer = ask(scene, kind, rng)
        rows.append({"image": _png(scene, size), "question": question, "answer": answer, "kind": kind,
                     "scene": _scene_json(scene)})
    return Dataset.from_dict({name: [row[name] for row in rows] for name in VQA_FEATURES}, features=VQA_FEATURES)


def write_shapes_vqa_dataset(out_dir: str, num: int, size: int = 64, seed: int = 0) -> Dataset:
    dataset = build_shapes_vqa_dataset(num, size, seed)
    dataset.save_to_disk(str(out_dir))
    return dataset

