"""Diffusion decoder stage (`mmgen train` with `stage: decoder`).

Trains a `DiffusionDecoder` that generates a visual tokenizer's renderer latents (the tokenizer and the LLM stay
frozen), conditioned on
  codes:          the code embeddings of an image's codes (a de-tokenizer, SEED/LaVIT-style). Data: images.
                  With `model.spatial_condition: features` (semantic tokenizers) it also reads the tokenizer's own
                  reconstruction of its features from those codes, as SEED's decoder does.
                  Writes `<output_dir>/decoder`, and for a semantic tokenizer `<output_dir>/tokenizer`: the tokenizer
                  with the decoder attached, which then decodes through it (`mmgen init --tokenizer` takes it).
  hidden_states:  the LLM's last hidden states over the image span of a unified checkpoint (BLIP3o-NEXT-style).
                  Data: that checkpoint's built text-to-image sequences (`mmgen data build`); the target latents
                  are those of the codes in each sequence. Writes `<output_dir>/model`: the checkpoint with the
                  decoder in `decoder/` (`mmgen generate --decoder diffusion` uses it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.checkpoint import attach_decoder_to_checkpoint, load_unified
from mmgen.config import must_exist
from mmgen.data_engine.image_sources import collate_images, to_pixels
from mmgen.decoders.conditioning import code_conditions, image_span_hidden_states
from mmgen.decoders.diffusion import SPATIAL_CONDITIONS, DiffusionDecoder, DiffusionDecoderConfig
from mmgen.errors import UserError
from mmgen.tokenizers import VisualTokenizer, load_visual_tokenizer
from mmgen.tokenizers.semantic import SemanticTokenizer
from mmgen.train.image_loop import (
    ImageDataConfig,
    ImageTrainingConfig,
    build_image_datasets,
    make_accelerator,
    make_optimizer,
    run_image_loop,
)
from mmgen.train.run_record import record_recipe
from mmgen.train.tokenizer import write_pairs

STATS_ROWS = 512  # training rows whose latents set the decoder's normalisation (the same on every resume)


@dataclass
class DecoderModelConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 1
    cond_dropout: float = 0.1
    spatial_condition: str = "none"  # "features": also read a semantic tokenizer's decoded feature map (SEED)
    num_inference_steps: int = 20  # default sampling steps (flow-matching Euler)
    guidance_scale: float = 1.5  # default decoder CFG


@dataclass
class DecoderRecipe:
    stage: str = "decoder"
    output_dir: str = "runs/decoder"
    conditioning: str = "codes"  # "codes" or "hidden_states"
    tokenizer: str | None = must_exist(None)  # codes: the visual tokenizer whose codes it renders
    checkpoint: str | None = must_exist(None)  # hidden_states: the unified checkpoint whose LLM conditions it
    sequences: str | None = must_exist(None)  # hidden_states: that checkpoint's built t2i dataset
    model: DecoderModelConfig = field(default_factory=DecoderModelConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)  # codes: the images
    training: ImageTrainingConfig = field(default_factory=ImageTrainingConfig)

    def __post_init__(self):
        if self.stage != "decoder":
            raise ValueError(f"stage must be 'decoder' for this recipe, got {self.stage!r}")
        if self.conditioning == "codes":
            if not self.tokenizer or self.checkpoint or self.sequences:
                raise ValueError("conditioning 'codes' takes `tokenizer:` (and images in `data:`), not "
                                 "`checkpoint:` or `sequences:`")
        elif self.conditioning == "hidden_states":
            if not (self.checkpoint and self.sequences) or self.tokenizer or self.data != ImageDataConfig():
                raise ValueError("conditioning 'hidden_states' takes `checkpoint:` (a unified checkpoint) and "
                                 "`sequences:` (its built t2i dataset), not `tokenizer:` or `data:`")
        else:
            raise ValueError(f"conditioning must be 'codes' or 'hidden_states', got {self.conditioning!r}")
        if self.model.spatial_condition not in SPATIAL_CONDITIONS:
            raise ValueError(f"model.spatial_condition must be one of {', '.join(SPATIAL_CONDITIONS)}, got "
                             f"{self.model.spatial_condition!r}")
        if self.model.spatial_condition != "none" and self.conditioning != "codes":
            raise ValueError("model.spatial_condition 'features' needs conditioning 'codes' (a semantic tokenizer)")


def new_decoder(recipe: DecoderRecipe, tokenizer, cond_dim: int, latents: torch.Tensor,
                spatial: torch.Tensor | None = None) -> DiffusionDecoder:
    """`latents` (and `spatial`, the map it will read, if any): training rows that set its normalisation."""
    channels, size, _ = tokenizer.latent_shape
    m = recipe.model
    spatial_stats = {}
    if spatial is not None:
        spatial_stats = dict(spatial_channels=spatial.shape[1], spatial_mean=spatial.mean((0, 2, 3)).tolist(),
                             spatial_std=spatial.std((0, 2, 3)).clamp_min(1e-6).tolist())
    return DiffusionDecoder(DiffusionDecoderConfig(
        conditioning=recipe.conditioning, latent_channels=channels, latent_size=size, cond_dim=cond_dim,
        num_cond_tokens=tokenizer.num_tokens, spatial_condition=m.spatial_condition, **spatial_stats,
        hidden_size=m.hidden_size, num_layers=m.num_layers,
        num_heads=m.num_heads, patch_size=m.patch_size, cond_dropout=m.cond_dropout,
        num_inference_steps=m.num_inference_steps, guidance_scale=m.guidance_scale,
        latent_mean=float(latents.mean()), latent_std=float(latents.std().clamp_min(1e-6)),
        extra={"tokenizer_type": tokenizer.tokenizer_type}))


def train_decoder(recipe: DecoderRecipe, progress: bool = True) -> Path:
    """Train (or resume); returns the directory to use next (see the module docstring)."""
    if recipe.conditioning == "codes":
        return _train_on_codes(recipe, progress)
    return _train_on_hidden_states(recipe, progress)


# ---- (a) code embeddings -------------------------------------------------------------------------------------------


def load_renderable_tokenizer(path: str) -> VisualTokenizer:
    tokenizer = load_visual_tokenizer(path)
    if not hasattr(tokenizer, "encode_with_latents"):
        raise UserError(f"tokenizer {path} ({tokenizer.tokenizer_type}) has no latent space to render from; the "
                        "diffusion decoder needs a grid or semantic tokenizer")
    return tokenizer


def _train_on_codes(recipe: DecoderRecipe, progress: bool) -> Path:
    cfg = recipe.training
    output_dir = Path(recipe.output_dir)
    tokenizer = load_renderable_tokenizer(recipe.tokenizer)
    if recipe.model.spatial_condition == "features" and not (isinstance(tokenizer, SemanticTokenizer)
                                                             and tokenizer.renders_features):
        raise UserError(f"model.spatial_condition 'features' reads a semantic tokenizer's decoded features on its "
                        f"renderer's grid; {recipe.tokenizer} is a {tokenizer.tokenizer_type!r} tokenizer"
                        f"{' over a vision model' if isinstance(tokenizer, SemanticTokenizer) else ''}: use "
                        f"model.spatial_condition: none")
    train_set, eval_set = build_image_datasets(recipe.data, tokenizer.image_size)
    accelerator = make_accelerator(cfg, output_dir, "decoder")
    sample, _ = collate_images([train_set[i] for i in range(min(STATS_ROWS, len(train_set)))])
    with torch.no_grad():
        codes, latents = tokenizer.encode_with_latents(to_pixels(sample))
        spatial = tokenizer.feature_map(codes) if recipe.model.spatial_condition == "features" else None
    decoder = new_decoder(recipe, tokenizer, tokenizer.code_embeddings().shape[1], latents, spatial)
    tokenizer.to(accelerator.device)

    @torch.no_grad()
    def condition(pixels):
        codes, latents = tokenizer.encode_with_latents(pixels)
        return *code_conditions(tokenizer, decoder.config, codes), latents

    def write_samples(step: int, pixels: torch.Tensor) -> None:
        cond, spatial, _ = condition(pixels)
        write_pairs(pixels, tokenizer.render(_sample(decoder, cond, spatial)), _samples_path(output_dir, step))

    decoder = _fit(recipe, accelerator, decoder, train_set, eval_set, condition, write_samples, progress)
    if not accelerator.is_main_process:
        return output_dir / "decoder"
    decoder.save_pretrained(output_dir / "decoder")
    if isinstance(tokenizer, SemanticTokenizer):
        tokenizer.attach_decoder(decoder)
        tokenizer.save_pretrained(output_dir / "tokenizer")
        return output_dir / "tokenizer"
    return output_dir / "decoder"


# ---- (b) LLM hidden states -----------------------------------------------------------------------------------------


class ImageSequences(torch.utils.data.Dataset):
    """The rows of a built dataset split that hold exactly one image of `num_tokens` codes (t2i rows)."""

    def __init__(self, rows, vocab, num_tokens: int):
        first, last = vocab.first_code_id, vocab.first_code_id + vocab.codebook_size
        self.rows = rows
        self.indices = [i for i, ids in enumerate(rows["input_ids"])
                        if sum(first <= t < last for t in ids) == num_tokens]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> torch.Tensor:
        return torch.tensor(self.rows[self.indices[position]]["input_ids"])


def collate_sequences(items: list[torch.Tensor]) -> tuple[torch.Tensor, list]:
    """Right-pad with -1 (never a token id): `prepare` turns it into ids + attention mask."""
    return torch.nn.utils.rnn.pad_sequence(items, batch_first=True, padding_value=-1), []


def _open_sequences(path: str, vocab, num_tokens: int) -> tuple[ImageSequences, ImageSequences]:
    import datasets

    try:
        built = datasets.load_from_disk(path)
    except FileNotFoundError as err:
        raise UserError(f"sequences {path}: not a built dataset directory ({err}); run `mmgen data build`") from None
    if not isinstance(built, datasets.DatasetDict) or "train" not in built:
        raise UserError(f"sequences {path}: expected a built dataset with a 'train' split (`mmgen data build`)")
    train = ImageSequences(built["train"], vocab, num_tokens)
    held_out = ImageSequences(built["eval"], vocab, num_tokens) if "eval" in built else train
    if len(train) == 0:
        raise UserError(f"sequences {path}: no row holds one image of {num_tokens} codes; build t2i rows with "
                        "the checkpoint's own visual tokenizer")
    return train, held_out


def _train_on_hidden_states(recipe: DecoderRecipe, progress: bool) -> Path:
    cfg = recipe.training
    output_dir = Path(recipe.output_dir)
    unified = load_unified(recipe.checkpoint)
    tokenizer, vocab = unified.visual_tokenizer, unified.vocab
    if not hasattr(tokenizer, "latents_from_codes"):
        raise UserError(f"{recipe.checkpoint}: its {tokenizer.tokenizer_type!r} visual tokenizer cannot turn codes "
                        "into latents; hidden-state decoders need a grid tokenizer checkpoint")
    train_set, eval_set = _open_sequences(recipe.sequences, vocab, tokenizer.num_tokens)
    accelerator = make_accelerator(cfg, output_dir, "decoder")
    body = unified.model.get_decoder().to(accelerator.device).eval().requires_grad_(False)
    tokenizer.to(accelerator.device)

    def prepare(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = (batch >= 0).long()
        return batch.clamp_min(0).to(accelerator.device), mask.to(accelerator.device)

    @torch.no_grad()
    def condition(batch):
        ids, mask = batch
        with accelerator.autocast():
            hidden = image_span_hidden_states(body, ids, mask, vocab, tokenizer.num_tokens).float()
        first = vocab.first_code_id
        codes = ids[(ids >= first) & (ids < first + vocab.codebook_size) & mask.bool()] - first
        return hidden, None, tokenizer.latents_from_codes(codes.view(len(ids), -1))

    stats = prepare(collate_sequences([train_set[i] for i in range(min(STATS_ROWS, len(train_set)))])[0])
    _, _, latents = condition(stats)
    decoder = new_decoder(recipe, tokenizer, unified.model.config.get_text_config().hidden_size, latents.cpu())

    def write_samples(step: int, batch) -> None:
        cond, _, latents = condition(batch)
        # top: the tokenizer's own decoding of the codes; bottom: the decoder's rendering from hidden states
        write_pairs(tokenizer.render(latents), tokenizer.render(_sample(decoder, cond)), _samples_path(output_dir,
                                                                                                          step))

    decoder = _fit(recipe, accelerator, decoder, train_set, eval_set, condition, write_samples, progress,
                   collate=collate_sequences, prepare=prepare)
    if not accelerator.is_main_process:
        return output_dir / "model"
    decoder.save_pretrained(output_dir / "decoder")
    return attach_decoder_to_checkpoint(recipe.checkpoint, decoder, output_dir / "model")


# ---- shared ----------------------------------------------------------------------------------------------------------


def _fit(recipe, accelerator, decoder, train_set, eval_set, condition, write_samples, progress, **data_hooks):
    """The flow-matching loop: `condition(batch) -> (cond, spatial map or None, target latents)` is all that differs
    by conditioning."""
    cfg = recipe.training
    optimizer, scheduler = make_optimizer(decoder.parameters(), cfg)
    model, optimizer, scheduler = accelerator.prepare(decoder, optimizer, scheduler)
    decoder = accelerator.unwrap_model(model)

    def train_step(step: int, batch) -> dict:
        cond, spatial, latents = condition(batch)
        with accelerator.autocast():
            loss = model(latents, cond, spatial)  # the prepared model: under DDP its gradients are all-reduced
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(decoder.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return {"loss": loss.item()}

    model.train()
    record_recipe(recipe, recipe.output_dir)
    run_image_loop(accelerator, cfg, Path(recipe.output_dir), train_set, eval_set, train_step, write_samples,
                   lambda: scheduler.get_last_lr()[0], desc=f"decoder ({recipe.conditioning})", progress=progress,
                   **data_hooks)
    return decoder.eval()


@torch.no_grad()
def _sample(decoder: DiffusionDecoder, cond: torch.Tensor, spatial: torch.Tensor | None = None, seed: int = 0
            ) -> torch.Tensor:
    was_training = decoder.training
    decoder.eval()
    latents = decoder.sample(cond, generator=torch.Generator(device=cond.device).manual_seed(seed), spatial=spatial)
    decoder.train(was_training)
    return latents


def _samples_path(output_dir: Path, step: int) -> Path:
    return output_dir / "samples" / f"step_{step:06d}.png"
