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
