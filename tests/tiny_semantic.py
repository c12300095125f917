"""Shared tiny settings of the semantic tokenizer tests: a model over the 16x16 renderer of `conftest.renderer_dir`,
training overrides that finish in seconds, and seeded test images."""

import torch

from mmgen.tokenizers import QuantizerConfig, SemanticTokenizerConfig

TINY_MODEL = SemanticTokenizerConfig(num_queries=8, width=32, num_layers=2, decoder_layers=1, num_heads=2,
                                     quantizer=QuantizerConfig(kind="fsq", levels=[4, 4, 4]))
TINY_TRAINING = ["data.num_images=64", "data.eval_images=8", "training.batch_size=8", "training.warmup_steps=2",
                 "training.log_every=1", "training.sample_every=100", "training.mixed_precision=fp32"]


def pixels(n=4, seed=0):
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1
