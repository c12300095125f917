"""The GRPO prompt set: what the policy is asked to draw (or edit), with the metadata its rewards read.

Two sources:

* `shapes`: prompts drawn from the procedural shapes world, GenEval-style clauses as metadata (text-to-image), or
  edit triplets with their source and target scenes (`edits: true`), the source image encoded by the checkpoint's
  own visual tokenizer.
* a JSON Lines file, one prompt per line: `{"prompt": "..."}` plus any metadata the rewards need (GenEval's `tag` /
  `include` / `exclude`, your own keys). A line with `source_image` (a path, relative to the file) is an edit: the
  prompt is the instruction. Every key except `prompt` and `source_image` reaches the rewards as metadata.

The TRL dataset holds, per prompt: `prompt` (the token ids, built by `PromptBuilder`, so user text never turns into
image or control tokens), `caption` (the text), `task`, `metadata` (JSON) and `source_codes` (empty for t2i).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.checkpoint import UnifiedModel
from mmgen.errors import UserError
from mmgen.files import read_jsonl

SHAPES_SOURCE = "shapes"


@dataclass
class PromptSettings:
    source: str = SHAPES_SOURCE  # "shapes" or a JSON Lines prompt file
    edits: bool = False  # shapes: edit triplets instead of text-to-image prompts
    tasks: list[str] = field(default_factory=list)  # shapes: GenEval tasks (t2i) or edit types (edits); [] = all
    num_prompts: int = 2000  # shapes: how many to draw
    seed: int = 1000  # shapes: kept apart from the benchmark's seeds so RL never trains on held-out prompts

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError(f"prompts.num_prompts must be >= 1, got {self.num_prompts}")
        if self.source != SHAPES_SOURCE and not Path(self.source).is_file():
            raise ValueError(f"prompts.source must be 'shapes' or a JSON Lines prompt file; {self.source} is neither")


def build_prompt_dataset(settings: PromptSettings, unified: UnifiedModel):
    """A `datasets.Dataset` of prompts for `ImageGRPOTrainer` (columns in the module docstring)."""
    from datasets import Dataset

    if settings.source == SHAPES_SOURCE:
        rows = _shapes_edit_rows(settings) if settings.edits else _shapes_t2i_rows(settings)
    else:
        rows = _file_rows(Path(settings.source))
    sources = [row.pop("source_pixels") for row in rows]
    codes = _encode_sources(unified, sources)
    builder = unified.prompts
    for row, source_codes in zip(rows, codes, strict=True):
        row["source_codes"] = source_codes
        row["prompt"] = (builder.edit(source_codes, row["caption"]) if source_codes
                         else builder.text_to_image(row["caption"]))
    return Dataset.from_list(rows)


def _shapes_t2i_rows(settings: PromptSettings) -> list[dict]:
    from mmgen.data_engine.shapes.captions import make_prompt
    from mmgen.eval.geneval.rules import GENEVAL_TASKS

    tasks = settings.tasks or list(GENEVAL_TASKS)
    unknown = sorted(set(tasks) - set(GENEVAL_TASKS))
    if unknown:
        raise UserError(f"prompts.tasks: unknown GenEval task(s) {unknown}; "
                        f"expected some of {', '.join(GENEVAL_TASKS)}")
    rows = []
    for index in range(settings.num_prompts):
        rng = random.Random(f"grpo-prompts:{settings.seed}:{index}")
        spec = make_prompt(rng.choice(tasks), rng)
        rows.append({"caption": spec["prompt"], "task": spec["tag"], "metadata": json.dumps(spec),
                     "source_pixels": None})
    return rows


def _shapes_edit_rows(settings: PromptSettings) -> list[dict]:
    from mmgen.data_engine.shapes.edits import EDIT_TYPES, make_edit

    kinds = settings.tasks or list(EDIT_TYPES)
    unknown = sorted(set(kinds) - set(EDIT_TYPES))
    if unknown:
        raise UserError(f"prompts.tasks: unknown edit type(s) {unknown}; expected some of {', '.join(EDIT_TYPES)}")
    rows = []
    for index in range(settings.num_prompts):
        rng = random.Random(f"grpo-edits:{settings.seed}:{index}")
        edit = make_edit(rng, rng.choice(kinds))
        metadata = {"tag": "edit", "edit_type": edit.edit_type, "prompt": edit.instruction,
                    "source_scene": edit.source.to_dict(), "target_scene": edit.target.to_dict()}
        rows.append({"caption": edit.instruction, "task": "edit", "metadata": json.dumps(metadata),
                     "source_pixels": edit.source})
    return rows


def _file_rows(path: Path) -> list[dict]:
    rows = []
    for line_number, record in read_jsonl(path):
        if not isinstance(record, dict):
            raise UserError(f"{path}:{line_number}: each line must be a JSON object with a 'prompt'")
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError(f"{path}:{line_number}: needs a non-empty 'prompt' string")
        source = record.get("source_image")
        if source is not None:
            source = path.parent / source
            if not source.is_file():
                raise UserError(f"{path}:{line_number}: source_image {source} does not exist")
        metadata = {k: v for k, v in record.items() if k != "source_image"}
        if "target_image" in metadata:  # paths resolve against the prompt file, as source_image does
            metadata["target_image"] = str(path.parent / metadata["target_image"])
        rows.append({"caption": prompt, "task": record.get("tag", "edit" if source else "t2i"),
                     "metadata": json.dumps(metadata), "source_pixels": source})
    if not rows:
        raise UserError(f"{path}: holds no prompts")
    return rows


@torch.no_grad()
def _encode_sources(unified: UnifiedModel, sources: list) -> list[list[int]]:
    """Codes of each edit's source image (a shapes Scene or an image path); [] for text-to-image rows."""
    from mmgen.data_engine.shapes.world import Scene, render
    from mmgen.images import center_square, load_image, pil_to_tensor

    tokenizer = unified.visual_tokenizer
    size = tokenizer.image_size
    codes: list[list[int]] = [[] for _ in sources]
    wanted = [i for i, source in enumerate(sources) if source is not None]
    for start in range(0, len(wanted), 64):
        rows = wanted[start:start + 64]
        images = [render(sources[i], size) if isinstance(sources[i], Scene)
                  else center_square(load_image(sources[i]), size) for i in rows]
        for i, row_codes in zip(rows, tokenizer.encode(pil_to_tensor(images)).tolist(), strict=True):
            codes[i] = row_codes
    return codes
