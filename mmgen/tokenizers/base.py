"""The visual tokenizer interface: images <-> fixed-length runs of discrete codes.

Every tokenizer family (one per file) subclasses `VisualTokenizer`, registers itself by `tokenizer_type`, and
is loaded back with `load_visual_tokenizer(path)`, which reads `config.json` to pick the family.
Checkpoints are safetensors only: a pickle file can run arbitrary code when loaded, so we refuse it.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from mmgen.errors import MissingPathError, UserError
from mmgen.files import atomic_directory, broken_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Files that hold pickled weights; finding only these means a checkpoint we must not load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

TokenizerT = TypeVar("TokenizerT", bound="VisualTokenizer")

_TOKENIZER_TYPES: dict[str, type[VisualTokenizer]] = {}


def register_visual_tokenizer(cls: type[TokenizerT]) -> type[TokenizerT]:
    """Class decorator: make `load_visual_tokenizer` dispatch `config.json`'s `tokenizer_type` to `cls`."""
    name = cls.tokenizer_type
    if name in _TOKENIZER_TYPES and _TOKENIZER_TYPES[name] is not cls:
        raise ValueError(f"tokenizer_type {name!r} is already registered to {_TOKENIZER_TYPES[name].__name__}")
    _TOKENIZER_TYPES[name] = cls
    return cls


def registered_tokenizer_types() -> list[str]:
    return sorted(_TOKENIZER_TYPES)


