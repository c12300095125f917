"""Sources for pre-tokenization: every kind read into the task's normalized rows, bad rows as skips, no decoding."""

import csv
import io
import json

import datasets
import pytest
from mmgen.data_engine.sources import open_source
from mmgen.data_engine.validation import BAD_ROW, EMPTY_TEXT, MISSING_IMAGE, RowSkip, load_image_cell
from PIL import Image

from mmgen.errors import UserError


def png_bytes(color=(200, 30, 30), size=(20, 20), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def rows_of(source) -> list:
    return [row for _, row in source.iter_rows()]


def test_captions_jsonl_in_an_image_folder(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes())
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.png").write_bytes(png_bytes())
    lines = [{"file": "a.png", "caption": " a red square ", "source": "web"}, "{not json",
             {"image": "sub/b.png", "caption": "another"}]
    (tmp_path / "captions.jsonl").write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines))
    source = open_source(str(tmp_path), "t2i")
    first, bad, third = rows_of(source)
    assert source.kind == "table" and source.base_dir == tmp_path.resolve()
    assert first.texts == {"caption": "a red square"} and first.images == {"image": "a.png"}
    assert json.loads(first.extras["metadata"]) == {"source": "web"}
    assert isinstance(bad, RowSkip) and bad.kind == BAD_ROW and "line 2" in bad.reason
    assert third.images == {"image": "sub/b.png"}  # `image` is accepted as well as `file`
    assert load_image_cell("sub/b.png", "row 2", source.base_dir).size == (20, 20)


def test_captions_csv_and_imagefolder_metadata(tmp_path):
    with (tmp_path / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "caption"])
        writer.writeheader()
        writer.writerows([{"file_name": "x.png", "caption": "a blue star"}, {"file_name": "y.png", "caption": "  "}])
    good, empty = rows_of(open_source(str(tmp_path), "t2i"))
    assert good.texts == {"caption": "a blue star"} and good.images == {"image": "x.png"}
    assert isinstance(empty, RowSkip) and empty.kind == EMPTY_TEXT


def test_datasets_directory_with_plain_columns_and_parquet(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "score": datasets.Value("float32")})
    table = {"image": [{"bytes": png_bytes(), "path": None}] * 2, "caption": ["one", "two"], "score": [0.5, 0.7]}
    dataset = datasets.Dataset.from_dict(table, features=features)
    dataset.save_to_disk(str(tmp_path / "saved"))
    dataset.to_parquet(str(tmp_path / "rows.parquet"))
    for path in (tmp_path / "saved", tmp_path / "rows.parquet"):
        source = open_source(str(path), "t2i")
        rows = rows_of(source)
        assert source.kind == "datasets" and [r.texts["caption"] for r in rows] == ["one", "two"]
        assert isinstance(rows[0].images["image"], dict)  # undecoded: decoding (and its failures) is ours
        assert source.output_drop_columns() == ["image", "caption"]  # `score` passes through to the output


def test_messages_convention_trl_parts_llamafactory_placeholders_and_sharegpt(tmp_path):
    image = {"bytes": png_bytes(), "path": None}
    records = [
        # LLaMA-Factory: `<image>` in the user text; captioning data, so for t2i the reply is the caption.
        {"messages": [{"role": "user", "content": "<image>What is shown?"},
                      {"role": "assistant", "content": "a green circle"}], "images": [image]},
        # TRL: typed content parts, a system turn first.
        {"messages": [{"role": "system", "content": [{"type": "text", "text": "be brief"}]},
                      {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "two"}]}], "images": [image]},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("\n".join(json.dumps({**r, "images": ["pic.png"]}) for r in records))
    first, second = rows_of(open_source(str(path), "understanding"))
    assert first.texts == {"question": "What is shown?", "answer": "a green circle"}
    assert second.texts == {"question": "How many?", "answer": "two"} and second.images == {"image": "pic.png"}
    caption, _ = rows_of(open_source(str(path), "t2i"))
    assert caption.texts == {"caption": "a green circle"}

    # A prompt whose answer is the image (no placeholder in the user turn): the user's text is the caption.
    sharegpt = [{"conversations": [{"from": "human", "value": "draw a red star"}, {"from": "gpt", "value": "<image>"}],
                 "images": ["star.png"]},
                {"conversations": [{"from": "human", "value": "draw"}, {"from": "gpt", "value": "<image>"}],
                 "images": []},
                {"conversations": [{"from": "human", "value": "no reply"}], "images": ["x.png"]}]
    (tmp_path / "sharegpt.json").write_text(json.dumps(sharegpt))
    prompt, no_image, no_reply = rows_of(open_source(str(tmp_path / "sharegpt.json"), "t2i"))
    assert prompt.texts == {"caption": "draw a red star"}
    assert isinstance(no_image, RowSkip) and no_image.kind == MISSING_IMAGE
    assert isinstance(no_reply, RowSkip) and no_reply.kind == BAD_ROW and "assistant" in no_reply.reason


