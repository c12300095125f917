"""Tokenizer losses: LPIPS loads from local safetensors only, the adversarial path trains a discriminator."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mmgen.config import ConfigError, load_config
from mmgen.errors import UserError
from mmgen.tokenizers.losses import LPIPS, PatchDiscriminator, gradient_loss, reconstruction_loss
from mmgen.train.tokenizer import TokenizerRecipe, train_tokenizer


def lpips_weights(path, seed=0):
    """An LPIPS-VGG file in the released key layout (torchvision vgg16 features + lin heads), random values."""
    torch.manual_seed(seed)
    model = LPIPS()
    state = {k: torch.randn_like(v) * 0.05 for k, v in model.features.state_dict().items()}
    state = {f"features.{k}": v for k, v in state.items()}
    state.update({f"lin{i}.model.1.weight": torch.rand_like(lin.weight) for i, lin in enumerate(model.lins)})
    save_file(state, str(path))
    return path


def test_lpips_loads_released_layout_and_measures_distance(tmp_path):
    lpips = LPIPS.from_file(lpips_weights(tmp_path / "lpips.safetensors"))
    a = torch.rand(2, 3, 32, 32) * 2 - 1
    assert lpips(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert lpips(a, a.flip(-1)).item() > 0
    b = a.clone().requires_grad_(True)
    lpips(b, a.flip(-1)).backward()
    assert b.grad.abs().sum() > 0  # usable as a loss
    assert not any(p.requires_grad for p in lpips.parameters())  # frozen


def test_lpips_refuses_pickle_and_wrong_files(tmp_path):
    (tmp_path / "lpips.pth").write_bytes(b"pickle")
    with pytest.raises(UserError, match="safetensors"):
        LPIPS.from_file(tmp_path / "lpips.pth")
    save_file({"other.weight": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(UserError, match="not LPIPS-VGG weights"):
        LPIPS.from_file(tmp_path / "bad.safetensors")


def test_reconstruction_losses():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert reconstruction_loss(a, b, "l1").item() == pytest.approx(0.5)
    assert reconstruction_loss(a, b, "l2").item() == pytest.approx(0.25)
    assert reconstruction_loss(a, b, "l1+l2").item() == pytest.approx(0.75)
    with pytest.raises(ValueError):
        reconstruction_loss(a, b, "l3")


def test_gradient_loss_sees_edges_not_flat_offsets():
    square = torch.zeros(1, 3, 8, 8)
    square[..., 2:6, 2:6] = 1.0
    assert gradient_loss(square + 0.3, square).item() == pytest.approx(0.0, abs=1e-7)  # flat shift: no edge error
    blurred = torch.nn.functional.avg_pool2d(square, 3, stride=1, padding=1)
    assert gradient_loss(blurred, square).item() > 0.05  # softened edges are penalised


def test_patch_discriminator_gives_a_logit_map():
    assert PatchDiscriminator(width=16)(torch.zeros(2, 3, 32, 32)).shape[:2] == (2, 1)


TINY = ["model.image_size=16", "model.patch_size=1", "model.block_out_channels=[16,16]", "model.norm_num_groups=8",
        "model.latent_channels=8", "model.mid_block_add_attention=false", "model.quantizer.codebook_size=32",
        "data.num_images=32", "data.eval_images=4", "training.batch_size=8", "training.log_every=1",
        "training.mixed_precision=fp32", "training.max_steps=3", "training.warmup_steps=1"]


def test_perceptual_and_adversarial_terms_are_trained(tmp_path):
    weights = lpips_weights(tmp_path / "lpips.safetensors")
    recipe = load_config(TokenizerRecipe, None, [*TINY, f"output_dir={tmp_path / 'run'}", "loss.perceptual_weight=0.5",
                                                 "loss.gradient_weight=1.0",
                                                 f"loss.lpips_path={weights}", "loss.adversarial_weight=0.1",
                                                 "loss.adversarial_start=1"])
    train_tokenizer(recipe, progress=False)
    logs = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert all("lpips" in entry and "gradient" in entry for entry in logs)
    assert "g_adv" not in logs[0] and all("g_adv" in e and "d_adv" in e for e in logs[1:])  # starts at step 1


def test_perceptual_weight_needs_weights_file(tmp_path):
    with pytest.raises(ConfigError, match="lpips_path"):
        load_config(TokenizerRecipe, None, ["loss.perceptual_weight=1.0"])
    with pytest.raises(ConfigError, match="loss.lpips_path"):
        load_config(TokenizerRecipe, None, ["loss.perceptual_weight=1.0", f"loss.lpips_path={tmp_path}/none"])
