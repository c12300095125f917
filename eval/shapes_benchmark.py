"""The shapes benchmark: GenEval's prompts and rules on the shapes world, judged by the exact detector.

The prompt file (`data_engine/benchmarks/shapes_geneval.jsonl`) holds about 100 prompts per GenEval task, each
with a ground-truth scene. Scoring the rendered ground truth is the score of a perfect generator (1.0); the same
function scores any model's images, so the two numbers are directly comparable.

Generated images are scored at the size the generator makes them, never resized: the detector reads each pixel as a
mix of the background and one palette colour and fits shapes relative to the image side, so it works at any size
(larger images it box-downscales itself, which keeps that colour model exact), while a resampling filter would
invent colours no scene holds (bicubic overshoot, or blends of two touching objects). The detector is exact on
renders from 32 px up; below that even the ground truth loses a few points (about 0.96 at 16 px), so every report
also holds `ground_truth_overall`: the ground truth of the same prompts rendered at the generated size, the ceiling
the model's score is to be read against.

Seeding follows `mmgen.eval.generation`: image `k` of the prompt on line `i` of the prompt file comes from the random
stream `seed + i * images_per_prompt + k`, so a prompt's images do not depend on `--limit` or the batching.
"""

from __future__ import annotations

import difflib
import io
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from mmgen.data_engine.shapes.benchmark import load_benchmark
from mmgen.data_engine.shapes.scenes import Layout, scene_for_prompt
from mmgen.data_engine.shapes.world import Scene, render
from mmgen.eval.detectors.shapes import ShapesDetector
from mmgen.eval.generation import GenerateImages, call_seed, consecutive_batches, generate_checked
from mmgen.eval.geneval.rules import evaluate_image, score_results
from mmgen.eval.reports import geneval_report
from PIL import Image, ImageFilter
from tqdm.auto import tqdm

from mmgen.errors import UserError

BENCHMARK_NAME = "shapes"
SAMPLES_DIR = "samples"


