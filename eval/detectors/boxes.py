"""Box arithmetic the open-vocabulary detectors share: format conversion, class-wise NMS, building `Detections`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import Detection, Detections


def cxcywh_to_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Normalised `[cx, cy, w, h]` rows to pixel `[x1, y1, x2, y2]` over a `width` x `height` frame."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx, cy, w, h = boxes.T
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], axis=1)


def iou_matrix(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Continuous-coordinate IoU of one `[4]` box with each row of `others` `[N, 4]`."""
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Indices kept by greedy non-maximum suppression, most confident first."""
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    kept = []
    while order:
        best = order.pop(0)
        kept.append(int(best))
        if order:
            overlaps = iou_matrix(boxes[best], boxes[order])
            order = [index for index, overlap in zip(order, overlaps, strict=True) if overlap < iou_threshold]
    return kept


def build_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, classnames: Sequence[str],
                     width: int, height: int, min_score: float, nms_iou: float | None) -> Detections:
    """`Detections` from per-box pixel boxes, scores and class indices: boxes clipped to the image, scores under
    `min_score` dropped, then NMS within each class (`nms_iou=None` keeps overlapping boxes)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    detections = Detections(width=width, height=height)
    for label in np.unique(labels[scores >= min_score]):
        rows = np.flatnonzero((labels == label) & (scores >= min_score))
        keep = nms(boxes[rows], scores[rows], nms_iou) if nms_iou is not None else list(
            np.argsort(-scores[rows], kind="stable"))
        for row in rows[keep]:
            detections.add(classnames[int(label)], Detection(box=tuple(boxes[row]), score=scores[row]))
    return detections
