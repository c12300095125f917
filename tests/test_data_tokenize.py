"""`mmgen data tokenize`: codes equal the tokenizer's, bad rows reported exactly, cache hits, shards, CLI."""

import json
import struct
import zlib

import datasets
import numpy as np
import pytest
import torch
from mmgen.data_engine.pretokenize import shard_bounds, tokenize
from mmgen.data_engine.tokenized import INFO_NAME, SKIPPED_NAME, load_tokenized, merge_tokenized, skipped_lines
from PIL import Image

from mmgen.cli import main
from mmgen.errors import UserError
from mmgen.images import center_square, load_image, pil_to_tensor
from mmgen.tokenizers import VisualTokenizer, load_visual_tokenizer


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` pixels but holds almost no data: a decompression-bomb stand-in."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture
def messy_folder(tmp_path):
    """An image folder with captions.jsonl: 4 usable rows (2 of them odd modes) and 7 bad ones."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("good1", "good2"):
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(folder / "rgba.png")  # converted: kept
    Image.fromarray(np.full((20, 20), 40000, dtype=np.uint16)).save(folder / "gray16.png")  # converted: kept
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    (folder / "truncated.png").write_bytes((folder / "good1.png").read_bytes()[:300])
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    (folder / "huge.png").write_bytes(huge_png_header(10_000, 10_000))
    rows = [("good1.png", "a noisy square"), ("corrupt.png", "x"), ("rgba.png", "a pink square"),
            ("truncated.png", "x"), ("tiny.png", "x"), ("gray16.png", "a grey square"), ("missing.png", "x"),
            ("good2.png", "   "), ("huge.png", "x"), ("good2.png", "another noisy square")]
    lines = [json.dumps({"file": file, "caption": caption}) for file, caption in rows]
    lines.insert(5, "{broken json")  # row 5; the rows after it are 6 to 10
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


EXPECTED_SKIPS = {1: ("bad_image", "corrupt.png"), 3: ("bad_image", "truncated.png"), 4: ("bad_image", "tiny.png"),
                  5: ("bad_row", None), 7: ("missing_image", "missing.png"), 8: ("empty_text", None),
                  9: ("bad_image", "huge.png")}


def test_messy_folder_keeps_good_rows_and_reports_exactly_the_bad_ones(messy_folder, tiny_visual_tokenizer_dir,
                                                                        tmp_path):
    result = tokenize(str(messy_folder), tiny_visual_tokenizer_dir, tmp_path / "out", cache_dir=tmp_path / "cache")
    info = result.info
    assert info["rows"] == {"read": 11, "written": 4, "skipped": 7}
    assert info["skipped_by_kind"] == {"missing_image": 1, "bad_image": 4, "empty_text": 1, "bad_row": 1,
                                       "outside_folder": 0}
    report = [json.loads(line) for line in (tmp_path / "out" / SKIPPED_NAME).read_text().splitlines()]
    assert {r["row"]: r["kind"] for r in report} == {row: kind for row, (kind, _) in EXPECTED_SKIPS.items()}
    for entry in report:
        file = EXPECTED_SKIPS[entry["row"]][1]
        assert (entry["file"] or "").endswith(file or "") and (file is None) == (entry["file"] is None)
        assert file is None or file in entry["reason"]
    dataset = datasets.load_from_disk(str(tmp_path / "out"))
    assert dataset["source_row"] == [0, 2, 6, 10]  # the RGBA and 16-bit images are converted, not skipped
    assert dataset["caption"][0] == "a noisy square"
    assert json.loads(dataset["metadata"][0]) == {}
    # The codes are the visual tokenizer's own codes of the centre-cropped image.
    tokenizer = load_visual_tokenizer(tiny_visual_tokenizer_dir)
    files = ["good1.png", "rgba.png", "gray16.png", "good2.png"]
    images = [center_square(load_image(messy_folder / f), tokenizer.image_size) for f in files]
    assert dataset["codes"] == tokenizer.encode(pil_to_tensor(images)).tolist()
    assert info["visual_tokenizer"]["codebook_size"] == 64 and info["visual_tokenizer"]["num_tokens"] == 16
    assert info["visual_tokenizer"]["grid_shape"] == [4, 4] and info["visual_tokenizer"]["image_size"] == 16


def count_encoder_calls(monkeypatch) -> list:
    calls = []
    original = VisualTokenizer.encode

    def counting(self, pixels):
        calls.append(len(pixels))
        return original(self, pixels)

    monkeypatch.setattr(VisualTokenizer, "encode", counting)
    return calls


def test_second_run_is_a_cache_hit_and_encodes_nothing(tiny_visual_tokenizer_dir, tmp_path, monkeypatch):
    calls = count_encoder_calls(monkeypatch)
    settings = {"task": "t2i", "num": 10, "batch_size": 4, "cache_dir": tmp_path / "cache"}
    first = tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "a", **settings)
    assert calls == [4, 4, 2] and not first.info["cache_hit"] and first.info["images_encoded"] == 10
    calls.clear()
    second = tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "b", **settings)
    assert calls == [] and second.info["cache_hit"] and second.info["images_encoded"] == 0
    assert load_tokenized(tmp_path / "a").dataset["codes"] == load_tokenized(tmp_path / "b").dataset["codes"]
    # Other rows (another seed) are a different cache entry: encoded again.
    tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "c", **{**settings, "seed": 1})
    assert sum(calls) == 10


def test_an_edited_image_file_invalidates_the_cache(tiny_visual_tokenizer_dir, tmp_path, monkeypatch):
    Image.new("RGB", (16, 16), "red").save(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "red"}) + "\n")
    calls = count_encoder_calls(monkeypatch)
    tokenize(str(tmp_path), tiny_visual_tokenizer_dir, tmp_path / "out", cache_dir=tmp_path / "cache")
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "a.png")
    tokenize(str(tmp_path), tiny_visual_tokenizer_dir, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert len(calls) == 2


def test_two_shards_cover_all_rows_once_and_merge(tiny_visual_tokenizer_dir, tmp_path):
    assert [shard_bounds(7, 2, i) for i in range(2)] == [(0, 4), (4, 7)]
    settings = {"task": "edit", "num": 7, "cache_dir": tmp_path / "cache"}
    whole = tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "whole", **settings).info
    tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "sharded", num_shards=2, shard_index=1, **settings)
    with pytest.raises(UserError, match=r"shard\(s\) 0 of 2 are not finished"):
        load_tokenized(tmp_path / "sharded")
    tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "sharded", num_shards=2, shard_index=0, **settings)
    parts = [datasets.load_from_disk(str(tmp_path / "sharded" / f"shard-0000{i}-of-00002")) for i in range(2)]
    assert parts[0]["source_row"] == [0, 1, 2, 3] and parts[1]["source_row"] == [4, 5, 6]
    merged = load_tokenized(tmp_path / "sharded")
    reference = load_tokenized(tmp_path / "whole")
    for column in ("source_row", "instruction", "source_codes", "target_codes"):
        assert merged.dataset[column] == reference.dataset[column]
    assert merged.info["rows"] == whole["rows"] and merged.info["images_encoded"] == 14
    written = merge_tokenized(tmp_path / "sharded", tmp_path / "merged")
    assert load_tokenized(written).dataset["target_codes"] == reference.dataset["target_codes"]
    assert main(["data", "merge", str(tmp_path / "sharded"), "--out", str(tmp_path / "merged-cli")]) == 0
    assert load_tokenized(tmp_path / "merged-cli").info["rows"] == whole["rows"]


def test_worker_processes_give_the_same_codes(tiny_visual_tokenizer_dir, tmp_path):
    settings = {"task": "understanding", "num": 6, "cache_dir": tmp_path / "cache", "batch_size": 2}
    cores = torch.get_num_threads()
    try:
        single = tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "one", threads=1, **settings)
        assert single.info["threads"] == 1 and torch.get_num_threads() == 1  # this process encoded, on one thread
    finally:
        torch.set_num_threads(cores)
    double = tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "two", num_proc=2, **settings)
    assert not double.info["cache_hit"] and double.info["num_proc"] == 2
    assert double.info["threads"] == 1
    with pytest.raises(UserError, match="each --num-proc worker uses one thread"):
        tokenize("shapes", tiny_visual_tokenizer_dir, tmp_path / "three", num_proc=2, threads=2, **settings)
    one, two = load_tokenized(tmp_path / "one").dataset, load_tokenized(tmp_path / "two").dataset
    assert one["codes"] == two["codes"] and one["answer"] == two["answer"]
    assert set(one.column_names) >= {"source_row", "question", "answer", "codes", "kind"}
    assert "image" not in one.column_names  # no pixels at training time


def test_cli_tokenize_reports_and_refuses_bad_input(messy_folder, tiny_visual_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["data", "tokenize", "--data", str(messy_folder), "--tokenizer", str(tiny_visual_tokenizer_dir),
            "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--batch-size", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "4 of 11 rows written, 7 skipped" in printed and "images/s" in printed and SKIPPED_NAME in printed
    assert (out / INFO_NAME).is_file() and len(skipped_lines(out)) == 7
    assert main(args) == 0 and "reused from the cache" in capsys.readouterr().out
    for bad, message in [(["--data", str(tmp_path / "nope")], "data source not found"),
                         (["--shard-index", "2", "--num-shards", "2"], "--shard-index"),
                         (["--task", "edit"], "task edit needs the columns source_image, target_image, instruction"),
                         (["--out", str(messy_folder)], "refusing to overwrite")]:
        assert main(args + bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err


def test_paths_that_lead_outside_the_folder_are_skipped_unless_allowed(tiny_visual_tokenizer_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for path in (folder / "inside.png", tmp_path / "outside.png"):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    (tmp_path / "secret.txt").write_text("not for the data set")
    rows = [("inside.png", "kept"), ("../outside.png", "climbs out"), (str(tmp_path / "outside.png"), "absolute"),
            ("link.png", "a symlink out"), (str(tmp_path / "secret.txt"), "a private file")]
    (folder / "captions.jsonl").write_text("".join(json.dumps({"file": f, "caption": c}) + "\n" for f, c in rows))
    result = tokenize(str(folder), tiny_visual_tokenizer_dir, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert result.info["rows"] == {"read": 5, "written": 1, "skipped": 4}
    assert result.info["skipped_by_kind"]["outside_folder"] == 4
    reasons = [json.loads(line)["reason"] for line in (tmp_path / "out" / SKIPPED_NAME).read_text().splitlines()]
    assert all("--allow-outside-paths" in reason for reason in reasons)
    allowed = tokenize(str(folder), tiny_visual_tokenizer_dir, tmp_path / "allowed", cache_dir=tmp_path / "cache",
                       allow_outside_paths=True)
    assert allowed.info["rows"]["written"] == 4  # the text file is read, and is no image
    assert allowed.info["skipped_by_kind"] == {**allowed.info["skipped_by_kind"], "bad_image": 1, "outside_folder": 0}


def write_image(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def test_text_tables_accept_a_bom_and_report_lines_from_one(tiny_visual_tokenizer_dir, tmp_path):
    """Excel's "CSV UTF-8" and Notepad start with a byte-order mark; one Latin-1 byte costs its line only."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        write_image(folder / f"{i}.png", i)
    jsonl = ['{"file_name": "0.png", "caption": "first"}', '{"caption": "no file key"}',
             '{"file_name": "1.png", "caption": "caf\xe9"}', '{"file_name": "2.png", "caption": "last"}']
    (folder / "captions.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(jsonl).encode("latin-1") + b"\n")
    result = tokenize(str(folder), tiny_visual_tokenizer_dir, tmp_path / "out", cache_dir=tmp_path / "cache")
    assert result.info["rows"] == {"read": 4, "written": 2, "skipped": 2}  # line 1 is read despite the BOM
    skipped = {entry["line"]: entry for entry in map(json.loads, skipped_lines(tmp_path / "out"))}
    assert skipped[2]["row"] == 1 and "no 'file_name' key" in skipped[2]["reason"]
    assert skipped[3]["row"] == 2 and "captions.jsonl line 3: not UTF-8 text (byte 0xE9 at column 39)" in \
        skipped[3]["reason"]
    assert datasets.load_from_disk(str(tmp_path / "out"))["caption"] == ["first", "last"]

    (folder / "captions.jsonl").unlink()
    csv_text = 'file_name,caption\r\n0.png,"a caption\r\non two lines"\r\n1.png,ol\xe9\r\n2.png,fine\r\n'
    (folder / "captions.csv").write_bytes(b"\xef\xbb\xbf" + csv_text.encode("latin-1"))
    result = tokenize(str(folder), tiny_visual_tokenizer_dir, tmp_path / "csv", cache_dir=tmp_path / "cache")
    assert result.info["rows"] == {"read": 3, "written": 2, "skipped": 1}  # the header's BOM is no column name
    (entry,) = map(json.loads, skipped_lines(tmp_path / "csv"))
    assert entry["row"] == 1 and entry["line"] == 4 and "captions.csv line 4: not UTF-8" in entry["reason"]
