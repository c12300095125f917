"""Image sampling: agreement with transformers `generate`, CFG, seeds, batching, editing, validation, CLI."""

import json

import pytest
import torch
from PIL import Image
from transformers import LogitsProcessorList

from mmgen.cli import main
from mmgen.errors import UserError
from mmgen.sampling import CodeHead, ImageGenerator, SamplingConfig, left_pad
from mmgen.tiny_lm import build_tiny_lm, train_bpe_tokenizer
from mmgen.vocab import extend_vocabulary

PROMPTS = ["a red circle", "two blue squares to the left of a green star"]


@pytest.fixture(scope="module")
def generator(unified_dir):
    return ImageGenerator.from_pretrained(unified_dir)


class CodesOnly:
    def __init__(self, vocab, size):
        self.mask = torch.full((size,), float("-inf"))
        self.mask[list(vocab.code_ids)] = 0

    def __call__(self, input_ids, scores):
        return scores + self.mask


def transformers_greedy(generator, prompts, cfg_scale):
    """What a user would write with plain transformers: generate + guidance_scale + a constraint processor."""
    pad = {"pad_id": generator.pad_id, "device": generator.device}
    cond_ids, cond_mask = left_pad([generator.prompts.text_to_image(p) for p in prompts], **pad)
    uncond_ids, uncond_mask = left_pad([generator.prompts.text_to_image(None)] * len(prompts), **pad)
    cfg = dict(guidance_scale=cfg_scale, negative_prompt_ids=uncond_ids, negative_prompt_attention_mask=uncond_mask)
    n = generator.num_tokens
    out = generator.model.generate(input_ids=cond_ids, attention_mask=cond_mask, do_sample=False, max_new_tokens=n,
                                   min_new_tokens=n, pad_token_id=generator.pad_id, eos_token_id=None,
                                   logits_processor=LogitsProcessorList([CodesOnly(generator.vocab,
                                                                                   generator.vocab.vocab_size)]),
                                   **(cfg if cfg_scale != 1 else {}))
    return generator.vocab.ids_to_codes(out[:, cond_ids.shape[1]:])


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_greedy_codes_equal_transformers_generate(generator, cfg_scale):
    ours = generator.generate_codes(PROMPTS, temperature=0, cfg_scale=cfg_scale)
    assert ours.shape == (2, 16)
    assert torch.equal(ours, transformers_greedy(generator, PROMPTS, cfg_scale))


def test_cfg_changes_the_result(generator):
    plain = generator.generate_codes(PROMPTS, temperature=0, cfg_scale=1.0)
    guided = generator.generate_codes(PROMPTS, temperature=0, cfg_scale=5.0)
    assert not torch.equal(plain, guided)


def test_seeds_reproduce_images_independently_of_batch_size(generator):
    settings = dict(num_images=3, cfg_scale=2.0, top_k=20, top_p=0.9, seed=7)
    one = generator.generate_codes(PROMPTS, batch_size=6, **settings)
    two = generator.generate_codes(PROMPTS, batch_size=4, **settings)
    assert torch.equal(one, two)
    assert not torch.equal(one, generator.generate_codes(PROMPTS, batch_size=6, **{**settings, "seed": 8}))
    assert len({tuple(row) for row in one.tolist()}) == 6  # images of one prompt differ
    assert one.min() >= 0 and one.max() < 64


def test_prefill_runs_each_distinct_prompt_once(generator):
    """The images of a prompt share its prefill and the unconditional rows share the empty caption's: 2 prompts x 3
    images with CFG prefill 3 sequences instead of 12, and draw exactly what 12 separate prefills would."""
    shapes = []
    hook = generator.body.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        ours = generator.generate_codes(PROMPTS, num_images=3, temperature=0, cfg_scale=3.0, batch_size=6)
    finally:
        hook.remove()
    width = max(len(generator.prompts.text_to_image(p)) for p in PROMPTS)
    assert shapes[0] == (3, width)
    assert set(shapes[1:]) == {(12, 1)}
    assert torch.equal(ours, transformers_greedy(generator, [p for p in PROMPTS for _ in range(3)], 3.0))


