"""Seeded random scenes: free scenes for descriptive captions and one sampler per GenEval task.

Every sampler returns a scene whose objects keep `MIN_GAP` between their bounding circles and lie fully inside
the image, so each object is a separate, complete blob for the detector. Sampling is rejection sampling with a
bounded number of attempts: it either returns a valid scene or raises `SceneSamplingError`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from .world import COLORS, MAX_SIZE, MIN_SIZE, SHAPES, Scene, ShapeObject

# Minimum distance between two objects' bounding circles, in image fractions: ~2 px at 64x64, enough that
# anti-aliased edges never merge two objects into one blob.
MIN_GAP = 0.03

# GenEval widens every box by this fraction of its size before reading a spatial relation (its default
# `position_threshold`).
POSITION_THRESHOLD = 0.1

# Sampled position scenes must beat GenEval's 0.5 cut-off on the prompted axis by this much, so a few pixels
# of detector box error cannot flip the relation.
RELATION_MARGIN = 0.15

# Largest perpendicular/dominant centre-offset ratio in a position scene: at 0.5 the perpendicular normalized
# component stays below 0.45, well clear of GenEval's 0.5, so exactly one relation holds.
MAX_PERPENDICULAR_RATIO = 0.5

MAX_SCENE_ATTEMPTS = 200
MAX_PLACEMENT_ATTEMPTS = 100

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
MAX_OBJECTS = 4


class SceneSamplingError(RuntimeError):
    """No valid scene was found within the attempt budget (the request is likely impossible)."""


@dataclass(frozen=True)
class Layout:
    """Where objects may stand and how large they are.

    `grid=None` (the default): anywhere, any size in `[MIN_SIZE, MAX_SIZE]`. `grid=N`: the image is an N x N grid
    of cells and every object covers exactly `span` x `span` whole cells (`span=None`: the fewest cells the
    detector reads, e.g. 1 on a 4 x 4 grid, 2 on an 8 x 8 one). Why: a visual tokenizer with an N x N code grid
    then sees each (shape, colour) in one cell-aligned pattern instead of one per sub-cell offset and size, which a
    small LLM learns far faster.
    """

    grid: int | None = None
    span: int | None = None

    def __post_init__(self):
        if self.grid is None:
            if self.span is not None:
                raise ValueError("span needs a grid")
            return
        if self.grid < 2:
            raise ValueError(f"a grid layout needs at least 2 cells per side, got {self.grid}")
        if self.span is None:
            object.__setattr__(self, "span", math.ceil(MIN_SIZE * self.grid - 1e-9))
        size = self.span / self.grid
        if self.span < 1 or not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"grid {self.grid} with objects {self.span} cells wide gives size {size:.3f}; the "
                             f"detector reads sizes {MIN_SIZE}-{MAX_SIZE}: pick span and grid so span/grid is in it")

    def place(self, rng: random.Random, shape: str, color: str) -> ShapeObject:
        """An object fully inside the image: any size at a uniform position (free layout), or on whole cells (grid)."""
        if self.grid is None:
            size = random_size(rng)
            radius = size / 2
            return ShapeObject(shape, color, rng.uniform(radius, 1 - radius), rng.uniform(radius, 1 - radius), size)
        first_cells = range(self.grid - self.span + 1)  # the object's left (top) cell
        x, y = rng.choice(first_cells), rng.choice(first_cells)
        half = self.span / 2
        return ShapeObject(shape, color, (x + half) / self.grid, (y + half) / self.grid, self.span / self.grid)


FREE = Layout()


def random_size(rng: random.Random) -> float:
    return rng.uniform(MIN_SIZE, MAX_SIZE)


def random_color(rng: random.Random, exclude: Sequence[str] = ()) -> str:
    return rng.choice([c for c in COLORS if c not in exclude])


def is_valid(scene: Scene) -> bool:
    return scene.fits() and not scene.overlaps(MIN_GAP)


def sample_scene(rng: random.Random, specs: Sequence[tuple[str, str]], layout: Layout = FREE) -> Scene:
    """A valid scene with one object per `(shape, colour)` spec, in the given order.

    Objects are placed one at a time; when one cannot be placed the whole scene restarts, because an unlucky
    early placement can leave no room for the rest.
    """
    if not 1 <= len(specs) <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(specs)}")
    for _ in range(MAX_SCENE_ATTEMPTS):
        placed: list[ShapeObject] = []
        for shape, color in specs:
            obj = place_object(rng, shape, color, placed, layout)
            if obj is None:
                break
            placed.append(obj)
        else:
            return Scene(objects=tuple(placed))
    raise SceneSamplingError(f"could not place {len(specs)} objects without overlap: {list(specs)}")


def place_object(rng: random.Random, shape: str, color: str, placed: Sequence[ShapeObject],
                 layout: Layout = FREE) -> ShapeObject | None:
    """A new object that keeps the scene valid next to the `placed` ones, or None if none was found."""
    for _ in range(MAX_PLACEMENT_ATTEMPTS):
        candidate = layout.place(rng, shape, color)
        if is_valid(Scene(objects=(*placed, candidate))):
            return candidate
    return None


def free_scene(rng: random.Random, min_objects: int = 1, max_objects: int = MAX_OBJECTS,
               layout: Layout = FREE) -> Scene:
    """`min_objects` to `max_objects` objects of random shapes and colours, for descriptive captions."""
    count = rng.randint(min_objects, max_objects)
    return sample_scene(rng, [(rng.choice(SHAPES), random_color(rng)) for _ in range(count)], layout)


# --- GenEval spatial rule -------------------------------------------------------------------------------------


def relation_components(obj_b: ShapeObject, obj_a: ShapeObject) -> tuple[float, float]:
    """GenEval's normalized, threshold-revised centre offset of B from A as `(dx, dy)`; y points down."""
    box_a, box_b = obj_a.box(), obj_b.box()
    offset = [(box_b[i] + box_b[i + 2]) / 2 - (box_a[i] + box_a[i + 2]) / 2 for i in (0, 1)]
    dims = [(box_a[i + 2] - box_a[i]) + (box_b[i + 2] - box_b[i]) for i in (0, 1)]
    revised = [math.copysign(max(abs(o) - POSITION_THRESHOLD * d, 0.0), o) for o, d in zip(offset, dims, strict=True)]
    norm = math.hypot(*offset)
    # GenEval reports no relation when both revised components vanish (tolerance 1e-3 of its pixel units;
    # here it is 1e-3 of the image side).
    if norm == 0 or all(abs(r) < 1e-3 for r in revised):
        return 0.0, 0.0
    return revised[0] / norm, revised[1] / norm


