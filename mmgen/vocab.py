"""Image tokens in an LLM's vocabulary: `<|image_start|>`, `<|image_end|>` and one token per visual code.

An image is a fixed-length run of ordinary vocabulary ids, so everything downstream (training, sampling, RL,
serving, export) reuses the LLM's own machinery. This module adds the tokens to a Hugging Face tokenizer, grows
the embedding table and LM head, initialises the new rows, and maps codes to ids and back.

The new tokens are added as *special* tokens. That is what keeps user text safe: text is tokenized with
special-token parsing off (`split_special_tokens=True`), so a caption that contains the literal string
`<|image_start|>` or `<|vis_00012|>` stays plain text. Image ids are only ever built directly from codes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import AddedToken, PreTrainedModel, PreTrainedTokenizerBase

from mmgen.errors import UserError

IMAGE_START = "<|image_start|>"
IMAGE_END = "<|image_end|>"
CODE_TOKEN_FORMAT = "<|vis_{:05d}|>"
INIT_STRATEGIES = ("mean", "codebook", "random")

# Std of the noise added to the mean row, relative to the std of the existing rows: large enough that every new
# row differs (so the model can tell codes apart from step one), small enough to keep their logits near the mean.
MEAN_INIT_NOISE = 0.02


@dataclass(frozen=True)
class ImageVocab:
    """Where the image tokens live in the extended vocabulary. Code `c` is token id `first_code_id + c`."""

    start_id: int
    end_id: int
    first_code_id: int
    codebook_size: int
    vocab_size: int  # rows of the resized embedding table, pad rows included

    @property
    def code_ids(self) -> range:
        return range(self.first_code_id, self.first_code_id + self.codebook_size)

    @property
    def pad_row_ids(self) -> range:
        """Rows added by `pad_to_multiple_of` that no token uses: never to be sampled."""
        return range(self.first_code_id + self.codebook_size, self.vocab_size)

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes must be in [0, {self.codebook_size}), "
                             f"got [{int(codes.min())}, {int(codes.max())}]")
        return codes.long() + self.first_code_id

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        codes = ids.long() - self.first_code_id
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError("ids outside the image code range: not an image span")
        return codes

    def is_code(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.first_code_id) & (ids < self.first_code_id + self.codebook_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageVocab:
        return cls(**{key: int(data[key]) for key in ("start_id", "end_id", "first_code_id", "codebook_size",
                                                      "vocab_size")})

    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Fail loudly if `tokenizer` does not hold the image tokens at the recorded ids."""
        expected = {IMAGE_START: self.start_id, IMAGE_END: self.end_id,
                    code_token(0): self.first_code_id,
                    code_token(self.codebook_size - 1): self.first_code_id + self.codebook_size - 1}
        found = {token: tokenizer.convert_tokens_to_ids(token) for token in expected}
        wrong = {token: (found[token], want) for token, want in expected.items() if found[token] != want}
        if wrong:
            detail = ", ".join(f"{token} is id {got}, expected {want}" for token, (got, want) in wrong.items())
            raise UserError(f"the text tokenizer does not match mmgen.json ({detail}); was the tokenizer replaced?")


def code_token(code: int) -> str:
    return CODE_TOKEN_FORMAT.format(code)


def add_image_tokens(tokenizer: PreTrainedTokenizerBase, codebook_size: int) -> tuple[int, int, int]:
    """Append the image tokens to `tokenizer`; returns `(start_id, end_id, first_code_id)`.

    Refuses a tokenizer that already has image tokens: extending twice would silently shift every id.
    """
    if codebook_size < 1:
        raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
    vocab = tokenizer.get_vocab()
    if IMAGE_START in vocab or code_token(0) in vocab:
        raise UserError("this tokenizer already has image tokens: start from the base LLM, not a unified checkpoint")
    first_new = len(tokenizer)
    tokens = [IMAGE_START, IMAGE_END] + [code_token(code) for code in range(codebook_size)]
    added = tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in tokens],
                                 special_tokens=True)
    if added != len(tokens):
        raise RuntimeError(f"tokenizer added {added} of {len(tokens)} image tokens")
    ids = tokenizer.convert_tokens_to_ids([IMAGE_START, IMAGE_END, code_token(0), code_token(codebook_size - 1)])
    expected = [first_new, first_new + 1, first_new + 2, first_new + 1 + codebook_size]
    if ids != expected:  # contiguous ids are what makes code -> id a single addition
        raise RuntimeError(f"image tokens got non-contiguous ids {ids}, expected {expected}")
    return first_new, first_new + 1, first_new + 2