class VisualTokenizer(nn.Module, ABC):
    """Turns images in [-1, 1] into `num_tokens` codes in [0, codebook_size) and back.

    `grid_shape` describes how the flat codes are laid out (row-major): `(h, w)` for a 2D grid, `(h, w, q)` when
    each position carries q residual codes, `(n,)` for a 1D sequence; its product is always `num_tokens`.
    """

    tokenizer_type: ClassVar[str]

    codebook_size: int
    num_tokens: int
    image_size: int
    grid_shape: tuple[int, ...]
    in_channels: int = 3

    # ---- what each family implements -------------------------------------------------------------------------

    @abstractmethod
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Validated pixels [B, C, H, W] -> codes [B, num_tokens] (int64). Runs in eval mode without grad."""

    @abstractmethod
    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Validated codes [B, num_tokens] -> pixels [B, C, H, W]. Runs in eval mode without grad."""

    @abstractmethod
    def code_embeddings(self) -> torch.Tensor:
        """The code vectors, [codebook_size, D] (row i = code i): used to initialise the LLM's image tokens."""

    @abstractmethod
    def get_config(self) -> dict[str, Any]:
        """A JSON-serialisable description, `tokenizer_type` included, from which `from_config` rebuilds it."""

    @classmethod
    @abstractmethod
    def from_config(cls: type[TokenizerT], config: dict[str, Any]) -> TokenizerT:
        """Build an untrained tokenizer from `get_config()`'s output."""

    # ---- the public, validated interface ---------------------------------------------------------------------

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, C, image_size, image_size] in [-1, 1] -> LongTensor [B, num_tokens]; no grad, deterministic."""
        self._check_pixels(pixels)
        with torch.no_grad(), _eval_mode(self):
            return self._encode(pixels).long()

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, num_tokens] in [0, codebook_size) -> pixels [B, C, image_size, image_size] in [-1, 1]."""
        self._check_codes(codes)
        with torch.no_grad(), _eval_mode(self):
            return self._decode(codes.long()).clamp(-1.0, 1.0)

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if not isinstance(pixels, torch.Tensor):
            raise ValueError(f"expected a pixel tensor, got {type(pixels).__name__}")
        expected = [self.in_channels, self.image_size, self.image_size]
        if pixels.ndim != 4 or list(pixels.shape[1:]) != expected:
            raise ValueError(
                f"expected pixels of shape [B, {', '.join(map(str, expected))}] (channels, height, width), "
                f"got {list(pixels.shape)}"
            )
        if not pixels.is_floating_point():
            raise ValueError(f"expected floating-point pixels in [-1, 1], got dtype {pixels.dtype}")

    def _check_codes(self, codes: torch.Tensor) -> None:
        if not isinstance(codes, torch.Tensor):
            raise ValueError(f"expected a code tensor, got {type(codes).__name__}")
        if codes.ndim != 2 or codes.shape[1] != self.num_tokens:
            raise ValueError(f"expected codes of shape [B, {self.num_tokens}], got {list(codes.shape)}")
        if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
            raise ValueError(f"expected integer codes, got dtype {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes must lie in [0, {self.codebook_size}), got values in [{int(codes.min())}, {int(codes.max())}]"
            )

    # ---- persistence -----------------------------------------------------------------------------------------

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the tokenizer directory atomically: readers see the old checkpoint or the new one, never half."""
        with atomic_directory(path, replace_marker=CONFIG_NAME) as staging:
            self._write_files(staging)

    def _write_files(self, directory: Path) -> None:
        (directory / CONFIG_NAME).write_text(json.dumps(self.get_config(), indent=2, sort_keys=True) + "\n")
        self._save_weights(directory / WEIGHTS_NAME)

    def _save_weights(self, file: Path) -> None:
        save_model(self, str(file))

    def _load_weights(self, file: Path) -> None:
        load_model(self, str(file), strict=True)

    def _load_attachments(self, path: Path) -> None:
        """Load what a family keeps beside its weights (e.g. a diffusion decoder in `decoder/`); none by default."""

    @classmethod
    def from_pretrained(cls: type[TokenizerT], path: str | os.PathLike) -> TokenizerT:
        """Load a directory written by `save_pretrained`; the model comes back on CPU in eval mode."""
        path = Path(path)
        config = read_tokenizer_config(path)
        saved_type = config.get("tokenizer_type")
        if saved_type != cls.tokenizer_type:
            raise ValueError(
                f"{path} holds a {saved_type!r} tokenizer, not {cls.tokenizer_type!r}; "
                "use mmgen.tokenizers.load_visual_tokenizer to load any type"
            )
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            refuse_pickle_only(path)
            raise UserError(f"no {WEIGHTS_NAME} in tokenizer directory {path}")
        refuse_damaged_weights(path)
        model = cls.from_config(config)
        model._load_weights(weights)
        model._load_attachments(path)
        return model.eval()


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    """The parsed `config.json` of a tokenizer directory, with errors that name the path."""
    if not path.is_dir():
        raise MissingPathError(f"visual tokenizer directory not found: {path}")
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise MissingPathError(f"no {CONFIG_NAME} in visual tokenizer directory {path}")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{config_file} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise UserError(f"{config_file} must hold a JSON object, got {type(config).__name__}")
    return config


def refuse_pickle_only(path: Path) -> None:
    """Raise if `path` has pickled weights and no safetensors file."""
    if any(path.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in path.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise UserError(
            f"refusing to load pickle checkpoint {', '.join(pickled)} in {path}: only safetensors weights are "
            "accepted (pickle files can execute code); convert the weights to safetensors first"
        )


def _not_a_tokenizer(path: Path, config: dict[str, Any]) -> str:
    """What a directory given as a visual tokenizer is instead, and where its tokenizer would be."""
    if (path / "mmgen.json").is_file():
        return (f"{path} is a unified checkpoint, not a visual tokenizer; its visual tokenizer is "
                f"{path / 'visual_tokenizer'}")
    if "model_type" in config or "architectures" in config:
        kind = ", ".join(config.get("architectures") or []) or config.get("model_type")
        return (f"{path} is a transformers model ({kind}), not a visual tokenizer: give a directory written by "
                "`mmgen tokenizer train`, a unified checkpoint's visual_tokenizer/, or a diffusers VQModel")
    return f"{path / CONFIG_NAME} has no 'tokenizer_type' key and is not a diffusers VQModel config"


def refuse_damaged_weights(path: Path) -> None:
    """Raise if a safetensors file in `path` is cut short (disk full, a bad copy): a one-line error, not a traceback
    from deep inside the loader."""
    broken = broken_safetensors(path)
    if broken:
        raise UserError(f"{path} has damaged weights: {'; '.join(broken)}; re-copy or re-create it (a training run "
                        "resumes from its newest undamaged checkpoint by itself)")


def load_visual_tokenizer(path: str | os.PathLike) -> VisualTokenizer:
    """Load any registered tokenizer directory, or a diffusers `VQModel` directory, by reading its config.json."""
    path = Path(path)
    config = read_tokenizer_config(path)
    refuse_pickle_only(path)
    if "tokenizer_type" in config:
        tokenizer_type = config["tokenizer_type"]
    elif config.get("_class_name") == "VQModel":
        tokenizer_type = "diffusers_vq"
    elif "_class_name" in config:
        raise UserError(f"{path} holds a diffusers {config['_class_name']!r}; only VQModel is a visual tokenizer")
    else:
        raise UserError(_not_a_tokenizer(path, config))
    if tokenizer_type not in _TOKENIZER_TYPES:
        raise UserError(
            f"unknown tokenizer_type {tokenizer_type!r} in {path / CONFIG_NAME}; "
            f"known types: {', '.join(registered_tokenizer_types())}"
        )
    return _TOKENIZER_TYPES[tokenizer_type].from_pretrained(path)


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run in eval mode (no EMA codebook updates, no dropout) and restore each submodule's own mode afterwards."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for submodule, training in modes:
            submodule.training = training
