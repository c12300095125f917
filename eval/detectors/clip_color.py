"""GenEval's colour check: zero-shot CLIP on the object's masked crop (transformers `CLIPModel`, local path).

As the official `evaluate_images.py` does: the object is cut out with its mask onto a flat grey background
(`#999`; "original" keeps the real background), cropped to its box, and classified among GenEval's ten colours.
Each colour's text embedding is the renormalised mean of three prompts: "a photo of a {color} {object}",
"a photo of a {color}-colored {object}" and "a photo of a {color} object" (the official zero-shot classifier).
The official checkpoint is OpenAI's CLIP ViT-L/14 (`openai/clip-vit-large-patch14` in transformers format).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from mmgen.eval.geneval.rules import GENEVAL_COLORS
from mmgen.eval.local_models import load_model_and_processor
from PIL import Image

from .base import Detection

MODEL_TYPES = ("clip",)
DESCRIPTION = "a CLIP model (CLIPModel)"
COLOR_TEMPLATES: tuple[str, ...] = ("a photo of a {color} {object}", "a photo of a {color}-colored {object}",
                                    "a photo of a {color} object")
DEFAULT_BACKGROUND = "#999"


class ClipColorClassifier:
    """Colour of a detected object by zero-shot CLIP over GenEval's colour names."""

    def __init__(self, path: str | os.PathLike, device: str | None = None, background: str = DEFAULT_BACKGROUND,
                 crop: bool = True, colors: Sequence[str] = GENEVAL_COLORS):
        """`background` fills the image outside the object's mask ("original": no masking); `crop` cuts the
        result to the object's box (the official options `bgcolor` and `crop`)."""
        from transformers import CLIPModel

        self.model, self.processor, self.device = load_model_and_processor(
            path, CLIPModel, MODEL_TYPES, DESCRIPTION, "CLIP", device)
        self.background, self.crop, self.colors = background, crop, tuple(colors)
        self._classifiers: dict[str, object] = {}

    def object_crop(self, image: Image.Image, detection: Detection) -> Image.Image:
        """What CLIP sees: the object on grey outside its mask (when it has one), cut to its box."""
        image = image.convert("RGB")
        if detection.mask is not None and self.background != "original":
            mask = np.asarray(detection.mask, dtype=bool)
            if mask.shape != (image.height, image.width):
                raise ValueError(f"mask of shape {mask.shape} for an image of {image.width}x{image.height}")
            blank = Image.new("RGB", image.size, self.background)
            image = Image.composite(image, blank, Image.fromarray(mask.astype(np.uint8) * 255))
        if self.crop:
            x1, y1, x2, y2 = detection.box
            # At least one pixel: a degenerate box would give CLIP an empty image.
            x1, y1 = min(max(round(x1), 0), image.width - 1), min(max(round(y1), 0), image.height - 1)
            image = image.crop((x1, y1, max(round(x2), x1 + 1), max(round(y2), y1 + 1)))
        return image

    def color_scores(self, image: Image.Image, detection: Detection, classname: str) -> np.ndarray:
        """Cosine similarity of the object's crop to each colour's text embedding, in `self.colors` order."""
        import torch

        pixels = self.processor.image_processor(images=self.object_crop(image, detection), return_tensors="pt")
        with torch.no_grad():
            features = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device))
            features = _normalise(getattr(features, "pooler_output", features))
        return (features @ self._classifier(classname).T)[0].float().cpu().numpy()

    def classify(self, image: Image.Image, detection: Detection, classname: str) -> str:
        return self.colors[int(self.color_scores(image, detection, classname).argmax())]

    def _classifier(self, classname: str):
        """`[colours, dim]` text embeddings for one object class, computed once per class."""
        if classname not in self._classifiers:
            import torch

            texts = [template.format(color=color, object=classname) for color in self.colors
                     for template in COLOR_TEMPLATES]
            tokens = self.processor.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                                              max_length=self.model.config.text_config.max_position_embeddings)
            with torch.no_grad():
                features = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                        attention_mask=tokens["attention_mask"].to(self.device))
            features = _normalise(getattr(features, "pooler_output", features))
            per_color = features.reshape(len(self.colors), len(COLOR_TEMPLATES), -1).mean(dim=1)
            self._classifiers[classname] = _normalise(per_color)
        return self._classifiers[classname]


def _normalise(features):
    return features / features.norm(dim=-1, keepdim=True)
