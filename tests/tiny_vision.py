"""Tiny random vision-language models of real transformers families, saved to disk like a user's checkpoint.

Evaluation judges (OWLv2, Grounding DINO, CLIP, BLIP-VQA) are loaded from local directories; these builders make
such directories in well under a second each: random weights, 32 px images, and tokenizers built from a small
vocabulary in-process. Their answers are arbitrary; the tests check the loading path and the output structure.
"""

from __future__ import annotations

import string
from contextlib import contextmanager
from pathlib import Path

SIZE = 32  # image side the tiny vision towers take


@contextmanager
def single_threaded():
    """Run torch on one thread: tiny models' ops are microseconds, and with several threads on busy shared cores
    each op can wait milliseconds for its worker threads (a tiny Grounding DINO forward: 15 ms vs 1.4 s)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _clip_tokenizer():
    from transformers import CLIPTokenizer

    symbols = string.ascii_lowercase + string.digits + "-.,?"
    vocab = {symbol: index for index, symbol in enumerate(symbols)}
    vocab |= {symbol + "</w>": len(symbols) + index for index, symbol in enumerate(symbols)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[])


def _bert_tokenizer(words: list[str], **kwargs):
    from transformers import BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizer(vocab={word: index for index, word in enumerate(vocab)}, **kwargs)


def _text_config(tokenizer, **extra) -> dict:
    return dict(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, **extra)


def _vision_config(**extra) -> dict:
    return dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=SIZE,
                patch_size=8, **extra)


def _clip_text_config(tokenizer, max_tokens: int) -> dict:
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    start = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    return _text_config(tokenizer, max_position_embeddings=max_tokens, bos_token_id=start, eos_token_id=end,
                        pad_token_id=end)


def save_tiny_owlv2(path: Path) -> Path:
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    # 16 text positions, as the released OWLv2 models
    config = Owlv2Config(text_config=_clip_text_config(tokenizer, 16), vision_config=_vision_config(),
                         projection_dim=16)
    Owlv2ForObjectDetection(config).save_pretrained(path)
    image_processor = Owlv2ImageProcessor(size={"height": SIZE, "width": SIZE})
    Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def save_tiny_clip(path: Path) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    tokenizer = _clip_tokenizer()
    # The colour prompts spelled out one character a token need more than 16 positions.
    config = CLIPConfig(text_config=_clip_text_config(tokenizer, 48), vision_config=_vision_config(), projection_dim=16)
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


BLIP_WORDS = ["[DEC]", "yes", "no", "is", "there", "a", "the", "cat", "dog", "red", "blue", "?"]


def save_tiny_blip_vqa(path: Path) -> Path:
    import torch
    from transformers import BlipConfig, BlipForQuestionAnswering, BlipImageProcessor, BlipProcessor

    torch.manual_seed(0)
    tokenizer = _bert_tokenizer(BLIP_WORDS, bos_token="[DEC]")
    ids = tokenizer.convert_tokens_to_ids
    text = _text_config(tokenizer, max_position_embeddings=32, encoder_hidden_size=16, bos_token_id=ids("[DEC]"),
                        sep_token_id=ids("[SEP]"), pad_token_id=ids("[PAD]"))
    config = BlipConfig(text_config=text, vision_config=_vision_config(), projection_dim=16,
                        decoder_start_token_id=ids("[DEC]"))
    BlipForQuestionAnswering(config).save_pretrained(path)
    image_processor = BlipImageProcessor(size={"height": SIZE, "width": SIZE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


DINO_WORDS = [".", "cat", "dog", "red", "bus", "traffic", "light", "hair", "dr", "##ier"]


def save_tiny_grounding_dino(path: Path, max_text_len: int = 32) -> Path:
    import torch
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    torch.manual_seed(0)
    tokenizer = _bert_tokenizer(DINO_WORDS)
    backbone = SwinConfig(image_size=SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 1], window_size=2,
                          out_features=["stage1", "stage2"])
    text = BertConfig(**_text_config(tokenizer, max_position_embeddings=64))
    # d_model must be a multiple of 32 (GroupNorm groups); two decoder layers because box heads are tied across them.
    config = GroundingDinoConfig(backbone_config=backbone, text_config=text, num_queries=10, encoder_layers=1,
                                 decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                                 decoder_attention_heads=2, d_model=32, num_feature_levels=2, encoder_n_points=1,
                                 decoder_n_points=1, max_text_len=max_text_len)
    GroundingDinoForObjectDetection(config).save_pretrained(path)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": SIZE, "longest_edge": 2 * SIZE})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path
