import json
import random
import re
from collections import Counter

import pytest
from mmgen.data_engine.shapes.captions import (
    GENEVAL_TASKS,
    NUMBER_WORDS,
    describe,
    make_prompt,
    metadata_for_scene,
)
from mmgen.data_engine.shapes.scenes import RELATIONS, free_scene, geneval_relations
from mmgen.data_engine.shapes.world import COLORS, SHAPES, Scene, ShapeObject

GENEVAL_METADATA = "/work/shared/benchmarks/geneval/evaluation_metadata.jsonl"


def test_prompts_match_geneval_phrasing():
    cases = {
        "single_object": r"a photo of an? (\w+)",
        "two_object": r"a photo of an? (\w+) and an? (\w+)",
        "counting": r"a photo of (two|three|four) (\w+)s",
        "colors": r"a photo of an? (\w+) (\w+)",
        "color_attr": r"a photo of an? (\w+) (\w+) and an? (\w+) (\w+)",
        "position": r"a photo of an? (\w+) (left of|right of|above|below) an? (\w+)",
    }
    rng = random.Random(0)
    for task, pattern in cases.items():
        for _ in range(30):
            spec = make_prompt(task, rng)
            assert spec["tag"] == task
            assert re.fullmatch(pattern, spec["prompt"]), spec["prompt"]


def test_prompt_specs_match_geneval_structure():
    rng = random.Random(1)
    single = make_prompt("single_object", rng)
    assert list(single) == ["tag", "include", "prompt"]
    assert single["include"] == [{"class": single["include"][0]["class"], "count": 1}]

    counting = make_prompt("counting", rng)
    (req,) = counting["include"]
    assert 2 <= req["count"] <= 4
    assert counting["exclude"] == [{"class": req["class"], "count": req["count"] + 1}]
    assert counting["prompt"] == f"a photo of {NUMBER_WORDS[req['count']]} {req['class']}s"

    attr = make_prompt("color_attr", rng)
    first, second = attr["include"]
    assert first["class"] != second["class"] and first["color"] != second["color"]
    assert {first["color"], second["color"]} <= set(COLORS)

    position = make_prompt("position", rng)
    target, subject = position["include"]
    relation, index = subject["position"]
    assert index == 0 and relation in RELATIONS and target["class"] != subject["class"]
    assert position["prompt"] == f"a photo of a {subject['class']} {relation} a {target['class']}"


def test_articles_follow_geneval():
    rng = random.Random(3)
    prompts = {make_prompt("colors", rng)["prompt"] for _ in range(400)}
    assert "a photo of an orange circle" in prompts
    assert not any(p.startswith("a photo of a orange") for p in prompts)


def test_spec_keys_match_real_geneval_lines():
    with open(GENEVAL_METADATA) as f:
        real = {}
        for line in f:
            row = json.loads(line)
            real.setdefault(row["tag"], row)
    rng = random.Random(2)
    for task in GENEVAL_TASKS:
        spec = make_prompt(task, rng)
        assert list(spec) == list(real[task]), task
        assert [sorted(r) for r in spec["include"]] == [sorted(r) for r in real[task]["include"]], task


@pytest.mark.parametrize("seed", range(3))
def test_descriptions_are_true(seed):
    rng = random.Random(seed)
    phrasing_starts = set()
    for _ in range(150):
        scene = free_scene(rng)
        caption = describe(scene, rng)
        phrasing_starts.add(caption.split(" ")[0])
        counts = Counter((obj.color, obj.shape) for obj in scene.objects)
        for (color, shape), count in counts.items():
            phrase = f"{color} {shape}" if count == 1 else f"{NUMBER_WORDS[count]} {color} {shape}s"
            assert re.search(rf"\b{phrase}\b", caption), (caption, scene)
        # No colour/shape pair is mentioned that the scene lacks.
        mentioned = re.findall(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", caption)
        assert set(mentioned) == set(counts), caption
        relation = next((r for r in RELATIONS if f" {r} " in caption), None)
        if relation is not None:
            subject, target = _spatial_pair(scene, caption, relation)
            assert relation in geneval_relations(subject, target)
    assert len(phrasing_starts) >= 3


def _spatial_pair(scene: Scene, caption: str, relation: str) -> tuple[ShapeObject, ShapeObject]:
    before, after = caption.split(f" {relation} ")
    first = re.findall(rf"({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", before)[-1]
    second = re.findall(rf"({'|'.join(COLORS)}) ({'|'.join(SHAPES)})", after)[0]
    lookup = {(obj.color, obj.shape): obj for obj in scene.objects}
    return lookup[first], lookup[second]


def test_spatial_words_only_when_relation_holds():
    red_circle = ShapeObject("circle", "red", 0.3, 0.5, 0.3)
    side_by_side = Scene(objects=(red_circle, ShapeObject("square", "blue", 0.62, 0.5, 0.3)))
    assert geneval_relations(side_by_side.objects[1], red_circle) == {"right of"}
    rng = random.Random(0)
    captions = {describe(side_by_side, rng).removeprefix("a photo of ") for _ in range(60)}
    assert {"a blue square right of a red circle", "a red circle left of a blue square"} <= captions
    assert not any(" above " in c or " below " in c for c in captions)

    # Offsets inside GenEval's 0.1 * (box sizes) threshold: no relation holds, so no spatial word may appear.
    nearly_coincident = Scene(objects=(red_circle, ShapeObject("square", "blue", 0.33, 0.52, 0.3)))
    assert geneval_relations(nearly_coincident.objects[1], red_circle) == set()
    assert not any(f" {r} " in describe(nearly_coincident, rng) for r in RELATIONS for _ in range(30))


def test_metadata_for_scene():
    scene = Scene(
        objects=(
            ShapeObject("star", "red", 0.2, 0.2, 0.25),
            ShapeObject("star", "red", 0.8, 0.2, 0.25),
            ShapeObject("circle", "blue", 0.2, 0.8, 0.25),
            ShapeObject("circle", "green", 0.8, 0.8, 0.25),
        )
    )
    meta = metadata_for_scene(scene)
    assert meta["tag"] == "scene"
    assert meta["include"] == [{"class": "circle", "count": 2}, {"class": "star", "count": 2, "color": "red"}]
    assert {"class": "circle", "count": 3} in meta["exclude"]
    assert {"class": "star", "count": 3} in meta["exclude"]
    assert {"class": "square", "count": 1} in meta["exclude"]
    assert len(meta["exclude"]) == len(SHAPES)
    assert meta["prompt"] == "a photo of two red stars, a blue circle and a green circle"
