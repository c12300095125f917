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


def test_ground_truth_through_a_tokenizer_is_rendered_at_its_size_and_capped_by_it(tmp_path):
    import json

    import torch
    from mmgen.eval.shapes_benchmark import TokenizerRoundTrip

    from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, QuantizerConfig

    torch.manual_seed(0)
    GridTokenizer(GridTokenizerConfig(image_size=32, block_out_channels=(16, 32), norm_num_groups=8,
                                      quantizer=QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]))
                  ).save_pretrained(tmp_path / "untrained")
    round_trip = TokenizerRoundTrip(tmp_path / "untrained")
    summary = score_ground_truth(out_dir=tmp_path / "out", limit=5, round_trip=round_trip)
    assert summary["overall"] < 0.3  # an untrained decoder draws no readable shape
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["details"]["size"] == 32 and "through the tokenizer" in results["details"]["source"]

    class Unchanged:  # a lossless "tokenizer": the wiring must then give the clean ground truth's 1.0
        image_size, path = 64, "identity"

        def __call__(self, images):
            return list(images)

    assert score_ground_truth(limit=5, round_trip=Unchanged())["overall"] == 1.0
