"""mmgen: turn an open causal LLM into a unified multimodal generator."""

__version__ = "0.1.0"
