"""GridTokenizer with every quantizer kind, the quantizer wrapper, persistence and the loader's refusals."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from mmgen.tokenizers import (
    GridTokenizer,
    GridTokenizerConfig,
    Quantizer,
    QuantizerConfig,
    load_visual_tokenizer,
)

QUANTIZERS = {
    "vq": QuantizerConfig(kind="vq", codebook_size=32),
    "fsq": QuantizerConfig(kind="fsq", levels=[5, 4, 3]),
    "lfq": QuantizerConfig(kind="lfq", codebook_size=64),
    "rvq": QuantizerConfig(kind="rvq", codebook_size=16, num_quantizers=2),
}


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core machine OpenMP waits can cost 100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(kind: str) -> GridTokenizerConfig:
    # 16x16 pixels -> pixel-unshuffle 2 -> one downsampling block -> 4x4 grid.
    return GridTokenizerConfig(
        image_size=16,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        latent_channels=8,
        quantizer=QUANTIZERS[kind],
    )


def shapes_batch(batch: int = 8, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Coloured rectangles on grey: structured enough that a few optimizer steps measurably help."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(batch, 3, size, size)
    for image in images:
        top, left = torch.randint(0, size // 2, (2,), generator=generator).tolist()
        height, width = torch.randint(3, size // 2, (2,), generator=generator).tolist()
        image[:, top : top + height, left : left + width] = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    return images


def trained_tokenizer(kind: str, steps: int = 1) -> GridTokenizer:
    """A tokenizer after `steps` training forwards, so k-means codebooks are initialised like in real use."""
    torch.manual_seed(0)
    model = GridTokenizer(tiny_config(kind)).train()
    for _ in range(steps):
        model(shapes_batch())
    return model.eval()


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_shapes_and_code_ranges(kind):
    model = trained_tokenizer(kind)
    per_position = 2 if kind == "rvq" else 1
    assert model.grid_shape == ((4, 4, 2) if kind == "rvq" else (4, 4))
    assert model.num_tokens == 16 * per_position
    assert model.codebook_size == QUANTIZERS[kind].codes_per_level * per_position

    pixels = shapes_batch(batch=3)
    codes = model.encode(pixels)
    assert codes.shape == (3, model.num_tokens) and codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < model.codebook_size

    images = model.decode(codes)
    assert images.shape == pixels.shape
    assert images.min() >= -1 and images.max() <= 1
    assert model.code_embeddings().shape[0] == model.codebook_size


def test_rvq_codes_are_position_major_with_one_id_block_per_depth():
    model = trained_tokenizer("rvq")
    codes = model.encode(shapes_batch(batch=2)).reshape(2, 16, 2)
    assert (codes[..., 0] < 16).all() and (codes[..., 1] >= 16).all()

    wrong_depth = codes.clone()
    wrong_depth[0, 0, 1] = 3  # a depth-0 id in a depth-1 slot
    with pytest.raises(ValueError, match="depth"):
        model.decode(wrong_depth.reshape(2, -1))


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_encode_decode_deterministic_and_side_effect_free(kind):
    model = trained_tokenizer(kind).train()  # encode must behave the same even when called mid-training
    state_before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pixels = shapes_batch()

    codes = model.encode(pixels)
    assert torch.equal(codes, model.encode(pixels))
    assert torch.equal(model.decode(codes), model.decode(codes))

    assert model.training, "encode/decode must restore the caller's train/eval mode"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, state_before[name]), f"encode/decode changed {name}"


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_decode_of_encode_equals_forward_reconstruction(kind):
    model = trained_tokenizer(kind)
    pixels = shapes_batch()
    with torch.no_grad():
        reconstruction, _, forward_codes = model(pixels)
    codes = model.encode(pixels)
    assert torch.equal(codes, forward_codes)
    torch.testing.assert_close(model.decode(codes), reconstruction.clamp(-1, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_save_and_load_round_trip(kind, tmp_path):
    model = trained_tokenizer(kind, steps=2)
    pixels = shapes_batch()
    path = tmp_path / "tokenizer"
    model.save_pretrained(path)

    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((path / "config.json").read_text())["tokenizer_type"] == "grid"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer"], "no staging directory may be left behind"

    for loaded in (load_visual_tokenizer(path), GridTokenizer.from_pretrained(path)):
        assert isinstance(loaded, GridTokenizer) and not loaded.training
        codes = loaded.encode(pixels)
        assert torch.equal(codes, model.encode(pixels))
        assert torch.equal(loaded.decode(codes), model.decode(codes))
        assert torch.equal(loaded.code_embeddings(), model.code_embeddings())

    model.save_pretrained(path)  # overwriting a previous checkpoint is allowed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer"]


@pytest.mark.parametrize("kind", sorted(QUANTIZERS))
def test_few_training_steps_reduce_loss_and_change_parameters(kind):
    torch.manual_seed(0)
    model = GridTokenizer(tiny_config(kind)).train()
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    pixels = shapes_batch()

    losses = []
    for _ in range(25):
        reconstruction, aux_loss, _ = model(pixels)
        reconstruction_loss = F.mse_loss(reconstruction, pixels)
        losses.append(reconstruction_loss.item())
        optimizer.zero_grad()
        (reconstruction_loss + aux_loss).backward()
        optimizer.step()

    assert min(losses[-5:]) < 0.7 * losses[0], losses
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, initial[name])]
    assert any(name.startswith("encoder.") for name in changed) and any(name.startswith("decoder.") for name in changed)


def test_quantizer_ignores_bf16_autocast():
    torch.manual_seed(0)
    quantizer = Quantizer(QuantizerConfig(kind="vq", codebook_size=64, kmeans_init=False), dim=8).eval()
    latents = torch.randn(2, 8, 4, 4)
    z_q, codes, _ = quantizer(latents)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q_autocast, codes_autocast, _ = quantizer(latents)
    assert torch.equal(codes, codes_autocast)
    assert z_q_autocast.dtype == torch.float32
    torch.testing.assert_close(quantizer.codes_to_latents(codes), z_q)


def test_encode_and_decode_validate_their_inputs():
    model = trained_tokenizer("vq")
    with pytest.raises(ValueError, match=r"expected pixels of shape \[B, 3, 16, 16\].*got \[2, 3, 32, 32\]"):
        model.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"got \[2, 1, 16, 16\]"):
        model.encode(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="floating-point"):
        model.encode(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        model.decode(torch.full((1, 16), 32))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 32\)"):
        model.decode(torch.full((1, 16), -1))
    with pytest.raises(ValueError, match=r"expected codes of shape \[B, 16\], got \[1, 15\]"):
        model.decode(torch.zeros(1, 15, dtype=torch.long))
    with pytest.raises(ValueError, match="integer codes"):
        model.decode(torch.zeros(1, 16))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "pq"}, "quantizer kind must be one of"),
        ({"kind": "lfq", "codebook_size": 500}, "power of two"),
        ({"kind": "fsq"}, "needs levels"),
        ({"kind": "fsq", "levels": [8, 2]}, "levels must be integers >= 3"),
        ({"kind": "fsq", "levels": [8, 5], "codebook_size": 512}, "prod\\(levels\\) = 40"),
        ({"kind": "vq", "levels": [8, 5]}, "levels only apply to kind='fsq'"),
        ({"kind": "lfq", "codebook_dim": 8}, "codebook_dim only applies to vq/rvq"),
        ({"kind": "vq", "decay": 1.0}, "decay must be in"),
        ({"kind": "vq", "codebook_size": 1}, "codebook_size must be an integer >= 2"),
        ({"kind": "rvq", "num_quantizers": 0}, "num_quantizers must be >= 1"),
    ],
)
def test_quantizer_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantizerConfig(**kwargs)


def test_grid_config_rejects_bad_values():
    with pytest.raises(ValueError, match="divisible by the downsampling factor 8"):
        GridTokenizerConfig(image_size=60)
    with pytest.raises(ValueError, match="divisible by norm_num_groups=32"):
        GridTokenizerConfig(block_out_channels=(16, 32, 64))
    with pytest.raises(ValueError, match="unknown GridTokenizerConfig keys: colour"):
        GridTokenizerConfig.from_dict({"colour": 1})


# A 32x32 -> 8x8 FSQ grid small enough to build in milliseconds, for tests of the model's layout options.
SMALL_FSQ_GRID = dict(image_size=32, block_out_channels=(8, 16), norm_num_groups=4, latent_channels=8,
                      quantizer=QUANTIZERS["fsq"], mid_block_add_attention=False)


def test_local_encoder_codes_do_not_move_with_far_away_content(tmp_path):
    """GroupNorm pools over the whole image, so a change in one corner moves every latent; with per-position norms
    and no mid block, cells outside the change's receptive field keep exactly the same latents and codes."""
    image = shapes_batch(batch=1, size=32)
    changed = image.clone()
    changed[:, :, :4, :4] = 0.9  # a new object in the top-left corner
    far = (slice(None), slice(None), slice(6, 8), slice(6, 8))  # the bottom-right 2x2 cells of the 8x8 grid
    torch.manual_seed(0)
    pooled = GridTokenizer(GridTokenizerConfig(**SMALL_FSQ_GRID)).eval()
    with torch.no_grad():
        assert not torch.equal(pooled._latents(image)[far], pooled._latents(changed)[far])
    torch.manual_seed(0)
    local = GridTokenizer(GridTokenizerConfig(**SMALL_FSQ_GRID, encoder_norm="local", encoder_mid_block=False)).eval()
    with torch.no_grad():
        assert torch.equal(local._latents(image)[far], local._latents(changed)[far])
        assert not torch.equal(local._latents(image), local._latents(changed))
    assert torch.equal(local.encode(image).view(8, 8)[6:, 6:], local.encode(changed).view(8, 8)[6:, 6:])
    local.save_pretrained(tmp_path / "local")
    loaded = load_visual_tokenizer(tmp_path / "local")
    assert loaded.config.encoder_norm == "local" and not loaded.config.encoder_mid_block
    assert torch.equal(loaded.encode(changed), local.encode(changed))
    with pytest.raises(ValueError, match="encoder_norm must be 'group' or 'local'"):
        GridTokenizerConfig(encoder_norm="batch")


