"""OWLv2 (transformers `Owlv2ForObjectDetection`) as a GenEval detector: open-vocabulary boxes, no masks.

The queries are the class names themselves. Their text embeddings are computed once; each image then costs one
vision pass plus the class and box heads, exactly what `Owlv2ForObjectDetection.forward` computes, without
re-encoding 80 queries per image. Every patch predicts one box; its class is the query with the highest sigmoid
score (as transformers' post-processing does). OWLv2 predicts many near-duplicate boxes per object, so boxes are
de-duplicated per class by NMS (IoU 0.5 by default); Mask2Former, the official detector, needs none.

Boxes only: detections carry no mask, so GenEval's colour check looks at the whole box crop, as the official
script does for a detector without masks.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from mmgen.eval.geneval.object_names import GENEVAL_OBJECT_NAMES
from mmgen.eval.local_models import load_model_and_processor
from PIL import Image

from .base import Detections
from .boxes import build_detections, cxcywh_to_xyxy

MODEL_TYPES = ("owlv2",)
DESCRIPTION = "an OWLv2 detector (Owlv2ForObjectDetection)"


class Owlv2Detector:
    """Open-vocabulary detection of `classnames` with a local OWLv2 checkpoint."""

    def __init__(self, path: str | os.PathLike, classnames: Sequence[str] = GENEVAL_OBJECT_NAMES,
                 device: str | None = None, query_template: str = "{}", min_score: float = 0.1,
                 nms_iou: float | None = 0.5):
        """`query_template` turns a class name into its text query ("{}" = the name itself). Boxes scoring under
        `min_score` are dropped before NMS; GenEval's own thresholds (0.3, 0.9 for counting) apply after."""
        import torch
        from transformers import Owlv2ForObjectDetection

        self.model, self.processor, self.device = load_model_and_processor(
            path, Owlv2ForObjectDetection, MODEL_TYPES, DESCRIPTION, "OWLv2", device)
        self.classnames = list(classnames)
        self.min_score, self.nms_iou = min_score, nms_iou
        with torch.no_grad():
            text = self.processor.tokenizer([query_template.format(name) for name in self.classnames],
                                            padding="max_length", truncation=True, return_tensors="pt",
                                            max_length=self.model.config.text_config.max_position_embeddings)
            features = self.model.owlv2.get_text_features(input_ids=text["input_ids"].to(self.device),
                                                          attention_mask=text["attention_mask"].to(self.device))
        self.query_embeds = getattr(features, "pooler_output", features)  # [classes, projection_dim]

    def predict(self, image: Image.Image):
        """Raw per-patch predictions: class logits `[patches, classes]` and boxes `[patches, 4]` (normalised
        cx, cy, w, h over the image padded to a square at the bottom and right)."""
        import torch

        pixels = self.processor.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            feature_map = self.model.image_embedder(pixel_values=pixels.to(self.device))[0]
            batch, rows, cols, hidden = feature_map.shape
            image_feats = feature_map.reshape(batch, rows * cols, hidden)
            logits = self.model.class_predictor(image_feats, self.query_embeds[None])[0]
            boxes = self.model.box_predictor(image_feats, feature_map)
        return logits[0].float().cpu(), boxes[0].float().cpu()

    def detect(self, image: Image.Image) -> Detections:
        logits, boxes = self.predict(image)
        scores, labels = logits.sigmoid().max(dim=-1)
        side = max(image.size)  # the processor pads to a square before resizing
        pixel_boxes = cxcywh_to_xyxy(boxes.numpy(), side, side)
        return build_detections(pixel_boxes, scores.numpy(), labels.numpy().astype(np.int64), self.classnames,
                                image.width, image.height, self.min_score, self.nms_iou)
