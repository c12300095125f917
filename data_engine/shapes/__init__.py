"""The procedural shapes world: scenes, GenEval-style prompts and captions, edits, benchmark and datasets."""

from .benchmark import load_benchmark, write_benchmark
from .captions import GENEVAL_TASKS, describe, make_prompt, metadata_for_scene
from .dataset import build_shapes_dataset, write_shapes_dataset
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
    "build_shapes_dataset",
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
    "write_shapes_dataset",
]
