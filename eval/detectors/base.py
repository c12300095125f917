"""The detector contract the GenEval rules are written against.

It mirrors what GenEval reads from an mmdet instance-segmentation model: per class name, boxes `[x1, y1, x2, y2]`
in pixels with a confidence score, and a boolean mask per box. A detector may also know each object's colour (the
exact shapes detector does); detectors that do not leave it to a separate `ColorClassifier`, as GenEval does with
CLIP on the masked crop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels
    score: float
    mask: np.ndarray | None = None  # bool [H, W]; None when the detector gives boxes only
    color: str | None = None  # one of GenEval's colour names, when the detector knows it

    def __post_init__(self):
        if len(self.box) != 4:
            raise ValueError(f"a box is (x1, y1, x2, y2), got {self.box!r}")
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        object.__setattr__(self, "score", float(self.score))


@dataclass
class Detections:
    """All detections of one image, grouped by class name (classes with no detection may be absent)."""

    width: int
    height: int
    by_class: dict[str, list[Detection]] = field(default_factory=dict)

    def get(self, classname: str) -> list[Detection]:
        return self.by_class.get(classname, [])

    def add(self, classname: str, detection: Detection) -> None:
        self.by_class.setdefault(classname, []).append(detection)

    def __len__(self) -> int:
        return sum(len(found) for found in self.by_class.values())

    def to_mmdet(self, classnames: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The mmdet result tuple `(bbox_list, segm_list)`, indexed like `classnames`.

        `bbox_list[i]` is float32 `[N, 5]` (`x1, y1, x2, y2, score`); `segm_list[i]` is bool `[N, H, W]`, with an
        all-false mask where a detection has none.
        """
        boxes, masks = [], []
        for name in classnames:
            found = self.get(name)
            boxes.append(np.array([[*d.box, d.score] for d in found], dtype=np.float32).reshape(len(found), 5))
            blank = np.zeros((self.height, self.width), dtype=bool)
            masks.append(np.array([blank if d.mask is None else d.mask for d in found], dtype=bool)
                         .reshape(len(found), self.height, self.width))
        return boxes, masks

    @classmethod
    def from_mmdet(cls, classnames: list[str], bbox_list: list[np.ndarray], segm_list: list | None,
                   width: int, height: int) -> Detections:
        """Wrap an mmdet result (as returned by `inference_detector`) without colours."""
        detections = cls(width=width, height=height)
        for index, name in enumerate(classnames):
            for row, values in enumerate(np.asarray(bbox_list[index]).reshape(-1, 5)):
                mask = None if segm_list is None else np.asarray(segm_list[index][row], dtype=bool)
                detections.add(name, Detection(box=tuple(values[:4]), score=values[4], mask=mask))
        return detections


@runtime_checkable
class Detector(Protocol):
    classnames: list[str]

    def detect(self, image: Image.Image) -> Detections: ...


@runtime_checkable
class ColorClassifier(Protocol):
    def classify(self, image: Image.Image, detection: Detection, classname: str) -> str:
        """One of GenEval's colour names for the object `detection` found in `image`."""
        ...


class DetectedColor:
    """Colour classifier that trusts the colour the detector already attached to each detection."""

    def classify(self, image: Image.Image, detection: Detection, classname: str) -> str:
        if detection.color is None:
            raise ValueError(f"the {classname} detection carries no colour; pass a ColorClassifier that computes one")
        return detection.color
