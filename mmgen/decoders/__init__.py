"""Optional decoder heads that render images from tokens: the diffusion decoder (diffusers)."""

from .diffusion import ConditionEncoder, DiffusionDecoder, DiffusionDecoderConfig, is_decoder_dir

__all__ = ["ConditionEncoder", "DiffusionDecoder", "DiffusionDecoderConfig", "is_decoder_dir"]