def test_messages_in_a_datasets_directory(tmp_path):
    dataset = datasets.Dataset.from_dict(
        {"messages": [[{"role": "user", "content": "<image>Colour?"}, {"role": "assistant", "content": "red"}]],
         "images": [[{"bytes": png_bytes(), "path": None}]]},
        features=datasets.Features({"messages": datasets.List({"role": datasets.Value("string"),
                                                               "content": datasets.Value("string")}),
                                    "images": datasets.List(datasets.Image())}))
    dataset.save_to_disk(str(tmp_path / "vqa"))
    source = open_source(str(tmp_path / "vqa"), "understanding")
    (row,) = rows_of(source)
    assert row.texts == {"question": "Colour?", "answer": "red"} and isinstance(row.images["image"], dict)
    assert set(source.output_drop_columns()) == {"messages", "images"}


def test_edit_triplets_from_jsonl_and_datasets(tmp_path):
    (tmp_path / "edits.jsonl").write_text(json.dumps(
        {"source_image": "s.png", "instruction": "make it blue", "target_image": "t.png"}) + "\n")
    (row,) = rows_of(open_source(str(tmp_path / "edits.jsonl"), "edit"))
    assert row.texts == {"instruction": "make it blue"} and row.images == {"source_image": "s.png",
                                                                           "target_image": "t.png"}
    from mmgen.data_engine.shapes.dataset import write_shapes_dataset

    write_shapes_dataset(tmp_path / "shapes-edits", num=3, size=32, edits=True)
    rows = rows_of(open_source(str(tmp_path / "shapes-edits"), "edit"))
    assert len(rows) == 3 and all(set(r.images) == {"source_image", "target_image"} for r in rows)


@pytest.mark.parametrize(("task", "fields"), [("t2i", {"caption"}), ("edit", {"instruction"}),
                                              ("understanding", {"question", "answer"})])
def test_shapes_world_source_for_every_task(task, fields):
    source = open_source("shapes", task, num=4, seed=1, image_size=16)
    rows = rows_of(source)
    assert len(rows) == 4 and all(set(r.texts) == fields and all(r.texts.values()) for r in rows)
    assert "size=32" in source.location  # rendered at the world's smallest size, resized to 16 when encoded
    assert source.fingerprint == open_source("shapes", task, num=4, seed=1, image_size=16).fingerprint
    assert source.fingerprint != open_source("shapes", task, num=4, seed=2, image_size=16).fingerprint


def test_column_renames_and_clear_errors(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"path": "a.png", "text": "hello"}) + "\n")
    (row,) = rows_of(open_source(str(tmp_path / "t.jsonl"), "t2i", columns={"image": "path", "caption": "text"}))
    assert row.texts == {"caption": "hello"} and row.images == {"image": "a.png"}
    with pytest.raises(UserError, match=r"needs the columns image \(or file or file_name\), caption; found columns: "):
        open_source(str(tmp_path / "t.jsonl"), "t2i")
    (tmp_path / "e.jsonl").write_text(json.dumps({"source_image": "a", "instruction": "b", "target_image": "c"}))
    with pytest.raises(UserError, match="use --task edit"):
        open_source(str(tmp_path / "e.jsonl"), "t2i")
    with pytest.raises(UserError, match="data source not found"):
        open_source(str(tmp_path / "nope"), "t2i")
    with pytest.raises(UserError, match="needs --num"):
        open_source("shapes", "t2i")


def test_shapes_questions_are_answered_from_the_scene():
    from mmgen.data_engine.shapes.questions import QUESTION_KINDS, build_shapes_vqa_dataset
    from mmgen.data_engine.shapes.world import Scene

    dataset = build_shapes_vqa_dataset(60, size=32, seed=0)
    assert set(dataset["kind"]) == set(QUESTION_KINDS)
    for row in dataset:
        objects = Scene.from_dict(json.loads(row["scene"])).objects
        words = row["question"].rstrip("?").split()
        if row["question"].startswith("how many"):
            count = sum(o.shape + "s" == words[2] for o in objects)
            assert row["answer"] == ["zero", "one", "two", "three", "four"][count]
        elif row["question"].startswith("what colour"):
            assert [o.color for o in objects if o.shape == words[-1]] == [row["answer"]]
        elif row["question"].startswith("is there"):
            present = any((o.color, o.shape) == (words[-2], words[-1]) for o in objects)
            assert row["answer"] == ("yes" if present else "no")


def test_cli_writes_shapes_questions_and_refuses_bad_counts(tmp_path, capsys):
    from mmgen.cli import main

    assert main(["data", "shapes", "--num", "3", "--size", "32", "--questions", "--out", str(tmp_path / "q")]) == 0
    assert datasets.load_from_disk(str(tmp_path / "q")).column_names[:3] == ["image", "question", "answer"]
    assert "wrote 3 questions" in capsys.readouterr().out
    assert main(["data", "shapes", "--num", "0", "--out", str(tmp_path / "never")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_cli_shapes_tasks_restrict_what_is_drawn(tmp_path, capsys):
    from mmgen.cli import main

    out = tmp_path / "colors"
    assert main(["data", "shapes", "--num", "6", "--size", "32", "--tasks", "colors,single_object",
                 "--out", str(out)]) == 0
    assert set(datasets.load_from_disk(str(out))["task"]) <= {"colors", "single_object"}
    assert main(["data", "shapes", "--num", "2", "--tasks", "colours", "--out", str(tmp_path / "never")]) == 2
    assert "unknown tasks ['colours']" in capsys.readouterr().err
