"""Token-id sequences for every task, built directly from ids (docs/architecture.md, "Sequences").

    text-to-image:  [prefix] caption <|image_start|> c_1 ... c_N <|image_end|>
    unconditional:  [prefix] <|image_start|> c_1 ... c_N <|image_end|>          (the caption dropped, for CFG)
    edit:           [prefix] <|image_start|> src <|image_end|> instruction <|image_start|> tgt <|image_end|>
    understanding:  [prefix] <|image_start|> codes <|image_end|> question answer

`prefix` is whatever the text tokenizer puts before a text (Llama's BOS; nothing for Qwen). User text is always
tokenized with special-token parsing off, so text can never produce image or control tokens. With
`prompt_format="chat"` the text part is wrapped in the tokenizer's chat template, rendered around a placeholder
so that the user's text itself still goes through the safe path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from mmgen.errors import UserError
from mmgen.vocab import ImageVocab

PROMPT_FORMATS = ("plain", "chat")
_PLACEHOLDER = "\x00mmgen-user-text\x00"


@dataclass
class PromptBuilder:
    """Builds the prompt side (everything up to and including the last `<|image_start|>`) of each task."""

    tokenizer: PreTrainedTokenizerBase
    vocab: ImageVocab
    prompt_format: str = "plain"
    _prefix: list[int] = field(init=False, repr=False)
    _chat_parts: tuple[list[int], list[int]] | None = field(init=False, repr=False, default=None)

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise UserError(f"unknown prompt_format {self.prompt_format!r}; "
                            f"expected one of {', '.join(PROMPT_FORMATS)}")
        self._prefix = self._special_prefix()
        if self.prompt_format == "chat":
            self._chat_parts = self._chat_template_parts()

    def text_ids(self, text: str) -> list[int]:
        """Ids of user text, never parsed for special tokens."""
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def wrap_text(self, text: str) -> list[int]:
        """User text as it appears inside a prompt: plain, or inside the chat template's user turn."""
        if self._chat_parts is None:
            return self.text_ids(text)
        before, after = self._chat_parts
        return before + self.text_ids(text) + after

    def image_ids(self, codes: torch.Tensor | list[int]) -> list[int]:
        codes = torch.as_tensor(codes)
        return [self.vocab.start_id, *self.vocab.codes_to_ids(codes).tolist(), self.vocab.end_id]

    def text_to_image(self, caption: str | None) -> list[int]:
        """Prompt for generating an image; `caption=None` gives the unconditional prompt used by CFG."""
        text = [] if caption is None else self.wrap_text(caption)
        return self._prefix + text + [self.vocab.start_id]

    def edit(self, source_codes: torch.Tensor | list[int], instruction: str | None) -> list[int]:
        """Prompt for editing; `instruction=None` keeps the source image but drops the instruction (CFG)."""
        text = [] if instruction is None else self.wrap_text(instruction)
        return self._prefix + self.image_ids(source_codes) + text + [self.vocab.start_id]

    def unconditional_of(self, prompt: list[int]) -> list[int]:
        """The CFG counterpart of a generation prompt (one ending in `<|image_start|>`): the text dropped, a source
        image kept. `text_to_image(c)` gives `text_to_image(None)`; `edit(src, i)` gives `edit(src, None)`."""
        if not prompt or prompt[-1] != self.vocab.start_id:
            raise ValueError("a generation prompt ends with <|image_start|>")
        start = prompt.index(self.vocab.start_id)
        if start == len(prompt) - 1:  # no source image: text-to-image
            return self._prefix + [self.vocab.start_id]
        end = prompt.index(self.vocab.end_id, start)
        return self._prefix + prompt[start:end + 1] + [self.vocab.start_id]

    def understanding(self, codes: torch.Tensor | list[int], question: str) -> list[int]:
        return self._prefix + self.image_ids(codes) + self.wrap_text(question)

    # ---- training examples: {"input_ids", "completion_mask"}, the loss falls on the completion only ----------

    def text_to_image_example(self, caption: str | None, codes: torch.Tensor | list[int]) -> dict[str, list[int]]:
        """`caption=None` is the caption-dropped example that teaches the unconditional branch of CFG."""
        return _example(self.text_to_image(caption), self._image_completion(codes))

    def edit_example(self, source_codes: torch.Tensor | list[int], instruction: str | None,
                     target_codes: torch.Tensor | list[int]) -> dict[str, list[int]]:
        return _example(self.edit(source_codes, instruction), self._image_completion(target_codes))

    def understanding_example(self, codes: torch.Tensor | list[int], question: str,
                              answer: str) -> dict[str, list[int]]:
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        return _example(self.understanding(codes, question), self.text_ids(answer) + eos)

    def _image_completion(self, codes: torch.Tensor | list[int]) -> list[int]:
        return self.vocab.codes_to_ids(torch.as_tensor(codes)).tolist() + [self.vocab.end_id]

    def _special_prefix(self) -> list[int]:
        with_special = self.tokenizer("x", add_special_tokens=True)["input_ids"]
        without = self.tokenizer("x", add_special_tokens=False)["input_ids"]
        start = _find(with_special, without)
        return with_special[:start] if start is not None else []

    def _chat_template_parts(self) -> tuple[list[int], list[int]]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise UserError("prompt_format 'chat' needs a tokenizer with a chat template; use prompt_format 'plain'")
        rendered = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": _PLACEHOLDER}], tokenize=False, add_generation_prompt=True)
        before, _, after = rendered.partition(_PLACEHOLDER)
        # The template's own markup is trusted: parse its special tokens. The prefix (BOS) is added separately.
        before_ids = self.tokenizer(before, add_special_tokens=False, split_special_tokens=False)["input_ids"]
        if before_ids[:len(self._prefix)] == self._prefix:
            before_ids = before_ids[len(self._prefix):]
        return before_ids, self.tokenizer(after, add_special_tokens=False, split_special_tokens=False)["input_ids"]


def _example(prompt: list[int], completion: list[int]) -> dict[str, list[int]]:
    return {"input_ids": prompt + completion, "completion_mask": [0] * len(prompt) + [1] * len(completion)}


def _find(haystack: list[int], needle: list[int]) -> int | None:
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start:start + len(needle)] == needle:
            return start
    return None
