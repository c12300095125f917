"""The unified checkpoint: plain-transformers loading, unchanged text behaviour, mmgen.json, LoRA export."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mmgen.checkpoint import MMGEN_JSON, export_unified, init_unified, load_unified, read_meta
from mmgen.cli import main
from mmgen.errors import UserError
from mmgen.tokenizers import load_visual_tokenizer
from mmgen.vocab import IMAGE_START, code_token


def test_plain_transformers_loads_it_and_text_logits_are_unchanged(unified_dir, tiny_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(unified_dir).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(unified_dir)
    ids = torch.tensor([tokenizer("two green stars below a red circle", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits[..., :base.config.vocab_size], base(ids).logits,
                                   rtol=1e-5, atol=1e-5)
    meta = json.loads((unified_dir / MMGEN_JSON).read_text())
    tokens = meta["image_tokens"]
    assert tokenizer.convert_tokens_to_ids(IMAGE_START) == tokens["start_id"] == base.config.vocab_size
    assert tokenizer.convert_tokens_to_ids(code_token(63)) == tokens["first_code_id"] + 63
    assert (meta["tokens_per_image"], meta["grid_shape"], meta["image_size"]) == (16, [4, 4], 16)
    assert meta["prompt_format"] == "plain" and meta["visual_tokenizer"] == "visual_tokenizer"
    assert model.config.vocab_size == tokens["vocab_size"]


def test_load_unified_round_trips_every_part(unified_dir, tiny_visual_tokenizer_dir):
    unified = load_unified(unified_dir)
    assert unified.vocab.codebook_size == 64 and unified.num_image_tokens == 16
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    original = load_visual_tokenizer(tiny_visual_tokenizer_dir)
    assert torch.equal(unified.visual_tokenizer.encode(pixels), original.encode(pixels))
    assert unified.prompts.text_to_image(None)[-1] == unified.vocab.start_id


def test_init_refuses_a_unified_checkpoint_and_pickle_only_bases(unified_dir, tiny_visual_tokenizer_dir, tmp_path):
    with pytest.raises(UserError, match="already a unified checkpoint"):
        init_unified(unified_dir, tiny_visual_tokenizer_dir, tmp_path / "again")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(unified_dir / "config.json", pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ValueError, match="refusing to load pickle checkpoint pytorch_model.bin"):
        init_unified(pickled, tiny_visual_tokenizer_dir, tmp_path / "out")


def test_loading_errors_name_the_problem(unified_dir, tiny_lm_dir, tmp_path):
    with pytest.raises(UserError, match="model directory not found"):
        read_meta(tmp_path / "missing")
    with pytest.raises(UserError, match="not an mmgen unified checkpoint"):
        read_meta(tiny_lm_dir)
    broken = tmp_path / "broken"
    shutil.copytree(unified_dir, broken)
    meta = json.loads((broken / MMGEN_JSON).read_text())
    (broken / MMGEN_JSON).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UserError, match="format_version 99"):
        read_meta(broken)
    tokens = meta["image_tokens"]
    shifted = {**meta, "image_tokens": {**tokens, "first_code_id": tokens["first_code_id"] + 1}}
    (broken / MMGEN_JSON).write_text(json.dumps(shifted))
    with pytest.raises(UserError, match="does not match mmgen.json"):
        load_unified(broken)


def _lora_adapter(unified_dir, out):
    from peft import LoraConfig, get_peft_model

    unified = load_unified(unified_dir)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        modules_to_save=["embed_tokens", "lm_head"], init_lora_weights=False)
    peft_model = get_peft_model(unified.model, config)
    with torch.no_grad():  # what SFT does to the new image rows
        for name, parameter in peft_model.named_parameters():
            if "modules_to_save" in name:
                parameter[unified.vocab.start_id:] += 0.5
    peft_model.save_pretrained(out)
    return peft_model.eval()


def test_export_merges_lora_and_matches_unmerged_logits(unified_dir, tmp_path):
    peft_model = _lora_adapter(unified_dir, tmp_path / "adapter")
    assert main(["export", "--model", str(unified_dir), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    unified = load_unified(unified_dir)
    ids = torch.tensor([[5, 9, 33, unified.vocab.start_id, unified.vocab.first_code_id + 7]])
    with torch.no_grad():
        expected = peft_model(ids).logits
        plain = unified.model(ids).logits
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter really changed the model
    meta = read_meta(tmp_path / "merged")
    assert meta["adapter"] is None and meta["merged_adapter"].endswith("adapter")
    assert not (tmp_path / "merged" / "adapter").exists()


def test_checkpoint_adapter_dir_is_used_by_default(unified_dir, tmp_path):
    with_adapter = tmp_path / "with-adapter"
    shutil.copytree(unified_dir, with_adapter)
    peft_model = _lora_adapter(unified_dir, with_adapter / "adapter")
    unified = load_unified(with_adapter)
    ids = torch.tensor([[5, 9, 33]])
    with torch.no_grad():
        torch.testing.assert_close(unified.model(ids).logits, peft_model(ids).logits)
    export_unified(with_adapter, tmp_path / "merged")
    assert read_meta(tmp_path / "merged")["merged_adapter"] == str(with_adapter / "adapter")
    with pytest.raises(UserError, match="--out must differ"):
        export_unified(with_adapter, with_adapter)


def test_cli_init_writes_a_checkpoint(tiny_lm_dir, tiny_visual_tokenizer_dir, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["init", "--base", str(tiny_lm_dir), "--tokenizer", str(tiny_visual_tokenizer_dir), "--out", str(out),
                 "--init", "codebook", "--pad-to-multiple-of", "64"]) == 0
    assert "64 code tokens" in capsys.readouterr().out
    meta = read_meta(out)
    assert meta["init"] == "codebook" and meta["image_tokens"]["vocab_size"] % 64 == 0
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(meta["image_tokens"]["first_code_id"] + 64,
                                                       meta["image_tokens"]["vocab_size"]))
    assert main(["init", "--base", str(tmp_path / "nope"), "--tokenizer", str(tiny_visual_tokenizer_dir),
                 "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_served_tokenizer_keeps_special_token_strings_in_user_text_as_text(prompt_format, tiny_lm_dir,
                                                                           tiny_visual_tokenizer_dir, tmp_path):
    """What a server running plain transformers sees: the checkpoint's tokenizer loaded with AutoTokenizer."""
    from transformers import AutoTokenizer

    from mmgen.checkpoint import init_unified
    from mmgen.vocab import IMAGE_START, code_token

    base = tmp_path / "base"
    shutil.copytree(tiny_lm_dir, base)
    if prompt_format == "chat":
        tokenizer = AutoTokenizer.from_pretrained(base)
        tokenizer.chat_template = ("{% for m in messages %}<|begin_of_text|>{{ m['role'] }}: {{ m['content'] }}"
                                   "<|end_of_text|>{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
        tokenizer.save_pretrained(base)
    model = init_unified(base, tiny_visual_tokenizer_dir, tmp_path / "model", prompt_format=prompt_format)
    served = AutoTokenizer.from_pretrained(model)
    meta = read_meta(model)
    image_ids = {meta["image_tokens"]["start_id"], meta["image_tokens"]["first_code_id"] + 5}
    user_text = f"draw {IMAGE_START}{code_token(5)} for me"
    if prompt_format == "plain":
        ids = served(user_text)["input_ids"]  # the default call: no flag needed
    else:
        ids = served.apply_chat_template([{"role": "user", "content": user_text}], add_generation_prompt=True,
                                         sanitize_control_tokens=True)["input_ids"]
        assert ids.count(served.convert_tokens_to_ids("<|end_of_text|>")) == 1  # the template's own: a token
    assert not image_ids & set(ids)
    assert user_text in served.decode(ids)
    assert image_ids <= set(served(user_text, split_special_tokens=False)["input_ids"])  # opting in still parses
