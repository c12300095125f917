"""A text corpus of the shapes world's language: what a tokenizer for the tiny LMs is trained on."""

from __future__ import annotations

import random

from .captions import GENEVAL_TASKS, describe, make_prompt
from .edits import make_edit
from .scenes import free_scene


def text_corpus(num: int = 3000, seed: int = 0) -> list[str]:
    """Captions, GenEval-style prompts and edit instructions, in equal thirds, reproducible from `seed`."""
    rng = random.Random(f"corpus:{seed}")
    texts = []
    for index in range(num):
        kind = index % 3
        if kind == 0:
            texts.append(describe(free_scene(rng), rng))
        elif kind == 1:
            texts.append(make_prompt(GENEVAL_TASKS[index % len(GENEVAL_TASKS)], rng)["prompt"])
        else:
            texts.append(make_edit(rng).instruction)
    return texts
