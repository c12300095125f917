"""VQA judges for DPG-Bench: anything that answers a question about an image with a short string.

The official DPG-Bench judge is mPLUG-large (ModelScope), which transformers does not ship; BLIP-VQA
(`BlipForQuestionAnswering`, e.g. Salesforce/blip-vqa-base or -capfilt-large) is the transformers judge here, loaded
from a local directory. Scores from another judge are not comparable with published DPG-Bench numbers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from mmgen.eval.local_models import check_model_dir, load_model_and_processor
from PIL import Image

from mmgen.errors import UserError

BLIP_MODEL_TYPES = ("blip",)
BLIP_DESCRIPTION = "a BLIP visual question answering model (BlipForQuestionAnswering)"
JUDGE_KINDS: tuple[str, ...] = ("blip",)


@runtime_checkable
class VQAJudge(Protocol):
    def __call__(self, image: Image.Image, question: str) -> str:
        """The judge's answer; DPG-Bench counts a question passed when the answer is exactly "yes"."""
        ...


class ScriptedJudge:
    """A judge answering from a script, for tests: `answers[question]` is one answer, or a list whose k-th entry
    answers the k-th time that question is asked (cycling), e.g. one entry per grid crop; else `default`.

    Every call is recorded in `calls` as `(image size, question)`.
    """

    def __init__(self, answers: dict[str, str | Sequence[str]] | Callable[[Image.Image, str], str],
                 default: str = "no"):
        self.answers, self.default = answers, default
        self.asked: dict[str, int] = {}
        self.calls: list[tuple[tuple[int, int], str]] = []

    def __call__(self, image: Image.Image, question: str) -> str:
        self.calls.append((image.size, question))
        if callable(self.answers):
            return self.answers(image, question)
        script = self.answers.get(question, self.default)
        if isinstance(script, str):
            return script
        turn = self.asked.get(question, 0)
        self.asked[question] = turn + 1
        return script[turn % len(script)]


class BlipVQAJudge:
    """BLIP-VQA from a local directory; answers are generated greedily and stripped of whitespace."""

    def __init__(self, path: str | os.PathLike, device: str | None = None, max_new_tokens: int = 10):
        from transformers import BlipForQuestionAnswering

        # The architecture is checked first: a BLIP captioning model has the same model_type.
        _check_architecture(check_model_dir(path, BLIP_MODEL_TYPES, BLIP_DESCRIPTION), "BlipForQuestionAnswering")
        self.model, self.processor, self.device = load_model_and_processor(
            path, BlipForQuestionAnswering, BLIP_MODEL_TYPES, BLIP_DESCRIPTION, "BLIP", device)
        self.max_new_tokens = max_new_tokens

    def __call__(self, image: Image.Image, question: str) -> str:
        return self.answer_batch(image, [question])[0]

    def answer_batch(self, image: Image.Image, questions: Sequence[str]) -> list[str]:
        """Answers to several questions about one image in one generate call (the image is encoded once per row)."""
        import torch

        pixels = self.processor.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        text = self.processor.tokenizer(list(questions), padding=True, return_tensors="pt")
        with torch.no_grad():
            output = self.model.generate(pixel_values=pixels.expand(len(questions), -1, -1, -1).to(self.device),
                                         input_ids=text["input_ids"].to(self.device),
                                         attention_mask=text["attention_mask"].to(self.device),
                                         max_new_tokens=self.max_new_tokens, do_sample=False)
        # The first position is the decoder start token BLIP generates from, not part of the answer.
        answers = self.processor.tokenizer.batch_decode(output[:, 1:], skip_special_tokens=True)
        return [answer.strip() for answer in answers]


def _check_architecture(path, expected: str) -> None:
    """BLIP captioning and retrieval checkpoints share model_type "blip"; the architecture tells them apart."""
    import json

    architectures = json.loads((path / "config.json").read_text()).get("architectures") or []
    if architectures and expected not in architectures:
        raise UserError(f"{path}: holds a {', '.join(architectures)} model, expected {BLIP_DESCRIPTION}")


def check_judge_spec(spec: str) -> None:
    """Validate a judge spec ("blip:PATH") without loading weights."""
    path = _parse(spec)
    _check_architecture(check_model_dir(path, BLIP_MODEL_TYPES, BLIP_DESCRIPTION), "BlipForQuestionAnswering")


def load_judge(spec: str, **options) -> VQAJudge:
    """A VQA judge from its spec ("blip:PATH"); `options` go to its constructor (device, max_new_tokens)."""
    return BlipVQAJudge(_parse(spec), **options)


def _parse(spec: str) -> str:
    kind, _, path = spec.partition(":")
    if kind.strip().lower() not in JUDGE_KINDS:
        raise UserError(f"unknown VQA judge {spec!r}; expected one of: " + ", ".join(f"{k}:PATH" for k in JUDGE_KINDS))
    if not path:
        raise UserError(f"the VQA judge {kind!r} needs a local model directory: {kind}:PATH")
    return path
