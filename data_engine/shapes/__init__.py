"""The procedural shapes world: scenes, GenEval-style prompts and captions, edits and the benchmark.

Dataset building lives in `.dataset` and is not imported here, so importing the world stays free of the
`datasets` import cost.
"""

from .benchmark import load_benchmark, write_benchmark
from .captions import GENEVAL_TASKS, describe, make_prompt, metadata_for_scene
from .edits import EDIT_TYPES, EditTriplet, make_edit
from .scenes import SceneSamplingError, free_scene, geneval_relations, scene_for_prompt
from .world import COLORS, SHAPES, Scene, ShapeObject, render

__all__ = [
    "COLORS",
    "EDIT_TYPES",
    "GENEVAL_TASKS",
    "SHAPES",
    "EditTriplet",
    "Scene",
    "SceneSamplingError",
    "ShapeObject",
    "describe",
    "free_scene",
    "geneval_relations",
    "load_benchmark",
    "make_edit",
    "make_prompt",
    "metadata_for_scene",
    "render",
    "scene_for_prompt",
    "write_benchmark",
]
