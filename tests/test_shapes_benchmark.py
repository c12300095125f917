"""The shapes benchmark scored on its own rendered ground truth: a perfect generator scores 1.0."""

import pytest
from mmgen.data_engine.shapes.benchmark import load_benchmark
from mmgen.eval.geneval.rules import GENEVAL_TASKS
from mmgen.eval.shapes_benchmark import blur_and_jpeg, score_ground_truth


def test_benchmark_covers_every_task_with_about_100_prompts():
    prompts = load_benchmark()
    for task in GENEVAL_TASKS:
        assert sum(p["tag"] == task for p in prompts) == 100


def test_ground_truth_scores_one(tmp_path):
    summary = score_ground_truth(out_dir=tmp_path, size=64)
    assert summary["overall"] == 1.0
    assert all(score == 1.0 for score in summary["tasks"].values())
    assert (tmp_path / "results.json").exists()


def test_ground_truth_survives_blur_and_jpeg():
    summary = score_ground_truth(size=64, degrade=blur_and_jpeg(sigma=1.0, quality=60))
    assert summary["overall"] >= 0.95
    assert min(summary["tasks"].values()) >= 0.9


def test_degraded_images_really_differ():
    import numpy as np
    from mmgen.data_engine.shapes.world import Scene, render

    scene = Scene.from_dict(load_benchmark()[0]["scene"])
    clean = np.asarray(render(scene, 64), dtype=float)
    degraded = np.asarray(blur_and_jpeg()(render(scene, 64)), dtype=float)
    assert np.abs(clean - degraded).mean() > 1.0


@pytest.mark.parametrize("size", [128])
def test_ground_truth_at_other_resolutions(size):
    assert score_ground_truth(size=size)["overall"] == 1.0
