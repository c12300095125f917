"""GenEval's scoring rules (evaluation/evaluate_images.py and summary_scores.py), over any `Detector`.

The official script is reimplemented rule for rule, including its quirks, so that scores computed with its own
Mask2Former + CLIP pipeline and with another detector plugged in here mean the same thing:

* detections are kept when their score is strictly above 0.3 (0.9 for the "counting" task), at most 16 per class
  by descending score, optionally de-duplicated by box IoU (threshold 1.0 = off, the official default);
* an include clause takes only the `count` most confident objects of its class: it fails when fewer exist, when
  fewer than `count` of those have the required colour, or when any of them is not in the required relation to
  every object the target clause matched (a target clause that failed matches nothing);
* an exclude clause fails when `count` or more objects of its class were kept;
* the summary averages image correctness per task, and the overall score is the mean of the task scores.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from mmgen.eval.detectors.base import ColorClassifier, DetectedColor, Detection, Detections
from PIL import Image

GENEVAL_TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# The order GenEval lists colour counts in its failure reasons.
GENEVAL_COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
                                   "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class GenEvalConfig:
    """The official script's `--options` and their defaults."""

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    nms_threshold: float = 1.0  # `max_overlap`: 1.0 keeps overlapping boxes of one class
    position_threshold: float = 0.1


DEFAULT_CONFIG = GenEvalConfig()


def keep_confident(detections: Detections, tag: str, config: GenEvalConfig = DEFAULT_CONFIG
                   ) -> dict[str, list[Detection]]:
    """The objects GenEval reasons about: per class, most confident first; classes left empty are absent."""
    threshold = config.counting_threshold if tag == "counting" else config.threshold
    kept: dict[str, list[Detection]] = {}
    for classname, found in detections.by_class.items():
        # Descending score; ties put the later detection first, as reversing a stable argsort does.
        ranked = [d for _, d in sorted(enumerate(found), key=lambda pair: (pair[1].score, pair[0]), reverse=True)]
        ranked = [d for d in ranked if d.score > threshold][: config.max_objects]
        chosen = []
        while ranked:
            best = ranked.pop(0)
            chosen.append(best)
            if config.nms_threshold != 1:
                ranked = [d for d in ranked if box_iou(best.box, d.box) < config.nms_threshold]
        if chosen:
            kept[classname] = chosen
    return kept


def box_iou(box_a: tuple[float, ...], box_b: tuple[float, ...]) -> float:
    """IoU in GenEval's inclusive-pixel convention (a box spans `x2 - x1 + 1` pixels)."""
    def area(box):
        return max(box[2] - box[0] + 1, 0) * max(box[3] - box[1] + 1, 0)

    inter = area((max(box_a[0], box_b[0]), max(box_a[1], box_b[1]), min(box_a[2], box_b[2]), min(box_a[3], box_b[3])))
    union = area(box_a) + area(box_b) - inter
    return inter / union if union else 0.0


