"""GenEval end to end: generate images into the official folder layout, then score the folder with our rules.

Layout (what the official `evaluate_images.py` reads):
```
<out>/00000/metadata.jsonl   the prompt's metadata line, as JSON
<out>/00000/samples/0000.png ... (images_per_prompt of them)
<out>/00000/grid.png         all samples tiled (optional for the official script)
<out>/geneval_run.json       seed and images per prompt, to refuse resuming with another seed
```
Resuming: a prompt folder is written into a staging directory and renamed into place, so a folder that exists is
complete; prompts whose folder holds exactly the expected samples are skipped.

Seeding: image `k` of prompt `i` (its 0-based line in the metadata file) is drawn from the random stream
`seed + i * images_per_prompt + k` (see `mmgen.eval.generation`), so images do not depend on `batch_prompts` or on
how often the run was resumed. The official generation script reseeds every prompt with the same seed instead; the
streams differ, the benchmark does not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from mmgen.eval.detectors.base import ColorClassifier, Detector
from mmgen.eval.generation import GenerateImages, call_seed, consecutive_batches, generate_checked
from mmgen.eval.geneval.results import to_official_record, write_results
from mmgen.eval.geneval.rules import DEFAULT_CONFIG, GenEvalConfig, evaluate_image, score_results
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from mmgen.errors import UserError
from mmgen.files import atomic_directory, write_json_atomic
from mmgen.images import make_grid

RUN_INFO = "geneval_run.json"
RESULTS_FILE = "results.jsonl"
_SAMPLE_NAME = re.compile(r"\d+\.png")
# Staging directories `mmgen.files.atomic_directory` leaves behind when a run is killed mid-folder.
_STALE = re.compile(r"\.\d{5}\.(staging|retired)-.+")


def load_geneval_metadata(path: str | os.PathLike) -> list[dict]:
    """The prompts of a GenEval metadata file (one JSON object a line); errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such GenEval metadata file")
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    prompts = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}:{number}"
        if not line.strip():
            # The official scripts map line N to folder N: a blank line would shift every folder after it.
            raise UserError(f"{where}: blank line; every line must hold one prompt's metadata")
        try:
            metadata = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not valid JSON ({err.msg})") from None
        _check_metadata(metadata, where)
        prompts.append(metadata)
    if not prompts:
        raise UserError(f"{path}: holds no prompts")
    return prompts


