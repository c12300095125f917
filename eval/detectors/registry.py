"""Detectors and colour classifiers by spec string, as a recipe or the command line names them.

Detector specs: "shapes" (the exact shapes-world detector), "owlv2:PATH", "grounding-dino:PATH".
Colour classifier specs: "detected" (trust the colours the detector attaches: the shapes detector),
"shapes" (palette matching on the mask), "clip:PATH" (GenEval's zero-shot CLIP on the masked crop).

PATH is always a local directory: nothing is downloaded. `check_*_spec` validates a spec (known kind, existing
directory of the right model type with safetensors weights) without loading weights, so a caller can fail before
spending hours generating images; `load_*` does the same checks and then loads.
"""

from __future__ import annotations

import importlib

from mmgen.eval.local_models import check_model_dir

from mmgen.errors import UserError

from .base import ColorClassifier, DetectedColor, Detector

# kind -> (module, class); each module names its MODEL_TYPES and DESCRIPTION and imports torch only when loading.
_MODELS = {
    "owlv2": ("owlv2", "Owlv2Detector"),
    "grounding-dino": ("grounding_dino", "GroundingDinoDetector"),
    "clip": ("clip_color", "ClipColorClassifier"),
}
DETECTOR_KINDS: tuple[str, ...] = ("shapes", "owlv2", "grounding-dino")
COLOR_CLASSIFIER_KINDS: tuple[str, ...] = ("detected", "shapes", "clip")


def parse_spec(spec: str, kinds: tuple[str, ...], what: str) -> tuple[str, str | None]:
    """`(kind, path)` from "kind" or "kind:PATH"; kinds backed by a model need a path, the others take none."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in kinds:
        raise UserError(f"unknown {what} {spec!r}; expected one of: " + ", ".join(
            f"{k}:PATH" if k in _MODELS else k for k in kinds))
    if kind in _MODELS and not path:
        raise UserError(f"the {what} {kind!r} needs a local model directory: {kind}:PATH")
    if kind not in _MODELS and path:
        raise UserError(f"the {what} {kind!r} takes no path, got {spec!r}")
    return kind, path or None


def check_detector_spec(spec: str) -> None:
    """Validate a detector spec without loading any weights."""
    _check(*parse_spec(spec, DETECTOR_KINDS, "detector"))


def check_color_classifier_spec(spec: str) -> None:
    """Validate a colour classifier spec without loading any weights."""
    _check(*parse_spec(spec, COLOR_CLASSIFIER_KINDS, "colour classifier"))


def detector_classnames(spec: str) -> tuple[str, ...]:
    """The classes `load_detector(spec)` detects (default options), without loading weights: so a caller can check
    a prompt file against them before generating. The model-backed detectors query GenEval's 80 object names."""
    kind, _ = parse_spec(spec, DETECTOR_KINDS, "detector")
    if kind == "shapes":
        from .shapes import ShapesDetector

        return tuple(ShapesDetector.classnames)
    from mmgen.eval.geneval.object_names import GENEVAL_OBJECT_NAMES

    return GENEVAL_OBJECT_NAMES


def load_detector(spec: str, **options) -> Detector:
    """A detector from its spec; `options` go to its constructor (device, classnames, min_score, nms_iou...)."""
    kind, path = parse_spec(spec, DETECTOR_KINDS, "detector")
    if kind == "shapes":
        from .shapes import ShapesDetector

        return ShapesDetector(**options)
    return _load_model(kind, path, options)


def load_color_classifier(spec: str, **options) -> ColorClassifier:
    """A colour classifier from its spec; `options` go to its constructor (device, background, crop...)."""
    kind, path = parse_spec(spec, COLOR_CLASSIFIER_KINDS, "colour classifier")
    if kind == "detected":
        return DetectedColor()
    if kind == "shapes":
        from .shapes import ShapesColorClassifier

        return ShapesColorClassifier(**options)
    return _load_model(kind, path, options)


def _module(kind: str):
    return importlib.import_module(f"{__package__}.{_MODELS[kind][0]}")


def _check(kind: str, path: str | None) -> None:
    if kind in _MODELS:
        module = _module(kind)
        check_model_dir(path, module.MODEL_TYPES, module.DESCRIPTION)


def _load_model(kind: str, path: str, options: dict):
    _check(kind, path)
    return getattr(_module(kind), _MODELS[kind][1])(path, **options)