def geneval_relations(obj_b: ShapeObject, obj_a: ShapeObject) -> set[str]:
    """The relations that GenEval's rule (the scorer's own code) finds for "B <relation> A" from exact boxes."""
    from mmgen.eval.geneval.rules import relative_position

    return relative_position(obj_b.box(), obj_a.box())


def _clearly_related(obj_b: ShapeObject, obj_a: ShapeObject, relation: str) -> bool:
    """The relation holds with `RELATION_MARGIN` to spare and the centres sit mostly along its axis."""
    dx, dy = relation_components(obj_b, obj_a)
    along, across = (dx, dy) if relation in ("left of", "right of") else (dy, dx)
    sign = -1 if relation in ("left of", "above") else 1
    raw_dx, raw_dy = obj_b.x - obj_a.x, obj_b.y - obj_a.y
    raw_along, raw_across = (raw_dx, raw_dy) if relation in ("left of", "right of") else (raw_dy, raw_dx)
    return sign * along > 0.5 + RELATION_MARGIN and abs(raw_across) <= MAX_PERPENDICULAR_RATIO * abs(raw_along)


# --- one sampler per GenEval task -----------------------------------------------------------------------------


def single_object_scene(rng: random.Random, shape: str, layout: Layout = FREE) -> Scene:
    return sample_scene(rng, [(shape, random_color(rng))], layout)


def colors_scene(rng: random.Random, shape: str, color: str, layout: Layout = FREE) -> Scene:
    return sample_scene(rng, [(shape, color)], layout)


def two_object_scene(rng: random.Random, shape_a: str, shape_b: str, layout: Layout = FREE) -> Scene:
    if shape_a == shape_b:
        raise ValueError(f"two_object needs two distinct classes, got {shape_a!r} twice")
    return sample_scene(rng, [(shape_a, random_color(rng)), (shape_b, random_color(rng))], layout)


def color_attr_scene(rng: random.Random, first: tuple[str, str], second: tuple[str, str],
                     layout: Layout = FREE) -> Scene:
    """Two objects of distinct classes, each given as `(shape, colour)`."""
    if first[0] == second[0]:
        raise ValueError(f"color_attr needs two distinct classes, got {first[0]!r} twice")
    return sample_scene(rng, [first, second], layout)


def counting_scene(rng: random.Random, shape: str, count: int, layout: Layout = FREE) -> Scene:
    """Exactly `count` objects of one class with free colours, and nothing else."""
    if not 2 <= count <= MAX_OBJECTS:
        raise ValueError(f"counting scenes hold 2 to {MAX_OBJECTS} objects, got {count}")
    return sample_scene(rng, [(shape, random_color(rng)) for _ in range(count)], layout)


def position_scene(rng: random.Random, shape_b: str, relation: str, shape_a: str, layout: Layout = FREE) -> Scene:
    """Objects `(A, B)` such that "B <relation> A" holds under GenEval's rule and no perpendicular one does."""
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")
    for _ in range(MAX_SCENE_ATTEMPTS):
        scene = sample_scene(rng, [(shape_a, random_color(rng)), (shape_b, random_color(rng))], layout)
        obj_a, obj_b = scene.objects
        if _clearly_related(obj_b, obj_a, relation):
            assert geneval_relations(obj_b, obj_a) == {relation}, "margin constants no longer imply the rule"
            return scene
    raise SceneSamplingError(f"could not place a {shape_b} {relation} a {shape_a}")


def scene_for_prompt(metadata: dict, rng: random.Random, layout: Layout = FREE) -> Scene:
    """A scene satisfying a GenEval-format prompt spec; objects follow the order of its `include` list."""
    tag, include = metadata["tag"], metadata["include"]
    if tag == "single_object":
        return single_object_scene(rng, include[0]["class"], layout)
    if tag == "colors":
        return colors_scene(rng, include[0]["class"], include[0]["color"], layout)
    if tag == "two_object":
        return two_object_scene(rng, include[0]["class"], include[1]["class"], layout)
    if tag == "color_attr":
        return color_attr_scene(rng, *((req["class"], req["color"]) for req in include), layout=layout)
    if tag == "counting":
        return counting_scene(rng, include[0]["class"], include[0]["count"], layout)
    if tag == "position":
        relation, target_index = include[1]["position"]
        if target_index != 0:
            raise ValueError(f"position specs relate the second object to the first, got target {target_index}")
        return position_scene(rng, include[1]["class"], relation, include[0]["class"], layout)
    raise ValueError(f"unknown GenEval task {tag!r}")
