"""Object detectors behind one contract (GenEval's mmdet output), and colour classifiers for their detections.

The model-backed ones (OWLv2, Grounding DINO, CLIP colours) import torch and transformers only when loaded:
`load_detector("owlv2:PATH")`, `load_color_classifier("clip:PATH")`.
"""

from .base import ColorClassifier, DetectedColor, Detection, Detections, Detector
from .registry import (
    COLOR_CLASSIFIER_KINDS,
    DETECTOR_KINDS,
    check_color_classifier_spec,
    check_detector_spec,
    load_color_classifier,
    load_detector,
)
from .shapes import ShapesColorClassifier, ShapesDetector

__all__ = [
    "COLOR_CLASSIFIER_KINDS",
    "DETECTOR_KINDS",
    "ColorClassifier",
    "DetectedColor",
    "Detection",
    "Detections",
    "Detector",
    "ShapesColorClassifier",
    "ShapesDetector",
    "check_color_classifier_spec",
    "check_detector_spec",
    "load_color_classifier",
    "load_detector",
]