def extend_vocabulary(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    codebook_size: int,
    init: str = "mean",
    code_embeddings: torch.Tensor | None = None,
    pad_to_multiple_of: int | None = None,
    seed: int = 0,
) -> ImageVocab:
    """Add image tokens to `tokenizer`, resize `model`'s embeddings (and untied LM head) and initialise new rows.

    `init`: "mean" (mean of the existing rows + small noise), "codebook" (the visual tokenizer's
    `code_embeddings`, projected to the hidden size and matched in scale to the existing rows; start/end get the
    mean init) or "random" (normal with the existing rows' std). Old rows are untouched, so text logits on the
    old vocabulary do not change.
    """
    if init not in INIT_STRATEGIES:
        raise UserError(f"unknown init {init!r}; expected one of {', '.join(INIT_STRATEGIES)}")
    if init == "codebook":
        if code_embeddings is None:
            raise UserError("init 'codebook' needs the visual tokenizer's code embeddings")
        if code_embeddings.shape[0] != codebook_size:
            raise ValueError(f"code_embeddings has {code_embeddings.shape[0]} rows, codebook_size is {codebook_size}")
    old_rows = model.get_input_embeddings().weight.shape[0]
    start_id, end_id, first_code_id = add_image_tokens(tokenizer, codebook_size)
    # Many released tables are longer than their tokenizer (Qwen2.5: 151,936 rows for 151,665 tokens). The new
    # tokens then take ids inside the table, on rows no text token uses; we re-initialise those rows and never
    # shrink the table.
    model.resize_token_embeddings(max(len(tokenizer), old_rows), pad_to_multiple_of=pad_to_multiple_of,
                                  mean_resizing=False)
    vocab_size = model.get_input_embeddings().weight.shape[0]
    generator = torch.Generator().manual_seed(seed)
    new_ids = torch.arange(start_id, vocab_size)
    known_rows = min(start_id, old_rows)  # rows that hold trained text tokens
    with torch.no_grad():
        tables = [model.get_input_embeddings().weight]
        head = model.get_output_embeddings()
        if head is not None and head.weight.data_ptr() != tables[0].data_ptr():
            tables.append(head.weight)
        for table in tables:
            table[new_ids] = _new_rows(table[:known_rows], len(new_ids), first_code_id - start_id, codebook_size,
                                       init, code_embeddings, generator).to(table.dtype)
        if head is not None and getattr(head, "bias", None) is not None:
            head.bias[new_ids] = head.bias[:known_rows].mean()
    model.config.vocab_size = vocab_size
    return ImageVocab(start_id, end_id, first_code_id, codebook_size, vocab_size)


def _new_rows(existing: torch.Tensor, count: int, code_offset: int, codebook_size: int, init: str,
              code_embeddings: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """`count` new rows for one table; rows `code_offset : code_offset + codebook_size` are the codes."""
    existing = existing.float()
    mean, std = existing.mean(0), existing.std(0).mean()
    if init == "random":
        return torch.randn(count, existing.shape[1], generator=generator) * std
    rows = mean + torch.randn(count, existing.shape[1], generator=generator) * std * MEAN_INIT_NOISE
    if init == "codebook":
        rows[code_offset:code_offset + codebook_size] = mean + project_codebook(
            code_embeddings, existing, generator)
    return rows


def project_codebook(code_embeddings: torch.Tensor, existing: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Map `[K, D]` code embeddings to `[K, H]` rows whose deviations from the mean match the existing rows in scale.

    A random Gaussian projection keeps the geometry of the codebook (codes close in the tokenizer stay close in
    the LLM), then a single scale factor makes the average row deviation equal to that of the text rows.
    """
    codes = code_embeddings.detach().float()
    codes = codes - codes.mean(0)
    projection = torch.randn(codes.shape[1], existing.shape[1], generator=generator) / codes.shape[1] ** 0.5
    projected = codes @ projection
    target = (existing - existing.mean(0)).norm(dim=1).mean()
    current = projected.norm(dim=1).mean().clamp_min(1e-12)
    return projected * (target / current)