def blur_and_jpeg(sigma: float = 1.0, quality: int = 60) -> Callable[[Image.Image], Image.Image]:
    """The degradation a lossy tokenizer's reconstructions resemble: Gaussian blur, then a JPEG round trip."""

    def degrade(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.filter(ImageFilter.GaussianBlur(sigma)).save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return degrade


def benchmark_prompts(benchmark_path: str | Path | None = None, limit: int | None = None,
                      tasks: Sequence[str] | None = None) -> list[tuple[int, dict]]:
    """`(line index, prompt)` pairs of the benchmark; `limit` keeps the first `limit` prompts of each task, so a
    quick run still covers every task; `tasks` keeps only those tasks (None: all)."""
    if benchmark_path is not None and not Path(benchmark_path).is_file():
        raise UserError(f"{benchmark_path}: no such shapes benchmark prompt file")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be at least 1 prompt per task, got {limit}")
    prompts = load_benchmark(benchmark_path)
    if tasks is not None:
        _check_tasks(tasks, {prompt["tag"] for prompt in prompts}, benchmark_path)
    taken: dict[str, int] = {}
    chosen = []
    for index, prompt in enumerate(prompts):
        if tasks is not None and prompt["tag"] not in tasks:
            continue
        if limit is None or taken.get(prompt["tag"], 0) < limit:
            taken[prompt["tag"]] = taken.get(prompt["tag"], 0) + 1
            chosen.append((index, prompt))
    if not chosen:
        raise UserError(f"{benchmark_path or 'the packaged shapes benchmark'}: holds no prompts")
    return chosen


def _check_tasks(tasks: Sequence[str], present: set[str], benchmark_path: str | Path | None) -> None:
    for task in tasks:
        if task not in present:
            close = difflib.get_close_matches(task, sorted(present), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{benchmark_path or 'the packaged shapes benchmark'} has no task {task!r}{hint}; its "
                            f"tasks are {', '.join(sorted(present))}")


def _selection(tasks: Sequence[str] | None) -> dict:
    """The report's record of a task subset (nothing when every task was scored)."""
    return {} if tasks is None else {"selected_tasks": list(tasks)}


def score_images(images: Sequence[Image.Image], prompts: Sequence[dict], detector=None) -> tuple[list[dict], dict]:
    """GenEval verdicts for `images[i]` against `prompts[i]`, and their summary."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    detector = detector or ShapesDetector()
    records = [evaluate_image(image, detector.detect(image), prompt) for image, prompt in zip(images, prompts,
                                                                                               strict=True)]
    return records, score_results(records)


def render_ground_truth(prompts: Sequence[dict], size: int, layout: Layout | None = None) -> list[Image.Image]:
    """Each prompt's own scene, or (`layout`) a new scene for the prompt in that layout, seeded by its position."""
    if layout is None:
        return [render(Scene.from_dict(prompt["scene"]), size) for prompt in prompts]
    return [render(scene_for_prompt(prompt, random.Random(f"ground-truth:{index}"), layout), size)
            for index, prompt in enumerate(prompts)]


def write_shapes_report(out_dir: str | Path, records: Sequence[dict], summary: dict, images: Sequence[Image.Image],
                        **details) -> dict[str, Path]:
    """results.json, results.md and report.html; `details` (size, source...) and the failures go into results.json."""
    failures = [{key: record[key] for key in ("prompt", "tag", "reason")} for record in records
                if not record["correct"]]
    return geneval_report(out_dir, {**summary, **details, "failures": failures}, records, images,
                          benchmark=BENCHMARK_NAME)


class TokenizerRoundTrip:
    """Encode and decode images with a visual tokenizer: the ground truth seen through its codes scores the best a
    model drawing with those codes can reach (a tokenizer that rounds hexagons into circles caps every model)."""

    def __init__(self, tokenizer_dir: str | Path, batch_size: int = 64):
        from mmgen.tokenizers import load_visual_tokenizer

        self.path = str(tokenizer_dir)
        self.tokenizer = load_visual_tokenizer(tokenizer_dir).eval()
        self.image_size = self.tokenizer.image_size
        self.batch_size = batch_size

    def __call__(self, images: Sequence[Image.Image]) -> list[Image.Image]:
        import torch

        from mmgen.images import pil_to_tensor, tensor_to_pil

        out: list[Image.Image] = []
        with torch.no_grad():
            for start in range(0, len(images), self.batch_size):
                pixels = pil_to_tensor(list(images[start:start + self.batch_size]))
                out.extend(tensor_to_pil(self.tokenizer.decode(self.tokenizer.encode(pixels))))
        return out


def score_ground_truth(out_dir: str | Path | None = None, size: int = 64, degrade=None,
                       benchmark_path: str | Path | None = None, limit: int | None = None,
                       round_trip: TokenizerRoundTrip | None = None, tasks: Sequence[str] | None = None,
                       layout: Layout | None = None) -> dict:
    """Score the benchmark's rendered ground-truth scenes, optionally degraded or seen through a tokenizer's codes
    (`round_trip`: rendered at its image size); writes the reports to out_dir. `layout`: score new scenes of the
    same prompts in that layout instead (e.g. the cell grid a model's SFT data stands on, to read its tokenizer's
    ceiling for the images that model learned to draw)."""
    if round_trip is not None and degrade is not None:
        raise UserError("choose one of degrade and a tokenizer round trip")
    prompts = [prompt for _, prompt in benchmark_prompts(benchmark_path, limit, tasks)]
    size = round_trip.image_size if round_trip is not None else size
    images = render_ground_truth(prompts, size, layout)
    if degrade is not None:
        images = [degrade(image) for image in images]
    if round_trip is not None:
        images = round_trip(images)
    records, summary = score_images(images, prompts)
    if out_dir is not None:
        source = f"ground truth through the tokenizer {round_trip.path}" if round_trip else "ground truth"
        if layout is not None:
            source += f" (scenes redrawn on a {layout.grid} x {layout.grid} grid, objects {layout.span} cells wide)"
        write_shapes_report(out_dir, records, summary, images, source=source, size=size,
                            degraded=degrade is not None, **_selection(tasks))
    return summary


def generate_benchmark_images(generate_images: GenerateImages, prompts: Sequence[tuple[int, dict]],
                              images_per_prompt: int = 1, seed: int = 0, batch_prompts: int = 32,
                              progress: bool = True) -> list[list[Image.Image]]:
    """`images_per_prompt` images for each `(line index, prompt)`, seeded by line index (see the module doc)."""
    by_index = dict(prompts)
    images: dict[int, list[Image.Image]] = {}
    bar = tqdm(total=len(by_index), desc="shapes", unit="prompt", disable=not progress)
    for batch in consecutive_batches(sorted(by_index), batch_prompts):
        texts = [by_index[index]["prompt"] for index in batch]
        generated = generate_checked(generate_images, texts, images_per_prompt,
                                     call_seed(seed, batch[0], images_per_prompt))
        images.update(zip(batch, generated, strict=True))
        bar.update(len(batch))
    bar.close()
    return [images[index] for index, _ in prompts]


def score_generator(generate_images: GenerateImages, out_dir: str | Path, images_per_prompt: int = 1, seed: int = 0,
                    limit: int | None = None, batch_prompts: int = 32, benchmark_path: str | Path | None = None,
                    details: dict | None = None, progress: bool = True, tasks: Sequence[str] | None = None) -> dict:
    """Generate, save (`<out>/samples/<line>_<k>.png`) and score images for the benchmark prompts; writes the reports
    (with `details`, e.g. the sampling settings) to `out_dir`. The summary adds the generated `size` and
    `ground_truth_overall`, the score of the same prompts' ground truth rendered at that size."""
    prompts = benchmark_prompts(benchmark_path, limit, tasks)
    generated = generate_benchmark_images(generate_images, prompts, images_per_prompt, seed, batch_prompts, progress)
    _save_samples(Path(out_dir) / SAMPLES_DIR, prompts, generated)
    flat_images = [image for per_prompt in generated for image in per_prompt]
    flat_prompts = [prompt for (_, prompt), per_prompt in zip(prompts, generated, strict=True) for _ in per_prompt]
    records, summary = score_images(flat_images, flat_prompts)
    size = _common_size(flat_images)
    truth = [prompt for _, prompt in prompts]
    summary = {**summary, "size": size, "ground_truth_overall": score_images(render_ground_truth(truth, size),
                                                                             truth)[1]["overall"]}
    write_shapes_report(out_dir, records, summary, flat_images, source="generated",
                        images_per_prompt=images_per_prompt, seed=seed, limit=limit,
                        **_selection(tasks), **(details or {}))
    return summary


def _save_samples(samples_dir: Path, prompts: Sequence[tuple[int, dict]],
                  images: Sequence[Sequence[Image.Image]]) -> None:
    samples_dir.mkdir(parents=True, exist_ok=True)
    for (index, _), per_prompt in zip(prompts, images, strict=True):
        for k, image in enumerate(per_prompt):
            image.save(samples_dir / f"{index:05d}_{k:02d}.png")


def _common_size(images: Sequence[Image.Image]) -> int:
    sizes = {image.size for image in images}
    if len(sizes) != 1 or (size := next(iter(sizes)))[0] != size[1]:
        raise ValueError(f"the generator returned images of sizes {sorted(sizes)}; expected one square size")
    return size[0]
