"""The shapes benchmark: GenEval's prompts and rules on the shapes world, judged by the exact detector.

The prompt file (`data_engine/benchmarks/shapes_geneval.jsonl`) holds about 100 prompts per GenEval task, each
with a ground-truth scene. Scoring the rendered ground truth is the score of a perfect generator (1.0); the same
function scores any model's images, so the two numbers are directly comparable.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

from mmgen.data_engine.shapes.benchmark import load_benchmark
from mmgen.data_engine.shapes.world import Scene, render
from mmgen.eval.detectors.shapes import ShapesDetector
from mmgen.eval.geneval.rules import evaluate_image, score_results
from PIL import Image, ImageFilter

from mmgen.files import write_json_atomic


def blur_and_jpeg(sigma: float = 1.0, quality: int = 60) -> Callable[[Image.Image], Image.Image]:
    """The degradation a lossy tokenizer's reconstructions resemble: Gaussian blur, then a JPEG round trip."""

    def degrade(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.filter(ImageFilter.GaussianBlur(sigma)).save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return degrade


def score_images(images: Sequence[Image.Image], prompts: Sequence[dict], detector=None) -> tuple[list[dict], dict]:
    """GenEval verdicts for `images[i]` against `prompts[i]`, and their summary."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    detector = detector or ShapesDetector()
    records = [evaluate_image(image, detector.detect(image), prompt) for image, prompt in zip(images, prompts,
                                                                                               strict=True)]
    return records, score_results(records)


def score_ground_truth(out_dir: str | Path | None = None, size: int = 64, degrade=None,
                       benchmark_path: str | Path | None = None) -> dict:
    """Score the benchmark's rendered ground-truth scenes (optionally degraded); writes results.json to out_dir."""
    prompts = load_benchmark(benchmark_path)
    images = [render(Scene.from_dict(prompt["scene"]), size) for prompt in prompts]
    if degrade is not None:
        images = [degrade(image) for image in images]
    records, summary = score_images(images, prompts)
    if out_dir is not None:
        failures = [{key: r[key] for key in ("prompt", "tag", "reason")} for r in records if not r["correct"]]
        write_json_atomic(Path(out_dir) / "results.json", {**summary, "size": size, "failures": failures})
    return summary