def _check_metadata(metadata, where: str) -> None:
    if not isinstance(metadata, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
    for key, kind in (("tag", str), ("prompt", str), ("include", list)):
        if key not in metadata:
            raise UserError(f"{where}: missing key {key!r}")
        if not isinstance(metadata[key], kind):
            raise UserError(f"{where}: {key!r} must be a {kind.__name__}, got {type(metadata[key]).__name__}")
    for kind in ("include", "exclude"):
        clauses = metadata.get(kind, [])
        if not isinstance(clauses, list):
            raise UserError(f"{where}: {kind!r} must be a list")
        for number, clause in enumerate(clauses):
            if not isinstance(clause, dict) or not isinstance(clause.get("class"), str):
                raise UserError(f"{where}: {kind} clause {number} needs a 'class' name")
            count = clause.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise UserError(f"{where}: {kind} clause {number} needs a positive integer 'count', got {count!r}")


def prompt_folder(out_dir: str | os.PathLike, index: int) -> Path:
    return Path(out_dir) / f"{index:05d}"


def sample_names(images_per_prompt: int) -> list[str]:
    return [f"{k:04d}.png" for k in range(images_per_prompt)]


def folder_is_complete(folder: Path, metadata: dict, images_per_prompt: int) -> bool:
    """Whether `folder` already holds this prompt with exactly `images_per_prompt` samples.

    A folder holding another prompt means the output directory belongs to another metadata file: that is an error,
    not something to overwrite.
    """
    metadata_file = folder / "metadata.jsonl"
    if not metadata_file.is_file():
        return False
    try:
        existing = json.loads(metadata_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return False
    if existing != metadata:
        raise UserError(f"{folder} holds the prompt {existing.get('prompt')!r}, but the metadata file's line for it is "
                        f"{metadata['prompt']!r}; use a fresh output directory for another prompt file")
    samples = folder / "samples"
    found = sorted(p.name for p in samples.iterdir()) if samples.is_dir() else []
    return found == sample_names(images_per_prompt)


def run_geneval(generate_images: GenerateImages, metadata_path: str | os.PathLike, out_dir: str | os.PathLike,
                images_per_prompt: int = 4, seed: int = 42, batch_prompts: int = 8, progress: bool = True) -> dict:
    """Generate `images_per_prompt` images for every GenEval prompt into `out_dir` (official layout), resumably.

    `generate_images(prompts, images_per_prompt, seed)` returns `images[prompt][k]`; it is called with up to
    `batch_prompts` consecutive prompts at a time. Returns counts: prompts, generated, skipped.
    """
    if images_per_prompt < 1:
        raise ValueError(f"images_per_prompt must be at least 1, got {images_per_prompt}")
    prompts = load_geneval_metadata(metadata_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_run_info(out_dir, seed)
    _remove_stale_staging(out_dir)
    pending = [index for index, metadata in enumerate(prompts)
               if not folder_is_complete(prompt_folder(out_dir, index), metadata, images_per_prompt)]
    write_json_atomic(out_dir / RUN_INFO, {"seed": seed, "images_per_prompt": images_per_prompt,
                                           "metadata": str(metadata_path), "prompts": len(prompts)})
    bar = tqdm(total=len(pending), desc="geneval", unit="prompt", disable=not progress or not pending)
    for batch in consecutive_batches(pending, batch_prompts):
        texts = [prompts[index]["prompt"] for index in batch]
        images = generate_checked(generate_images, texts, images_per_prompt,
                                  call_seed(seed, batch[0], images_per_prompt))
        for index, prompt_images in zip(batch, images, strict=True):
            _write_prompt_folder(prompt_folder(out_dir, index), prompts[index], prompt_images)
        bar.update(len(batch))
    bar.close()
    return {"prompts": len(prompts), "generated": len(pending), "skipped": len(prompts) - len(pending),
            "out_dir": str(out_dir)}


def _check_run_info(out_dir: Path, seed: int) -> None:
    info_path = out_dir / RUN_INFO
    if not info_path.is_file():
        return
    previous = json.loads(info_path.read_text())
    if previous.get("seed") != seed:
        raise UserError(f"{out_dir} was generated with seed {previous.get('seed')}, not {seed}; resume with the same "
                        "seed or use a fresh output directory")


def _remove_stale_staging(out_dir: Path) -> None:
    for entry in out_dir.iterdir():
        if entry.is_dir() and _STALE.fullmatch(entry.name):
            shutil.rmtree(entry, ignore_errors=True)


def _write_prompt_folder(folder: Path, metadata: dict, images: list[Image.Image]) -> None:
    with atomic_directory(folder, replace_marker="metadata.jsonl") as staging:
        (staging / "metadata.jsonl").write_text(json.dumps(metadata) + "\n", encoding="utf-8")
        samples = staging / "samples"
        samples.mkdir()
        for name, image in zip(sample_names(len(images)), images, strict=True):
            image.save(samples / name)
        make_grid(images).save(staging / "grid.png")


def iter_geneval_folder(out_dir: str | os.PathLike) -> list[tuple[Path, dict, list[Path]]]:
    """`(folder, metadata, sample paths)` for every prompt folder, as the official script finds them."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"{out_dir}: no such GenEval image folder")
    folders = sorted((p for p in out_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    found = []
    for folder in folders:
        metadata_file = folder / "metadata.jsonl"
        try:
            metadata = json.loads(metadata_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{folder}: no metadata.jsonl; is this a GenEval image folder?") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{metadata_file}: not valid JSON ({err.msg})") from None
        _check_metadata(metadata, str(metadata_file))
        samples_dir = folder / "samples"
        samples = sorted((p for p in samples_dir.iterdir() if p.is_file() and _SAMPLE_NAME.fullmatch(p.name)),
                         key=lambda p: int(p.stem)) if samples_dir.is_dir() else []
        found.append((folder, metadata, samples))
    if not found:
        raise UserError(f"{out_dir}: no prompt folders (00000/, 00001/, ...) to score")
    return found


def score_geneval_folder(out_dir: str | os.PathLike, detector: Detector,
                         color_classifier: ColorClassifier | None = None, config: GenEvalConfig = DEFAULT_CONFIG,
                         results_path: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Score a GenEval image folder with `detector` and our rules; writes per-image results (official JSONL format)
    to `results_path` (default `<out_dir>/results.jsonl`) and returns `score_results`' summary.

    Without a `color_classifier`, colours come from the detector's own detections.
    """
    prompts = iter_geneval_folder(out_dir)
    _check_classes(detector, [metadata for _, metadata, _ in prompts])
    records = []
    total = sum(len(samples) for _, _, samples in prompts)
    bar = tqdm(total=total, desc="geneval scoring", unit="image", disable=not progress)
    for _folder, metadata, samples in prompts:
        for sample in samples:
            with Image.open(sample) as opened:
                image = ImageOps.exif_transpose(opened).convert("RGB")
            record = evaluate_image(image, detector.detect(image), metadata, color_classifier, config)
            records.append(to_official_record(record, str(sample)))
            bar.update()
    bar.close()
    if not records:
        raise UserError(f"{out_dir}: the prompt folders hold no samples/NNNN.png images")
    write_results(results_path or Path(out_dir) / RESULTS_FILE, records)
    return score_results(records)


def _check_classes(detector: Detector, prompts: list[dict]) -> None:
    wanted = {clause["class"] for metadata in prompts
              for clause in metadata.get("include", []) + metadata.get("exclude", [])}
    missing = sorted(wanted - set(detector.classnames))
    if missing:
        raise UserError(f"the detector does not know the classes {', '.join(map(repr, missing))} that the prompts "
                        f"name; it detects {', '.join(detector.classnames[:12])}"
                        f"{', ...' if len(detector.classnames) > 12 else ''}")


__all__ = ["folder_is_complete", "iter_geneval_folder", "load_geneval_metadata", "run_geneval", "score_geneval_folder"]