def relative_position(box_a: tuple[float, ...], box_b: tuple[float, ...], threshold: float = 0.1) -> set[str]:
    """Where A lies relative to B: a subset of RELATIONS, empty when they are too close to tell.

    The centre offset is shrunk on each axis by `threshold` times the two boxes' summed extent on that axis; a
    relation holds when the shrunk offset, relative to the full offset's length, exceeds 0.5 along it (so a clear
    diagonal offset gives two relations).
    """
    a, b = np.asarray(box_a[:4], dtype=np.float64), np.asarray(box_b[:4], dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    extent = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    shrunk = np.maximum(np.abs(offset) - threshold * extent, 0) * np.sign(offset)
    if np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def evaluate(image: Image.Image, objects: dict[str, list[Detection]], metadata: dict,
             color_classifier: ColorClassifier, config: GenEvalConfig = DEFAULT_CONFIG) -> tuple[bool, str]:
    """Whether the kept `objects` satisfy the prompt's `metadata`, and GenEval's reasons when they do not."""
    reasons = [reason for reason in clause_failures(image, objects, metadata, color_classifier, config) if reason]
    return not reasons, "\n".join(reasons)


def clause_failures(image: Image.Image, objects: dict[str, list[Detection]], metadata: dict,
                    color_classifier: ColorClassifier, config: GenEvalConfig = DEFAULT_CONFIG) -> list[str | None]:
    """Per clause (includes, then excludes), why it fails, or None where it holds: GenEval's verdict is that all
    hold; the share that hold is a partial-credit reward."""
    failures: list[str | None] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname, count = req["class"], req["count"]
        found = objects.get(classname, [])[:count]
        failure = _include_failure(image, classname, req, found, matched_groups, color_classifier, config)
        failures.append(failure)
        matched_groups.append(None if failure else found)
    for req in metadata.get("exclude", []):
        found = objects.get(req["class"], [])
        too_many = len(found) >= req["count"]
        failures.append(f"expected {req['class']}<{req['count']}, found {len(found)}" if too_many else None)
    return failures


def clause_credit(image: Image.Image, objects: dict[str, list[Detection]], metadata: dict,
                  color_classifier: ColorClassifier, config: GenEvalConfig = DEFAULT_CONFIG) -> list[float]:
    """Per clause, the share of its checks that hold: an include clause checks the count, then (when asked) the
    colour and the position, each judged exactly as GenEval judges it; a clause whose count fails earns nothing
    (there is nothing to colour or place). An exclude clause is one check. A denser signal than the all-or-nothing
    verdict, for rewards: "a red circle" drawn as a blue circle earns 0.5."""
    credits: list[float] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname, count = req["class"], req["count"]
        found = objects.get(classname, [])[:count]
        failure = _include_failure(image, classname, req, found, matched_groups, color_classifier, config)
        matched_groups.append(None if failure else found)
        attributes = [key for key in ("color", "position") if key in req]
        if len(found) < count:
            credits.append(0.0)
            continue
        passed = 1 + sum(
            _include_failure(image, classname, {k: v for k, v in req.items() if k not in set(attributes) - {key}},
                             found, matched_groups[:-1], color_classifier, config) is None
            for key in attributes)
        credits.append(passed / (1 + len(attributes)))
    for req in metadata.get("exclude", []):
        credits.append(float(len(objects.get(req["class"], [])) < req["count"]))
    return credits


def _include_failure(image: Image.Image, classname: str, req: dict, found: list[Detection],
                     matched_groups: list[list[Detection] | None], color_classifier: ColorClassifier,
                     config: GenEvalConfig) -> str | None:
    """Why one include clause fails (count, then colour, then position), or None when it holds."""
    count = req["count"]
    if len(found) < count:
        return f"expected {classname}>={count}, found {len(found)}"
    if "color" in req:
        colors = [color_classifier.classify(image, detection, classname) for detection in found]
        wanted = req["color"]
        if colors.count(wanted) < count:
            tally = ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS if c in colors)
            return f"expected {wanted} {classname}>={count}, found {colors.count(wanted)} {wanted}; and {tally}"
    if "position" in req:
        relation, target = req["position"]
        if relation not in RELATIONS:
            raise ValueError(f"unknown relation {relation!r}; expected one of {', '.join(RELATIONS)}")
        if not 0 <= target < len(matched_groups):
            raise ValueError(f"position target {target} must name an earlier include clause")
        if matched_groups[target] is None:
            return f"no target for {classname} to be {relation}"
        for obj in found:
            for target_obj in matched_groups[target]:
                actual = relative_position(obj.box, target_obj.box, config.position_threshold)
                if relation not in actual:
                    # Sorted, where the official script prints the set in arbitrary order.
                    return f"expected {classname} {relation} target, found {' and '.join(sorted(actual))} target"
    return None


def evaluate_image(image: Image.Image, detections: Detections, metadata: dict,
                   color_classifier: ColorClassifier | None = None, config: GenEvalConfig = DEFAULT_CONFIG) -> dict:
    """One result record, as the official script writes per image (`metadata` and `details` left unserialised).

    Without a `color_classifier`, colours come from the detections themselves (detectors that know them).
    """
    objects = keep_confident(detections, metadata["tag"], config)
    correct, reason = evaluate(image, objects, metadata, color_classifier or DetectedColor(), config)
    return {
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": correct,
        "reason": reason,
        "metadata": metadata,
        "details": {name: [[*d.box, d.score] for d in found] for name, found in objects.items()},
    }


def score_results(records: Iterable[dict]) -> dict:
    """GenEval's summary: accuracy over images per task, overall = mean over the six GenEval tasks present.

    Tasks outside GenEval's six (e.g. the shapes world's "scene") are reported under `other_tasks` and left out of
    `overall`. `prompt_accuracy` counts a prompt correct when any of its images is.
    """
    by_task: dict[str, list[bool]] = defaultdict(list)
    by_prompt: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        by_task[record["tag"]].append(bool(record["correct"]))
        metadata = record.get("metadata", record.get("prompt"))
        key = metadata if isinstance(metadata, str) else json.dumps(metadata, sort_keys=True)
        by_prompt[key].append(bool(record["correct"]))
    if not by_task:
        raise ValueError("no results to score")
    accuracy = {tag: float(np.mean(values)) for tag, values in by_task.items()}
    tasks = {tag: accuracy[tag] for tag in GENEVAL_TASKS if tag in accuracy}
    all_images = [value for values in by_task.values() for value in values]
    return {
        "overall": float(np.mean(list(tasks.values()))) if tasks else None,
        "tasks": tasks,
        "other_tasks": {tag: value for tag, value in accuracy.items() if tag not in GENEVAL_TASKS},
        "images": {tag: len(values) for tag, values in by_task.items()},
        "image_accuracy": float(np.mean(all_images)),
        "prompt_accuracy": float(np.mean([any(values) for values in by_prompt.values()])),
    }
