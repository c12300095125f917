"""Tiny causal LMs built from config in-process, with a byte-level BPE tokenizer trained on the fly.

The machines this kit must run on have no model hub, so the demo and every test start from a tiny model of
a real transformers family, saved to disk and loaded back through `from_pretrained`: the same loading path a
user's Llama or Qwen checkpoint takes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
# transformers 5 loads a saved fast tokenizer as the model family's class; Qwen2's adds `<|endoftext|>` as its
# unknown token when missing, which would make the tokenizer longer than the embedding table.
UNK = "<|endoftext|>"

# transformers model_type of each family users fine-tune; the kit is tested against all of them.
FAMILIES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "mistral": "mistral",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "phi3": "phi3",
}


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) trained on `texts`; takes well under a second."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def tiny_lm_config(
    family: str,
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    tie_word_embeddings: bool = False,
    max_position_embeddings: int = 512,
    **overrides,
):
    """A transformers config of `family` sized for CPU tests and the demo."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 3,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        head_dim=hidden_size // num_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )
    kwargs.update(overrides)
    return CONFIG_MAPPING[FAMILIES[family]](**kwargs)


def build_tiny_lm(
    family: str, tokenizer: PreTrainedTokenizerFast, seed: int = 0, **config_kwargs
) -> PreTrainedModel:
    import torch

    config = tiny_lm_config(family, vocab_size=len(tokenizer), **config_kwargs)
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def save_tiny_lm(
    out_dir: str | Path, family: str, texts: Iterable[str], vocab_size: int = 512, seed: int = 0, **config_kwargs
) -> Path:
    """Train a BPE tokenizer on `texts`, build a tiny `family` LM and save both as a plain HF directory."""
    out_dir = Path(out_dir)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=vocab_size)
    model = build_tiny_lm(family, tokenizer, seed=seed, **config_kwargs)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)  # safetensors by default
    tokenizer.save_pretrained(out_dir)
    return out_dir


# The demo's LLM: about 5M parameters; three wide layers run faster per step on CPU than six narrow ones.
DEMO_LM = dict(vocab_size=1000, hidden_size=320, num_layers=3, num_heads=8, num_kv_heads=4)


def save_demo_lm(out_dir: str | Path, family: str = "llama", seed: int = 0) -> Path:
    """The demo-sized tiny LM, with a BPE vocabulary trained on shapes-world text."""
    from mmgen.data_engine.shapes.corpus import text_corpus

    return save_tiny_lm(out_dir, family, text_corpus(num=4000, seed=seed), seed=seed, **DEMO_LM)
