"""GenEval's scoring rules on hand-built detections: each rule's pass and fail, edges included."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from mmgen.eval.detectors import Detection, Detections
from mmgen.eval.geneval import (
    GENEVAL_TASKS,
    GenEvalConfig,
    evaluate_image,
    keep_confident,
    relative_position,
    score_results,
)
from PIL import Image

IMAGE = Image.new("RGB", (64, 64), (128, 128, 128))


def obj(x: float, y: float, score: float = 0.95, color: str | None = None, size: float = 10.0) -> Detection:
    """A detection centred at (x, y) with a `size` x `size` box."""
    half = size / 2
    return Detection(box=(x - half, y - half, x + half, y + half), score=score, color=color)


def single(classname: str, color: str | None = None) -> dict:
    clause = {"class": classname, "count": 1} | ({"color": color} if color else {})
    return {"tag": "colors" if color else "single_object", "include": [clause], "prompt": f"a photo of a {classname}"}


def counting(classname: str, count: int) -> dict:
    return {"tag": "counting", "include": [{"class": classname, "count": count}],
            "exclude": [{"class": classname, "count": count + 1}], "prompt": f"a photo of {count} {classname}s"}


def position(classname: str, relation: str, target: str) -> dict:
    return {"tag": "position", "include": [{"class": target, "count": 1},
                                           {"class": classname, "count": 1, "position": [relation, 0]}],
            "prompt": f"a photo of a {classname} {relation} a {target}"}


def two(first: str, second: str, first_color: str | None = None, second_color: str | None = None) -> dict:
    clauses = [{"class": name, "count": 1} | ({"color": color} if color else {})
               for name, color in ((first, first_color), (second, second_color))]
    tag = "color_attr" if first_color else "two_object"
    return {"tag": tag, "include": clauses, "prompt": f"a photo of a {first} and a {second}"}


@dataclass
class Case:
    name: str
    metadata: dict
    objects: dict[str, list[Detection]]
    correct: bool
    reason: str = ""  # expected reason exactly ("" when correct)
    config: GenEvalConfig = field(default_factory=GenEvalConfig)


CASES = [
    # Presence and the confidence threshold (strictly above 0.3; 0.9 for counting).
    Case("single present", single("cat"), {"cat": [obj(32, 32, 0.5)]}, True),
    Case("single absent", single("cat"), {}, False, "expected cat>=1, found 0"),
    Case("single wrong class", single("cat"), {"dog": [obj(32, 32)]}, False, "expected cat>=1, found 0"),
    Case("score at threshold dropped", single("cat"), {"cat": [obj(32, 32, 0.3)]}, False,
         "expected cat>=1, found 0"),
    Case("score just above threshold kept", single("cat"), {"cat": [obj(32, 32, 0.31)]}, True),
    Case("two objects present", two("cat", "dog"), {"cat": [obj(10, 10)], "dog": [obj(50, 50)]}, True),
    Case("two objects one missing", two("cat", "dog"), {"cat": [obj(10, 10)]}, False, "expected dog>=1, found 0"),
    Case("two objects both missing", two("cat", "dog"), {}, False,
         "expected cat>=1, found 0\nexpected dog>=1, found 0"),
    # Counting: include k and exclude k + 1 make it exact, with the 0.9 threshold.
    Case("count exact", counting("cat", 2), {"cat": [obj(10, 10), obj(50, 50)]}, True),
    Case("count too few", counting("cat", 2), {"cat": [obj(10, 10)]}, False, "expected cat>=2, found 1"),
    Case("count too many", counting("cat", 2), {"cat": [obj(10, 10), obj(30, 30), obj(50, 50)]}, False,
         "expected cat<3, found 3"),
    Case("count ignores scores under 0.9", counting("cat", 2),
         {"cat": [obj(10, 10), obj(30, 30), obj(50, 50, 0.85)]}, True),
    Case("count at 0.9 is not above it", counting("cat", 2), {"cat": [obj(10, 10), obj(50, 50, 0.9)]}, False,
         "expected cat>=2, found 1"),
    Case("0.85 counts outside the counting task", two("cat", "dog"),
         {"cat": [obj(10, 10, 0.85)], "dog": [obj(50, 50, 0.85)]}, True),
    Case("at most 16 objects per class", counting("cat", 16), {"cat": [obj(i, i) for i in range(20)]}, True),
    Case("more objects when max_objects allows", counting("cat", 16), {"cat": [obj(i, i) for i in range(20)]},
         False, "expected cat<17, found 20", GenEvalConfig(max_objects=20)),
    Case("no NMS by default", counting("cat", 2), {"cat": [obj(20, 20), obj(21, 20)]}, True),
    Case("NMS merges overlapping boxes", counting("cat", 2), {"cat": [obj(20, 20), obj(21, 20)]}, False,
         "expected cat>=2, found 1", GenEvalConfig(nms_threshold=0.5)),
    # Colour: only the `count` most confident objects are checked.
    Case("colour right", single("cat", "red"), {"cat": [obj(32, 32, color="red")]}, True),
    Case("colour wrong", single("cat", "red"), {"cat": [obj(32, 32, color="blue")]}, False,
         "expected red cat>=1, found 0 red; and 1 blue"),
    Case("colour of the most confident decides", single("cat", "red"),
         {"cat": [obj(10, 10, 0.6, color="blue"), obj(50, 50, 0.9, color="red")]}, True),
    Case("less confident right colour ignored", single("cat", "red"),
         {"cat": [obj(10, 10, 0.9, color="blue"), obj(50, 50, 0.6, color="red")]}, False,
         "expected red cat>=1, found 0 red; and 1 blue"),
    Case("colour needs every counted object", {"tag": "colors", "prompt": "two red cats",
                                               "include": [{"class": "cat", "count": 2, "color": "red"}]},
         {"cat": [obj(10, 10, color="white"), obj(50, 50, color="red")]}, False,
         "expected red cat>=2, found 1 red; and 1 red, 1 white"),
    Case("colour attributes both right", two("cat", "dog", "pink", "brown"),
         {"cat": [obj(10, 10, color="pink")], "dog": [obj(50, 50, color="brown")]}, True),
    Case("colour attributes swapped", two("cat", "dog", "pink", "brown"),
         {"cat": [obj(10, 10, color="brown")], "dog": [obj(50, 50, color="pink")]}, False,
         "expected pink cat>=1, found 0 pink; and 1 brown\nexpected brown dog>=1, found 0 brown; and 1 pink"),
    # Position: dog relative to the cat (the target, include clause 0). Boxes are 10 x 10, so the centre offset is
    # shrunk by 0.1 * (10 + 10) = 2 px per axis, and a relation needs the shrunk offset > half the full one.
    Case("left of", position("dog", "left of", "cat"), {"cat": [obj(40, 32)], "dog": [obj(20, 32)]}, True),
    Case("left of but right", position("dog", "left of", "cat"), {"cat": [obj(20, 32)], "dog": [obj(40, 32)]},
         False, "expected dog left of target, found right of target"),
    Case("right of", position("dog", "right of", "cat"), {"cat": [obj(20, 32)], "dog": [obj(40, 32)]}, True),
    Case("right of but left", position("dog", "right of", "cat"), {"cat": [obj(40, 32)], "dog": [obj(20, 32)]},
         False, "expected dog right of target, found left of target"),
    Case("above", position("dog", "above", "cat"), {"cat": [obj(32, 45)], "dog": [obj(32, 15)]}, True),
    Case("above but below", position("dog", "above", "cat"), {"cat": [obj(32, 15)], "dog": [obj(32, 45)]}, False,
         "expected dog above target, found below target"),
    Case("below", position("dog", "below", "cat"), {"cat": [obj(32, 15)], "dog": [obj(32, 45)]}, True),
    Case("below but above", position("dog", "below", "cat"), {"cat": [obj(32, 45)], "dog": [obj(32, 15)]}, False,
         "expected dog below target, found above target"),
    Case("inside the margin: no relation", position("dog", "right of", "cat"),
         {"cat": [obj(30, 32)], "dog": [obj(32, 32)]}, False, "expected dog right of target, found  target"),
    Case("offset 4 px is exactly half after the margin", position("dog", "right of", "cat"),
         {"cat": [obj(30, 32)], "dog": [obj(34, 32)]}, False, "expected dog right of target, found  target"),
    Case("offset 4.5 px is past the margin", position("dog", "right of", "cat"),
         {"cat": [obj(30, 32)], "dog": [obj(34.5, 32)]}, True),
    Case("diagonal gives both relations (right)", position("dog", "right of", "cat"),
         {"cat": [obj(20, 20)], "dog": [obj(40, 40)]}, True),
    Case("diagonal gives both relations (below)", position("dog", "below", "cat"),
         {"cat": [obj(20, 20)], "dog": [obj(40, 40)]}, True),
    Case("mostly horizontal is not below", position("dog", "below", "cat"),
         {"cat": [obj(20, 30)], "dog": [obj(40, 34)]}, False, "expected dog below target, found right of target"),
    Case("missing target", position("dog", "right of", "cat"), {"dog": [obj(40, 32)]}, False,
         "expected cat>=1, found 0\nno target for dog to be right of"),
    Case("target failing its colour is no target",
         {"tag": "position", "prompt": "a dog right of a red cat",
          "include": [{"class": "cat", "count": 1, "color": "red"},
                      {"class": "dog", "count": 1, "position": ["right of", 0]}]},
         {"cat": [obj(20, 32, color="blue")], "dog": [obj(40, 32)]}, False,
         "expected red cat>=1, found 0 red; and 1 blue\nno target for dog to be right of"),
    Case("only the most confident target counts", position("dog", "right of", "cat"),
         {"cat": [obj(20, 32, 0.9), obj(60, 32, 0.5)], "dog": [obj(40, 32)]}, True),
    Case("missing positioned object", position("dog", "right of", "cat"), {"cat": [obj(20, 32)]}, False,
         "expected dog>=1, found 0"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rule(case: Case):
    detections = Detections(width=64, height=64, by_class={name: list(found) for name, found in case.objects.items()})
    record = evaluate_image(IMAGE, detections, case.metadata, config=case.config)
    assert (record["correct"], record["reason"]) == (case.correct, case.reason)
    assert record["tag"] == case.metadata["tag"] and record["prompt"] == case.metadata["prompt"]


def test_colour_classifier_overrides_detection_colours():
    class LeftIsRed:
        def classify(self, image, detection, classname):
            return "red" if detection.box[0] < 32 else "green"

    detections = Detections(64, 64, {"cat": [obj(10, 32, color="blue")]})
    assert evaluate_image(IMAGE, detections, single("cat", "red"), LeftIsRed())["correct"]
    assert not evaluate_image(IMAGE, detections, single("cat", "red"))["correct"]


def test_detection_without_colour_needs_a_classifier():
    detections = Detections(64, 64, {"cat": [obj(10, 32)]})
    with pytest.raises(ValueError, match="carries no colour"):
        evaluate_image(IMAGE, detections, single("cat", "red"))


@pytest.mark.parametrize(("offset", "expected"), [
    ((20, 0), {"right of"}), ((-20, 0), {"left of"}), ((0, -20), {"above"}), ((0, 20), {"below"}),
    ((20, 20), {"right of", "below"}), ((-20, -20), {"left of", "above"}), ((1, 1), set()), ((0, 0), set()),
])
def test_relative_position(offset, expected):
    target = (20.0, 20.0, 30.0, 30.0)
    moved = (20.0 + offset[0], 20.0 + offset[1], 30.0 + offset[0], 30.0 + offset[1])
    assert relative_position(moved, target) == expected


def test_keep_confident_orders_by_score_and_drops_empty_classes():
    detections = Detections(64, 64, {"cat": [obj(10, 10, 0.5), obj(20, 20, 0.8), obj(30, 30, 0.2)],
                                     "dog": [obj(40, 40, 0.1)]})
    kept = keep_confident(detections, "two_object")
    assert [d.score for d in kept["cat"]] == [0.8, 0.5]
    assert "dog" not in kept


def test_score_results_averages_tasks_not_images():
    records = ([{"tag": "counting", "prompt": "p1", "correct": True}] * 3
               + [{"tag": "counting", "prompt": "p2", "correct": False}]
               + [{"tag": "position", "prompt": "p3", "correct": False}]
               + [{"tag": "scene", "prompt": "p4", "correct": True}] * 10)
    summary = score_results(records)
    assert summary["tasks"] == {"counting": 0.75, "position": 0.0}
    assert summary["overall"] == pytest.approx(0.375)  # mean of tasks; 4/5 images would give 0.8
    assert summary["other_tasks"] == {"scene": 1.0}
    assert summary["images"] == {"counting": 4, "position": 1, "scene": 10}
    assert summary["image_accuracy"] == pytest.approx(13 / 15)
    assert summary["prompt_accuracy"] == pytest.approx(2 / 4)


def test_score_results_over_all_six_tasks():
    records = [{"tag": tag, "prompt": tag, "correct": index % 2 == 0} for index, tag in enumerate(GENEVAL_TASKS)]
    assert score_results(records)["overall"] == pytest.approx(0.5)


def test_mmdet_conversion_round_trip():
    mask = np.zeros((64, 64), dtype=bool)
    mask[5:15, 5:15] = True
    detections = Detections(64, 64, {"cat": [Detection((5, 5, 15, 15), 0.9, mask)]})
    boxes, masks = detections.to_mmdet(["dog", "cat"])
    assert boxes[0].shape == (0, 5) and masks[0].shape == (0, 64, 64)
    assert boxes[1].tolist() == [[5, 5, 15, 15, pytest.approx(0.9)]] and masks[1].sum() == 100
    back = Detections.from_mmdet(["dog", "cat"], boxes, masks, 64, 64)
    assert back.get("dog") == [] and back.get("cat")[0].box == (5, 5, 15, 15)
