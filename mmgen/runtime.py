"""Device, dtype and attention-kernel choices, with clean fallbacks for the optional GPU-only extras."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass

import torch

from mmgen.errors import UserError
from mmgen.hardware import cpu_capability, cpu_has_native_bf16

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# "auto" follows the hardware (see `resolve_precision`); the others are taken as asked.
PRECISIONS = ("auto", *DTYPES)
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {requested!r} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return device


@dataclass(frozen=True)
class Precision:
    """The precision a stage runs in, and why: printed at start and recorded in the stage's outputs."""

    name: str  # "fp32", "bf16" or "fp16"
    reason: str
    cpu_capability: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        return f"precision {self.name} ({self.reason})"


_warned_emulated_bf16 = False


def resolve_precision(requested: str, device: torch.device | str | None = None) -> Precision:
    """`auto`: bf16 on a CUDA GPU that supports it and on a CPU with native bf16, fp32 everywhere else.

    An explicit `bf16` on a CPU that only emulates it still runs, with one warning per process naming the cost and
    `auto`: the user may want bit-compatibility with a bf16 machine more than speed.
    """
    if requested not in PRECISIONS:
        raise UserError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    device = torch.device(device) if device is not None else pick_device()
    capability = cpu_capability()
    if device.type == "cuda":
        if requested == "auto":
            if torch.cuda.is_bf16_supported():
                return Precision("bf16", "auto: this CUDA GPU supports bf16", capability)
            return Precision("fp32", "auto: this CUDA GPU has no bf16", capability)
        return Precision(requested, "asked for", capability)
    native = cpu_has_native_bf16()
    if requested == "auto":
        if native:
            return Precision("bf16", f"auto: this CPU has native bf16 ({capability}, AVX512-BF16/AMX)", capability)
        return Precision("fp32", f"auto: this CPU has no native bf16 ({capability}); bf16 would be emulated",
                         capability)
    if requested == "bf16" and not native:
        global _warned_emulated_bf16
        if not _warned_emulated_bf16:
            _warned_emulated_bf16 = True
            logger.warning("bf16 asked for, but this CPU (%s) has no native bf16 (AVX512-BF16 or AMX): it is "
                           "emulated and runs 10-100x slower than fp32; set mixed_precision: auto (or fp32)",
                           capability)
        return Precision("bf16", f"asked for; emulated on this CPU ({capability})", capability)
    return Precision(requested, "asked for", capability)


def pick_dtype(requested: str | None, device: torch.device) -> torch.dtype | None:
    """None keeps the checkpoint's own dtype ("stored"); "auto" follows the hardware (`resolve_precision`). fp16 is
    refused on CPU, where it is slow and poorly supported."""
    if requested is None or requested == "stored":
        return None
    if requested == "auto":
        return resolve_precision("auto", device).dtype
    if requested not in DTYPES:
        raise UserError(f"unknown dtype {requested!r}; expected one of auto, stored, {', '.join(DTYPES)}")
    if requested == "fp16" and device.type == "cpu":
        raise UserError("dtype fp16 is for CUDA; on CPU use bf16 (fast on recent CPUs) or fp32")
    return DTYPES[requested]


def pick_attn_implementation(requested: str, device: torch.device, model_class: type | None = None) -> str:
    """The attention kernel to load a causal LM with, checked against what its class supports.

    "auto" takes flash-attn on CUDA when installed and supported, else sdpa where the family has it, else eager
    (Gemma 2's soft-capping has no sdpa path). An explicit choice the family cannot run fails with the one it can.
    `model_class` None (custom code, unknown class) trusts the request."""
    if requested not in ATTN_IMPLEMENTATIONS:
        raise UserError(f"unknown attn_implementation {requested!r}; expected one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    supports_sdpa = model_class is None or bool(getattr(model_class, "_supports_sdpa", False))
    supports_flash = model_class is None or bool(getattr(model_class, "_supports_flash_attn", False))
    flash_ready = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    fallback = "sdpa" if supports_sdpa else "eager"
    if requested == "auto":
        return "flash_attention_2" if flash_ready and supports_flash else fallback
    name = model_class.__name__ if model_class is not None else "this model"
    if requested == "sdpa" and not supports_sdpa:
        raise UserError(f"{name} has no sdpa attention; use 'eager' or 'auto' (--attn / attn_implementation)")
    if requested == "flash_attention_2":
        if not supports_flash:
            raise UserError(f"{name} has no flash-attn support; use {fallback!r} or 'auto'")
        if not flash_ready:
            missing = ("a CUDA device" if device.type != "cuda"
                       else "the flash-attn package (pip install 'mmgen-kit[flash-attn]')")
            raise UserError(f"attn_implementation flash_attention_2 needs {missing}; use 'auto' (falls back to "
                            f"{fallback})")
    return requested
