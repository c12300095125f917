"""Edit triplets: a source scene, a natural-language instruction and the exact target scene.

Each edit changes one thing (an object's colour, position or size; an object added or removed; two objects'
positions exchanged) and leaves every other object untouched. Instructions name objects by colour and shape,
and only objects whose `(colour, shape)` is unique in the scene are edited, so the instruction is unambiguous.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from .captions import with_article
from .scenes import (
    MAX_OBJECTS,
    SceneSamplingError,
    free_scene,
    geneval_relations,
    is_valid,
    place_object,
    random_color,
)
from .world import COLORS, MAX_SIZE, MIN_SIZE, SHAPES, Scene, ShapeObject

EDIT_TYPES: tuple[str, ...] = ("recolour", "move", "add", "remove", "resize", "swap")

# A move must carry the object far enough that GenEval's rule sees the new position in the named direction
# from the old one (checked in `_move`).
MIN_MOVE, MAX_MOVE = 0.2, 0.5

# A resize changes the size by at least this factor, so the difference is visible at 64 px.
MIN_RESIZE_FACTOR = 1.25

MAX_EDIT_ATTEMPTS = 50

# Objects in the source scene, per edit type: "add" needs room for one more, "remove" leaves at least one object,
# "swap" needs two.
SOURCE_OBJECTS: dict[str, tuple[int, int]] = {
    "recolour": (1, MAX_OBJECTS),
    "move": (1, MAX_OBJECTS),
    "add": (1, MAX_OBJECTS - 1),
    "remove": (2, MAX_OBJECTS),
    "resize": (1, MAX_OBJECTS),
    "swap": (2, MAX_OBJECTS),
}

RECOLOUR_TEMPLATES = (
    "make {obj} {color}",
    "change the colour of {obj} to {color}",
    "paint {obj} {color}",
    "turn {obj} {color}",
    "recolor {obj} to {color}",
)
MOVE_TEMPLATES = ("move {obj} {direction}", "shift {obj} {direction}", "slide {obj} {direction}")
DIRECTIONS: dict[str, tuple[tuple[float, float], str, tuple[str, ...]]] = {
    # name: (unit step with y down, GenEval relation of new vs old position, phrasings)
    "left": ((-1.0, 0.0), "left of", ("left", "to the left")),
    "right": ((1.0, 0.0), "right of", ("right", "to the right")),
    "up": ((0.0, -1.0), "above", ("up", "upwards", "higher")),
    "down": ((0.0, 1.0), "below", ("down", "downwards", "lower")),
}
ADD_TEMPLATES = ("add {obj}", "put {obj} in the picture", "draw {obj}", "insert {obj}")
REMOVE_TEMPLATES = ("remove {obj}", "delete {obj}", "take away {obj}", "erase {obj}")
GROW_TEMPLATES = ("make {obj} bigger", "make {obj} larger", "enlarge {obj}", "scale up {obj}")
SHRINK_TEMPLATES = ("make {obj} smaller", "shrink {obj}", "scale down {obj}", "make {obj} tinier")
SWAP_TEMPLATES = (
    "swap {a} and {b}",
    "swap the positions of {a} and {b}",
    "exchange the places of {a} and {b}",
    "switch {a} and {b}",
)


@dataclass(frozen=True)
class EditTriplet:
    source: Scene
    instruction: str
    target: Scene
    edit_type: str


Edit = tuple[str, Scene]  # (instruction, target)


def uniquely_named(scene: Scene) -> list[int]:
    """Indices of objects whose `(colour, shape)` occurs once in the scene."""
    counts = Counter((obj.color, obj.shape) for obj in scene.objects)
    return [i for i, obj in enumerate(scene.objects) if counts[(obj.color, obj.shape)] == 1]


def _name(scene: Scene, index: int, rng: random.Random) -> str:
    """The object's colour and shape ("the red circle"), or sometimes only its shape when no other object has it."""
    obj = scene.objects[index]
    shape_is_unique = sum(o.shape == obj.shape for o in scene.objects) == 1
    return f"the {obj.shape}" if shape_is_unique and rng.random() < 0.3 else f"the {obj.color} {obj.shape}"


def _replaced(scene: Scene, index: int, obj: ShapeObject) -> Scene:
    objects = list(scene.objects)
    objects[index] = obj
    return scene.with_objects(objects)


def _valid_or_none(instruction: str, target: Scene) -> Edit | None:
    return (instruction, target) if is_valid(target) else None


def _recolour(rng: random.Random, scene: Scene) -> Edit | None:
    index = rng.choice(uniquely_named(scene))
    obj = scene.objects[index]
    color = random_color(rng, exclude=[obj.color])
    instruction = rng.choice(RECOLOUR_TEMPLATES).format(obj=_name(scene, index, rng), color=color)
    return instruction, _replaced(scene, index, replace(obj, color=color))


