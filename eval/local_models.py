"""Checks for the Hugging Face model directories the evaluators load: local, safetensors, the right model type.

Evaluation never downloads: a judge or detector is a directory the user already has. A wrong path or a directory
holding another model must fail in seconds, before hours of generation, with a message that says which path was
given and what it should hold.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmgen.errors import UserError

# What every loader passes to `from_pretrained`: no hub, no pickled weights, no code from the model directory.
LOAD_KWARGS = {"local_files_only": True, "trust_remote_code": False}


def check_model_dir(path: str | os.PathLike, model_types: tuple[str, ...], description: str) -> Path:
    """`path` as a Path after checking it is a local model directory of one of `model_types` with safetensors weights.

    `description` names what the directory should hold (e.g. "an OWLv2 detector") in the error messages.
    """
    path = Path(path).expanduser()
    expected = f"{description} (a local Hugging Face model directory with model_type {' or '.join(model_types)!s})"
    if not path.exists():
        raise UserError(f"{path}: no such directory; expected {expected}")
    if not path.is_dir():
        raise UserError(f"{path}: not a directory; expected {expected}")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UserError(f"{path}: no config.json; expected {expected}")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise UserError(f"{config_path}: not a readable model config ({err}); expected {expected}") from None
    if model_type not in model_types:
        raise UserError(f"{path}: holds a model of type {model_type!r}, expected {expected}")
    if not any(path.glob("*.safetensors")):
        raise UserError(f"{path}: no .safetensors weights; only safetensors are loaded (expected {expected})")
    return path


def load_model_and_processor(path: str | os.PathLike, model_class, model_types: tuple[str, ...], description: str,
                             name: str, device: str | None = None):
    """`(model, processor, device)` of a checked local directory: the model in eval mode on `device` (default: CUDA
    when there is one), the processor with its image processor and tokenizer. `name` labels the processor in
    errors (e.g. "OWLv2")."""
    from transformers import AutoProcessor

    from mmgen.runtime import pick_device

    path = check_model_dir(path, model_types, description)
    device = str(pick_device(device or "auto"))
    model = model_class.from_pretrained(path, use_safetensors=True, **LOAD_KWARGS).to(device).eval()
    processor = AutoProcessor.from_pretrained(path, **LOAD_KWARGS)
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise UserError(f"{path}: holds no {name} processor (image processor + tokenizer files)")
    return model, processor, device
