"""Prompt specs in GenEval's metadata format, and true descriptive captions for any scene.

Prompts copy GenEval's phrasing exactly ("a photo of two stars", "a photo of a star left of a hexagon") so a
model trained on shapes is evaluated on the same sentence shapes as the real benchmark.
"""

from __future__ import annotations

import random
from collections import Counter

from .scenes import RELATIONS, geneval_relations, random_color
from .world import BACKGROUND, SHAPES, Scene, ShapeObject

GENEVAL_TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "color_attr", "position")

NUMBER_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three", 4: "four"}

# GenEval's counting prompts ask for two to four objects.
COUNT_RANGE: tuple[int, int] = (2, 4)


def with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def plural(shape: str) -> str:
    return shape + "s"


def counted(count: int, phrase: str) -> str:
    """The phrase with its count: an article for one object ("a red circle"), a number word for more."""
    return with_article(phrase) if count == 1 else f"{NUMBER_WORDS[count]} {plural(phrase)}"


def object_phrase(obj: ShapeObject) -> str:
    return with_article(f"{obj.color} {obj.shape}")


def join_list(phrases: list[str]) -> str:
    if len(phrases) <= 2:
        return " and ".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


# --- GenEval prompt specs -------------------------------------------------------------------------------------


def make_prompt(task: str, rng: random.Random) -> dict:
    """A random prompt spec for a GenEval task, as a GenEval metadata dict (tag, include, [exclude], prompt)."""
    if task == "single_object":
        shape = rng.choice(SHAPES)
        return _spec(task, [{"class": shape, "count": 1}], f"a photo of {with_article(shape)}")
    if task == "two_object":
        shape_a, shape_b = rng.sample(SHAPES, 2)
        include = [{"class": shape_a, "count": 1}, {"class": shape_b, "count": 1}]
        return _spec(task, include, f"a photo of {with_article(shape_a)} and {with_article(shape_b)}")
    if task == "counting":
        shape, count = rng.choice(SHAPES), rng.randint(*COUNT_RANGE)
        # GenEval's exclude clause turns "at least k" into "exactly k".
        exclude = [{"class": shape, "count": count + 1}]
        return _spec(task, [{"class": shape, "count": count}], f"a photo of {counted(count, shape)}", exclude)
    if task == "colors":
        shape, color = rng.choice(SHAPES), random_color(rng)
        prompt = f"a photo of {with_article(f'{color} {shape}')}"
        return _spec(task, [{"class": shape, "count": 1, "color": color}], prompt)
    if task == "color_attr":
        shape_a, shape_b = rng.sample(SHAPES, 2)
        color_a = random_color(rng)
        color_b = random_color(rng, exclude=[color_a])  # GenEval never repeats a colour within a prompt
        include = [{"class": shape_a, "count": 1, "color": color_a}, {"class": shape_b, "count": 1, "color": color_b}]
        prompt = f"a photo of {with_article(f'{color_a} {shape_a}')} and {with_article(f'{color_b} {shape_b}')}"
        return _spec(task, include, prompt)
    if task == "position":
        target, subject = rng.sample(SHAPES, 2)
        relation = rng.choice(RELATIONS)
        include = [{"class": target, "count": 1}, {"class": subject, "count": 1, "position": [relation, 0]}]
        return _spec(task, include, f"a photo of {with_article(subject)} {relation} {with_article(target)}")
    raise ValueError(f"unknown GenEval task {task!r}; expected one of {', '.join(GENEVAL_TASKS)}")


def _spec(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    spec = {"tag": tag, "include": include}
    if exclude is not None:
        spec["exclude"] = exclude
    spec["prompt"] = prompt
    return spec


# --- scene descriptions ---------------------------------------------------------------------------------------


def _object_groups(scene: Scene) -> Counter:
    """Objects counted by `(colour, shape)`, in order of first appearance."""
    return Counter((obj.color, obj.shape) for obj in scene.objects)


def _group_phrases(scene: Scene) -> list[str]:
    return [counted(count, f"{color} {shape}") for (color, shape), count in _object_groups(scene).items()]


def _spatial_phrase(scene: Scene, rng: random.Random) -> str | None:
    """A "<object> <relation> <object>" phrase for a two-object scene whose GenEval relation holds, else None."""
    if len(scene.objects) != 2:
        return None
    subject, target = rng.sample(scene.objects, 2)
    relations = geneval_relations(subject, target)
    if not relations:
        return None
    relation = rng.choice(sorted(relations))
    return f"{object_phrase(subject)} {relation} {object_phrase(target)}"


def describe(scene: Scene, rng: random.Random) -> str:
    """A true free-form caption: every object with its colour, exact counts, spatial words only where they hold."""
    if not scene.objects:
        raise ValueError("cannot describe an empty scene")
    phrases = _group_phrases(scene)
    rng.shuffle(phrases)
    body = join_list(phrases)
    spatial = _spatial_phrase(scene, rng)
    if spatial is not None and rng.random() < 0.5:
        body = spatial
    count = len(scene.objects)
    framings = [body, f"a photo of {body}", f"{NUMBER_WORDS[count]} {'shape' if count == 1 else 'shapes'}: {body}"]
    if tuple(scene.background) == BACKGROUND:
        framings.append(f"{body} on a grey background")
    return rng.choice(framings)


def metadata_for_scene(scene: Scene) -> dict:
    """GenEval-format metadata that a scene, and only an image matching it, satisfies.

    Each present class is required with its exact count (include `count`, exclude `count + 1`), with its colour
    when all its objects share one; absent classes are excluded so extra objects fail too.
    """
    if not scene.objects:
        raise ValueError("an empty scene has no GenEval metadata")
    include, exclude = [], []
    for shape in SHAPES:
        colors = [obj.color for obj in scene.objects if obj.shape == shape]
        if not colors:
            exclude.append({"class": shape, "count": 1})
            continue
        requirement = {"class": shape, "count": len(colors)}
        if len(set(colors)) == 1:
            requirement["color"] = colors[0]
        include.append(requirement)
        exclude.append({"class": shape, "count": len(colors) + 1})
    return _spec("scene", include, f"a photo of {join_list(_group_phrases(scene))}", exclude)
