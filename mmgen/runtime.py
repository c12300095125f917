"""Device, dtype and attention-kernel choices, with clean fallbacks for the optional GPU-only extras."""

from __future__ import annotations

import importlib.util

import torch

from mmgen.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return device


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype | None:
    """None keeps the checkpoint's own dtype. fp16 is refused on CPU, where it is slow and poorly supported."""
    if requested is None or requested == "auto":
        return None
    if requested not in DTYPES:
        raise UserError(f"unknown dtype {requested!r}; expected one of auto, {', '.join(DTYPES)}")
    if requested == "fp16" and device.type == "cpu":
        raise UserError("dtype fp16 is for CUDA; on CPU use bf16 (fast on recent CPUs) or fp32")
    return DTYPES[requested]


def pick_attn_implementation(requested: str, device: torch.device) -> str:
    """flash-attn only when asked for and really usable; "auto" takes it when present on CUDA, else sdpa."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise UserError(f"unknown attn_implementation {requested!r}; expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    flash_ready = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if flash_ready else "sdpa"
    if requested == "flash_attention_2" and not flash_ready:
        missing = ("a CUDA device" if device.type != "cuda"
                   else "the flash-attn package (pip install 'mmgen-kit[flash-attn]')")
        raise UserError(f"attn_implementation flash_attention_2 needs {missing}; use 'sdpa' (the default fallback)")
    return requested
