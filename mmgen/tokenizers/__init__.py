"""Visual tokenizers: images <-> fixed-length runs of discrete codes, one family per file."""

from .base import VisualTokenizer, load_visual_tokenizer, register_visual_tokenizer, registered_tokenizer_types
from .diffusers_vq import DiffusersVQTokenizer
from .quantizers import QUANTIZER_KINDS, Quantizer, QuantizerConfig
from .semantic import SemanticTokenizer, SemanticTokenizerConfig
from .vq_grid import GridTokenizer, GridTokenizerConfig

__all__ = [
    "QUANTIZER_KINDS",
    "DiffusersVQTokenizer",
    "GridTokenizer",
    "GridTokenizerConfig",
    "Quantizer",
    "QuantizerConfig",
    "SemanticTokenizer",
    "SemanticTokenizerConfig",
    "VisualTokenizer",
    "load_visual_tokenizer",
    "register_visual_tokenizer",
    "registered_tokenizer_types",
]
