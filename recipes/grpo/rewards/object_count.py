"""An example user reward for `mmgen train` GRPO recipes: does the image hold as many objects as the prompt asks?

Any function `(prompts, images, metadata) -> list[float]` works as a reward. Name it in a recipe as
`recipes/grpo/rewards/object_count.py:exact_count` (a path relative to where you run mmgen) or, once it is in an
installed package, as `package.module:exact_count`. Keyword options come from the recipe's `options:`.

`images[i]` is a PIL image, or None when the completion was not a valid image span; `metadata[i]` holds what the
prompt set gives for prompt i (here: GenEval clauses, whose `include` entries carry a `count`).
"""

from mmgen.eval.detectors.shapes import ShapesDetector

_DETECTOR = ShapesDetector()  # built once, at import


def exact_count(prompts, images, metadata, partial: bool = True):
    """1 when the detected object count equals the prompt's total count; with `partial`, 1 / (1 + |difference|)."""
    scores = []
    for image, meta in zip(images, metadata, strict=True):
        if image is None:
            scores.append(0.0)
            continue
        wanted = sum(clause["count"] for clause in meta.get("include", []))
        found = len(_DETECTOR.detect(image))
        miss = abs(found - wanted)
        scores.append(1.0 / (1.0 + miss) if partial else float(miss == 0))
    return scores
