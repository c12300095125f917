import json

import datasets
import numpy as np
import pytest
from mmgen.data_engine.shapes.captions import GENEVAL_TASKS
from mmgen.data_engine.shapes.dataset import build_shapes_dataset, write_shapes_dataset
from mmgen.data_engine.shapes.edits import EDIT_TYPES
from mmgen.data_engine.shapes.scenes import Layout
from mmgen.data_engine.shapes.world import Scene, render


def _pixels(dataset: datasets.Dataset, column: str) -> list[bytes]:
    return [np.asarray(image).tobytes() for image in dataset[column]]


def test_t2i_dataset_roundtrips_through_disk(tmp_path):
    written = write_shapes_dataset(tmp_path / "t2i", num=20, size=32, seed=0)
    loaded = datasets.load_from_disk(str(tmp_path / "t2i"))
    assert loaded.column_names == ["image", "caption", "metadata", "task", "scene"]
    assert isinstance(loaded.features["image"], datasets.Image)
    assert len(loaded) == 20
    assert _pixels(loaded, "image") == _pixels(written, "image")
    for row in loaded:
        assert row["image"].size == (32, 32)
        assert row["task"] in ("describe", *GENEVAL_TASKS)
        metadata = json.loads(row["metadata"])
        assert metadata["prompt"] == row["caption"]
        assert metadata["tag"] == ("scene" if row["task"] == "describe" else row["task"])
        # The stored scene is the one rendered.
        scene = Scene.from_dict(json.loads(row["scene"]))
        assert np.array_equal(np.asarray(row["image"]), np.asarray(render(scene, 32)))


def test_same_seed_same_dataset_other_seed_differs():
    first = build_shapes_dataset(20, size=64, seed=3)
    second = build_shapes_dataset(20, size=64, seed=3)
    assert first["caption"] == second["caption"] and first["scene"] == second["scene"]
    assert _pixels(first, "image") == _pixels(second, "image")
    assert build_shapes_dataset(20, size=64, seed=4)["caption"] != first["caption"]
    # Rows are seeded individually, so a shorter dataset is a prefix of a longer one.
    assert build_shapes_dataset(5, size=64, seed=3)["caption"] == first["caption"][:5]


def test_default_mix_covers_describe_and_all_tasks():
    tasks = build_shapes_dataset(200, size=32, seed=0)["task"]
    assert set(tasks) == {"describe", *GENEVAL_TASKS}
    assert 0.35 < tasks.count("describe") / len(tasks) < 0.65


def test_task_restriction():
    assert set(build_shapes_dataset(10, size=32, seed=0, tasks=["position"])["task"]) == {"position"}
    with pytest.raises(ValueError, match="unknown tasks"):
        build_shapes_dataset(10, size=32, seed=0, tasks=["poem"])


def test_grid_dataset_stands_every_object_on_the_grid():
    rows = build_shapes_dataset(30, size=64, seed=0, tasks=list(GENEVAL_TASKS), layout=Layout(grid=4))
    objects = [obj for row in rows for obj in json.loads(row["scene"])["objects"]]
    assert objects and all(obj["size"] == 0.25 and (obj["x"] * 4 - 0.5) % 1 == 0 and (obj["y"] * 4 - 0.5) % 1 == 0
                           for obj in objects)
    with pytest.raises(ValueError, match="free layout only"):
        build_shapes_dataset(2, size=64, seed=0, edits=True, layout=Layout(grid=4))


@pytest.mark.parametrize("size", [31, 257])
def test_rejects_unsupported_sizes(size):
    with pytest.raises(ValueError, match="image size"):
        build_shapes_dataset(2, size=size, seed=0)


def test_edit_dataset(tmp_path):
    write_shapes_dataset(tmp_path / "edits", num=20, size=48, seed=1, edits=True)
    loaded = datasets.load_from_disk(str(tmp_path / "edits"))
    assert loaded.column_names == [
        "source_image",
        "instruction",
        "target_image",
        "edit_type",
        "source_scene",
        "target_scene",
    ]
    assert set(loaded["edit_type"]) <= set(EDIT_TYPES) and len(set(loaded["edit_type"])) >= 4
    for row in loaded:
        source = Scene.from_dict(json.loads(row["source_scene"]))
        target = Scene.from_dict(json.loads(row["target_scene"]))
        assert np.array_equal(np.asarray(row["source_image"]), np.asarray(render(source, 48)))
        assert np.array_equal(np.asarray(row["target_image"]), np.asarray(render(target, 48)))
        assert not np.array_equal(np.asarray(row["source_image"]), np.asarray(row["target_image"]))
    again = build_shapes_dataset(20, size=48, seed=1, edits=True)
    assert again["instruction"] == loaded["instruction"]
    assert _pixels(again, "target_image") == _pixels(loaded, "target_image")
