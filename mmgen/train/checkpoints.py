"""What every training stage does with its outputs: resume from the newest complete Trainer checkpoint, and write
the final unified checkpoint (merged weights, or base + adapter)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from mmgen.checkpoint import ADAPTER_DIR, UnifiedModel, load_causal_lm, save_unified
from mmgen.errors import UserError
from mmgen.files import broken_safetensors, set_aside_damaged

logger = logging.getLogger(__name__)


def latest_complete_checkpoint(checkpoints: Path) -> Path | None:
    """The newest `checkpoint-N` whose trainer_state.json exists and parses (the Trainer writes it last) and whose
    weights are whole.

    A checkpoint without it, or with a file cut short (killed while the Trainer wrote it), is incomplete: it is
    removed so nothing ever resumes from it. One with damaged weights (a file cut short later: disk full, a bad
    copy) is moved aside to `<name>.damaged` and the run resumes from the one before it.
    """
    if not checkpoints.is_dir():
        return None
    found = sorted((p for p in checkpoints.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    for candidate in reversed(found):
        if not _readable_json(candidate / "trainer_state.json"):
            logger.warning("removing incomplete checkpoint %s (killed while saving)", candidate)
            shutil.rmtree(candidate, ignore_errors=True)
            continue
        broken = broken_safetensors(candidate)
        if not broken:
            return candidate
        set_aside_damaged(candidate, broken)
    return None


def _readable_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def write_final_checkpoint(model, unified: UnifiedModel, out_dir: Path, *, base_path: str, method: str, save: str,
                           stage: str, details: dict) -> Path:
    """A unified checkpoint: merged weights, or (save: adapter) the untouched base (`base_path`) plus `adapter/`.
    `details` are recorded in mmgen.json under the stage's name."""
    meta = {**unified.meta, stage: details}
    if method == "full":
        return save_unified(out_dir, model, unified.tokenizer, unified.vocab, unified.visual_tokenizer, meta)
    if save == "adapter":
        staging = out_dir.parent / f".{out_dir.name}.adapter"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging)
        base = load_causal_lm(Path(base_path), torch.device("cpu"))
        try:
            return save_unified(out_dir, base, unified.tokenizer, unified.vocab, unified.visual_tokenizer,
                                {**meta, "adapter": ADAPTER_DIR}, adapter_dir=staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if method == "qlora":
        raise UserError("save: merged is not supported for qlora (4-bit weights); use save: adapter and "
                        "`mmgen export` on a machine that can load the base in bf16")
    merged = model.merge_and_unload()
    return save_unified(out_dir, merged, unified.tokenizer, unified.vocab, unified.visual_tokenizer, meta)
