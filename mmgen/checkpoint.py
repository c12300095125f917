"""The unified checkpoint: a plain Hugging Face causal-LM directory that also knows its images.

    <dir>/config.json, model.safetensors, tokenizer files, generation_config.json   (transformers loads these)
    <dir>/mmgen.json            image token ids, tokens per image, prompt format, default sampling settings
    <dir>/visual_tokenizer/     the visual tokenizer (config.json + model.safetensors)
    <dir>/adapter/              optional peft LoRA adapter (SFT with LoRA); `mmgen export` merges it
    <dir>/decoder/              optional diffusion decoder head (diffusers format)

`AutoModelForCausalLM.from_pretrained(dir)` loads it with no mmgen code. Everything is written through a staging
directory and renamed into place, so a killed run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from mmgen.errors import UserError
from mmgen.files import atomic_directory
from mmgen.runtime import pick_attn_implementation, pick_device, pick_dtype
from mmgen.sequences import PROMPT_FORMATS, PromptBuilder
from mmgen.tokenizers import VisualTokenizer, load_visual_tokenizer
from mmgen.tokenizers.base import refuse_damaged_weights, refuse_pickle_only
from mmgen.vocab import ImageVocab, extend_vocabulary

MMGEN_JSON = "mmgen.json"
FORMAT_VERSION = 1
VISUAL_TOKENIZER_DIR = "visual_tokenizer"
ADAPTER_DIR = "adapter"
DECODER_DIR = "decoder"
DEFAULT_SAMPLING = {"cfg_scale": 3.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


@dataclass
class UnifiedModel:
    """A loaded unified checkpoint: the LM, its text tokenizer, the image vocabulary and the visual tokenizer."""

    model: PreTrainedModel | None
    tokenizer: PreTrainedTokenizerBase
    vocab: ImageVocab
    visual_tokenizer: VisualTokenizer
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def prompts(self) -> PromptBuilder:
        return PromptBuilder(self.tokenizer, self.vocab, self.meta.get("prompt_format", "plain"))

    @property
    def num_image_tokens(self) -> int:
        return self.visual_tokenizer.num_tokens


def build_meta(vocab: ImageVocab, visual_tokenizer: VisualTokenizer, prompt_format: str = "plain",
               sampling: dict | None = None, **extra) -> dict[str, Any]:
    if prompt_format not in PROMPT_FORMATS:
        raise UserError(f"unknown prompt_format {prompt_format!r}; expected one of {', '.join(PROMPT_FORMATS)}")
    if visual_tokenizer.codebook_size != vocab.codebook_size:
        raise ValueError(f"visual tokenizer has {visual_tokenizer.codebook_size} codes, vocabulary has "
                         f"{vocab.codebook_size}")
    return {
        "format_version": FORMAT_VERSION,
        "image_tokens": vocab.to_dict(),
        "tokens_per_image": visual_tokenizer.num_tokens,
        "grid_shape": list(visual_tokenizer.grid_shape),
        "image_size": visual_tokenizer.image_size,
        "prompt_format": prompt_format,
        "sampling": {**DEFAULT_SAMPLING, **(sampling or {})},
        "visual_tokenizer": VISUAL_TOKENIZER_DIR,
        **extra,
    }


def save_unified(out_dir: str | os.PathLike, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 vocab: ImageVocab, visual_tokenizer: VisualTokenizer, meta: dict[str, Any],
                 adapter_dir: str | os.PathLike | None = None, decoder_dir: str | os.PathLike | None = None) -> Path:
    """Write a unified checkpoint atomically. `meta` is the content of mmgen.json (see `build_meta`)."""
    out_dir = Path(out_dir)
    meta = dict(meta)
    meta["decoder"] = DECODER_DIR if decoder_dir else None
    meta["adapter"] = ADAPTER_DIR if adapter_dir else None
    with atomic_directory(out_dir, replace_marker=MMGEN_JSON) as staging:
        model.save_pretrained(staging)  # safetensors
        make_text_safe_by_default(tokenizer, meta["prompt_format"])
        tokenizer.save_pretrained(staging)
        visual_tokenizer.save_pretrained(staging / VISUAL_TOKENIZER_DIR)
        if adapter_dir:
            shutil.copytree(adapter_dir, staging / ADAPTER_DIR)
        if decoder_dir:
            shutil.copytree(decoder_dir, staging / DECODER_DIR)
        (staging / MMGEN_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def make_text_safe_by_default(tokenizer: PreTrainedTokenizerBase, prompt_format: str) -> None:
    """Saved with `split_special_tokens: true`, a plain-format checkpoint's tokenizer reads `<|image_start|>` or a
    code token's name in user text as plain text when loaded by plain transformers (or a server using its
    tokenizer), as mmgen itself does; `split_special_tokens=False` per call still parses them.

    A chat-format tokenizer keeps the default: `apply_chat_template(tokenize=True)` tokenizes the rendered template
    in one call, and its own control tokens must stay tokens there; callers pass `sanitize_control_tokens=True`
    instead (docs/checkpoint.md, "Serving safely")."""
    if prompt_format == "plain":
        tokenizer.split_special_tokens = True
        tokenizer.init_kwargs["split_special_tokens"] = True


def attach_decoder_to_checkpoint(model_dir: str | os.PathLike, decoder, out_dir: str | os.PathLike) -> Path:
    """Copy a unified checkpoint to `out_dir` with `decoder` (a DiffusionDecoder) in its `decoder/`."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    meta = read_meta(model_dir)
    with atomic_directory(out_dir, replace_marker=MMGEN_JSON) as staging:
        # Only the checkpoint's own decoder/ is replaced (a semantic visual tokenizer keeps its decoder/).
        top_level_decoder = lambda folder, names: [DECODER_DIR] if Path(folder) == model_dir else []  # noqa: E731
        shutil.copytree(model_dir, staging, dirs_exist_ok=True, ignore=top_level_decoder)
        (staging / DECODER_DIR).mkdir()
        decoder.write_to(staging / DECODER_DIR)
        meta["decoder"] = DECODER_DIR
        (staging / MMGEN_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """mmgen.json of a unified checkpoint, checked for the keys every consumer relies on."""
    path = Path(path)
    file = path / MMGEN_JSON
    if not path.is_dir():
        raise UserError(f"model directory not found: {path}")
    if not file.is_file():
        raise UserError(f"{path} is not an mmgen unified checkpoint (no {MMGEN_JSON}); create one with `mmgen init`")
    try:
        meta = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise UserError(f"{file} is not valid JSON: {error}") from error
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise UserError(f"{file} has format_version {version!r}; this mmgen reads version {FORMAT_VERSION}")
    for key in ("image_tokens", "tokens_per_image", "image_size", "prompt_format", "visual_tokenizer"):
        if key not in meta:
            raise UserError(f"{file} misses the key {key!r}")
    return meta


def load_unified(path: str | os.PathLike, device: str = "cpu", dtype: str | None = None,
                 adapter: str | os.PathLike | None = None, attn_implementation: str = "auto",
                 trust_remote_code: bool = False, with_model: bool = True) -> UnifiedModel:
    """Load a unified checkpoint (and a LoRA adapter: `adapter`, else the checkpoint's own `adapter/`).

    `with_model=False` loads everything but the LM weights (`model` is None), for callers that load the LM their
    own way, such as a trainer.
    """
    path = Path(path)
    meta = read_meta(path)
    torch_device = pick_device(device)
    tokenizer = load_text_tokenizer(path, trust_remote_code)
    vocab = ImageVocab.from_dict(meta["image_tokens"])
    vocab.check_tokenizer(tokenizer)
    visual_tokenizer = load_visual_tokenizer(path / meta["visual_tokenizer"]).to(torch_device)
    if visual_tokenizer.num_tokens != meta["tokens_per_image"]:
        raise UserError(f"{path}: the visual tokenizer gives {visual_tokenizer.num_tokens} tokens per image, "
                        f"mmgen.json says {meta['tokens_per_image']}")
    model = None
    if with_model:
        model = load_causal_lm(path, torch_device, dtype, attn_implementation, trust_remote_code)
        if model.get_input_embeddings().weight.shape[0] != vocab.vocab_size:
            raise UserError(f"{path}: the embedding table has {model.get_input_embeddings().weight.shape[0]} rows "
                            f"but mmgen.json records {vocab.vocab_size}")
        adapter = adapter or _optional_dir(path, ADAPTER_DIR)
        model = (attach_adapter(model, adapter) if adapter else model).eval()
    return UnifiedModel(model, tokenizer, vocab, visual_tokenizer.eval(), meta, path)


def load_causal_lm(path: Path, device: torch.device, dtype: str | None = None, attn_implementation: str = "auto",
                   trust_remote_code: bool = False, attn_device: torch.device | None = None) -> PreTrainedModel:
    """A local HF causal LM, safetensors only, no hub access, remote code only when asked for.

    `attn_implementation` is checked against the family's class ("auto": what it supports best on `attn_device`,
    the device the model will run on, by default `device`)."""
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a Hugging Face model directory (no config.json)")
    refuse_pickle_only(path)
    refuse_damaged_weights(path)
    torch_dtype = pick_dtype(dtype, device) or "auto"
    attn = pick_attn_implementation(attn_implementation, attn_device or device,
                                    causal_lm_class(path, trust_remote_code))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, local_files_only=True, use_safetensors=True, trust_remote_code=trust_remote_code,
            dtype=torch_dtype, attn_implementation=attn)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise _needs_remote_code(path) from error
        raise
    return model.to(device)


