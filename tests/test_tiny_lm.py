"""Tiny LMs of real families round-trip through the same `from_pretrained` path as a user's checkpoint."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmgen.tiny_lm import FAMILIES, save_tiny_lm, train_bpe_tokenizer

CORPUS = ["a photo of a red circle", "two blue squares left of a green star", "a white hexagon above a pink diamond"]


def test_bpe_tokenizer_round_trips_text():
    tokenizer = train_bpe_tokenizer(CORPUS * 10, vocab_size=300)
    text = "a green star, and unseen wörds!"
    assert tokenizer.decode(tokenizer(text).input_ids) == text  # byte-level: nothing is unknown


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("tied", [False, True])
def test_family_saves_and_loads(tmp_path, family, tied):
    save_tiny_lm(tmp_path, family, CORPUS * 10, vocab_size=300, hidden_size=64, num_layers=2,
                 tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert len(tokenizer) == model.config.vocab_size
    shares_storage = model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert shares_storage == tied
    ids = tokenizer("a red circle", return_tensors="pt").input_ids
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert list((tmp_path).glob("*.safetensors")) and not list(tmp_path.glob("*.bin"))


def test_fixture_model_reads_shapes_language(tiny_lm_dir, shapes_corpus):
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    ids = tokenizer(shapes_corpus[0]).input_ids
    # A BPE trained on the corpus compresses it well below one token per character.
    assert len(ids) < len(shapes_corpus[0]) / 2
    assert model(torch.tensor([ids])).logits.shape[-1] == len(tokenizer)
