"""The semantic tokenizer over a frozen transformers vision model (SEED's setting), with tiny models saved here."""

import json

import pytest
import torch
from tiny_semantic import TINY_MODEL, TINY_TRAINING, pixels
from tiny_vision import save_tiny_clip

from mmgen.config import load_config
from mmgen.errors import UserError
from mmgen.tokenizers import GridTokenizer, SemanticTokenizer, load_visual_tokenizer
from mmgen.tokenizers.vision_features import VisionFeatureEncoder
from mmgen.train.decoder import DecoderRecipe, train_decoder
from mmgen.train.semantic_tokenizer import SemanticTokenizerRecipe, train_semantic_tokenizer


def save_dinov2(path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             mlp_ratio=2)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A full CLIP checkpoint (both towers) saved with its CLIPProcessor: transformers 5 keeps the image
    statistics inside processor_config.json."""
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


def test_patch_features_of_a_clip_checkpoint_drop_the_class_token_and_use_its_normalisation(clip_dir):
    from transformers import CLIPImageProcessor

    encoder = VisionFeatureEncoder.from_pretrained(clip_dir)
    assert (encoder.image_size, encoder.num_features, encoder.channels) == (32, 16, 16)
    assert encoder.vision is encoder.model.vision_model  # the image tower of the dual encoder
    processor = CLIPImageProcessor.from_pretrained(clip_dir)
    mean, std = torch.tensor(processor.image_mean).view(1, 3, 1, 1), torch.tensor(processor.image_std).view(1, 3, 1, 1)
    assert processor.image_mean != [0.5, 0.5, 0.5]  # CLIP's own statistics, read from the directory
    x = pixels()  # 16x16 images: resized to the model's 32x32 input
    features = encoder(x)
    assert features.shape == (4, 16, 16)
    resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    with torch.no_grad():
        hidden = encoder.model.vision_model(pixel_values=((resized + 1) / 2 - mean) / std).last_hidden_state
    assert hidden.shape[1] == 17  # class token + 16 patches
    assert torch.allclose(features, hidden[:, 1:], atol=1e-5)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_dinov2_without_preprocessor_config_reads_half_mean_and_std(tmp_path):
    encoder = VisionFeatureEncoder.from_pretrained(save_dinov2(tmp_path / "dino"))
    assert encoder.mean.flatten().tolist() == [0.5] * 3 and encoder.num_features == 16
    x = pixels()
    with torch.no_grad():
        hidden = encoder.model(pixel_values=x).last_hidden_state  # (x + 1) / 2 normalised by 0.5 / 0.5 is x
    assert torch.allclose(encoder(x), hidden[:, 1:], atol=1e-5)


def test_feature_encoder_loading_refuses_pickles_and_non_vision_models(tmp_path, tiny_lm_dir):
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ValueError, match="refusing to load pickle"):
        VisionFeatureEncoder.from_pretrained(tmp_path / "pickled")
    with pytest.raises(ValueError, match="is not a vision transformer"):
        VisionFeatureEncoder.from_pretrained(tiny_lm_dir)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        VisionFeatureEncoder.from_pretrained(tmp_path)


def test_semantic_tokenizer_over_a_vision_model_saves_it_beside_and_decodes_only_through_diffusion(
        clip_dir, renderer_dir, tmp_path):
    torch.manual_seed(0)
    tokenizer = SemanticTokenizer(TINY_MODEL, renderer=GridTokenizer.from_pretrained(renderer_dir),
                                  vision_encoder=VisionFeatureEncoder.from_pretrained(clip_dir))
    assert tokenizer.config.vision_features == [16, 16] and TINY_MODEL.vision_features is None
    x = pixels()
    codes = tokenizer.encode(x)
    assert codes.shape == (4, 8)
    with pytest.raises(ValueError, match="no diffusion decoder is attached"):
        tokenizer.decode(codes)
    tokenizer.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "feature_encoder" / "model.safetensors").is_file()
    from safetensors.torch import load_file
    assert not any(k.startswith("vision_encoder.") for k in load_file(tmp_path / "tok" / "model.safetensors"))
    loaded = load_visual_tokenizer(tmp_path / "tok")
    assert torch.equal(loaded.encode(x), codes)
    codes_again, latents = loaded.encode_with_latents(x)
    assert torch.equal(codes_again, codes) and torch.allclose(latents, loaded.renderer.image_latents(x))


def test_stage_trains_over_a_vision_model_and_a_code_decoder_renders_its_codes(clip_dir, renderer_dir,
                                                                               tmp_path):
    model = [f"model.{k}={v}" for k, v in (("num_queries", 8), ("width", 32), ("num_layers", 2),
                                           ("decoder_layers", 1), ("num_heads", 2))]
    common = [*model, "model.quantizer.kind=fsq", "model.quantizer.levels=[4,4,4]", f"renderer={renderer_dir}",
              f"feature_encoder={clip_dir}", "training.learning_rate=0.003", *TINY_TRAINING]
    with pytest.raises(ValueError, match="loss.pixel_weight=0"):
        load_config(SemanticTokenizerRecipe, None, [*common, "loss.pixel_weight=1.0"])
    with pytest.raises(ValueError, match="vision_features is read from"):
        load_config(SemanticTokenizerRecipe, None, [*common, "loss.pixel_weight=0", "model.vision_features=[16,16]"])
    recipe = load_config(SemanticTokenizerRecipe, None, [*common, "loss.pixel_weight=0", "training.max_steps=20",
                                                         f"output_dir={tmp_path / 'sem'}"])
    trained = train_semantic_tokenizer(recipe, progress=False)
    log = [json.loads(line) for line in (tmp_path / "sem" / "train_log.jsonl").read_text().splitlines()]
    assert sum(r["feature"] for r in log[-5:]) < sum(r["feature"] for r in log[:5])

    decoder_recipe = load_config(DecoderRecipe, None, [
        f"tokenizer={trained}", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
        "model.num_inference_steps=3", "training.max_steps=4", *TINY_TRAINING, f"output_dir={tmp_path / 'dec'}"])
    tokenizer = load_visual_tokenizer(train_decoder(decoder_recipe, progress=False))
    assert tokenizer.decoding == "diffusion" and tokenizer.vision_encoder is not None
    # a vision model's features are not on the renderer's grid: no SEED feature map for the decoder
    with pytest.raises(UserError, match="over a vision model: use model.spatial_condition: none"):
        train_decoder(load_config(DecoderRecipe, None, [
            f"tokenizer={trained}", "model.spatial_condition=features", *TINY_TRAINING,
            f"output_dir={tmp_path / 'dec-map'}"]), progress=False)
    images = tokenizer.decode(tokenizer.encode(pixels()))
    assert images.shape == (4, 3, 16, 16) and torch.equal(images, tokenizer.decode(tokenizer.encode(pixels())))


def test_shipped_vision_model_recipe_validates_in_a_dry_run(clip_dir, renderer_dir, tmp_path, capsys):
    from mmgen.recipes import recipe_path

    from mmgen.cli import main

    recipe = str(recipe_path("tokenizer/semantic-siglip.yaml"))
    assert main(["train", recipe, f"renderer={renderer_dir}", f"feature_encoder={clip_dir}",
                 f"data.source={tmp_path}", f"output_dir={tmp_path / 'out'}", "--dry-run"]) == 0
    assert "recipe OK" in capsys.readouterr().out and not (tmp_path / "out").exists()
    assert main(["train", recipe, "--dry-run"]) == 2  # the weights are not on this machine: named paths
    assert "points to a missing path" in capsys.readouterr().err