def test_top_k_one_is_greedy(generator):
    greedy = generator.generate_codes(PROMPTS, temperature=0)
    assert torch.equal(generator.generate_codes(PROMPTS, top_k=1, temperature=1.5, seed=3), greedy)


def test_negative_prompt_replaces_the_unconditional_branch(generator):
    plain = generator.generate_codes(PROMPTS[:1], temperature=0)
    negative = generator.generate_codes(PROMPTS[:1], temperature=0, negative_prompt="a blue circle")
    assert not torch.equal(plain, negative)


def test_generate_returns_images_per_prompt(generator):
    images = generator.generate(PROMPTS, num_images=2, seed=1)
    assert [len(per_prompt) for per_prompt in images] == [2, 2]
    assert images[0][0].size == (16, 16) and images[0][0].mode == "RGB"


def test_edit_conditions_on_the_source_codes(generator):
    source = Image.new("RGB", (40, 30), (200, 30, 30))  # not square, not the tokenizer's size: converted
    codes = generator.encode_images([source])
    prompt = generator.prompts.edit(codes[0], "make it blue")
    assert prompt[1:17] == (codes[0] + generator.vocab.first_code_id).tolist()
    edited = generator.edit([source], ["make it blue"], num_images=2, temperature=0)
    assert len(edited) == 1 and len(edited[0]) == 2 and edited[0][0].size == (16, 16)
    with pytest.raises(UserError, match="2 images but 1 instructions"):
        generator.edit([source, source], ["x"])


