"""Image sampling from a unified checkpoint: CFG in one batch, logits over the code rows only, KV cache.

Why not `model.generate(guidance_scale=...)`: transformers runs the unconditional branch as a second, unbatched
model call per step and computes logits over the whole vocabulary, then masks all but the codes. Here the cond and
uncond rows share one batched forward, and during the image span the LM head is a slice of its code rows, so
each step costs one forward of the transformer body plus a `[rows, hidden] x [hidden, codebook]` product.
Exactly `tokens_per_image` codes are drawn; `<|image_end|>` follows by construction.

Every image has its own random stream (seed + image index), so an image does not depend on which batch it lands
in, up to float noise: a different batch mix changes the left padding, which can shift logits by ~1e-6 and, rarely,
flip a sampled code. Same settings and same batching reproduce images exactly.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace

import torch
from PIL import Image
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from mmgen.checkpoint import DECODER_DIR, UnifiedModel, load_unified, read_meta
from mmgen.decoders.conditioning import code_conditions, image_span_hidden_states
from mmgen.errors import UserError
from mmgen.hardware import cpu_capability
from mmgen.images import center_square, load_image, pil_to_tensor, tensor_to_pil
from mmgen.runtime import DTYPES, PRECISIONS, Precision, resolve_precision
from mmgen.vocab import ImageVocab

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingConfig:
    num_images: int = 1  # images per prompt
    cfg_scale: float = 3.0  # 1.0 (or 0 prompts for uncond) turns guidance off; 0.0 samples unconditionally
    negative_prompt: str | None = None  # replaces the empty caption of the unconditional branch
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    seed: int = 0
    batch_size: int = 16  # images per forward pass (CFG doubles the rows)
    image_size: int | None = None  # if given, must match the visual tokenizer

    def __post_init__(self):
        problems = []
        if self.num_images < 1:
            problems.append(f"num_images must be >= 1, got {self.num_images}")
        if not math.isfinite(self.cfg_scale) or self.cfg_scale < 0:
            problems.append(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            problems.append(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if problems:
            raise UserError("invalid sampling settings: " + "; ".join(problems))

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_defaults(cls, defaults: dict, **overrides) -> SamplingConfig:
        """Checkpoint defaults (mmgen.json "sampling"), then explicit overrides; None means "not given"."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in defaults.items() if k in known}
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown sampling settings: {', '.join(sorted(unknown))}")
        return cls(**values)


class CodeHead:
    """Logits over the image-code rows of the LM head only.

    Built from the head's weight slice; on construction it checks, on a probe input, that it reproduces the
    model's own logits (families with logit soft-capping or scaling are handled; an unknown transform falls back
    to the full head, sliced, with a warning).
    """

    def __init__(self, model: PreTrainedModel, vocab: ImageVocab, verify: bool = True, full_head: bool = False):
        """`verify=False` skips the probe (for a model already verified, e.g. rebuilt at every training step to
        follow a LoRA adapter being switched on and off); `full_head` forces the fallback."""
        head = model.get_output_embeddings()
        codes = slice(vocab.first_code_id, vocab.first_code_id + vocab.codebook_size)
        self.weight = head.weight[codes]  # a view: it follows in-place optimizer updates and carries gradients
        self.bias = head.bias[codes] if getattr(head, "bias", None) is not None else None
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self._full_head = head if full_head else None
        self._codes = codes
        if verify and not full_head and not self._matches_model(model):
            logger.warning("%s transforms its logits in a way mmgen does not know; sampling uses the full LM head",
                           type(model).__name__)
            self._full_head = head

    @property
    def exact(self) -> bool:
        """True when the code-row slice is used (not the full-head fallback)."""
        return self._full_head is None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._full_head is not None:
            return self._full_head(hidden)[..., self._codes].float()
        logits = torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    @torch.no_grad()
    def _matches_model(self, model: PreTrainedModel) -> bool:
        probe = torch.tensor([[self._codes.start, self._codes.start + 1]], device=self.weight.device)
        out = model(probe, output_hidden_states=True)
        expected = out.logits[:, -1, self._codes].float()
        ours = self(out.hidden_states[-1][:, -1])
        # bf16 tolerance: a training loop may run the model's forward under autocast (accelerate patches it)
        # while this slice runs in fp32. Real logit transforms (scales, caps) differ by far more.
        return torch.allclose(ours, expected, rtol=1e-2, atol=1e-2 * float(expected.abs().max().clamp_min(1)))


