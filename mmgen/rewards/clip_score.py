"""`clip_score`: image-text agreement by a CLIP model loaded from a local directory.

The score is the cosine similarity of CLIP's image and text embeddings, floored at 0 (CLIPScore of Hessel et al.
without its 2.5 scale; the weight in the recipe sets the scale). Prompts are embedded once and cached: in GRPO
every prompt is scored `num_generations` times.
"""

from __future__ import annotations

import os

from mmgen.rewards.registry import register_reward

MODEL_TYPES = ("clip",)
DESCRIPTION = "a CLIP model (CLIPModel)"


@register_reward("clip_score")
def clip_score_reward(path: str | os.PathLike, device: str | None = None, batch_size: int = 32):
    import torch
    from transformers import CLIPModel

    from mmgen.eval.local_models import load_model_and_processor

    model, processor, device = load_model_and_processor(path, CLIPModel, MODEL_TYPES, DESCRIPTION, "CLIP", device)
    max_length = model.config.text_config.max_position_embeddings
    text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed_texts(texts: list[str]) -> torch.Tensor:
        missing = sorted({t for t in texts if t not in text_cache})
        for start in range(0, len(missing), batch_size):
            chunk = missing[start:start + batch_size]
            tokens = processor.tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                                         return_tensors="pt").to(device)
            features = _pooled(model.get_text_features(**tokens))
            text_cache.update(zip(chunk, torch.nn.functional.normalize(features, dim=-1).cpu(), strict=True))
        return torch.stack([text_cache[t] for t in texts])

    @torch.no_grad()
    def clip_score(prompts, images, metadata):
        scores = [0.0] * len(images)
        valid = [i for i, image in enumerate(images) if image is not None]
        for start in range(0, len(valid), batch_size):
            rows = valid[start:start + batch_size]
            pixels = processor.image_processor([images[i].convert("RGB") for i in rows], return_tensors="pt")
            features = _pooled(model.get_image_features(pixel_values=pixels["pixel_values"].to(device)))
            image_embeddings = torch.nn.functional.normalize(features, dim=-1).cpu()
            cosine = (image_embeddings * embed_texts([prompts[i] for i in rows])).sum(-1)
            for i, value in zip(rows, cosine.clamp_min(0).tolist(), strict=True):
                scores[i] = value
        return scores

    return clip_score


def _pooled(features):
    # transformers 5 returns a model output from get_*_features; older versions return the tensor.
    return getattr(features, "pooler_output", features)
