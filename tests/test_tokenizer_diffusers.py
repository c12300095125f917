"""A diffusers VQModel directory loaded as a visual tokenizer must agree with calling the VQModel itself."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import VQModel

from mmgen.tokenizers import DiffusersVQTokenizer, load_visual_tokenizer


def tiny_vq_model(lookup_from_codebook: bool) -> VQModel:
    torch.manual_seed(0)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        sample_size=16,
        num_vq_embeddings=16,
        norm_num_groups=4,
        lookup_from_codebook=lookup_from_codebook,
    ).eval()


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


@pytest.mark.parametrize("lookup_from_codebook", [True, False])
def test_loaded_directory_matches_the_vq_model(tmp_path, lookup_from_codebook):
    vq_model = tiny_vq_model(lookup_from_codebook)
    vq_model.save_pretrained(tmp_path, safe_serialization=True)

    tokenizer = load_visual_tokenizer(tmp_path)
    assert isinstance(tokenizer, DiffusersVQTokenizer)
    assert (tokenizer.image_size, tokenizer.grid_shape, tokenizer.num_tokens) == (16, (8, 8), 64)
    assert tokenizer.codebook_size == 16

    x = pixels()
    codes = tokenizer.encode(x)
    with torch.no_grad():
        latents = vq_model.encode(x).latents
        expected_codes = vq_model.quantize(latents)[2][2].reshape(2, 64)
        # VQModel's own forward quantizes and decodes: the same image our decode(encode(x)) must give.
        expected_images = vq_model(x).sample.clamp(-1, 1)
    assert torch.equal(codes, expected_codes)
    torch.testing.assert_close(tokenizer.decode(codes), expected_images, atol=1e-5, rtol=0)
    torch.testing.assert_close(tokenizer.code_embeddings(), vq_model.quantize.embedding.weight)

    if lookup_from_codebook:
        with torch.no_grad():
            direct = vq_model.decode(codes.reshape(-1), force_not_quantize=True, shape=(2, 8, 8, 4)).sample
        torch.testing.assert_close(tokenizer.decode(codes), direct.clamp(-1, 1))


def test_save_pretrained_keeps_a_plain_diffusers_directory(tmp_path):
    tokenizer = DiffusersVQTokenizer(tiny_vq_model(lookup_from_codebook=True))
    tokenizer.save_pretrained(tmp_path / "vq")

    assert VQModel.from_pretrained(tmp_path / "vq", use_safetensors=True) is not None
    reloaded = load_visual_tokenizer(tmp_path / "vq")
    codes = tokenizer.encode(pixels())
    assert torch.equal(reloaded.encode(pixels()), codes)
    assert torch.equal(reloaded.decode(codes), tokenizer.decode(codes))


def test_pickle_only_vq_model_is_refused(tmp_path):
    tiny_vq_model(lookup_from_codebook=True).save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "diffusion_pytorch_model.safetensors").rename(tmp_path / "diffusion_pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load pickle checkpoint diffusion_pytorch_model.bin"):
        load_visual_tokenizer(tmp_path)


def test_config_rebuilds_the_same_geometry():
    tokenizer = DiffusersVQTokenizer(tiny_vq_model(lookup_from_codebook=True))
    config = json.loads(json.dumps(tokenizer.get_config()))
    assert config["tokenizer_type"] == "diffusers_vq"
    rebuilt = DiffusersVQTokenizer.from_config(config)
    assert (rebuilt.grid_shape, rebuilt.codebook_size, rebuilt.image_size) == ((8, 8), 16, 16)


def test_validation_uses_the_vq_model_geometry():
    tokenizer = DiffusersVQTokenizer(tiny_vq_model(lookup_from_codebook=True))
    with pytest.raises(ValueError, match=r"expected pixels of shape \[B, 3, 16, 16\]"):
        tokenizer.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 16\)"):
        tokenizer.decode(torch.full((1, 64), 16))
