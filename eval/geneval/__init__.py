"""GenEval: compositional prompts (objects, counts, colours, positions) judged by an object detector."""

from .rules import (
    DEFAULT_CONFIG,
    GENEVAL_COLORS,
    GENEVAL_TASKS,
    RELATIONS,
    GenEvalConfig,
    box_iou,
    evaluate,
    evaluate_image,
    keep_confident,
    relative_position,
    score_results,
)

__all__ = [
    "DEFAULT_CONFIG",
    "GENEVAL_COLORS",
    "GENEVAL_TASKS",
    "RELATIONS",
    "GenEvalConfig",
    "box_iou",
    "evaluate",
    "evaluate_image",
    "keep_confident",
    "relative_position",
    "score_results",
]
