"""Model-backed GenEval judges loaded from local directories: OWLv2, Grounding DINO, CLIP colours, and the registry.

The models are tiny and random, so detections are arbitrary: the tests check the loading path, the structure and
types of the outputs, the crop CLIP sees, and the errors for a wrong or missing directory.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from mmgen.eval.detectors import (
    DetectedColor,
    Detection,
    Detections,
    ShapesColorClassifier,
    ShapesDetector,
    check_color_classifier_spec,
    check_detector_spec,
    load_color_classifier,
    load_detector,
)
from mmgen.eval.detectors.grounding_dino import caption_text, class_spans
from mmgen.eval.geneval.object_names import GENEVAL_OBJECT_NAMES
from mmgen.eval.geneval.rules import GENEVAL_COLORS
from PIL import Image
from tiny_vision import save_tiny_clip, save_tiny_grounding_dino, save_tiny_owlv2, single_threaded

from mmgen.errors import UserError

CLASSES = ["cat", "dog", "traffic light"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_threaded():
        yield


class ModelDirs(dict):
    """Tiny model directories, each built the first time a test asks for it (spreads the building time)."""

    BUILDERS = {"owlv2": save_tiny_owlv2, "clip": save_tiny_clip, "grounding-dino": save_tiny_grounding_dino}

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, kind):
        self[kind] = self.BUILDERS[kind](self.root / kind)
        return self[kind]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    return ModelDirs(tmp_path_factory.mktemp("judges"))


@pytest.fixture(scope="module")
def owlv2(model_dirs):
    return load_detector(f"owlv2:{model_dirs['owlv2']}", classnames=CLASSES, device="cpu", min_score=0.0)


@pytest.fixture(scope="module")
def clip(model_dirs):
    return load_color_classifier(f"clip:{model_dirs['clip']}", device="cpu")


def scene(width: int = 48, height: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def check_structure(detections: Detections, classnames: list[str], width: int, height: int) -> None:
    assert isinstance(detections, Detections) and (detections.width, detections.height) == (width, height)
    assert len(detections) > 0 and set(detections.by_class) <= set(classnames)
    for found in detections.by_class.values():
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        for d in found:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
            assert 0.0 <= d.score <= 1.0 and d.mask is None and d.color is None


def test_owlv2_detects_with_the_right_structure(owlv2):
    assert owlv2.classnames == CLASSES
    check_structure(owlv2.detect(scene()), CLASSES, 48, 40)


def test_owlv2_cached_queries_match_the_full_forward(owlv2):
    import torch

    image = scene()
    logits, boxes = owlv2.predict(image)
    inputs = owlv2.processor(text=[CLASSES], images=image, return_tensors="pt", padding="max_length",
                             truncation=True, max_length=16)
    with torch.no_grad():
        reference = owlv2.model(**inputs)
    assert torch.allclose(logits, reference.logits[0], atol=1e-4)
    assert torch.allclose(boxes, reference.pred_boxes[0], atol=1e-5)


def test_owlv2_nms_only_removes_boxes(model_dirs, owlv2):
    keep_all = load_detector(f"owlv2:{model_dirs['owlv2']}", classnames=CLASSES, device="cpu", min_score=0.0,
                             nms_iou=None)
    image = scene()
    assert len(keep_all.detect(image)) == 16  # one box per patch of the 4 x 4 grid
    assert len(owlv2.detect(image)) <= 16


def test_owlv2_defaults_to_geneval_classes(model_dirs):
    detector = load_detector(f"owlv2:{model_dirs['owlv2']}", device="cpu")
    assert detector.classnames == list(GENEVAL_OBJECT_NAMES)
    assert detector.query_embeds.shape == (80, 16)


def test_grounding_dino_captions_cover_each_class(model_dirs):
    assert caption_text(["cat", "Traffic light"]) == "cat. traffic light."
    assert class_spans(["cat", "traffic light"]) == [(0, 3), (5, 18)]
    detector = load_detector(f"grounding-dino:{model_dirs['grounding-dino']}", device="cpu", min_score=0.0)
    # 80 class names do not fit 32 text tokens: they are packed into several captions, each within the limit
    assert len(detector.captions) > 1
    assert sum(len(c.positive_map) for c in detector.captions) == 80
    for caption in detector.captions:
        assert caption.text["input_ids"].shape[1] <= 32
        assert np.allclose(caption.positive_map.sum(axis=1), 1.0)
    hair_drier = GENEVAL_OBJECT_NAMES.index("hair drier")
    caption = next(c for c in detector.captions if c.first_class <= hair_drier < c.first_class + len(c.positive_map))
    row = caption.positive_map[hair_drier - caption.first_class]
    tokens = detector.processor.tokenizer.convert_ids_to_tokens(caption.text["input_ids"][0][row > 0].tolist())
    assert tokens == ["hair", "dr", "##ier"]


def test_grounding_dino_detects_with_the_right_structure(model_dirs):
    detector = load_detector(f"grounding-dino:{model_dirs['grounding-dino']}", classnames=CLASSES, device="cpu",
                             min_score=0.0, nms_iou=None)
    scores, boxes = detector.predict(scene())
    assert scores.shape == (10, 3) and boxes.shape == (10, 4)  # 10 queries, one caption
    assert ((scores >= 0) & (scores <= 1)).all()
    check_structure(detector.detect(scene()), CLASSES, 48, 40)


def test_clip_crop_is_the_masked_object_on_grey(clip):
    image = Image.new("RGB", (40, 30), (255, 0, 0))
    mask = np.zeros((30, 40), dtype=bool)
    mask[10:20, 10:15] = True
    detection = Detection(box=(8, 8, 22, 22), score=0.9, mask=mask)
    crop = np.asarray(clip.object_crop(image, detection))
    assert crop.shape == (14, 14, 3)
    assert (crop[2:12, 2:7] == (255, 0, 0)).all()  # the object
    assert (crop[0, 0] == (153, 153, 153)).all() and (crop[13, 13] == (153, 153, 153)).all()  # #999 around it
    no_mask = Detection(box=(8, 8, 22, 22), score=0.9)
    assert (np.asarray(clip.object_crop(image, no_mask)) == (255, 0, 0)).all()
    degenerate = Detection(box=(39.6, 5, 39.6, 5), score=0.9)
    assert clip.object_crop(image, degenerate).size == (1, 1)


def test_clip_classifies_the_masked_crop_among_geneval_colours(clip):
    image = scene(40, 30)
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:25, 5:30] = True
    detection = Detection(box=(5, 5, 30, 25), score=0.9, mask=mask)
    scores = clip.color_scores(image, detection, "cat")
    assert scores.shape == (10,) and np.all(np.abs(scores) <= 1.0 + 1e-5)
    assert clip.classify(image, detection, "cat") == GENEVAL_COLORS[int(scores.argmax())]
    # the same scores from the crop alone: CLIP saw the masked crop and nothing else
    crop = clip.object_crop(image, detection)
    alone = Detection(box=(0, 0, crop.width, crop.height), score=0.9)
    assert np.allclose(clip.color_scores(crop, alone, "cat"), scores, atol=1e-5)


def test_clip_colour_prompts_average_three_templates(clip):
    embeddings = clip._classifier("traffic light")
    assert tuple(embeddings.shape) == (10, 16)
    assert np.allclose(embeddings.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_open_vocabulary_detector_and_clip_score_a_geneval_folder(tmp_path, model_dirs, clip):
    from mmgen.eval.geneval.runner import run_geneval, score_geneval_folder

    prompts = [{"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a red cat"},
               {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}],
                "prompt": "two dogs"}]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    run_geneval(lambda texts, n, seed: [[scene()] * n for _ in texts], tmp_path / "meta.jsonl", tmp_path / "out",
                images_per_prompt=2, progress=False)
    detector = load_detector(f"owlv2:{model_dirs['owlv2']}", classnames=CLASSES, device="cpu")
    summary = score_geneval_folder(tmp_path / "out", detector, clip)
    assert set(summary["tasks"]) == {"colors", "counting"} and summary["images"] == {"colors": 2, "counting": 2}
    assert 0.0 <= summary["overall"] <= 1.0


def test_missing_directory_is_named_with_the_expected_model(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=rf"{missing}: no such directory; expected an OWLv2 detector"):
        load_detector(f"owlv2:{missing}")
    with pytest.raises(UserError, match="no such directory; expected a CLIP model"):
        check_color_classifier_spec(f"clip:{missing}")


def test_wrong_model_type_is_refused_before_loading(model_dirs):
    with pytest.raises(UserError, match=r"holds a model of type 'clip', expected an OWLv2 detector .*owlv2"):
        check_detector_spec(f"owlv2:{model_dirs['clip']}")
    with pytest.raises(UserError, match=r"holds a model of type 'owlv2', expected a CLIP model"):
        load_color_classifier(f"clip:{model_dirs['owlv2']}")
    with pytest.raises(UserError, match=r"holds a model of type 'owlv2', expected a Grounding DINO detector"):
        load_detector(f"grounding-dino:{model_dirs['owlv2']}")


def test_directory_without_safetensors_or_config_is_refused(tmp_path, model_dirs):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(model_dirs["owlv2"] / "config.json", no_weights)
    with pytest.raises(UserError, match="no .safetensors weights"):
        check_detector_spec(f"owlv2:{no_weights}")
    with pytest.raises(UserError, match="no config.json"):
        check_detector_spec(f"owlv2:{tmp_path}")


@pytest.mark.parametrize(("spec", "message"), [
    ("yolo:/models/yolo", "unknown detector 'yolo:/models/yolo'; expected one of: shapes, owlv2:PATH"),
    ("owlv2", "needs a local model directory: owlv2:PATH"),
    ("shapes:/some/path", "takes no path"),
])
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        check_detector_spec(spec)


def test_specs_without_models():
    check_detector_spec("shapes")
    assert isinstance(load_detector("shapes"), ShapesDetector)
    assert isinstance(load_color_classifier("detected"), DetectedColor)
    assert isinstance(load_color_classifier("shapes"), ShapesColorClassifier)


def test_clip_score_reward_is_the_floored_cosine_of_clip_embeddings(model_dirs):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    from mmgen.rewards import build_reward

    path = model_dirs["clip"]
    reward = build_reward("clip_score", {"path": str(path), "device": "cpu"})
    images = [scene(), scene(32, 32), None]
    prompts = ["a red circle", "a blue square", "a red circle"]
    scores = reward(prompts, images, [{}] * 3)
    model, processor = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        out = model(**processor(text=prompts[:2], images=images[:2], return_tensors="pt", padding=True))
    expected = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).clamp_min(0)
    torch.testing.assert_close(torch.tensor(scores[:2]), expected, atol=1e-5, rtol=0)
    assert scores[2] == 0.0  # not a valid image span


def test_geneval_reward_takes_an_open_vocabulary_detector_and_clip_colours(model_dirs):
    from mmgen.rewards import build_reward

    reward = build_reward("geneval", {"detector": f"owlv2:{model_dirs['owlv2']}",
                                      "color_classifier": f"clip:{model_dirs['clip']}"})
    metadata = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}]}
    scores = reward(["a photo of a red cat"], [scene()], [metadata])
    assert len(scores) == 1 and scores[0] in (0.0, 0.5, 1.0)