def test_default_config_maps_64px_to_an_8x8_grid():
    config = GridTokenizerConfig()
    assert (config.image_size, config.grid_size, config.quantizer.codes_per_level) == (64, 8, 512)


def test_loader_errors_name_the_problem(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError, match="directory not found: .*missing"):
        load_visual_tokenizer(missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json in .*empty"):
        load_visual_tokenizer(empty)

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"tokenizer_type": "magic"}))
    with pytest.raises(ValueError, match="unknown tokenizer_type 'magic'.*known types: diffusers_vq, grid"):
        load_visual_tokenizer(unknown)

    untyped = tmp_path / "untyped"
    untyped.mkdir()
    (untyped / "config.json").write_text(json.dumps({"image_size": 64}))
    with pytest.raises(ValueError, match="no 'tokenizer_type' key"):
        load_visual_tokenizer(untyped)


def test_pickle_checkpoints_are_refused(tmp_path):
    path = tmp_path / "pickled"
    trained_tokenizer("fsq").save_pretrained(path)
    (path / "model.safetensors").unlink()
    (path / "pytorch_model.bin").write_bytes(b"not even opened")
    with pytest.raises(ValueError, match="refusing to load pickle checkpoint pytorch_model.bin"):
        load_visual_tokenizer(path)
    with pytest.raises(ValueError, match="refusing to load pickle checkpoint"):
        GridTokenizer.from_pretrained(path)