class ImageGenerator:
    """Text-to-image and editing from a unified checkpoint. `generate(prompts)` returns images per prompt."""

    def __init__(self, unified: UnifiedModel, merge_adapter: bool = True, exact_code_head: bool | None = None,
                 decoder: str = "tokenizer"):
        """`merge_adapter=False` samples through a LoRA-wrapped model as it is (e.g. mid-training, where merging
        would alter the weights being trained). `exact_code_head` skips the code head's probe when the caller has
        already verified this model (True: the code-row slice is exact; False: use the full head).
        `decoder`: "tokenizer" renders codes with the visual tokenizer's own decoder; "diffusion" with the
        checkpoint's diffusion decoder head (`decoder/`)."""
        model = unified.model
        if merge_adapter and hasattr(model, "merge_and_unload"):  # merged once: sampling pays no LoRA matmuls
            model = model.merge_and_unload()
        self.unified = unified
        self.model = model.eval()
        self.body = model.get_decoder()
        # transformers 5.24 renamed the forward's `past_key_values` to `cache` (the old name goes in 5.40)
        self._cache_argument = "cache" if "cache" in inspect.signature(self.body.forward).parameters \
            else "past_key_values"
        self.vocab = unified.vocab
        self.prompts = unified.prompts
        self.visual_tokenizer = unified.visual_tokenizer
        self.num_tokens = unified.num_image_tokens
        self.device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        stored = next((name for name, value in DTYPES.items() if value == dtype), str(dtype))
        self.precision = Precision(stored, "the model's dtype", cpu_capability())  # load_generator says why
        if exact_code_head is None:
            self.head = CodeHead(model, self.vocab)
        else:
            self.head = CodeHead(model, self.vocab, verify=False, full_head=not exact_code_head)
        self.pad_id = self.vocab.end_id  # any id works: padded positions are masked out
        if decoder not in DECODERS:
            raise UserError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
        self.diffusion = load_checkpoint_decoder(unified) if decoder == "diffusion" else None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str = "cpu", dtype: str | None = None,
                        adapter: str | os.PathLike | None = None, attn_implementation: str = "auto",
                        decoder: str = "tokenizer") -> ImageGenerator:
        return cls(load_unified(path, device=device, dtype=dtype, adapter=adapter,
                                attn_implementation=attn_implementation), decoder=decoder)

    def config(self, **overrides) -> SamplingConfig:
        return SamplingConfig.from_defaults(self.unified.meta.get("sampling", {}), **overrides)

    # ---- public API ------------------------------------------------------------------------------------------

    def generate(self, prompts: str | Sequence[str], config: SamplingConfig | None = None, progress: bool = False,
                 **overrides) -> list[list[Image.Image]]:
        """`num_images` images for each prompt, as `[prompt][image]` PIL images."""
        config = self._settle(config, overrides)
        prompts = _as_list(prompts)
        codes = self.generate_codes(prompts, config, progress)
        if self.diffusion is None:
            return self._group(self.decode(codes), config.num_images)
        rows = [self.prompts.text_to_image(prompt) for prompt in prompts for _ in range(config.num_images)]
        return self._group(self.render_with_diffusion(codes, rows, config), config.num_images)

    def generate_codes(self, prompts: str | Sequence[str], config: SamplingConfig | None = None,
                       progress: bool = False, **overrides) -> torch.Tensor:
        """Codes `[len(prompts) * num_images, tokens_per_image]`, prompt-major."""
        prompts = _as_list(prompts)
        config = self._settle(config, overrides)
        cond = [self.prompts.text_to_image(prompt) for prompt in prompts]
        uncond = self.prompts.text_to_image(config.negative_prompt)
        return self.sample_codes(cond, [uncond] * len(cond), config, progress)

    def edit(self, images: Image.Image | str | Sequence[Image.Image | str], instructions: str | Sequence[str],
             config: SamplingConfig | None = None, progress: bool = False, **overrides) -> list[list[Image.Image]]:
        """Edited images for each (source image, instruction) pair; CFG contrasts with and without instruction."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        instructions = _as_list(instructions)
        if len(images) != len(instructions):
            raise UserError(f"got {len(images)} images but {len(instructions)} instructions; give one per image")
        config = self._settle(config, overrides)
        source_codes = self.encode_images(images)
        cond = [self.prompts.edit(codes, text) for codes, text in zip(source_codes, instructions, strict=True)]
        uncond = [self.prompts.edit(codes, None) for codes in source_codes]
        codes = self.sample_codes(cond, uncond, config, progress)
        if self.diffusion is None:
            return self._group(self.decode(codes), config.num_images)
        rows = [prompt for prompt in cond for _ in range(config.num_images)]
        return self._group(self.render_with_diffusion(codes, rows, config), config.num_images)

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image | str]) -> torch.Tensor:
        size = self.visual_tokenizer.image_size
        pil = [center_square(load_image(image), size) for image in images]
        return self.visual_tokenizer.encode(pil_to_tensor(pil).to(self.device)).cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, batch_size: int = 64) -> list[Image.Image]:
        images = []
        for chunk in codes.split(batch_size):
            images += tensor_to_pil(self.visual_tokenizer.decode(chunk.to(self.device)))
        return images

    @torch.no_grad()
    def render_with_diffusion(self, codes: torch.Tensor, prompts: list[list[int]], config: SamplingConfig
                              ) -> list[Image.Image]:
        """Codes [R, N] -> images through the diffusion decoder head. `prompts[r]` is row r's prompt ids (ending in
        image_start): hidden-state decoders read the LLM over prompt + codes. Row r's noise comes from the seed
        `config.seed + r`, like its codes, so an image does not depend on its batch."""
        images = []
        decoder, first = self.diffusion, self.vocab.first_code_id
        for start in range(0, len(codes), config.batch_size):
            chunk = codes[start:start + config.batch_size].to(self.device)
            spatial = None
            if decoder.config.conditioning == "codes":
                cond, spatial = code_conditions(self.visual_tokenizer, decoder.config, chunk)
            else:
                sequences = [prompt + (row + first).tolist()
                             for prompt, row in zip(prompts[start:start + len(chunk)], chunk, strict=True)]
                ids, mask = left_pad(sequences, self.pad_id, self.device)
                cond = image_span_hidden_states(self.body, ids, mask, self.vocab, self.num_tokens).float()
            shape = (decoder.config.latent_channels, decoder.config.latent_size, decoder.config.latent_size)
            noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(config.seed + start + i))
                                 for i in range(len(chunk))])
            latents = decoder.sample(cond.to(next(decoder.parameters()).dtype), noise=noise, spatial=spatial)
            images += tensor_to_pil(self.visual_tokenizer.render(latents))
        return images

    # ---- the sampler -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample_codes(self, cond: list[list[int]], uncond: list[list[int]] | None, config: SamplingConfig,
                     progress: bool = False, return_logprobs: bool = False):
        """Sample `config.num_images` images per conditional prompt (token-id lists ending in image_start).

        With `return_logprobs`, also the log-probability of every drawn code under the distribution it was drawn
        from (guided, temperature-scaled, top-k/top-p-truncated, over the code rows only): `(codes, logprobs)`.
        """
        self._check_lengths(cond + (uncond or []))
        rows = [(prompt, index) for prompt in range(len(cond)) for index in range(config.num_images)]
        out = torch.empty(len(rows), self.num_tokens, dtype=torch.long)
        logprobs = torch.empty(len(rows), self.num_tokens)
        batches = range(0, len(rows), config.batch_size)
        for start in tqdm(batches, desc="sampling", unit="batch", disable=not progress or len(batches) < 2):
            batch = rows[start:start + config.batch_size]
            cond_ids = [cond[prompt] for prompt, _ in batch]
            uncond_ids = [uncond[prompt] for prompt, _ in batch] if config.guided and uncond else None
            noise = self._gumbel_noise(config, [config.seed + start + offset for offset in range(len(batch))])
            codes, batch_logprobs = self._sample_batch(cond_ids, uncond_ids, config, noise)
            out[start:start + len(batch)] = codes.cpu()
            logprobs[start:start + len(batch)] = batch_logprobs.cpu()
        return (out, logprobs) if return_logprobs else out

    def _sample_batch(self, cond: list[list[int]], uncond: list[list[int]] | None, config: SamplingConfig,
                      noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        batch = len(cond)
        cache, hidden, attention_mask, position_ids = self._prefill(cond + (uncond or []))
        next_position = position_ids[:, -1:] + 1
        codes = torch.empty(batch, self.num_tokens, dtype=torch.long, device=self.device)
        logprobs = torch.zeros(batch, self.num_tokens, device=self.device)
        for step in range(self.num_tokens):
            logits = self.head(hidden)
            if uncond is not None:
                logits = guide(logits[:batch], logits[batch:], config.cfg_scale)
            step_noise = None if noise is None else noise[:, step]
            codes[:, step], logprobs[:, step] = self._pick(logits, config, step_noise)
            if step == self.num_tokens - 1:
                break
            token = codes[:, step] + self.vocab.first_code_id
            token = token.repeat(2) if uncond is not None else token  # both branches see the sampled code
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(len(token), 1)], dim=1)
            out = self.body(input_ids=token[:, None], attention_mask=attention_mask, position_ids=next_position,
                            use_cache=True, **{self._cache_argument: cache})
            cache, hidden = _returned_cache(out), out.last_hidden_state[:, -1]
            next_position = next_position + 1
        return codes, logprobs

    def _prefill(self, rows: list[list[int]]):
        """Run each distinct prompt once, then give every row its prompt's KV cache and last hidden state.

        The images of one prompt share it, and the unconditional rows usually share one empty caption, so this
        prefills `prompts + 1` sequences instead of `2 * prompts * images` (an editing prompt carries the source
        image's codes: there the prefill is as long as the image being drawn). The distinct prompts are padded to
        the same width as the full batch would be, so every row sees exactly the positions and mask it would have.
        Returns `(cache, hidden [rows, hidden], attention_mask [rows, width], position_ids [rows, width])`.
        """
        distinct: dict[tuple[int, ...], int] = {}
        owner = torch.tensor([distinct.setdefault(tuple(row), len(distinct)) for row in rows], device=self.device)
        input_ids, attention_mask = left_pad(list(distinct), self.pad_id, self.device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        out = self.body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=True)
        cache = _returned_cache(out)
        if len(distinct) < len(rows):
            cache.reorder_cache(owner)  # index_select along the batch: the beam-search hook, used to fan out
        return cache, out.last_hidden_state[owner, -1], attention_mask[owner], position_ids[owner]

    @staticmethod
    def _pick(logits: torch.Tensor, config: SamplingConfig, noise: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy, or a categorical draw by the Gumbel-max trick: argmax(log p + g) with g ~ Gumbel(0, 1) is an
        exact sample of p, and it needs no per-row random call inside the decoding loop. Returns the codes and
        their log-probabilities (0 for greedy: a point mass)."""
        if noise is None:
            return logits.argmax(-1), torch.zeros(len(logits), device=logits.device)
        scores = logits / config.temperature
        if config.top_k:
            scores = TopKLogitsWarper(config.top_k)(None, scores)
        if config.top_p < 1:
            scores = TopPLogitsWarper(config.top_p)(None, scores)
        log_p = scores.log_softmax(-1)
        codes = (log_p + noise).argmax(-1)
        return codes, log_p.gather(-1, codes[:, None])[:, 0]

    def _gumbel_noise(self, config: SamplingConfig, seeds: list[int]) -> torch.Tensor | None:
        """Gumbel noise `[rows, tokens_per_image, codebook]`, one random stream per image (its seed)."""
        if config.temperature == 0:
            return None
        shape = (self.num_tokens, self.vocab.codebook_size)
        uniform = torch.stack([torch.rand(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds])
        return -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7))).to(self.device)

    # ---- helpers ---------------------------------------------------------------------------------------------

    def _settle(self, config: SamplingConfig | None, overrides: dict) -> SamplingConfig:
        config = replace(config, **overrides) if config is not None else self.config(**overrides)
        if config.image_size is not None and config.image_size != self.visual_tokenizer.image_size:
            raise UserError(f"image_size {config.image_size} does not match the visual tokenizer, which makes "
                            f"{self.visual_tokenizer.image_size}x{self.visual_tokenizer.image_size} images")
        return config

    def _check_lengths(self, prompts: list[list[int]]) -> None:
        if not prompts:
            raise UserError("no prompts given")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(p) for p in prompts)
        if limit and longest + self.num_tokens > limit:
            raise UserError(f"the longest prompt has {longest} tokens; with {self.num_tokens} image tokens that "
                            f"exceeds the model's {limit} positions: shorten the prompt")

    @staticmethod
    def _group(images: list[Image.Image], per_prompt: int) -> list[list[Image.Image]]:
        return [images[i:i + per_prompt] for i in range(0, len(images), per_prompt)]


