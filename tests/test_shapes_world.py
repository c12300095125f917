import random
from collections import Counter

import numpy as np
import pytest
from mmgen.data_engine.shapes import scenes
from mmgen.data_engine.shapes.benchmark import build_benchmark, load_benchmark
from mmgen.data_engine.shapes.captions import GENEVAL_TASKS, make_prompt
from mmgen.data_engine.shapes.scenes import (
    MIN_GAP,
    RELATIONS,
    SceneSamplingError,
    free_scene,
    geneval_relations,
    is_valid,
    position_scene,
    sample_scene,
    scene_for_prompt,
)
from mmgen.data_engine.shapes.world import BACKGROUND, COLORS, MAX_SIZE, MIN_SIZE, Scene, ShapeObject, render

PERPENDICULAR = {
    "left of": {"above", "below"},
    "right of": {"above", "below"},
    "above": {"left of", "right of"},
    "below": {"left of", "right of"},
}


@pytest.mark.parametrize("size", [32, 64, 256])
def test_render_size_and_colours(size):
    scene = Scene(objects=(ShapeObject("square", "red", 0.5, 0.5, 0.3),))
    pixels = np.asarray(render(scene, size))
    assert pixels.shape == (size, size, 3)
    assert tuple(pixels[size // 2, size // 2]) == COLORS["red"]
    assert tuple(pixels[0, 0]) == BACKGROUND


def test_render_empty_scene_is_background():
    assert np.all(np.asarray(render(Scene(), 32)) == BACKGROUND)


def test_free_scenes_are_valid():
    rng = random.Random(0)
    counts = Counter()
    for _ in range(200):
        scene = free_scene(rng)
        counts[len(scene.objects)] += 1
        assert scene.fits() and not scene.overlaps(MIN_GAP)
        assert all(MIN_SIZE <= obj.size <= MAX_SIZE for obj in scene.objects)
    assert set(counts) == {1, 2, 3, 4}


def test_sampling_is_seeded():
    assert free_scene(random.Random(7)) == free_scene(random.Random(7))


def test_impossible_request_raises_after_bounded_attempts(monkeypatch):
    # A gap wider than the image leaves no room for a second object.
    monkeypatch.setattr(scenes, "MIN_GAP", 1.0)
    monkeypatch.setattr(scenes, "MAX_SCENE_ATTEMPTS", 3)
    with pytest.raises(SceneSamplingError, match="could not place 2 objects"):
        sample_scene(random.Random(0), [("circle", "red"), ("star", "blue")])


def test_too_many_objects_rejected():
    with pytest.raises(ValueError):
        sample_scene(random.Random(0), [("circle", "red")] * 5)


def test_geneval_relations_follow_the_rule():
    a = ShapeObject("circle", "red", 0.5, 0.5, 0.2)
    assert geneval_relations(ShapeObject("circle", "blue", 0.1, 0.5, 0.2), a) == {"left of"}
    assert geneval_relations(ShapeObject("circle", "blue", 0.9, 0.5, 0.2), a) == {"right of"}
    assert geneval_relations(ShapeObject("circle", "blue", 0.5, 0.1, 0.2), a) == {"above"}  # y points down
    assert geneval_relations(ShapeObject("circle", "blue", 0.5, 0.9, 0.2), a) == {"below"}
    assert geneval_relations(ShapeObject("circle", "blue", 0.2, 0.2, 0.2), a) == {"left of", "above"}
    # Offsets within 0.1 * (sum of box sizes) are absorbed by the threshold: no relation.
    assert geneval_relations(ShapeObject("circle", "blue", 0.53, 0.5, 0.2), a) == set()


def _satisfies(scene: Scene, spec: dict) -> bool:
    """Whether an exactly known scene meets GenEval metadata: counts, colours, exclusions and positions."""
    by_class: dict[str, list[ShapeObject]] = {}
    for obj in scene.objects:
        by_class.setdefault(obj.shape, []).append(obj)
    matched = []
    for req in spec["include"]:
        found = by_class.get(req["class"], [])
        if len(found) < req["count"]:
            return False
        if "color" in req and sum(o.color == req["color"] for o in found) < req["count"]:
            return False
        if "position" in req:
            relation, target = req["position"]
            for obj in found:
                for other in matched[target]:
                    relations = geneval_relations(obj, other)
                    if relation not in relations or relations & PERPENDICULAR[relation]:
                        return False
        matched.append(found)
    return all(len(by_class.get(req["class"], [])) < req["count"] for req in spec.get("exclude", []))


@pytest.mark.parametrize("task", GENEVAL_TASKS)
def test_task_scenes_satisfy_their_prompts(task):
    rng = random.Random(task)
    for _ in range(40):
        spec = make_prompt(task, rng)
        scene = scene_for_prompt(spec, rng)
        assert is_valid(scene)
        assert _satisfies(scene, spec), (spec, scene)
        # Scenes hold exactly the prompted objects: nothing beyond the included counts.
        assert len(scene.objects) == sum(req["count"] for req in spec["include"])


@pytest.mark.parametrize("relation", RELATIONS)
def test_position_scenes_hold_only_the_wanted_relation(relation):
    rng = random.Random(relation)
    for _ in range(30):
        target, subject = position_scene(rng, "star", relation, "hexagon").objects
        assert (target.shape, subject.shape) == ("hexagon", "star")
        assert geneval_relations(subject, target) == {relation}


@pytest.mark.parametrize(("grid", "span"), [(4, 1), (8, 2), (5, 1)])
@pytest.mark.parametrize("task", GENEVAL_TASKS)
def test_grid_scenes_satisfy_their_prompts_on_whole_cells(task, grid, span):
    layout = scenes.Layout(grid=grid)
    assert layout.span == span  # the fewest cells the detector reads
    rng = random.Random(f"{task}:{grid}")
    for _ in range(20):
        spec = make_prompt(task, rng)
        scene = scene_for_prompt(spec, rng, layout)
        assert is_valid(scene) and _satisfies(scene, spec), (spec, scene)
        for obj in scene.objects:
            assert obj.size == pytest.approx(span / grid)
            for centre in (obj.x, obj.y):  # the object's edges fall on cell boundaries
                left = (centre - obj.size / 2) * grid
                assert left == pytest.approx(round(left)) and 0 <= round(left) <= grid - span


def test_grid_scenes_are_seeded_and_use_every_cell():
    layout = scenes.Layout(grid=4)
    first = [scenes.free_scene(random.Random(seed), layout=layout) for seed in range(200)]
    assert first == [scenes.free_scene(random.Random(seed), layout=layout) for seed in range(200)]
    cells = {(round(obj.x * 4 - 0.5), round(obj.y * 4 - 0.5)) for scene in first for obj in scene.objects}
    assert cells == {(x, y) for x in range(4) for y in range(4)}


@pytest.mark.parametrize(("grid", "span", "message"), [
    (1, None, "at least 2 cells"),
    (8, 1, "gives size 0.125"),
    (4, 2, "gives size 0.500"),
    (None, 2, "span needs a grid"),
])
def test_bad_grid_layouts_are_rejected(grid, span, message):
    with pytest.raises(ValueError, match=message):
        scenes.Layout(grid=grid, span=span)


def test_counting_scene_has_exact_count_of_one_class():
    spec = {"tag": "counting", "include": [{"class": "triangle", "count": 3}], "prompt": "a photo of three triangles"}
    scene = scene_for_prompt(spec, random.Random(1))
    assert [obj.shape for obj in scene.objects] == ["triangle"] * 3


def test_packaged_benchmark_is_current_and_true():
    rows = load_benchmark()
    assert rows == build_benchmark(per_task=100, seed=0), "regenerate with write_benchmark()"
    assert Counter(row["tag"] for row in rows) == {task: 100 for task in GENEVAL_TASKS}
    for row in rows:
        scene = Scene.from_dict(row["scene"])
        assert is_valid(scene) and _satisfies(scene, row)
    # Prompts repeat only once a task's prompt space is used up (single_object has just six prompts).
    for task, distinct in {"single_object": 6, "counting": 18, "colors": 60, "position": 100}.items():
        assert len({row["prompt"] for row in rows if row["tag"] == task}) == distinct
