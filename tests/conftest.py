"""Shared fixtures: tiny models of real families saved to disk and loaded back like a user's checkpoint.

Imports happen inside fixtures so test modules that need no model do not pay for importing transformers.
"""

import pytest

# (family, tied embeddings): the two layouts every stage must handle.
TINY_LM_VARIANTS = [("llama", False), ("qwen2", True)]


@pytest.fixture(scope="session")
def shapes_corpus() -> list[str]:
    from mmgen.data_engine.shapes.corpus import text_corpus

    return text_corpus(num=600, seed=0)


@pytest.fixture(scope="session", params=TINY_LM_VARIANTS, ids=lambda v: f"{v[0]}-{'tied' if v[1] else 'untied'}")
def tiny_lm_dir(request, tmp_path_factory, shapes_corpus):
    """A tiny causal LM directory (config, safetensors, tokenizer) with a BPE vocabulary trained on shapes text."""
    from mmgen.tiny_lm import save_tiny_lm

    family, tied = request.param
    out = tmp_path_factory.mktemp(f"tiny-{family}")
    return save_tiny_lm(out, family, shapes_corpus, vocab_size=400, hidden_size=64, num_layers=2,
                        tie_word_embeddings=tied)


@pytest.fixture(scope="session")
def tiny_visual_tokenizer_dir(tmp_path_factory):
    """A tiny FSQ grid tokenizer (16x16 pixels -> 4x4 = 16 codes from 64), random weights, saved like a user's."""
    import torch

    from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, QuantizerConfig

    torch.manual_seed(0)
    tokenizer = GridTokenizer(GridTokenizerConfig(image_size=16, block_out_channels=(8, 16), norm_num_groups=4,
                                                  latent_channels=8,
                                                  quantizer=QuantizerConfig(kind="fsq", levels=[4, 4, 4])))
    out = tmp_path_factory.mktemp("visual-tokenizer") / "tokenizer"
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def unified_dir(tiny_lm_dir, tiny_visual_tokenizer_dir, tmp_path_factory):
    """`mmgen init` of the tiny LM with the tiny visual tokenizer (both tied and untied layouts)."""
    from mmgen.checkpoint import init_unified

    return init_unified(tiny_lm_dir, tiny_visual_tokenizer_dir, tmp_path_factory.mktemp("unified") / "model")


@pytest.fixture(scope="session")
def renderer_dir(tmp_path_factory):
    """A tiny grid tokenizer (16x16 -> 4x4 grid), briefly trained so its features carry the image: the renderer of
    the semantic tokenizer tests."""
    from mmgen.config import load_config
    from mmgen.train.tokenizer import TokenizerRecipe, train_tokenizer

    out = tmp_path_factory.mktemp("renderer")
    recipe = load_config(TokenizerRecipe, None, [
        "model.image_size=16", "model.patch_size=1", "model.block_out_channels=[16,16]", "model.norm_num_groups=8",
        "model.latent_channels=8", "model.mid_block_add_attention=false", "model.quantizer.kind=fsq",
        "model.quantizer.levels=[4,4,4]", "training.max_steps=30", "training.learning_rate=0.003",
        "loss.reconstruction=l2", "data.num_images=64", "data.eval_images=8", "training.batch_size=8",
        "training.warmup_steps=2", "training.log_every=1", "training.sample_every=100",
        "training.mixed_precision=fp32", f"output_dir={out}"])
    return train_tokenizer(recipe, progress=False)
