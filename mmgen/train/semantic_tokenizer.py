"""Semantic tokenizer stage (`mmgen train` with `stage: semantic_tokenizer`).

Trains the causal query transformer, quantizer and feature decoder of a `SemanticTokenizer` over a frozen, already
trained grid tokenizer (the renderer): the codes must carry the renderer's encoder features (feature loss), and the
features decoded from them must render back to the image (pixel loss through the frozen renderer). With
`feature_encoder: DIR` the codes carry a frozen `transformers` vision model's patch features instead (feature loss
only: those features cannot be rendered). A diffusion decoder can then be trained on its codes (`stage: decoder`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mmgen.config import must_exist
from mmgen.errors import UserError
from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, load_visual_tokenizer
from mmgen.tokenizers.losses import reconstruction_loss
from mmgen.tokenizers.semantic import SemanticTokenizer, SemanticTokenizerConfig
from mmgen.tokenizers.vision_features import VisionFeatureEncoder
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


@dataclass
class SemanticLossConfig:
    feature_weight: float = 1.0  # MSE to the renderer's encoder features, relative to their variance
    pixel_weight: float = 1.0  # L2 between the image and the decoded features rendered by the frozen renderer

    def __post_init__(self):
        if self.feature_weight < 0 or self.pixel_weight < 0 or self.feature_weight + self.pixel_weight == 0:
            raise ValueError("loss.feature_weight and loss.pixel_weight must be >= 0, and not both 0")


@dataclass
class SemanticTokenizerRecipe:
    stage: str = "semantic_tokenizer"
    output_dir: str = "runs/tokenizer/semantic"
    renderer: str = must_exist("runs/tokenizer/shapes-vq/tokenizer")  # a trained grid tokenizer directory
    # A local transformers vision model directory (CLIP, SigLIP, DINOv2, ViT ...) whose frozen patch features the
    # codes carry; None: the renderer's own encoder features.
    feature_encoder: str | None = must_exist(None)
    model: SemanticTokenizerConfig = field(default_factory=SemanticTokenizerConfig)
    data: ImageDataConfig = field(default_factory=ImageDataConfig)
    loss: SemanticLossConfig = field(default_factory=SemanticLossConfig)
    training: ImageTrainingConfig = field(default_factory=ImageTrainingConfig)

    def __post_init__(self):
        if self.stage != "semantic_tokenizer":
            raise ValueError(f"stage must be 'semantic_tokenizer' for this recipe, got {self.stage!r}")
        if self.model.renderer != GridTokenizerConfig():
            raise ValueError("model.renderer is read from the `renderer:` directory; remove it from the recipe")
        if self.model.vision_features is not None:
            raise ValueError("model.vision_features is read from the `feature_encoder:` model; remove it from the "
                             "recipe")
        if self.feature_encoder is not None and self.loss.pixel_weight > 0:
            raise ValueError("loss.pixel_weight renders the decoded features through the renderer, which only works "
                             "for the renderer's own features; with `feature_encoder:` set loss.pixel_weight=0")


def load_renderer(path: str) -> GridTokenizer:
    renderer = load_visual_tokenizer(path)
    if not isinstance(renderer, GridTokenizer):
        raise UserError(f"renderer {path} is a {renderer.tokenizer_type!r} tokenizer; the semantic tokenizer "
                        "needs a grid tokenizer (`mmgen train recipes/tokenizer/shapes-vq.yaml`)")
    return renderer


def train_semantic_tokenizer(recipe: SemanticTokenizerRecipe, progress: bool = True) -> Path:
    """Train (or resume) and save the tokenizer to `<output_dir>/tokenizer`; returns that path."""
    cfg = recipe.training
    output_dir = Path(recipe.output_dir)
    renderer = load_renderer(recipe.renderer)
    train_set, eval_set = build_image_datasets(recipe.data, renderer.image_size)
    accelerator = make_accelerator(cfg, output_dir, "semantic tokenizer")
    vision = VisionFeatureEncoder.from_pretrained(recipe.feature_encoder) if recipe.feature_encoder else None
    model = SemanticTokenizer(recipe.model, renderer=renderer, vision_encoder=vision)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(trainable, cfg)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tokenizer = accelerator.unwrap_model(model)

    def train_step(step: int, pixels: torch.Tensor) -> dict:
        with accelerator.autocast():
            features, decoded, aux = model(pixels)  # the prepared model: under DDP its gradients are all-reduced
            decoded = decoded.float()
            feature_loss = torch.nn.functional.mse_loss(decoded, features) / features.var().clamp_min(1e-6)
            loss = recipe.loss.feature_weight * feature_loss + aux.float()
            metrics = {"feature": feature_loss.item()}
            if recipe.loss.pixel_weight > 0:
                pixel_loss = reconstruction_loss(tokenizer.render_features(decoded).float(), pixels, "l2")
                loss = loss + recipe.loss.pixel_weight * pixel_loss
                metrics["pixel"] = pixel_loss.item()
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if cfg.grad_clip > 0:
            accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        return {**metrics, "loss": loss.item()}

    def write_samples(step: int, pixels: torch.Tensor) -> None:
        if not tokenizer.renders_features:  # vision-model features: no pixels until a diffusion decoder is trained
            return
        write_pairs(pixels, tokenizer.decode(tokenizer.encode(pixels)), output_dir / "samples" / f"step_{step:06d}.png")

    model.train()
    record_recipe(recipe, recipe.output_dir)
    run_image_loop(accelerator, cfg, output_dir, train_set, eval_set, train_step, write_samples,
                   lambda: scheduler.get_last_lr()[0], desc="semantic tokenizer", progress=progress)
    final_dir = output_dir / "tokenizer"
    if accelerator.is_main_process:
        tokenizer.eval()
        tokenizer.save_pretrained(final_dir)
    return final_dir
