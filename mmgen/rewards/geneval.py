"""Compositional rewards from GenEval's rules: `geneval` (partial credit per clause) and `shapes` (all or nothing).

Both read the prompt's GenEval clauses from `metadata` (`tag`, `include`, optional `exclude`: the format of GenEval's
evaluation_metadata.jsonl and of the shapes benchmark). `shapes` is the benchmark's own verdict with the exact
shapes detector, so the training reward and the held-out score mean the same thing. `geneval` gives the share of
checks that hold, per clause (count, then colour and position where asked; "a red cube and a blue ball" with only
the cube right earns 0.5, a blue cube and nothing else 0.25): a denser signal for RL, and it
takes any detector the evaluator takes (`shapes`, `owlv2:PATH`, `grounding-dino:PATH`) plus an optional colour
classifier (`clip:PATH`).
"""

from __future__ import annotations

from mmgen.errors import UserError
from mmgen.rewards.registry import register_reward

REQUIRED_KEYS = ("tag", "include")


@register_reward("geneval")
def geneval_reward(detector: str = "shapes", color_classifier: str | None = None):
    from mmgen.eval.detectors import (
        check_color_classifier_spec,
        check_detector_spec,
        load_color_classifier,
        load_detector,
    )
    from mmgen.eval.detectors.base import DetectedColor
    from mmgen.eval.geneval.rules import clause_credit, keep_confident

    check_detector_spec(detector)
    if color_classifier:
        check_color_classifier_spec(color_classifier)
    judge = load_detector(detector)
    colors = load_color_classifier(color_classifier) if color_classifier else DetectedColor()

    def geneval(prompts, images, metadata):
        scores = []
        for image, meta in zip(images, metadata, strict=True):
            _check_clauses(meta)
            if image is None:
                scores.append(0.0)
                continue
            objects = keep_confident(judge.detect(image), meta["tag"])
            credit = clause_credit(image, objects, meta, colors)
            scores.append(sum(credit) / len(credit) if credit else 1.0)
        return scores

    return geneval


@register_reward("shapes")
def shapes_reward():
    from mmgen.eval.detectors.shapes import ShapesDetector
    from mmgen.eval.geneval.rules import evaluate_image

    detector = ShapesDetector()

    def shapes(prompts, images, metadata):
        scores = []
        for image, meta in zip(images, metadata, strict=True):
            _check_clauses(meta)
            correct = image is not None and evaluate_image(image, detector.detect(image), meta)["correct"]
            scores.append(float(correct))
        return scores

    return shapes


def _check_clauses(meta: dict) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in meta]
    if missing:
        raise UserError(f"prompt {meta.get('prompt', '?')!r} has no GenEval {' / '.join(missing)} in its metadata; "
                        "the geneval and shapes rewards need GenEval clauses (tag, include, exclude) per prompt")
