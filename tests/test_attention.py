"""Attention kernels follow what each model family supports, through the real `from_pretrained` loading path."""

import json

import pytest
import torch
import transformers
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from mmgen.checkpoint import causal_lm_class, load_causal_lm
from mmgen.cli import main
from mmgen.errors import UserError
from mmgen.runtime import pick_attn_implementation
from mmgen.tiny_lm import FAMILIES, save_tiny_lm

CPU = torch.device("cpu")
CORPUS = ["a photo of a red circle", "two blue squares left of a green star"] * 10


def _family_class(family: str) -> type:
    return getattr(transformers, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[FAMILIES[family]])


def test_auto_takes_sdpa_where_the_family_has_it_else_eager():
    assert pick_attn_implementation("auto", CPU, _family_class("llama")) == "sdpa"
    assert pick_attn_implementation("auto", CPU, _family_class("gemma2")) == "eager"  # soft-capping: no sdpa path
    assert pick_attn_implementation("auto", CPU, None) == "sdpa"  # custom code: trust transformers' own default


def test_explicit_choice_the_family_cannot_run_names_the_one_it_can():
    with pytest.raises(UserError, match="Gemma2ForCausalLM has no sdpa attention; use 'eager' or 'auto'"):
        pick_attn_implementation("sdpa", CPU, _family_class("gemma2"))
    with pytest.raises(UserError, match="needs a CUDA device; use 'auto'"):
        pick_attn_implementation("flash_attention_2", CPU, _family_class("llama"))
    assert pick_attn_implementation("eager", CPU, _family_class("llama")) == "eager"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_loads_through_from_pretrained(tmp_path, family):
    save_tiny_lm(tmp_path, family, CORPUS, vocab_size=300, hidden_size=64, num_layers=2)
    assert causal_lm_class(tmp_path) is _family_class(family)
    model = load_causal_lm(tmp_path, CPU)  # attn "auto"
    expected = "sdpa" if _family_class(family)._supports_sdpa else "eager"
    assert model.config._attn_implementation == expected
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[0, 5, 9]])).logits).all()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_init_and_generate_work_for_every_family(tmp_path, family, tiny_visual_tokenizer_dir, capsys):
    model = tmp_path / "model"
    assert main(["init", "--tiny-llm", family, "--tokenizer", str(tiny_visual_tokenizer_dir),
                 "--out", str(model)]) == 0
    assert main(["generate", "--model", str(model), "--prompt", "a photo of a red circle", "--num-images", "2",
                 "--dtype", "fp32", "--out", str(tmp_path / "images")]) == 0
    settings = json.loads((tmp_path / "images" / "settings.json").read_text())
    assert len(settings["images"]) == 2
    assert all((tmp_path / "images" / row["file"]).is_file() for row in settings["images"])


def test_attn_option_reaches_the_loader(tmp_path, tiny_visual_tokenizer_dir, capsys):
    model = tmp_path / "model"
    assert main(["init", "--tiny-llm", "gemma2", "--tokenizer", str(tiny_visual_tokenizer_dir),
                 "--out", str(model), "--attn", "eager"]) == 0
    assert main(["generate", "--model", str(model), "--prompt", "a red circle", "--num-images", "1",
                 "--attn", "sdpa", "--out", str(tmp_path / "images")]) == 2
    assert "has no sdpa attention" in capsys.readouterr().err