DECODERS = ("tokenizer", "diffusion")


def load_checkpoint_decoder(unified: UnifiedModel):
    """The checkpoint's diffusion decoder head, checked against its visual tokenizer."""
    from mmgen.decoders import DiffusionDecoder, is_decoder_dir

    folder = unified.path / DECODER_DIR if unified.path is not None else None
    if folder is None or not is_decoder_dir(folder):
        raise UserError(f"{unified.path} has no diffusion decoder (decoder/); train one with `mmgen train "
                        "recipes/decoder/shapes-hidden-states.yaml`, or use the tokenizer's decoder")
    if not hasattr(unified.visual_tokenizer, "render"):
        raise UserError(f"{unified.path}: its {unified.visual_tokenizer.tokenizer_type!r} visual tokenizer has no "
                        "renderer for the diffusion decoder's latents")
    device = next(unified.visual_tokenizer.parameters()).device
    return DiffusionDecoder.from_pretrained(folder).to(device)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one left-padded batch `(input_ids, attention_mask)`: the last real token of every row sits
    in the last column, where generation continues."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, width - len(sequence):] = torch.tensor(sequence)
        mask[row, width - len(sequence):] = 1
    return ids.to(device), mask.to(device)


def _returned_cache(output):
    """The KV cache a forward returned: `output.cache` from transformers 5.24, `output.past_key_values` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def guide(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance on logits: uncond + scale * (cond - uncond)."""
    return uncond_logits + cfg_scale * (cond_logits - uncond_logits)


def _as_list(prompts: str | Sequence[str]) -> list[str]:
    return [prompts] if isinstance(prompts, str) else list(prompts)


def load_generator(path: str | os.PathLike, settings: dict, device: str = "cpu", dtype: str | None = None,
                   adapter: str | os.PathLike | None = None, decoder: str = "tokenizer",
                   attn_implementation: str = "auto") -> tuple[ImageGenerator, SamplingConfig]:
    """Check `settings` against the checkpoint's defaults, then load it: a bad setting costs no model load.

    `dtype` "auto" follows the hardware (bf16 where it is native, else fp32: `resolve_precision`), None or "stored"
    keeps the checkpoint's dtype, and fp32 / bf16 / fp16 are taken as asked."""
    SamplingConfig.from_defaults(read_meta(path).get("sampling", {}), **settings)
    precision = resolve_precision(dtype, device if device != "auto" else None) if dtype in PRECISIONS else None
    generator = ImageGenerator.from_pretrained(path, device=device, dtype=precision.name if precision else None,
                                               adapter=adapter, decoder=decoder,
                                               attn_implementation=attn_implementation)
    if precision is not None:
        generator.precision = precision
    return generator, generator.config(**settings)
