"""`edit_consistency`: did the instructed change happen, and did everything else survive?

The score is the mean of two parts, each in [0, 1]:

* **preserve**: of the content the edit should leave alone, how much is still there;
* **change**: how much of the instructed change is visible.

Two ways to know what should change, taken from each prompt's metadata:

* shapes-world edits (`source_scene` and `target_scene`, as `mmgen data shapes --edits` writes them): both scenes
  are rendered and read by the exact detector; objects present in both are the content to preserve, objects only
  in the target must appear, objects only in the source must be gone. An object counts as present when the output
  holds one of the same class and colour with its centre within `position_tolerance` and its box size within
  `size_tolerance` (relative) of the reference. Extra objects in the output count against `preserve`.
* any other images (`source_image` and `target_image`, images or paths): pixels where source and target differ by
  more than `pixel_threshold` are the edit region; `preserve` is how close the output stays to the source outside
  it, `change` how close it comes to the target inside it (1 - mean absolute difference, in [0, 1]).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmgen.errors import UserError
from mmgen.rewards.registry import register_reward


@register_reward("edit_consistency")
def edit_consistency_reward(position_tolerance: float = 0.08, size_tolerance: float = 0.3,
                            pixel_threshold: float = 0.1):
    from mmgen.eval.detectors.shapes import ShapesDetector

    detector = ShapesDetector()

    def edit_consistency(prompts, images, metadata):
        scores = []
        for prompt, image, meta in zip(prompts, images, metadata, strict=True):
            if image is None:
                scores.append(0.0)
            elif "target_scene" in meta and "source_scene" in meta:
                scores.append(_scene_score(detector, image, meta, position_tolerance, size_tolerance))
            elif "target_image" in meta and "source_image" in meta:
                scores.append(_pixel_score(image, meta["source_image"], meta["target_image"], pixel_threshold))
            else:
                raise UserError(f"edit prompt {prompt!r}: edit_consistency needs source_scene + target_scene "
                                "(shapes edits) or source_image + target_image in its metadata")
        return scores

    return edit_consistency


# ---- shapes scenes -------------------------------------------------------------------------------------------


def _scene_score(detector, image: Image.Image, meta: dict, position_tolerance: float, size_tolerance: float) -> float:
    from mmgen.data_engine.shapes.world import Scene, render

    size = image.size[0]
    source = _objects(detector.detect(render(Scene.from_dict(_as_dict(meta["source_scene"])), size)))
    target = _objects(detector.detect(render(Scene.from_dict(_as_dict(meta["target_scene"])), size)))
    output = _objects(detector.detect(image.convert("RGB")))

    def same(a, b) -> bool:
        close = np.hypot(a[2] - b[2], a[3] - b[3]) <= position_tolerance
        return a[:2] == b[:2] and close and abs(a[4] - b[4]) <= size_tolerance * max(a[4], b[4])

    def present(obj) -> bool:
        return any(same(obj, found) for found in output)

    kept = [obj for obj in target if any(same(obj, before) for before in source)]
    added = [obj for obj in target if obj not in kept]
    removed = [obj for obj in source if not any(same(obj, after) for after in target)]
    extras = [found for found in output if not any(same(obj, found) for obj in target)]

    parts = []
    if kept or extras:
        parts.append(sum(map(present, kept)) / (len(kept) + len(extras)))
    if added or removed:
        done = sum(map(present, added)) + sum(not present(obj) for obj in removed)
        parts.append(done / (len(added) + len(removed)))
    return float(np.mean(parts)) if parts else 1.0


def _objects(detections) -> list[tuple]:
    """(class, colour, centre x, centre y, box size), positions and sizes as fractions of the image side."""
    side = max(detections.width, detections.height)
    objects = []
    for classname, found in detections.by_class.items():
        for d in found:
            x1, y1, x2, y2 = d.box
            objects.append((classname, d.color, (x1 + x2) / 2 / side, (y1 + y2) / 2 / side,
                            max(x2 - x1, y2 - y1) / side))
    return objects


def _as_dict(scene):
    import json

    return json.loads(scene) if isinstance(scene, str) else scene


# ---- any images ----------------------------------------------------------------------------------------------


def _pixel_score(image: Image.Image, source, target, threshold: float) -> float:
    size = image.size
    out, src, tgt = (_pixels(x, size) for x in (image, source, target))
    region = np.abs(src - tgt).max(axis=-1) > threshold
    parts = []
    if (~region).any():
        parts.append(1.0 - float(np.abs(out - src)[~region].mean()))
    if region.any():
        parts.append(1.0 - float(np.abs(out - tgt)[region].mean()))
    return float(np.mean(parts))


def _pixels(image, size) -> np.ndarray:
    from mmgen.images import load_image

    image = load_image(image)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / 255.0
