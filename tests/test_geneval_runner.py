"""GenEval runner: official folder layout, batch-independent seeding, resuming, metadata errors, folder scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mmgen.data_engine.shapes.benchmark import load_benchmark
from mmgen.data_engine.shapes.world import Scene, render
from mmgen.eval.detectors import ShapesDetector
from mmgen.eval.geneval.results import RESULT_KEYS, read_results
from mmgen.eval.geneval.rules import GENEVAL_TASKS
from mmgen.eval.geneval.runner import load_geneval_metadata, run_geneval, score_geneval_folder
from PIL import Image

from mmgen.errors import UserError

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks" / "geneval"


def stream_generator(calls: list | None = None):
    """A fake sampler honouring the seeding contract: image k of the j-th prompt of a call comes from the stream
    `seed + j * n + k`, written into the pixels so tests can read back which stream made each image."""

    def generate(prompts: list[str], images_per_prompt: int, seed: int) -> list[list[Image.Image]]:
        if calls is not None:
            calls.append((list(prompts), seed))
        return [[_stream_image(seed + j * images_per_prompt + k) for k in range(images_per_prompt)]
                for j in range(len(prompts))]

    return generate


def _stream_image(stream: int) -> Image.Image:
    return Image.new("RGB", (8, 8), (stream % 256, stream // 256, 7))


def stream_of(path: Path) -> int:
    red, green, _ = Image.open(path).getpixel((0, 0))
    return red + 256 * green


def write_metadata(path: Path, prompts: list[dict]) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return path


def toy_prompts(count: int) -> list[dict]:
    return [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": f"prompt {i}"}
            for i in range(count)]


def test_official_layout(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", toy_prompts(3))
    out = tmp_path / "out"
    summary = run_geneval(stream_generator(), metadata, out, images_per_prompt=4, seed=42, progress=False)
    assert summary == {"prompts": 3, "generated": 3, "skipped": 0, "out_dir": str(out)}
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "geneval_run.json"]
    folder = out / "00001"
    assert json.loads((folder / "metadata.jsonl").read_text()) == toy_prompts(3)[1]
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
    assert Image.open(folder / "grid.png").size[0] > 8
    # image k of prompt i comes from stream seed + i * 4 + k
    assert [stream_of(folder / "samples" / f"000{k}.png") for k in range(4)] == [46, 47, 48, 49]


def test_images_do_not_depend_on_batching(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", toy_prompts(7))
    streams = {}
    for batch in (1, 3, 8):
        out = tmp_path / f"batch{batch}"
        run_geneval(stream_generator(), metadata, out, images_per_prompt=2, seed=5, batch_prompts=batch,
                    progress=False)
        streams[batch] = [stream_of(p) for p in sorted(out.glob("*/samples/*.png"))]
    assert streams[1] == streams[3] == streams[8] == list(range(5, 5 + 14))


def test_resume_after_a_kill_regenerates_only_missing_prompts(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", toy_prompts(6))
    out = tmp_path / "out"
    calls: list = []
    inner = stream_generator(calls)

    def dies_on_third_batch(prompts, images_per_prompt, seed):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed between two batches
        return inner(prompts, images_per_prompt, seed)

    with pytest.raises(KeyboardInterrupt):
        run_geneval(dies_on_third_batch, metadata, out, images_per_prompt=2, seed=0, batch_prompts=2, progress=False)
    assert sorted(p.name for p in out.glob("0*")) == ["00000", "00001", "00002", "00003"]
    # Damage the state a kill can leave: a staging directory, and a folder missing a sample.
    (out / ".00004.staging-abc").mkdir()
    (out / "00001" / "samples" / "0001.png").unlink()

    calls.clear()
    summary = run_geneval(stream_generator(calls), metadata, out, images_per_prompt=2, seed=0, batch_prompts=2,
                          progress=False)
    assert summary["generated"] == 3 and summary["skipped"] == 3
    # prompt 1 alone (its neighbours are done), then 4 and 5 together, each with its own seed
    assert calls == [(["prompt 1"], 2), (["prompt 4", "prompt 5"], 8)]
    assert not list(out.glob(".*staging*"))
    assert [stream_of(p) for p in sorted(out.glob("*/samples/*.png"))] == list(range(12))
    assert run_geneval(stream_generator(), metadata, out, images_per_prompt=2, seed=0, progress=False)["skipped"] == 6


def test_resume_refuses_another_seed_or_prompt_file(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", toy_prompts(2))
    out = tmp_path / "out"
    run_geneval(stream_generator(), metadata, out, images_per_prompt=1, seed=1, progress=False)
    with pytest.raises(UserError, match="seed 1, not 2"):
        run_geneval(stream_generator(), metadata, out, images_per_prompt=1, seed=2, progress=False)
    other = write_metadata(tmp_path / "other.jsonl", toy_prompts(3)[1:])
    with pytest.raises(UserError, match="holds the prompt 'prompt 0'"):
        run_geneval(stream_generator(), other, out, images_per_prompt=1, seed=1, progress=False)


def test_generator_output_is_checked(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", toy_prompts(2))

    def too_few(prompts, images_per_prompt, seed):
        return [[_stream_image(0)] for _ in prompts]

    with pytest.raises(ValueError, match="returned 1 images for 'prompt 0', expected 4"):
        run_geneval(too_few, metadata, tmp_path / "out", progress=False)
    assert not list((tmp_path / "out").glob("0*"))


@pytest.mark.parametrize(("line", "message"), [
    ('{"tag": "single_object", "prompt": "x"', "meta.jsonl:2: not valid JSON"),
    ('{"tag": "single_object", "include": []}', "meta.jsonl:2: missing key 'prompt'"),
    ('{"tag": "counting", "prompt": "x", "include": [{"class": "cat", "count": 0}]}',
     "meta.jsonl:2: include clause 0 needs a positive integer 'count'"),
    ('["not", "an", "object"]', "meta.jsonl:2: expected a JSON object"),
    ("", "meta.jsonl:2: blank line"),
])
def test_metadata_errors_name_file_and_line(tmp_path, line, message):
    good = json.dumps(toy_prompts(1)[0])
    path = tmp_path / "meta.jsonl"
    path.write_text(f"{good}\n{line}\n{good}\n")
    with pytest.raises(UserError, match=message):
        load_geneval_metadata(path)


def test_missing_metadata_file(tmp_path):
    with pytest.raises(UserError, match="no such GenEval metadata file"):
        load_geneval_metadata(tmp_path / "absent.jsonl")


def test_official_metadata_loads():
    path = OFFICIAL / "evaluation_metadata.jsonl"
    if not path.is_file():
        pytest.skip(f"GenEval's evaluation_metadata.jsonl is not at {path}")
    prompts = load_geneval_metadata(path)
    assert len(prompts) == 553
    assert {p["tag"] for p in prompts} == set(GENEVAL_TASKS)


def test_object_names_match_official_list():
    from mmgen.eval.geneval.object_names import GENEVAL_OBJECT_NAMES

    path = OFFICIAL / "object_names.txt"
    if not path.is_file():
        pytest.skip(f"GenEval's object_names.txt is not at {path}")
    assert list(GENEVAL_OBJECT_NAMES) == [line.strip() for line in path.read_text().splitlines() if line.strip()]
    metadata = load_geneval_metadata(OFFICIAL / "evaluation_metadata.jsonl")
    assert {c["class"] for p in metadata for c in p["include"]} <= set(GENEVAL_OBJECT_NAMES)


def shapes_prompts(per_task: int = 2) -> list[dict]:
    prompts = load_benchmark()
    return [p for task in GENEVAL_TASKS for p in [q for q in prompts if q["tag"] == task][:per_task]]


def test_score_folder_with_the_shapes_detector(tmp_path):
    prompts = shapes_prompts()
    metadata = write_metadata(tmp_path / "meta.jsonl", prompts)
    scenes = {p["prompt"]: Scene.from_dict(p["scene"]) for p in prompts}

    def perfect(texts, images_per_prompt, seed):
        return [[render(scenes[text], 64)] * images_per_prompt for text in texts]

    out = tmp_path / "out"
    run_geneval(perfect, metadata, out, images_per_prompt=2, progress=False)
    summary = score_geneval_folder(out, ShapesDetector())
    assert summary["overall"] == 1.0 and summary["images"] == {task: 4 for task in GENEVAL_TASKS}
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 24
    first = json.loads(lines[0])
    assert tuple(first) == RESULT_KEYS
    assert isinstance(first["metadata"], str) and json.loads(first["metadata"]) == prompts[0]
    assert first["filename"].endswith("00000/samples/0000.png")
    assert read_results(out / "results.jsonl")[0]["metadata"] == prompts[0]


def test_score_folder_blank_images_fail(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", shapes_prompts(1))

    def blank(texts, images_per_prompt, seed):
        return [[Image.new("RGB", (64, 64), (128, 128, 128))] * images_per_prompt for _ in texts]

    run_geneval(blank, metadata, tmp_path / "out", images_per_prompt=1, progress=False)
    results = tmp_path / "elsewhere" / "results.jsonl"
    summary = score_geneval_folder(tmp_path / "out", ShapesDetector(), results_path=results)
    assert summary["overall"] == 0.0
    assert all(r["reason"].startswith("expected") for r in read_results(results))


def test_score_folder_refuses_classes_the_detector_does_not_know(tmp_path):
    metadata = write_metadata(tmp_path / "meta.jsonl", [
        {"tag": "single_object", "include": [{"class": "giraffe", "count": 1}], "prompt": "a giraffe"}])
    run_geneval(stream_generator(), metadata, tmp_path / "out", images_per_prompt=1, progress=False)
    with pytest.raises(UserError, match="does not know the classes 'giraffe'"):
        score_geneval_folder(tmp_path / "out", ShapesDetector())


def test_score_empty_folder(tmp_path):
    with pytest.raises(UserError, match="no prompt folders"):
        score_geneval_folder(tmp_path, ShapesDetector())
