"""DPG-Bench scoring, reimplemented from ELLA's `dpg_bench/compute_dpg_bench.py` detail for detail.

The questions file (`dpg_bench.csv`) has one row per question: item_id, text, keywords, proposition_id,
dependency, category_broad, category_detailed, tuple, question_natural_language. Per image `<item_id>.png`
(a 2x2 grid of four generations):

* each of the `pic_num` (4) crops `resolution` px square is asked every question of its item; a question passes
  when the answer is exactly "yes" (no lower-casing or stripping);
* dependency cascade, per crop: questions are visited in file order and one scores 0 when any parent
  (`dependency`, comma-separated proposition ids, 0 = none) already scores 0 at that point of the visit; a parent
  listed later in the file is checked before its own cascade (the official in-place loop);
* crop score = mean over the item's questions; image score = mean over crops; DPG-Bench score = mean over images
  (x 100).
* category scores (x 100) average single question scores over all images, per category (the `tuple` column up to
  its "(", e.g. "entity - whole") and per first-level category (up to the first "-", e.g. "entity"). The official
  script feeds them the answers of the LAST crop only, before the cascade; so does this one.

Official quirks kept, since they change the numbers: the first data row of the CSV is skipped (`if i == 0:
continue`, dropping the first item's first question); an item's rows are grouped while consecutive (a later run of
the same item_id replaces the earlier one); an image whose item has a dependency on a question it lacks fails (the
official KeyError) and, like an image without questions, is left out of every average and reported under `failed`.
Only files with an image suffix are scored (the official script tries every file and skips what fails to open).
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from mmgen.errors import UserError
from mmgen.files import read_jsonl

from .judges import VQAJudge

CSV_COLUMNS: tuple[str, ...] = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
                                "category_detailed", "tuple", "question_natural_language")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")
RESULTS_FILE = "dpg_results.jsonl"


@dataclass(frozen=True)
class DPGQuestion:
    proposition_id: int
    question: str
    parents: tuple[int, ...]  # proposition ids this question depends on; 0 means none
    tuple: str  # e.g. "entity - whole (cat)"

    @property
    def category(self) -> str:
        """Second-level category, e.g. "entity - whole"."""
        return self.tuple.split("(")[0].strip()

    @property
    def broad_category(self) -> str:
        """First-level category, e.g. "entity"."""
        return self.category.split("-")[0].strip()


@dataclass
class DPGItem:
    item_id: str
    questions: dict[int, DPGQuestion] = field(default_factory=dict)  # in file order


class MissingParentError(Exception):
    """An item's question depends on a proposition the item does not have (the official script's KeyError)."""


def load_dpg_questions(csv_path: str | os.PathLike, skip_first_row: bool = True) -> dict[str, DPGItem]:
    """The DPG-Bench questions by item_id. `skip_first_row` reproduces the official script's `if i == 0: continue`."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise UserError(f"{csv_path}: no such DPG-Bench questions file (dpg_bench.csv)")
    items: dict[str, DPGItem] = {}
    previous_id = None
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in CSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{csv_path}: missing columns {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}")
        for row_index, row in enumerate(reader):
            if skip_first_row and row_index == 0:
                continue
            question = _parse_row(row, f"{csv_path}:{reader.line_num}")
            item_id = row["item_id"]
            if item_id != previous_id:
                items[item_id] = DPGItem(item_id)  # as the official dict assignment: a later run replaces
            items[item_id].questions[question.proposition_id] = question
            previous_id = item_id
    if not items:
        raise UserError(f"{csv_path}: holds no questions")
    return items


def _parse_row(row: dict, where: str) -> DPGQuestion:
    try:
        proposition_id = int(row["proposition_id"])
        parents = tuple(int(part.strip()) for part in row["dependency"].split(","))
    except (TypeError, ValueError):
        raise UserError(f"{where}: proposition_id must be an integer and dependency comma-separated integers, got "
                        f"{row['proposition_id']!r} and {row['dependency']!r}") from None
    if not row["question_natural_language"] or row["tuple"] is None:
        raise UserError(f"{where}: empty question or tuple")
    return DPGQuestion(proposition_id, row["question_natural_language"], parents, row["tuple"])


def crop_boxes(resolution: int, pic_num: int = 4) -> list[tuple[int, int, int, int]]:
    """The official crops of a 2x2 grid of `resolution` px images: top-left, top-right, bottom-left, bottom-right."""
    boxes = [(0, 0, resolution, resolution), (resolution, 0, 2 * resolution, resolution),
             (0, resolution, resolution, 2 * resolution), (resolution, resolution, 2 * resolution, 2 * resolution)]
    if not 1 <= pic_num <= 4:
        raise ValueError(f"pic_num must be 1 to 4, got {pic_num}")
    return boxes[:pic_num]


