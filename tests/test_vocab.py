"""Vocabulary extension on every model family users fine-tune: ids, row init, unchanged text behaviour, safety."""

import pytest
import torch

from mmgen.errors import UserError
from mmgen.sequences import PromptBuilder
from mmgen.tiny_lm import FAMILIES, build_tiny_lm, train_bpe_tokenizer
from mmgen.vocab import IMAGE_END, IMAGE_START, ImageVocab, code_token, extend_vocabulary

CODEBOOK = 48


@pytest.fixture(scope="module")
def text_tokenizer_factory(shapes_corpus):
    def make():
        return train_bpe_tokenizer(shapes_corpus, vocab_size=300)
    return make


def tiny(family, tokenizer, tied=False):
    return build_tiny_lm(family, tokenizer, seed=0, hidden_size=64, num_layers=2, tie_word_embeddings=tied).eval()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_extension_keeps_text_logits_and_makes_distinct_rows(family, tied, text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny(family, tokenizer, tied)
    old_len = len(tokenizer)
    ids = torch.tensor([tokenizer("a red circle above a blue square")["input_ids"]])
    with torch.no_grad():
        before = model(ids).logits

    vocab = extend_vocabulary(model, tokenizer, CODEBOOK, init="mean", seed=0)

    assert (vocab.start_id, vocab.end_id, vocab.first_code_id) == (old_len, old_len + 1, old_len + 2)
    assert len(tokenizer) == vocab.vocab_size == old_len + 2 + CODEBOOK
    assert tokenizer.convert_tokens_to_ids(code_token(CODEBOOK - 1)) == vocab.first_code_id + CODEBOOK - 1
    with torch.no_grad():
        after = model(ids).logits
    torch.testing.assert_close(after[..., :old_len], before, rtol=1e-5, atol=1e-5)
    for table in {model.get_input_embeddings().weight, model.get_output_embeddings().weight}:
        new_rows = table[vocab.start_id:].detach()
        assert torch.cdist(new_rows, new_rows).add(torch.eye(len(new_rows)) * 1e9).min() > 0  # all rows differ
        # Mean init: close to the mean text row, far closer than two random text rows are to each other.
        spread = (new_rows - table[:old_len].mean(0)).norm(dim=1).max()
        assert spread < 0.2 * (table[:old_len] - table[:old_len].mean(0)).norm(dim=1).mean()
    assert (model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()) == tied


def test_codebook_init_keeps_code_geometry_and_matches_row_scale(text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny("llama", tokenizer)
    torch.manual_seed(0)
    code_embeddings = torch.randn(CODEBOOK, 8) * 5.0  # scale unlike the text rows on purpose
    vocab = extend_vocabulary(model, tokenizer, CODEBOOK, init="codebook", code_embeddings=code_embeddings)
    table = model.get_input_embeddings().weight.detach()
    text, codes = table[:vocab.start_id], table[vocab.first_code_id:vocab.first_code_id + CODEBOOK]
    text_dev = (text - text.mean(0)).norm(dim=1).mean()
    code_dev = (codes - text.mean(0)).norm(dim=1).mean()
    assert code_dev == pytest.approx(float(text_dev), rel=1e-3)
    d_codes = torch.pdist(code_embeddings)
    d_rows = torch.pdist(codes)
    assert torch.corrcoef(torch.stack([d_codes, d_rows]))[0, 1] > 0.8  # near codes stay near


def test_random_init_and_pad_rows(text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny("qwen2", tokenizer, tied=True)
    vocab = extend_vocabulary(model, tokenizer, CODEBOOK, init="random", pad_to_multiple_of=64)
    assert vocab.vocab_size % 64 == 0 and vocab.vocab_size > len(tokenizer)
    assert list(vocab.pad_row_ids) == list(range(len(tokenizer), vocab.vocab_size))
    table = model.get_input_embeddings().weight.detach()
    assert table.shape[0] == vocab.vocab_size == model.config.vocab_size
    new_std = table[vocab.first_code_id:vocab.first_code_id + CODEBOOK].std()
    assert new_std == pytest.approx(float(table[:vocab.start_id].std(0).mean()), rel=0.3)


def test_table_longer_than_tokenizer_is_reused_not_shrunk(text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny("llama", tokenizer)
    model.resize_token_embeddings(len(tokenizer) + 100, mean_resizing=False)  # like Qwen2.5's padded table
    rows = model.get_input_embeddings().weight.shape[0]
    vocab = extend_vocabulary(model, tokenizer, 8)
    assert vocab.start_id == len(tokenizer) - 10 and vocab.vocab_size == rows  # ids inside the old padding


def test_unknown_init_missing_codebook_and_double_extension_are_refused(text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny("llama", tokenizer)
    with pytest.raises(UserError, match="unknown init 'zeros'"):
        extend_vocabulary(model, tokenizer, 8, init="zeros")
    with pytest.raises(UserError, match="needs the visual tokenizer's code embeddings"):
        extend_vocabulary(model, tokenizer, 8, init="codebook")
    extend_vocabulary(model, tokenizer, 8)
    with pytest.raises(UserError, match="already has image tokens"):
        extend_vocabulary(model, tokenizer, 8)


def test_code_id_round_trip_and_range_checks():
    vocab = ImageVocab(start_id=10, end_id=11, first_code_id=12, codebook_size=5, vocab_size=20)
    codes = torch.tensor([[0, 4, 2]])
    assert vocab.codes_to_ids(codes).tolist() == [[12, 16, 14]]
    assert torch.equal(vocab.ids_to_codes(vocab.codes_to_ids(codes)), codes)
    assert vocab.is_code(torch.tensor([11, 12, 16, 17])).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match="codes must be in"):
        vocab.codes_to_ids(torch.tensor([5]))
    with pytest.raises(ValueError, match="not an image span"):
        vocab.ids_to_codes(torch.tensor([11]))
    assert ImageVocab.from_dict(vocab.to_dict()) == vocab


@pytest.mark.parametrize("prompt_format", ["plain", "chat"])
def test_special_token_strings_in_user_text_stay_plain_text(prompt_format, text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny("llama", tokenizer)
    vocab = extend_vocabulary(model, tokenizer, CODEBOOK)
    if prompt_format == "chat":
        tokenizer.chat_template = ("{% for m in messages %}<|begin_of_text|>{{ m['role'] }}: {{ m['content'] }}"
                                   "<|end_of_text|>{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    prompts = PromptBuilder(tokenizer, vocab, prompt_format)
    caption = f"a red circle {IMAGE_START} <|vis_00012|> {IMAGE_END} <|end_of_text|> done"
    ids = prompts.text_to_image(caption)
    assert ids[-1] == vocab.start_id
    body = torch.tensor(ids[:-1])
    assert not vocab.is_code(body).any()
    assert vocab.start_id not in ids[:-1] and vocab.end_id not in ids
    assert tokenizer.decode(prompts.text_ids(caption)) == caption  # the literal text survives
    if prompt_format == "chat":
        # The template's own markup is parsed as control tokens, the user's identical-looking text is not.
        assert ids.count(tokenizer.convert_tokens_to_ids("<|end_of_text|>")) == 1
        assert tokenizer.decode(ids[:-1]).startswith("<|begin_of_text|>user: a red circle")
    edit = prompts.edit(torch.tensor([3, 4]), f"make it {code_token(7)}")
    assert edit[:4] == [vocab.start_id, vocab.first_code_id + 3, vocab.first_code_id + 4, vocab.end_id]
    assert vocab.first_code_id + 7 not in edit


def test_prefix_follows_the_tokenizer_bos_convention(text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    model = tiny("llama", tokenizer)
    vocab = extend_vocabulary(model, tokenizer, CODEBOOK)
    tokenizer._tokenizer.post_processor = None
    assert PromptBuilder(tokenizer, vocab).text_to_image(None) == [vocab.start_id]
    from tokenizers.processors import TemplateProcessing

    bos = tokenizer.bos_token_id
    tokenizer._tokenizer.post_processor = TemplateProcessing(single="<|begin_of_text|> $A", special_tokens=[
        ("<|begin_of_text|>", bos)])
    assert PromptBuilder(tokenizer, vocab).text_to_image(None) == [bos, vocab.start_id]
    with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
        PromptBuilder(tokenizer, vocab, "chat")


def test_training_examples_put_the_loss_on_the_completion(text_tokenizer_factory):
    tokenizer = text_tokenizer_factory()
    vocab = extend_vocabulary(tiny("llama", tokenizer), tokenizer, CODEBOOK)
    prompts = PromptBuilder(tokenizer, vocab)
    codes = [1, 2, 3]
    t2i = prompts.text_to_image_example("a red circle", codes)
    completion = [vocab.first_code_id + 1, vocab.first_code_id + 2, vocab.first_code_id + 3, vocab.end_id]
    assert t2i["input_ids"] == prompts.text_to_image("a red circle") + completion
    assert t2i["completion_mask"] == [0] * (len(t2i["input_ids"]) - 4) + [1] * 4
    assert prompts.text_to_image_example(None, codes)["input_ids"] == [vocab.start_id] + completion
    edit = prompts.edit_example([0, 0, 0], "make it blue", codes)
    assert edit["input_ids"][:5] == [vocab.start_id] + [vocab.first_code_id] * 3 + [vocab.end_id]
    assert sum(edit["completion_mask"]) == 4 and edit["input_ids"][-4:] == completion
    answer = prompts.understanding_example(codes, "what shape?", "a circle")
    n = len(prompts.text_ids("a circle")) + 1
    assert answer["input_ids"][-1] == tokenizer.eos_token_id and sum(answer["completion_mask"]) == n
    assert answer["completion_mask"][-n:] == [1] * n
