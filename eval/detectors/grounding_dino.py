"""Grounding DINO (transformers `GroundingDinoForObjectDetection`) as a GenEval detector: boxes, no masks.

The class names are joined into Grounding DINO's caption format, "cat. dog. traffic light.", split into as few
captions as fit the model's text length (256 tokens for the released models). Each query's score for a class is
the mean of its sigmoid token scores over that class's tokens (the normalised positive map the Grounding DINO
authors use for COCO evaluation), and its class is the best-scoring one. Queries of one class can still overlap,
so boxes are de-duplicated per class by NMS (IoU 0.5 by default).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from mmgen.eval.geneval.object_names import GENEVAL_OBJECT_NAMES
from mmgen.eval.local_models import load_model_and_processor
from PIL import Image

from mmgen.errors import UserError

from .base import Detections
from .boxes import build_detections, cxcywh_to_xyxy

MODEL_TYPES = ("grounding-dino",)
DESCRIPTION = "a Grounding DINO detector (GroundingDinoForObjectDetection)"


@dataclass
class _Caption:
    """One caption naming some of the classes, tokenized, with each class's share of every token."""

    first_class: int  # index of its first class in the detector's classnames
    text: dict  # tokenizer output tensors (input_ids, attention_mask, token_type_ids)
    positive_map: np.ndarray  # [classes in this caption, tokens]; each row sums to 1


class GroundingDinoDetector:
    """Open-vocabulary detection of `classnames` with a local Grounding DINO checkpoint."""

    def __init__(self, path: str | os.PathLike, classnames: Sequence[str] = GENEVAL_OBJECT_NAMES,
                 device: str | None = None, min_score: float = 0.1, nms_iou: float | None = 0.5):
        from transformers import GroundingDinoForObjectDetection

        self.model, self.processor, self.device = load_model_and_processor(
            path, GroundingDinoForObjectDetection, MODEL_TYPES, DESCRIPTION, "Grounding DINO", device)
        self.classnames = list(classnames)
        self.min_score, self.nms_iou = min_score, nms_iou
        self.captions = self._build_captions(self.model.config.max_text_len)

    def _build_captions(self, max_tokens: int) -> list[_Caption]:
        """Greedily pack consecutive class names into captions of at most `max_tokens` tokens."""
        captions, start = [], 0
        while start < len(self.classnames):
            end = start + 1
            while end < len(self.classnames) and self._token_count(self.classnames[start:end + 1]) <= max_tokens:
                end += 1
            if self._token_count(self.classnames[start:end]) > max_tokens:
                raise UserError(f"the class name {self.classnames[start]!r} alone is longer than the model's "
                                f"{max_tokens} text tokens")
            captions.append(self._caption(start, end))
            start = end
        return captions

    def _token_count(self, names: Sequence[str]) -> int:
        return len(self.processor.tokenizer(caption_text(names))["input_ids"])

    def _caption(self, start: int, end: int) -> _Caption:
        names = self.classnames[start:end]
        text = caption_text(names)
        encoded = self.processor.tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
        offsets = encoded.pop("offset_mapping")[0].tolist()
        positive = np.zeros((len(names), len(offsets)), dtype=np.float32)
        for row, (first, last) in enumerate(class_spans(names)):
            for token, (token_start, token_end) in enumerate(offsets):
                if token_end > token_start and first <= token_start and token_end <= last:
                    positive[row, token] = 1.0
        if (positive.sum(axis=1) == 0).any():
            empty = [names[row] for row in np.flatnonzero(positive.sum(axis=1) == 0)]
            raise UserError(f"the detector's tokenizer gives no tokens for the class names {empty}")
        return _Caption(start, dict(encoded), positive / positive.sum(axis=1, keepdims=True))

    def predict(self, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
        """Per query over all captions: class scores `[queries, classes]` (0 for classes of other captions) and
        boxes `[queries, 4]` (normalised cx, cy, w, h over the image)."""
        import torch

        pixels = self.processor.image_processor(images=image.convert("RGB"), return_tensors="pt")
        scores, boxes = [], []
        for caption in self.captions:
            inputs = {key: value.to(self.device) for key, value in {**pixels, **caption.text}.items()}
            with torch.no_grad():
                output = self.model(**inputs)
            tokens = caption.positive_map.shape[1]
            token_scores = output.logits[0, :, :tokens].float().sigmoid().cpu().numpy()  # [queries, tokens]
            class_scores = np.zeros((token_scores.shape[0], len(self.classnames)), dtype=np.float32)
            first = caption.first_class
            class_scores[:, first:first + len(caption.positive_map)] = token_scores @ caption.positive_map.T
            scores.append(class_scores)
            boxes.append(output.pred_boxes[0].float().cpu().numpy())
        return np.concatenate(scores), np.concatenate(boxes)

    def detect(self, image: Image.Image) -> Detections:
        class_scores, boxes = self.predict(image)
        labels = class_scores.argmax(axis=1)
        scores = class_scores[np.arange(len(labels)), labels]
        pixel_boxes = cxcywh_to_xyxy(boxes, image.width, image.height)
        return build_detections(pixel_boxes, scores, labels, self.classnames, image.width, image.height,
                                self.min_score, self.nms_iou)


def caption_text(names: Sequence[str]) -> str:
    """Grounding DINO's caption format: lower-case names, each ended by a period."""
    return " ".join(f"{name.lower()}." for name in names)


def class_spans(names: Sequence[str]) -> list[tuple[int, int]]:
    """Character span `[start, end)` of each name in `caption_text(names)`."""
    spans, position = [], 0
    for name in names:
        spans.append((position, position + len(name)))
        position += len(name) + 2  # the name, its period and a space
    return spans
