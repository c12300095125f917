"""Object detectors behind one contract (GenEval's mmdet output), and colour classifiers for their detections."""

from .base import ColorClassifier, DetectedColor, Detection, Detections, Detector
from .shapes import ShapesColorClassifier, ShapesDetector

__all__ = [
    "ColorClassifier",
    "DetectedColor",
    "Detection",
    "Detections",
    "Detector",
    "ShapesColorClassifier",
    "ShapesDetector",
]
