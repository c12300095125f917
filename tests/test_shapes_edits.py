import random
import re
from collections import Counter

import pytest
from mmgen.data_engine.shapes.edits import EDIT_TYPES, MIN_MOVE, MIN_RESIZE_FACTOR, EditTriplet, make_edit
from mmgen.data_engine.shapes.scenes import geneval_relations, is_valid
from mmgen.data_engine.shapes.world import COLORS, SHAPES, Scene, ShapeObject

NAME = re.compile(rf"the (?:({'|'.join(COLORS)}) )?({'|'.join(SHAPES)})\b")


def _named(scene: Scene, instruction: str) -> list[int]:
    """Indices of the objects an instruction names; each name must pick out exactly one object."""
    indices = []
    for color, shape in NAME.findall(instruction):
        matches = [i for i, o in enumerate(scene.objects) if o.shape == shape and (not color or o.color == color)]
        assert len(matches) == 1, (instruction, scene)
        indices.append(matches[0])
    return indices


def _edits(edit_type: str, n: int = 40) -> list[EditTriplet]:
    rng = random.Random(edit_type)
    return [make_edit(rng, edit_type) for _ in range(n)]


def _unchanged_except(edit: EditTriplet, changed: set[int]) -> None:
    for i, (before, after) in enumerate(zip(edit.source.objects, edit.target.objects, strict=True)):
        if i not in changed:
            assert before == after


@pytest.mark.parametrize("edit_type", EDIT_TYPES)
def test_edits_are_valid_and_seeded(edit_type):
    for edit in _edits(edit_type):
        assert edit.edit_type == edit_type
        assert is_valid(edit.source) and is_valid(edit.target)
        assert edit.source != edit.target
    assert _edits(edit_type, 5) == _edits(edit_type, 5)


def test_recolour_changes_one_colour():
    for edit in _edits("recolour"):
        (index,) = _named(edit.source, edit.instruction)
        before, after = edit.source.objects[index], edit.target.objects[index]
        assert after.color != before.color and after.color in edit.instruction.split()
        assert after == ShapeObject(before.shape, after.color, before.x, before.y, before.size)
        _unchanged_except(edit, {index})


def test_move_shifts_one_object_in_the_named_direction():
    words = {
        "left": "left of",
        "right": "right of",
        "up": "above",
        "upwards": "above",
        "higher": "above",
        "down": "below",
        "downwards": "below",
        "lower": "below",
    }
    for edit in _edits("move"):
        (index,) = _named(edit.source, edit.instruction)
        before, after = edit.source.objects[index], edit.target.objects[index]
        relation = words[edit.instruction.split()[-1]]
        assert geneval_relations(after, before) == {relation}
        assert max(abs(after.x - before.x), abs(after.y - before.y)) >= MIN_MOVE
        assert (after.x == before.x) != (after.y == before.y)  # moved along exactly one axis
        assert (after.shape, after.color, after.size) == (before.shape, before.color, before.size)
        _unchanged_except(edit, {index})


def test_add_appends_one_new_object():
    for edit in _edits("add"):
        assert edit.target.objects[:-1] == edit.source.objects
        added = edit.target.objects[-1]
        assert f"{added.color} {added.shape}" in edit.instruction
        assert (added.color, added.shape) not in {(o.color, o.shape) for o in edit.source.objects}


def test_remove_drops_only_the_named_object():
    for edit in _edits("remove"):
        (index,) = _named(edit.source, edit.instruction)
        expected = edit.source.objects[:index] + edit.source.objects[index + 1 :]
        assert edit.target.objects == expected and expected


def test_resize_changes_only_the_size_in_the_named_direction():
    for edit in _edits("resize"):
        (index,) = _named(edit.source, edit.instruction)
        before, after = edit.source.objects[index], edit.target.objects[index]
        grow = any(word in edit.instruction for word in ("bigger", "larger", "enlarge", "scale up"))
        ratio = after.size / before.size
        assert ratio >= MIN_RESIZE_FACTOR if grow else ratio <= 1 / MIN_RESIZE_FACTOR
        assert after == ShapeObject(before.shape, before.color, before.x, before.y, after.size)
        _unchanged_except(edit, {index})


def test_swap_exchanges_two_positions():
    for edit in _edits("swap"):
        first, second = _named(edit.source, edit.instruction)
        a, b = edit.source.objects[first], edit.source.objects[second]
        new_a, new_b = edit.target.objects[first], edit.target.objects[second]
        assert (new_a.x, new_a.y, new_b.x, new_b.y) == (b.x, b.y, a.x, a.y)
        assert (new_a.shape, new_a.color, new_a.size) == (a.shape, a.color, a.size)
        assert (new_b.shape, new_b.color, new_b.size) == (b.shape, b.color, b.size)
        _unchanged_except(edit, {first, second})


def test_instructions_vary():
    for edit_type in EDIT_TYPES:
        openings = Counter(" ".join(e.instruction.split()[:2]) for e in _edits(edit_type))
        assert len(openings) >= 3, (edit_type, openings)


def test_ambiguous_objects_are_never_edited():
    twins = Scene(
        objects=(ShapeObject("circle", "red", 0.25, 0.5, 0.25), ShapeObject("circle", "red", 0.75, 0.5, 0.25))
    )
    with pytest.raises(ValueError, match="uniquely named"):
        make_edit(random.Random(0), "recolour", source=twins)
    scene = twins.with_objects((*twins.objects, ShapeObject("square", "blue", 0.5, 0.2, 0.25)))
    for seed in range(10):
        edit = make_edit(random.Random(seed), "remove", source=scene)
        assert "square" in edit.instruction
