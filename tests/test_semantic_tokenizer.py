"""The SEED-style semantic tokenizer and the diffusion decoder head, on tiny configs built in-process."""

import json

import numpy as np
import pytest
import torch
from tiny_semantic import TINY_MODEL, TINY_TRAINING, pixels

from mmgen.checkpoint import init_unified
from mmgen.config import load_config
from mmgen.decoders import DiffusionDecoder, DiffusionDecoderConfig
from mmgen.errors import UserError
from mmgen.sampling import ImageGenerator
from mmgen.tokenizers import (
    GridTokenizer,
    GridTokenizerConfig,
    SemanticTokenizer,
    load_visual_tokenizer,
)
from mmgen.train.decoder import DecoderRecipe, train_decoder
from mmgen.train.semantic_tokenizer import SemanticTokenizerRecipe, load_renderer, train_semantic_tokenizer


@pytest.fixture(scope="module")
def semantic(renderer_dir):
    torch.manual_seed(0)
    tokenizer = SemanticTokenizer(TINY_MODEL, renderer=GridTokenizer.from_pretrained(renderer_dir))
    assert TINY_MODEL.renderer == GridTokenizerConfig()  # the caller's config is not rewritten
    return tokenizer


def tiny_decoder(cond_dim=3, tokens=8, seed=0, spatial_channels=0):
    torch.manual_seed(seed)
    spatial = dict(spatial_condition="features", spatial_channels=spatial_channels) if spatial_channels else {}
    return DiffusionDecoder(DiffusionDecoderConfig(latent_channels=3, latent_size=4, cond_dim=cond_dim,
                                                   num_cond_tokens=tokens, hidden_size=32, num_layers=2,
                                                   num_heads=2, num_inference_steps=3, **spatial))


# ---- diffusion decoder ---------------------------------------------------------------------------------------------