def test_save_refuses_to_replace_a_foreign_directory(tmp_path):
    foreign = tmp_path / "data"
    foreign.mkdir()
    (foreign / "images.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        trained_tokenizer("fsq").save_pretrained(foreign)
    assert (foreign / "images.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_decoder_layers_per_block_sets_the_resnets_of_each_up_block(tmp_path):
    default = GridTokenizer(GridTokenizerConfig(**SMALL_FSQ_GRID))
    slim = GridTokenizer(GridTokenizerConfig(**SMALL_FSQ_GRID, decoder_layers_per_block=1))
    assert [len(block.resnets) for block in default.decoder.up_blocks] == [2, 2]  # diffusers: layers_per_block + 1
    assert [len(block.resnets) for block in slim.decoder.up_blocks] == [1, 1]
    assert [len(block.resnets) for block in slim.encoder.down_blocks] == [1, 1]  # the encoder is untouched
    image = shapes_batch(batch=2, size=32)
    assert slim.decode(slim.encode(image)).shape == image.shape
    slim.save_pretrained(tmp_path / "slim")
    loaded = load_visual_tokenizer(tmp_path / "slim")
    assert loaded.config.decoder_layers_per_block == 1
    assert torch.equal(loaded.decode(loaded.encode(image)), slim.eval().decode(slim.encode(image)))
    with pytest.raises(ValueError, match="decoder_layers_per_block must be >= 1"):
        GridTokenizerConfig(decoder_layers_per_block=0)