def _needs_remote_code(path: Path) -> UserError:
    return UserError(f"{path} needs custom code to load; pass --trust-remote-code only if you trust its code")


def causal_lm_class(path: Path, trust_remote_code: bool = False) -> type | None:
    """The transformers class `AutoModelForCausalLM` builds for the model at `path`; None for custom code."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise _needs_remote_code(path) from error
        raise UserError(f"{path}/config.json cannot be read as a transformers config: {error}") from error
    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        return None


def load_text_tokenizer(path: Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot load the text tokenizer of {path}: {error}") from error


def attach_adapter(model: PreTrainedModel, adapter: str | os.PathLike) -> PreTrainedModel:
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
    refuse_pickle_only(adapter)
    return PeftModel.from_pretrained(model, adapter)


def init_unified(base: str | os.PathLike, tokenizer_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 init: str = "mean", prompt_format: str = "plain", pad_to_multiple_of: int | None = None,
                 seed: int = 0, trust_remote_code: bool = False, dtype: str | None = None,
                 attn_implementation: str = "auto") -> Path:
    """`mmgen init`: extend a base LLM's vocabulary with a visual tokenizer's codes and save the unified checkpoint."""
    base = Path(base)
    if (base / MMGEN_JSON).exists():
        raise UserError(f"{base} is already a unified checkpoint; `mmgen init` starts from the base LLM directory")
    visual_tokenizer = load_visual_tokenizer(tokenizer_dir)
    model = load_causal_lm(base, torch.device("cpu"), dtype, attn_implementation, trust_remote_code)
    tokenizer = load_text_tokenizer(base, trust_remote_code)
    vocab = extend_vocabulary(model, tokenizer, visual_tokenizer.codebook_size, init=init,
                              code_embeddings=visual_tokenizer.code_embeddings() if init == "codebook" else None,
                              pad_to_multiple_of=pad_to_multiple_of, seed=seed)
    if vocab.pad_row_ids:
        # Pad rows belong to no token; keep plain `generate` (and servers honouring it) from ever sampling them.
        suppressed = set(model.generation_config.suppress_tokens or [])
        model.generation_config.suppress_tokens = sorted(suppressed | set(vocab.pad_row_ids))
    meta = build_meta(vocab, visual_tokenizer, prompt_format, base_model=str(base), init=init)
    return save_unified(out_dir, model, tokenizer, vocab, visual_tokenizer, meta)


def _optional_dir(path: Path | None, name: str) -> Path | None:
    if path is None:
        return None
    candidate = path / name
    return candidate if candidate.is_dir() else None


def export_unified(model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   adapter: str | os.PathLike | None = None, dtype: str | None = None) -> Path:
    """`mmgen export`: merge a LoRA adapter (given, or the checkpoint's own `adapter/`) into a clean checkpoint."""
    if Path(out_dir).resolve() == Path(model_dir).resolve():
        raise UserError("--out must differ from --model: export writes a new checkpoint and keeps the source")
    unified = load_unified(model_dir, dtype=dtype, adapter=adapter)
    model, merged = unified.model, hasattr(unified.model, "merge_and_unload")
    if merged:
        model = model.merge_and_unload()
    meta = {**unified.meta, "merged_adapter": str(adapter or Path(model_dir) / ADAPTER_DIR) if merged else None}
    return save_unified(out_dir, model, unified.tokenizer, unified.vocab, unified.visual_tokenizer, meta,
                        decoder_dir=_optional_dir(unified.path, DECODER_DIR))