def test_decoder_learns_to_map_conditions_to_latents():
    decoder = tiny_decoder()
    generator = torch.Generator().manual_seed(0)
    cond = torch.randn(16, 8, 3, generator=generator)
    latents = cond.mean(1)[:, :, None, None].expand(16, 3, 4, 4).contiguous()  # a function of the condition
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss = decoder.loss(latents, cond, generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_decoder_sampling_is_seeded_and_survives_save_load(tmp_path):
    decoder = tiny_decoder()
    cond = torch.randn(2, 8, 3)
    first = decoder.sample(cond, generator=torch.Generator().manual_seed(1))
    again = decoder.sample(cond, generator=torch.Generator().manual_seed(1))
    other = decoder.sample(cond, generator=torch.Generator().manual_seed(2))
    assert first.shape == (2, 3, 4, 4) and torch.equal(first, again) and not torch.allclose(first, other)
    decoder.save_pretrained(tmp_path / "decoder")
    assert (tmp_path / "decoder" / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = DiffusionDecoder.from_pretrained(tmp_path / "decoder")
    assert torch.allclose(loaded.sample(cond, generator=torch.Generator().manual_seed(1)), first, atol=1e-6)
    # guidance changes the result; scale 1 runs no null branch
    assert not torch.allclose(decoder.sample(cond, guidance_scale=4.0, generator=torch.Generator().manual_seed(1)),
                              decoder.sample(cond, guidance_scale=1.0, generator=torch.Generator().manual_seed(1)))


def test_decoder_with_a_spatial_map_learns_from_it_and_checks_it(tmp_path):
    decoder = tiny_decoder(spatial_channels=2)
    generator = torch.Generator().manual_seed(0)
    cond = torch.zeros(16, 8, 3)  # the tokens say nothing: only the map tells the latents apart
    spatial = torch.randn(16, 2, 4, 4, generator=generator)
    latents = torch.cat([spatial, spatial[:, :1]], 1)  # the latents are the map (3 channels from 2)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    losses = []
    for step in range(60):
        loss = decoder.loss(latents, cond, generator=torch.Generator().manual_seed(step), spatial=spatial)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10

    first = decoder.sample(cond[:2], spatial=spatial[:2], generator=torch.Generator().manual_seed(1))
    other_map = decoder.sample(cond[:2], spatial=spatial[2:4], generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(first, other_map)
    decoder.save_pretrained(tmp_path / "decoder")
    loaded = DiffusionDecoder.from_pretrained(tmp_path / "decoder")
    assert loaded.config.spatial_channels == 2 and loaded.config.spatial_condition == "features"
    assert torch.allclose(loaded.sample(cond[:2], spatial=spatial[:2], generator=torch.Generator().manual_seed(1)),
                          first, atol=1e-6)
    with pytest.raises(ValueError, match=r"also takes a 'features' map of shape \[2, 2, 4, 4\], got none"):
        decoder.sample(cond[:2])
    with pytest.raises(ValueError, match="takes no spatial map"):
        tiny_decoder().sample(cond[:2], spatial=spatial[:2])
    with pytest.raises(ValueError, match="needs spatial_channels > 0"):
        DiffusionDecoderConfig(spatial_condition="features")


def test_decoder_refuses_pickle_weights_and_bad_shapes(tmp_path):
    decoder = tiny_decoder()
    with pytest.raises(ValueError, match=r"conditioning of shape \[B, 8, 3\]"):
        decoder.sample(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match=r"latents of shape \[B, 3, 4, 4\]"):
        decoder.loss(torch.randn(2, 3, 8, 8), torch.randn(2, 8, 3))
    decoder.save_pretrained(tmp_path / "decoder")
    weights = tmp_path / "decoder" / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(decoder.transformer.state_dict(), weights.with_suffix(".bin"))
    weights.unlink()
    with pytest.raises(OSError):
        DiffusionDecoder.from_pretrained(tmp_path / "decoder")
    with pytest.raises(FileNotFoundError, match="not a diffusion decoder directory"):
        DiffusionDecoder.from_pretrained(tmp_path)


# ---- semantic tokenizer ----------------------------------------------------------------------------------------------


def test_semantic_tokenizer_makes_a_short_1d_code_sequence(semantic):
    codes = semantic.encode(pixels())
    assert codes.shape == (4, 8) and semantic.grid_shape == (8,) and semantic.codebook_size == 64
    assert codes.min() >= 0 and codes.max() < 64
    assert semantic.decode(codes).shape == (4, 3, 16, 16)
    assert semantic.code_embeddings().shape == (64, 3)


def test_codes_are_causal_code_k_depends_only_on_earlier_queries(semantic):
    features = semantic.features(pixels())
    with torch.no_grad():
        before = semantic.quantize(features)[0]
        saved = semantic.queries.data.clone()
        semantic.queries.data[5:] += torch.randn_like(semantic.queries.data[5:])
        after = semantic.quantize(features)[0]
        semantic.queries.data.copy_(saved)
    assert torch.equal(before[:, :5], after[:, :5])
    assert not torch.equal(before[:, 5:], after[:, 5:])


def test_semantic_tokenizer_round_trips_and_recipe_checks_its_renderer(semantic, tmp_path):
    x = pixels()
    semantic.save_pretrained(tmp_path / "tok")
    loaded = load_visual_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SemanticTokenizer)
    assert torch.equal(loaded.encode(x), semantic.encode(x))
    assert torch.equal(loaded.decode(semantic.encode(x)), semantic.decode(semantic.encode(x)))
    with pytest.raises(ValueError, match="renderer is read from"):
        load_config(SemanticTokenizerRecipe, None, ["model.renderer.latent_channels=4",
                                                    f"renderer={tmp_path / 'tok'}"])
    with pytest.raises(UserError, match="needs a grid tokenizer"):
        load_renderer(str(tmp_path / "tok"))


def test_semantic_stage_trains_resumes_and_decoder_stage_attaches_a_diffusion_decoder(renderer_dir, tmp_path):
    def semantic_recipe(out, steps):
        model = [f"model.{k}={v}" for k, v in (("num_queries", 8), ("width", 32), ("num_layers", 2),
                                               ("decoder_layers", 1), ("num_heads", 2))]
        return load_config(SemanticTokenizerRecipe, None, [
            *model, "model.quantizer.kind=fsq", "model.quantizer.levels=[4,4,4]", f"renderer={renderer_dir}",
            f"training.max_steps={steps}", "training.checkpoint_every=10", "training.learning_rate=0.003",
            *TINY_TRAINING, f"output_dir={out}"])

    straight = train_semantic_tokenizer(semantic_recipe(tmp_path / "a", 20), progress=False)
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert sum(r["feature"] for r in log[-5:]) < sum(r["feature"] for r in log[:5])
    # a run stopped at step 10 and re-run with the same command ends with the same weights
    train_semantic_tokenizer(semantic_recipe(tmp_path / "b", 10), progress=False)
    (tmp_path / "b" / "tokenizer").rename(tmp_path / "b" / "partial")
    resumed = train_semantic_tokenizer(semantic_recipe(tmp_path / "b", 20), progress=False)
    for (name, a), b in zip(load_visual_tokenizer(straight).state_dict().items(),
                            load_visual_tokenizer(resumed).state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name

    recipe = load_config(DecoderRecipe, None, [
        f"tokenizer={straight}", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
        "model.num_inference_steps=3", "training.max_steps=6", "training.learning_rate=0.002", *TINY_TRAINING,
        f"output_dir={tmp_path / 'decoder'}"])
    with_decoder = train_decoder(recipe, progress=False)
    assert with_decoder == tmp_path / "decoder" / "tokenizer"
    tokenizer = load_visual_tokenizer(with_decoder)
    assert tokenizer.decoding == "diffusion"
    codes = tokenizer.encode(pixels())
    first, second = tokenizer.decode(codes), tokenizer.decode(codes)
    assert torch.equal(first, second)  # the decoder's noise comes from a fixed seed
    assert not torch.allclose(first, load_visual_tokenizer(straight).decode(codes))  # not the feature path

    # SEED's decoder: it also reads the tokenizer's reconstruction of its features from the codes
    seed_style = load_config(DecoderRecipe, None, [
        f"tokenizer={straight}", "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2",
        "model.num_inference_steps=3", "model.spatial_condition=features", "training.max_steps=6",
        "training.learning_rate=0.002", *TINY_TRAINING, f"output_dir={tmp_path / 'seed'}"])
    tokenizer = load_visual_tokenizer(train_decoder(seed_style, progress=False))
    config = tokenizer.diffusion_decoder.config
    assert config.spatial_condition == "features" and config.spatial_channels == tokenizer.feature_channels
    assert tokenizer.feature_map(codes).shape == (4, tokenizer.feature_channels, *tokenizer.latent_shape[1:])
    assert torch.equal(tokenizer.decode(codes), tokenizer.decode(codes))
    assert not torch.allclose(tokenizer.decode(codes), first)


def test_decoder_recipe_names_the_inputs_each_conditioning_takes(tmp_path, semantic):
    semantic.save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match="'hidden_states' takes `checkpoint:`"):
        load_config(DecoderRecipe, None, [f"tokenizer={tmp_path / 'tok'}", "conditioning=hidden_states"])
    with pytest.raises(ValueError, match="not `tokenizer:` or `data:`"):
        load_config(DecoderRecipe, None, [f"checkpoint={tmp_path / 'tok'}", f"sequences={tmp_path / 'tok'}",
                                          "conditioning=hidden_states", "data.num_images=10"])
    with pytest.raises(ValueError, match="'codes' takes `tokenizer:`"):
        load_config(DecoderRecipe, None, [f"checkpoint={tmp_path / 'tok'}"])
    with pytest.raises(ValueError, match="needs conditioning 'codes'"):
        load_config(DecoderRecipe, None, [f"checkpoint={tmp_path / 'tok'}", f"sequences={tmp_path / 'tok'}",
                                          "conditioning=hidden_states", "model.spatial_condition=features"])
    with pytest.raises(ValueError, match="spatial_condition must be one of none, features"):
        load_config(DecoderRecipe, None, [f"tokenizer={tmp_path / 'tok'}", "model.spatial_condition=pixels"])


def test_a_feature_map_decoder_needs_a_semantic_tokenizer(renderer_dir, tmp_path):
    recipe = load_config(DecoderRecipe, None, [f"tokenizer={renderer_dir}", "model.spatial_condition=features",
                                               *TINY_TRAINING, f"output_dir={tmp_path}"])
    with pytest.raises(UserError, match="reads a semantic tokenizer's decoded features"):
        train_decoder(recipe, progress=False)


def test_attach_decoder_checks_shapes(semantic):
    with pytest.raises(ValueError, match="does not fit the tokenizer"):
        semantic.attach_decoder(tiny_decoder(cond_dim=5))
    fits = dict(cond_dim=semantic.code_embeddings().shape[1], tokens=semantic.num_tokens)
    latent_channels, side, _ = semantic.latent_shape
    decoder = DiffusionDecoder(DiffusionDecoderConfig(
        latent_channels=latent_channels, latent_size=side, cond_dim=fits["cond_dim"], num_cond_tokens=8,
        hidden_size=32, num_layers=1, num_heads=2, spatial_condition="features",
        spatial_channels=semantic.feature_channels + 1))
    with pytest.raises(ValueError, match="reads a 9-channel feature map; the tokenizer's features are 8 channels"):
        semantic.attach_decoder(decoder)


def test_vocabulary_extension_and_sampling_work_unchanged_on_semantic_codes(semantic, tiny_lm_dir, tmp_path):
    semantic.save_pretrained(tmp_path / "tok")
    model_dir = init_unified(tiny_lm_dir, tmp_path / "tok", tmp_path / "unified", init="codebook")
    meta = json.loads((model_dir / "mmgen.json").read_text())
    assert meta["tokens_per_image"] == 8 and meta["grid_shape"] == [8]
    generator = ImageGenerator.from_pretrained(model_dir)
    images = generator.generate(["a photo of a red circle"], num_images=2, seed=0)
    assert len(images[0]) == 2 and images[0][0].size == (16, 16)
    codes = generator.generate_codes(["a photo of a red circle"], num_images=2, seed=0)
    assert codes.shape == (2, 8) and codes.max() < 64


def test_one_pass_codes_and_latents_equal_the_separate_calls(semantic):
    x = pixels()
    for tokenizer in (semantic, semantic.renderer):
        codes, latents = tokenizer.encode_with_latents(x)
        assert torch.equal(codes, tokenizer.encode(x))
        assert torch.allclose(latents, tokenizer.image_latents(x))
        assert latents.shape[1:] == tokenizer.latent_shape


# ---- (b) the hidden-state decoder head on a unified checkpoint -------------------------------------------------------


@pytest.fixture()
def built_t2i(unified_dir, tmp_path):
    """Text-to-image sequences of the tiny unified checkpoint, saved like `mmgen data build` output."""
    from datasets import Dataset, DatasetDict

    from mmgen.checkpoint import load_unified

    unified = load_unified(unified_dir, with_model=False)
    generator = torch.Generator().manual_seed(0)
    rows = [unified.prompts.text_to_image_example(f"a photo of {n} red circles", torch.randint(
        0, unified.vocab.codebook_size, (unified.num_image_tokens,), generator=generator)) for n in range(40)]
    out = tmp_path / "built"
    DatasetDict({"train": Dataset.from_list(rows[:32]), "eval": Dataset.from_list(rows[32:])}).save_to_disk(out)
    return out


def test_hidden_state_decoder_trains_attaches_to_the_checkpoint_and_samples(unified_dir, built_t2i, tmp_path):
    from transformers import AutoModelForCausalLM

    recipe = load_config(DecoderRecipe, None, [
        "conditioning=hidden_states", f"checkpoint={unified_dir}", f"sequences={built_t2i}",
        "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.num_inference_steps=3",
        "training.max_steps=8", "training.batch_size=8", "training.learning_rate=0.002", "training.warmup_steps=2",
        "training.log_every=1", "training.sample_every=100", "training.mixed_precision=fp32",
        f"output_dir={tmp_path / 'run'}"])
    model_dir = train_decoder(recipe, progress=False)
    assert model_dir == tmp_path / "run" / "model"
    assert json.loads((model_dir / "mmgen.json").read_text())["decoder"] == "decoder"
    AutoModelForCausalLM.from_pretrained(model_dir)  # still a plain transformers checkpoint
    losses = [json.loads(line)["loss"] for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and all(v == v for v in losses)

    generator = ImageGenerator.from_pretrained(model_dir, decoder="diffusion")
    assert generator.diffusion.config.conditioning == "hidden_states"
    together = generator.generate(["a red circle", "two blue squares"], num_images=2, seed=3, batch_size=4)
    apart = generator.generate(["two blue squares"], num_images=2, seed=5, batch_size=1)
    assert together[1][0].size == (16, 16)
    # image k of prompt j draws codes and decoder noise from seed + j * images + k, whatever the batching
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(together[1], apart[0], strict=True))
    plain = ImageGenerator.from_pretrained(model_dir).generate(["a red circle"], num_images=1, seed=3)
    assert not np.array_equal(np.asarray(plain[0][0]), np.asarray(together[0][0]))


def test_diffusion_decoder_option_needs_a_decoder(unified_dir):
    with pytest.raises(UserError, match="has no diffusion decoder"):
        ImageGenerator.from_pretrained(unified_dir, decoder="diffusion")


def test_cli_trains_a_semantic_tokenizer_through_either_verb(renderer_dir, tmp_path):
    from mmgen.recipes import recipe_path

    from mmgen.cli import main

    tiny = ["model.num_queries=8", "model.width=32", "model.num_layers=1", "model.num_heads=2",
            "model.quantizer.levels=[4,4,4]", f"renderer={renderer_dir}", "training.max_steps=2", *TINY_TRAINING]
    recipe = str(recipe_path("tokenizer/shapes-semantic.yaml"))
    for verb in (["train"], ["tokenizer", "train"]):
        out = tmp_path / "_".join(verb)
        assert main([*verb, recipe, *tiny, f"output_dir={out}"]) == 0
        assert isinstance(load_visual_tokenizer(out / "tokenizer"), SemanticTokenizer)
