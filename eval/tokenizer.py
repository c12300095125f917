"""Tokenizer evaluation: reconstruction quality, codebook health and detector fidelity.

- PSNR and SSIM (torchmetrics) of decode(encode(x)) against x.
- Codebook usage (share of codes used on the eval set) and code perplexity (exp of the code entropy).
- Detector fidelity: the share of images whose reconstruction the exact shapes detector reads as the same scene
  as the original: same classes, colours and counts, and every object within `position_tolerance` of its
  counterpart. This is what downstream generation needs: a tokenizer that loses a shape's class or colour caps
  every score the LLM can reach.
- Token statistics after "Analyzing the Language of Visual Tokens": Zipf fit of code frequencies, entropy, and
  usage per position, to diagnose collapse.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch
from mmgen.data_engine.image_sources import ImageTensorDataset, collate_images, to_pixels
from mmgen.eval.detectors.base import Detections, Detector
from scipy.optimize import linear_sum_assignment
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from mmgen.images import tensor_to_pil


@torch.no_grad()
def encode_dataset(tokenizer, dataset: ImageTensorDataset, batch_size: int = 64, keep_reconstructions: bool = False):
    """Yield (pixels, codes, reconstructions or None) batches over a dataset, skipping unreadable rows."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
    for batch, _skipped in loader:
        if batch.shape[0] == 0:
            continue
        pixels = to_pixels(batch)
        codes = tokenizer.encode(pixels)
        yield pixels, codes, tokenizer.decode(codes) if keep_reconstructions else None


def evaluate_tokenizer(tokenizer, dataset: ImageTensorDataset, batch_size: int = 64,
                       detector: Detector | None = None, position_tolerance: float = 0.06) -> dict:
    """All reconstruction and codebook metrics of `tokenizer` on `dataset` (see the module docstring)."""
    psnr_sum = ssim_sum = 0.0
    images = faithful = 0
    all_codes = []
    for pixels, codes, reconstruction in encode_dataset(tokenizer, dataset, batch_size, keep_reconstructions=True):
        target, output = (pixels + 1) / 2, (reconstruction.clamp(-1, 1) + 1) / 2
        count = pixels.shape[0]
        psnr_sum += float(peak_signal_noise_ratio(output, target, data_range=1.0, reduction="none",
                                                  dim=(1, 2, 3)).sum())
        ssim_sum += float(structural_similarity_index_measure(output, target, data_range=1.0)) * count
        images += count
        all_codes.append(codes)
        if detector is not None:
            for original, decoded in zip(tensor_to_pil(pixels), tensor_to_pil(reconstruction), strict=True):
                faithful += same_scene(detector.detect(original), detector.detect(decoded), position_tolerance)
    if images == 0:
        raise ValueError("the evaluation set has no readable images")
    codes = torch.cat(all_codes)
    stats = code_statistics(codes, tokenizer.codebook_size)
    results = {
        "images": images,
        "psnr": round(psnr_sum / images, 3),
        "ssim": round(ssim_sum / images, 4),
        "codebook_size": tokenizer.codebook_size,
        "tokens_per_image": tokenizer.num_tokens,
        "codebook_usage": stats["usage"],
        "used_codes": stats["used_codes"],
        "perplexity": stats["perplexity"],
    }
    if detector is not None:
        results["detector_fidelity"] = round(faithful / images, 4)
    return results


def same_scene(reference: Detections, candidate: Detections, position_tolerance: float) -> bool:
    """Same (class, colour) multiset, and objects pair up with centres within tolerance (fraction of width)."""
    groups_ref, groups_cand = _groups(reference), _groups(candidate)
    if {k: len(v) for k, v in groups_ref.items()} != {k: len(v) for k, v in groups_cand.items()}:
        return False
    limit = position_tolerance * max(reference.width, reference.height)
    for key, centres in groups_ref.items():
        a, b = np.array(centres), np.array(groups_cand[key])
        distances = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)
        rows, cols = linear_sum_assignment(distances)
        if distances[rows, cols].max() > limit:
            return False
    return True


def _groups(detections: Detections) -> dict[tuple[str, str | None], list[tuple[float, float]]]:
    groups: dict[tuple[str, str | None], list[tuple[float, float]]] = {}
    for classname, found in detections.by_class.items():
        for detection in found:
            x1, y1, x2, y2 = detection.box
            groups.setdefault((classname, detection.color), []).append(((x1 + x2) / 2, (y1 + y2) / 2))
    return groups


def code_statistics(codes: torch.Tensor, codebook_size: int) -> dict:
    """Frequency statistics of codes `[N, T]`: usage, entropy, perplexity, Zipf fit, per-position usage."""
    flat = codes.reshape(-1).cpu().numpy()
    counts = np.bincount(flat, minlength=codebook_size).astype(np.float64)
    used = int((counts > 0).sum())
    probabilities = counts[counts > 0] / counts.sum()
    entropy = float(-(probabilities * np.log2(probabilities)).sum())
    ranked = np.sort(counts[counts > 0])[::-1]
    zipf_exponent, zipf_r2 = _zipf_fit(ranked)
    per_position = []
    for position in range(codes.shape[1]):
        column = Counter(codes[:, position].tolist())
        p = np.array(list(column.values()), dtype=np.float64) / codes.shape[0]
        per_position.append({"distinct": len(column), "entropy_bits": round(float(-(p * np.log2(p)).sum()), 3)})
    return {
        "tokens": int(flat.size),
        "codebook_size": codebook_size,
        "used_codes": used,
        "usage": round(used / codebook_size, 4),
        "entropy_bits": round(entropy, 4),
        "max_entropy_bits": round(math.log2(codebook_size), 4),
        "perplexity": round(2**entropy, 2),
        "zipf_exponent": round(zipf_exponent, 4),
        "zipf_r2": round(zipf_r2, 4),
        "top_codes": [[int(code), int(counts[code])] for code in np.argsort(-counts)[:10]],
        "per_position": per_position,
    }


def _zipf_fit(ranked_counts: np.ndarray) -> tuple[float, float]:
    """Least-squares fit of log f = c - s log r; returns (s, R^2). Zipf's law in language has s close to 1."""
    if len(ranked_counts) < 2:
        return 0.0, 0.0
    log_rank = np.log(np.arange(1, len(ranked_counts) + 1))
    log_freq = np.log(ranked_counts)
    slope, intercept = np.polyfit(log_rank, log_freq, 1)
    predicted = slope * log_rank + intercept
    residual = ((log_freq - predicted) ** 2).sum()
    total = ((log_freq - log_freq.mean()) ** 2).sum()
    return float(-slope), float(1 - residual / total) if total > 0 else 0.0