def _move(rng: random.Random, scene: Scene) -> Edit | None:
    index = rng.choice(uniquely_named(scene))
    obj = scene.objects[index]
    direction = rng.choice(sorted(DIRECTIONS))
    (step_x, step_y), relation, phrasings = DIRECTIONS[direction]
    # Farthest the object can travel in that direction and stay inside the image.
    room = {
        "left": obj.x - obj.radius,
        "right": 1 - obj.radius - obj.x,
        "up": obj.y - obj.radius,
        "down": 1 - obj.radius - obj.y,
    }[direction]
    if room < MIN_MOVE:
        return None
    distance = rng.uniform(MIN_MOVE, min(room, MAX_MOVE))
    moved = replace(obj, x=obj.x + step_x * distance, y=obj.y + step_y * distance)
    assert geneval_relations(moved, obj) == {relation}, "MIN_MOVE no longer implies the GenEval relation"
    instruction = rng.choice(MOVE_TEMPLATES).format(obj=_name(scene, index, rng), direction=rng.choice(phrasings))
    return _valid_or_none(instruction, _replaced(scene, index, moved))


def _add(rng: random.Random, scene: Scene) -> Edit | None:
    present = {(obj.color, obj.shape) for obj in scene.objects}
    # A new (colour, shape) keeps every object uniquely named in the target, ready for a follow-up edit.
    color, shape = rng.choice([(c, s) for c in COLORS for s in SHAPES if (c, s) not in present])
    obj = place_object(rng, shape, color, scene.objects)
    if obj is None:
        return None
    instruction = rng.choice(ADD_TEMPLATES).format(obj=with_article(f"{color} {shape}"))
    return instruction, scene.with_objects((*scene.objects, obj))


def _remove(rng: random.Random, scene: Scene) -> Edit | None:
    index = rng.choice(uniquely_named(scene))
    instruction = rng.choice(REMOVE_TEMPLATES).format(obj=_name(scene, index, rng))
    return instruction, scene.with_objects(o for i, o in enumerate(scene.objects) if i != index)


def _resize(rng: random.Random, scene: Scene) -> Edit | None:
    index = rng.choice(uniquely_named(scene))
    obj = scene.objects[index]
    options = []
    if obj.size * MIN_RESIZE_FACTOR <= MAX_SIZE:
        options.append((rng.uniform(obj.size * MIN_RESIZE_FACTOR, MAX_SIZE), GROW_TEMPLATES))
    if obj.size / MIN_RESIZE_FACTOR >= MIN_SIZE:
        options.append((rng.uniform(MIN_SIZE, obj.size / MIN_RESIZE_FACTOR), SHRINK_TEMPLATES))
    if not options:
        return None
    size, templates = rng.choice(options)
    instruction = rng.choice(templates).format(obj=_name(scene, index, rng))
    return _valid_or_none(instruction, _replaced(scene, index, replace(obj, size=size)))


def _swap(rng: random.Random, scene: Scene) -> Edit | None:
    candidates = uniquely_named(scene)
    if len(candidates) < 2:
        return None
    first, second = rng.sample(candidates, 2)
    a, b = scene.objects[first], scene.objects[second]
    target = _replaced(_replaced(scene, first, replace(a, x=b.x, y=b.y)), second, replace(b, x=a.x, y=a.y))
    instruction = rng.choice(SWAP_TEMPLATES).format(a=_name(scene, first, rng), b=_name(scene, second, rng))
    return _valid_or_none(instruction, target)


_EDITORS: dict[str, Callable[[random.Random, Scene], Edit | None]] = {
    "recolour": _recolour,
    "move": _move,
    "add": _add,
    "remove": _remove,
    "resize": _resize,
    "swap": _swap,
}


def _can_edit(scene: Scene, edit_type: str) -> bool:
    low, high = SOURCE_OBJECTS[edit_type]
    return low <= len(scene.objects) <= high and (edit_type == "add" or bool(uniquely_named(scene)))


def make_edit(rng: random.Random, edit_type: str | None = None, source: Scene | None = None) -> EditTriplet:
    """A random valid edit of `source` (a fresh random scene when None); `edit_type` is random when None."""
    edit_type = rng.choice(EDIT_TYPES) if edit_type is None else edit_type
    if edit_type not in _EDITORS:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {', '.join(EDIT_TYPES)}")
    if source is not None and not _can_edit(source, edit_type):
        raise ValueError(f"cannot {edit_type} in a scene with {len(source.objects)} objects (or none uniquely named)")
    for _ in range(MAX_EDIT_ATTEMPTS):
        scene = source if source is not None else free_scene(rng, *SOURCE_OBJECTS[edit_type])
        edit = _EDITORS[edit_type](rng, scene) if _can_edit(scene, edit_type) else None
        if edit is not None:
            instruction, target = edit
            return EditTriplet(source=scene, instruction=instruction, target=target, edit_type=edit_type)
    raise SceneSamplingError(f"no valid {edit_type} edit found in {MAX_EDIT_ATTEMPTS} attempts")