@pytest.mark.parametrize("settings, message", [
    (dict(cfg_scale=-1.0), "cfg_scale must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.2), r"top_p must be in \(0, 1\]"),
    (dict(top_k=-2), "top_k must be >= 0"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(num_images=0), "num_images must be >= 1"),
])
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(UserError, match=message):
        SamplingConfig(**settings)


def test_wrong_image_size_and_too_long_prompts_are_refused(generator):
    with pytest.raises(UserError, match="image_size 64 does not match the visual tokenizer, which makes 16x16"):
        generator.generate_codes(PROMPTS, image_size=64)
    with pytest.raises(UserError, match="exceeds the model's 512 positions"):
        generator.generate_codes(["circle " * 600])


def test_code_head_matches_full_logits_including_softcapping(shapes_corpus):
    tokenizer = train_bpe_tokenizer(shapes_corpus, vocab_size=300)
    model = build_tiny_lm("gemma2", tokenizer, hidden_size=64, num_layers=2, final_logit_softcapping=5.0).eval()
    vocab = extend_vocabulary(model, tokenizer, 32)
    head = CodeHead(model, vocab)
    assert head._full_head is None
    ids = torch.tensor([[4, 8, vocab.start_id, vocab.first_code_id + 3]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        torch.testing.assert_close(head(out.hidden_states[-1]), out.logits[..., list(vocab.code_ids)])


def test_code_head_verifies_a_model_whose_forward_runs_under_bf16_autocast(shapes_corpus):
    """accelerate wraps a model's forward in autocast during mixed-precision training; the fp32 slice must still be
    recognised as exact (mid-training sampling would otherwise pay for the full head)."""
    tokenizer = train_bpe_tokenizer(shapes_corpus, vocab_size=300)
    torch.manual_seed(0)
    model = build_tiny_lm("llama", tokenizer, hidden_size=64, num_layers=2).eval()
    vocab = extend_vocabulary(model, tokenizer, 32)
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(3000)  # logits of a trained model (~50), where bf16 rounding shows
    forward = model.forward
    model.forward = lambda *args, **kwargs: torch.autocast("cpu", dtype=torch.bfloat16)(forward)(*args, **kwargs)
    assert CodeHead(model, vocab).exact


def test_code_head_falls_back_to_the_full_head_for_unknown_logit_transforms(shapes_corpus):
    tokenizer = train_bpe_tokenizer(shapes_corpus, vocab_size=300)
    model = build_tiny_lm("llama", tokenizer, hidden_size=64, num_layers=2).eval()
    vocab = extend_vocabulary(model, tokenizer, 32)
    model.get_output_embeddings().register_forward_hook(lambda module, args, output: output * 2.0)
    head = CodeHead(model, vocab)
    assert head._full_head is not None
    ids = torch.tensor([[4, 8, vocab.start_id]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        torch.testing.assert_close(head(out.hidden_states[-1]), out.logits[..., list(vocab.code_ids)])


def test_cli_generate_writes_pngs_grid_and_settings(unified_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle"}\n\n{"prompt": "a <|image_start|> star"}\n')
    out = tmp_path / "out"
    assert main(["generate", "--model", str(unified_dir), "--prompt", "a blue square", "--prompts", str(prompts),
                 "--num-images", "2", "--cfg", "2.5", "--seed", "3", "--out", str(out)]) == 0
    settings = json.loads((out / "settings.json").read_text())
    assert [item["prompt"] for item in settings["images"]][::2] == ["a blue square", "a red circle",
                                                                    "a <|image_start|> star"]
    assert settings["sampling"]["cfg_scale"] == 2.5 and settings["sampling"]["seed"] == 3
    assert [item["seed"] for item in settings["images"]] == [3, 4, 5, 6, 7, 8]
    assert len(list((out / "images").glob("*.png"))) == 6
    assert Image.open(out / "grid.png").size[0] > 16 * 2
    assert "wrote 6 images" in capsys.readouterr().out


def test_cli_refuses_bad_settings_before_loading_the_model(unified_dir, tmp_path, monkeypatch, capsys):
    def no_loading(*args, **kwargs):
        raise AssertionError("the model must not be loaded for invalid settings")

    monkeypatch.setattr(ImageGenerator, "from_pretrained", no_loading)
    assert main(["generate", "--model", str(unified_dir), "--prompt", "x", "--top-p", "0", "--out",
                 str(tmp_path)]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert main(["generate", "--model", str(unified_dir), "--prompts", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.jsonl:2: each line needs a string \"prompt\" key" in capsys.readouterr().err


def test_cli_edit(unified_dir, tmp_path):
    source = tmp_path / "in.png"
    Image.new("RGB", (16, 16), (10, 200, 10)).save(source)
    assert main(["edit", "--model", str(unified_dir), "--image", str(source), "--instruction", "make it red",
                 "--num-images", "2", "--out", str(tmp_path / "out")]) == 0
    settings = json.loads((tmp_path / "out" / "settings.json").read_text())
    assert settings["verb"] == "edit" and settings["source"] == str(source)
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == 2


def test_gumbel_max_draws_follow_the_warped_distribution(generator):
    """The sampler's categorical draw (Gumbel-max over log-softmax) matches softmax(logits / T), top-k applied."""
    torch.manual_seed(0)
    logits = torch.randn(1, 64) * 2
    config = SamplingConfig(temperature=0.7, top_k=8)
    draws = 20000
    noise = -torch.log(-torch.log(torch.rand(draws, 64).clamp(1e-20, 1 - 1e-7)))
    picks, logprobs = ImageGenerator._pick(logits.expand(draws, -1), config, noise)
    expected = torch.zeros(64)
    top = (logits[0] / 0.7).topk(8)
    expected[top.indices] = top.values.softmax(-1)
    observed = torch.bincount(picks, minlength=64).float() / draws
    assert observed[expected == 0].sum() == 0  # nothing outside the top-k
    torch.testing.assert_close(observed, expected, atol=0.015, rtol=0)
    # The returned log-probabilities are those of the distribution the codes were drawn from.
    torch.testing.assert_close(logprobs, expected[picks].log())