def cascade(item: DPGItem, scores: dict[int, float]) -> dict[int, float]:
    """Zero out each question with a failed parent, visiting questions in file order, in place (as the official
    loop does: a parent zeroed by the cascade counts as failed for questions visited after it)."""
    for proposition_id, question in item.questions.items():
        for parent in question.parents:
            if parent == 0:
                continue
            if parent not in scores:
                raise MissingParentError(f"question {proposition_id} depends on {parent}, which item "
                                         f"{item.item_id!r} does not have")
            if scores[parent] == 0:
                scores[proposition_id] = 0.0
                break
    return scores


def _answers(judge: VQAJudge, image: Image.Image, questions: list[str]) -> list[str]:
    batch = getattr(judge, "answer_batch", None)
    return list(batch(image, questions)) if batch else [judge(image, question) for question in questions]


def score_dpg_image(image: Image.Image, item: DPGItem, judge: VQAJudge, pic_num: int = 4,
                    resolution: int | None = None) -> dict:
    """One image's DPG record: per-crop answers and cascaded scores, crop scores, and the image score (0..1).

    `resolution` is the side of one grid cell (default: half the image width, our 2x2 grids).
    """
    image = image.convert("RGB")
    resolution = resolution or image.width // 2
    ids = list(item.questions)
    texts = [item.questions[i].question for i in ids]
    answers, cascaded, crop_scores = [], [], []
    for box in crop_boxes(resolution, pic_num):
        crop_answers = _answers(judge, image.crop(box), texts)
        scores = cascade(item, {i: float(answer == "yes") for i, answer in zip(ids, crop_answers, strict=True)})
        answers.append(crop_answers)
        cascaded.append([scores[i] for i in ids])
        crop_scores.append(sum(scores.values()) / len(scores))
    return {
        "item_id": item.item_id,
        "crop_scores": crop_scores,
        "score": sum(crop_scores) / len(crop_scores),
        "questions": [{"id": i, "question": texts[n], "category": item.questions[i].category,
                       "answers": [crop[n] for crop in answers], "scores": [crop[n] for crop in cascaded]}
                      for n, i in enumerate(ids)],
    }


def read_dpg_results(path: str | os.PathLike) -> list[dict]:
    """The per-image records `score_dpg_folder` wrote (for reports)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such DPG-Bench results file")
    return [record for _, record in read_jsonl(path)]


def summarize(records: Sequence[dict], failed: dict[str, str] | None = None) -> dict:
    """DPG-Bench score and category scores (x 100) from image records, as the official script prints them."""
    if not records:
        raise UserError("no DPG-Bench images could be scored" + (f": {failed}" if failed else ""))
    by_category: dict[str, list[float]] = defaultdict(list)
    for record in records:
        for question in record["questions"]:
            # the last crop's raw answer, before the cascade (the official `qid2scores_orig`)
            by_category[question["category"]].append(float(question["answers"][-1] == "yes"))
    by_broad: dict[str, list[float]] = defaultdict(list)
    for category, scores in by_category.items():
        by_broad[category.split("-")[0].strip()].extend(scores)
    return {
        "overall": float(np.mean([r["score"] for r in records])) * 100,
        "tasks": {name: float(np.mean(scores)) * 100 for name, scores in sorted(by_broad.items())},
        "categories": {name: float(np.mean(scores)) * 100 for name, scores in sorted(by_category.items())},
        "images": len(records),
        "failed": dict(failed or {}),
        "scale": 100,
    }


def score_dpg_folder(image_dir: str | os.PathLike, csv_path: str | os.PathLike, judge: VQAJudge, pic_num: int = 4,
                     resolution: int | None = None, results_path: str | os.PathLike | None = None,
                     skip_first_row: bool = True, progress: bool = False) -> dict:
    """Score every `<item_id>.<png|jpg|...>` in `image_dir`; writes one JSON record per image to `results_path`
    (default `<image_dir>/dpg_results.jsonl`) and returns `summarize`'s scores."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise UserError(f"{image_dir}: no such DPG-Bench image folder")
    items = load_dpg_questions(csv_path, skip_first_row)
    files = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError(f"{image_dir}: no images (<item_id>.png) to score")
    records, failed = [], {}
    for path in tqdm(files, desc="dpg scoring", unit="image", disable=not progress):
        item_id = path.name.split(".")[0]  # the official key: the name up to its first dot
        if item_id not in items:
            failed[path.name] = f"no questions for item {item_id!r} in {csv_path}"
            continue
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        try:
            record = score_dpg_image(image, items[item_id], judge, pic_num, resolution)
        except MissingParentError as err:
            failed[path.name] = str(err)
            continue
        records.append({"image": str(path), **record})
    results_path = Path(results_path) if results_path else image_dir / RESULTS_FILE
    results_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = results_path.with_name(f".{results_path.name}.tmp")
    tmp.write_text("".join(json.dumps(record) + "\n" for record in records))
    tmp.replace(results_path)
    return summarize(records, failed)
