"""DPG-Bench: prompt loading and resumable 2x2 grid generation, the official scoring rules on a hand-computed
questions file with a scripted judge, and the BLIP-VQA judge's loading path."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mmgen.eval.dpg import (
    ScriptedJudge,
    VQAJudge,
    check_judge_spec,
    load_dpg_prompts,
    load_dpg_questions,
    load_judge,
    run_dpg,
    score_dpg_folder,
    score_dpg_image,
)
from mmgen.eval.dpg.scorer import CSV_COLUMNS, DPGItem, DPGQuestion, crop_boxes
from PIL import Image
from tiny_vision import save_tiny_blip_vqa, single_threaded

from mmgen.errors import UserError

OFFICIAL_PROMPTS = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "dpg_bench" / "prompts"

# (item_id, proposition_id, dependency, tuple, question). The official script skips the first data row, so item
# "skipme" loses question 1 and its question 2 then depends on a missing parent: that image fails.
ROWS = [
    ("skipme", 1, "0", "entity - whole (x)", "Is there an x?"),
    ("skipme", 2, "1", "attribute - color (x, red)", "Is the x red?"),
    ("a", 1, "0", "entity - whole (cat)", "Is there a cat?"),
    ("a", 2, "1", "attribute - color (cat, red)", "Is the cat red?"),
    ("a", 3, "2,4", "relation - spatial (cat, mat, on)", "Is the cat on the mat?"),
    ("a", 4, "0", "entity - whole (mat)", "Is there a mat?"),
    # b lists question 2 before its parent 3: the in-place cascade checks 3 before 3's own parent fails
    ("b", 2, "3", "attribute - color (dog, blue)", "Is the dog blue?"),
    ("b", 1, "0", "entity - whole (dog)", "Is there a dog?"),
    ("b", 3, "1", "entity - state (dog, sit)", "Is the dog sitting?"),
    ("c", 1, "2", "entity - whole (bus)", "Is there a bus?"),
]
# Answers per crop (top-left, top-right, bottom-left, bottom-right); "Yes" is not "yes".
ANSWERS = {
    "Is there a cat?": ["yes", "yes", "no", "yes"],
    "Is the cat red?": ["yes", "no", "yes", "Yes"],
    "Is the cat on the mat?": ["yes", "yes", "yes", "no"],
    "Is there a mat?": ["yes", "no", "no", "yes"],
    "Is there a dog?": "no",
    "Is the dog blue?": "yes",
    "Is the dog sitting?": "yes",
}
# a, crop by crop after the cascade: [1,1,1,1] -> 1; [1,0,0,0] -> .25 (3 loses parent 2); [0,0,0,0] -> 0
# (2 loses parent 1, then 3 loses the zeroed 2); [1,0,0,1] -> .5. Image score (1 + .25 + 0 + .5) / 4 = .4375.
# b every crop: dog blue 1 (its parent "sitting" is still 1 when checked), dog 0, sitting 0 (parent dog) -> 1/3.
EXPECTED_A, EXPECTED_B = 0.4375, 1 / 3


def write_csv(path: Path, rows=ROWS) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for item_id, proposition, dependency, tuple_, question in rows:
            writer.writerow([item_id, f"prompt {item_id}", "k", proposition, dependency, "entity", "whole", tuple_,
                             question])
    return path


def grid(tile: int = 16, colors=((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0))) -> Image.Image:
    image = Image.new("RGB", (2 * tile, 2 * tile))
    for index, color in enumerate(colors):
        image.paste(Image.new("RGB", (tile, tile), color), ((index % 2) * tile, (index // 2) * tile))
    return image


def test_questions_file_grouping_and_first_row_skip(tmp_path):
    items = load_dpg_questions(write_csv(tmp_path / "q.csv"))
    assert list(items) == ["skipme", "a", "b", "c"]
    assert list(items["skipme"].questions) == [2]
    assert list(items["b"].questions) == [2, 1, 3]
    question = items["a"].questions[3]
    assert question.parents == (2, 4) and question.category == "relation - spatial"
    assert question.broad_category == "relation"
    assert list(load_dpg_questions(tmp_path / "q.csv", skip_first_row=False)["skipme"].questions) == [1, 2]


def test_a_later_run_of_an_item_replaces_the_earlier_one(tmp_path):
    rows = [ROWS[0], ROWS[2], ROWS[7], ROWS[5]]  # skipped, a1, b1, a4
    items = load_dpg_questions(write_csv(tmp_path / "q.csv", rows))
    assert list(items["a"].questions) == [4]


def test_image_score_with_cascades(tmp_path):
    judge = ScriptedJudge(ANSWERS)
    items = load_dpg_questions(write_csv(tmp_path / "q.csv"))
    record = score_dpg_image(grid(), items["a"], judge)
    assert record["crop_scores"] == [1.0, 0.25, 0.0, 0.5]
    assert record["score"] == pytest.approx(EXPECTED_A)
    assert [q["scores"] for q in record["questions"]] == [[1, 1, 0, 1], [1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 1]]
    assert record["questions"][1]["answers"] == ["yes", "no", "yes", "Yes"]
    # four 16 px crops, each asked the item's four questions
    assert [size for size, _ in judge.calls] == [(16, 16)] * 16
    assert score_dpg_image(grid(), items["b"], ScriptedJudge(ANSWERS))["score"] == pytest.approx(EXPECTED_B)


def test_crops_are_the_four_grid_cells_row_major():
    def sees(image, question):
        red, green, blue = image.getpixel((0, 0))
        return {(255, 0, 0): "tl", (0, 255, 0): "tr", (0, 0, 255): "bl", (255, 255, 0): "br"}[(red, green, blue)]

    item = DPGItem("i", {1: DPGQuestion(1, "Where?", (0,), "entity - whole (x)")})
    record = score_dpg_image(grid(tile=20), item, ScriptedJudge(sees))
    assert record["questions"][0]["answers"] == ["tl", "tr", "bl", "br"]
    assert crop_boxes(20, 2) == [(0, 0, 20, 20), (20, 0, 40, 20)]
    assert len(score_dpg_image(grid(), item, ScriptedJudge({"Where?": "yes"}), pic_num=1)["crop_scores"]) == 1


def test_folder_scores_categories_and_failures(tmp_path):
    csv_path = write_csv(tmp_path / "q.csv")
    images = tmp_path / "images"
    images.mkdir()
    for item_id in ("a", "b", "c", "skipme", "unknown"):
        grid().save(images / f"{item_id}.png")
    (images / "notes.txt").write_text("not an image")
    summary = score_dpg_folder(images, csv_path, ScriptedJudge(ANSWERS))
    assert summary["overall"] == pytest.approx((EXPECTED_A + EXPECTED_B) / 2 * 100)
    assert summary["images"] == 2
    assert set(summary["failed"]) == {"c.png", "skipme.png", "unknown.png"}
    assert "depends on 2" in summary["failed"]["c.png"] and "no questions" in summary["failed"]["unknown.png"]
    # Categories use the last crop's raw answers: a = yes, Yes, no, yes; b = blue yes, dog no, sitting yes.
    assert summary["categories"] == pytest.approx({"attribute - color": 50.0, "entity - state": 100.0,
                                                   "entity - whole": 200 / 3, "relation - spatial": 0.0})
    assert summary["tasks"] == pytest.approx({"attribute": 50.0, "entity": 75.0, "relation": 0.0})
    records = [json.loads(line) for line in (images / "dpg_results.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in records] == ["a", "b"] and records[0]["crop_scores"] == [1.0, 0.25, 0.0, 0.5]


def test_without_the_first_row_quirk_the_item_scores(tmp_path):
    csv_path = write_csv(tmp_path / "q.csv")
    images = tmp_path / "images"
    images.mkdir()
    grid().save(images / "skipme.png")
    summary = score_dpg_folder(images, csv_path, ScriptedJudge({"Is there an x?": "yes", "Is the x red?": "yes"}),
                               skip_first_row=False, results_path=tmp_path / "r.jsonl")
    assert summary["overall"] == 100.0 and summary["failed"] == {}


@pytest.mark.parametrize(("header", "row", "message"), [
    (CSV_COLUMNS[:-1], None, "missing columns question_natural_language"),
    (CSV_COLUMNS, ["a", "t", "k", "one", "0", "e", "w", "entity - whole (x)", "Q?"], r"q.csv:3: proposition_id"),
    (CSV_COLUMNS, ["a", "t", "k", "1", "0,x", "e", "w", "entity - whole (x)", "Q?"], r"q.csv:3: .*dependency"),
])
def test_questions_file_errors(tmp_path, header, row, message):
    path = tmp_path / "q.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerow(["skip", "t", "k", "1", "0", "e", "w", "entity - whole (x)", "Q?"][:len(header)])
        if row:
            writer.writerow(row)
    with pytest.raises(UserError, match=message):
        load_dpg_questions(path)


def write_prompts(folder: Path, prompts: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, text in prompts.items():
        (folder / f"{stem}.txt").write_text(text)
    return folder


def stream_generator(calls: list):
    def generate(prompts, images_per_prompt, seed):
        calls.append((list(prompts), seed))
        return [[Image.new("RGB", (16, 16), (seed + j * images_per_prompt + k, 0, 0)) for k in range(images_per_prompt)]
                for j in range(len(prompts))]

    return generate


def tile_streams(path: Path) -> list[int]:
    image = Image.open(path)
    return [image.getpixel((x, y))[0] for y in (0, 16) for x in (0, 16)]


def test_run_writes_2x2_grids_with_batch_independent_seeds(tmp_path):
    prompts = write_prompts(tmp_path / "prompts", {"b": "  prompt b \n", "a": "prompt a", "10": "prompt ten"})
    assert load_dpg_prompts(prompts) == {"10": "prompt ten", "a": "prompt a", "b": "prompt b"}
    calls: list = []
    summary = run_dpg(stream_generator(calls), prompts, tmp_path / "out", seed=3, batch_prompts=2, progress=False)
    assert summary["generated"] == 3 and summary["resolution"] == 16
    assert calls == [(["prompt ten", "prompt a"], 3), (["prompt b"], 11)]
    assert Image.open(tmp_path / "out" / "a.png").size == (32, 32)
    assert [tile_streams(tmp_path / "out" / f"{stem}.png") for stem in ("10", "a", "b")] == [
        [3, 4, 5, 6], [7, 8, 9, 10], [11, 12, 13, 14]]

    (tmp_path / "out" / "a.png").unlink()
    (tmp_path / "out" / ".b.png.tmp").write_bytes(b"half")  # left by a killed run
    calls.clear()
    summary = run_dpg(stream_generator(calls), prompts, tmp_path / "out", seed=3, progress=False)
    assert (summary["generated"], summary["skipped"]) == (1, 2) and calls == [(["prompt a"], 7)]
    assert tile_streams(tmp_path / "out" / "a.png") == [7, 8, 9, 10]
    assert not list((tmp_path / "out").glob(".*"))


def test_run_errors(tmp_path):
    with pytest.raises(UserError, match="no such DPG-Bench prompts directory"):
        load_dpg_prompts(tmp_path / "absent")
    empty = write_prompts(tmp_path / "empty", {"x": "  \n"})
    with pytest.raises(UserError, match=r"x.txt: empty prompt"):
        load_dpg_prompts(empty)
    prompts = write_prompts(tmp_path / "prompts", {"x": "a prompt"})

    def wide(texts, images_per_prompt, seed):
        return [[Image.new("RGB", (24, 16))] * images_per_prompt for _ in texts]

    with pytest.raises(ValueError, match="square images of one size"):
        run_dpg(wide, prompts, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").iterdir())


def test_official_prompts_load():
    if not OFFICIAL_PROMPTS.is_dir():
        pytest.skip(f"DPG-Bench prompts are not at {OFFICIAL_PROMPTS}")
    prompts = load_dpg_prompts(OFFICIAL_PROMPTS)
    assert len(prompts) == 1065 and all(text == text.strip() and text for text in prompts.values())


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    with single_threaded():
        return save_tiny_blip_vqa(tmp_path_factory.mktemp("blip") / "blip")


def test_blip_judge_answers_strings(blip_dir):
    with single_threaded():
        judge = load_judge(f"blip:{blip_dir}", device="cpu", max_new_tokens=3)
        assert isinstance(judge, VQAJudge)
        image = grid()
        questions = ["is there a cat?", "is the dog red?"]
        batch = judge.answer_batch(image, questions)
        assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(a, str) for a in batch)
        assert [judge(image, q) for q in questions] == batch
        assert "[DEC]" not in " ".join(batch)
        item = DPGItem("a", {pid: DPGQuestion(pid, q, tuple(int(p) for p in dep.split(",")), t)
                             for _, pid, dep, t, q in ROWS[2:6]})
        record = score_dpg_image(image, item, judge)
        assert len(record["crop_scores"]) == 4 and 0.0 <= record["score"] <= 1.0


def fake_model_dir(path: Path, config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    return path


def test_blip_judge_errors(tmp_path):
    with pytest.raises(UserError, match=r"no such directory; expected a BLIP visual question answering model"):
        load_judge(f"blip:{tmp_path / 'absent'}")
    clip = fake_model_dir(tmp_path / "clip", {"model_type": "clip"})
    with pytest.raises(UserError, match=r"holds a model of type 'clip', expected a BLIP"):
        check_judge_spec(f"blip:{clip}")
    captioner = fake_model_dir(tmp_path / "captioner", {"model_type": "blip",
                                                        "architectures": ["BlipForConditionalGeneration"]})
    with pytest.raises(UserError, match="holds a BlipForConditionalGeneration model, expected a BLIP visual"):
        load_judge(f"blip:{captioner}")
    with pytest.raises(UserError, match="unknown VQA judge 'mplug:x'"):
        load_judge("mplug:x")
