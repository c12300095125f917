"""A SEED-style semantic tokenizer: an image -> a short 1D sequence of codes (e.g. 32), read causally.

    pixels -> frozen feature encoder -> features [B, P, C]
           -> causal query transformer (N learnable queries, causal self-attention, cross-attention to features)
           -> quantizer (vector-quantize-pytorch) -> N codes
    codes  -> code vectors -> feature decoder (P position queries cross-attending to the codes) -> features
           -> pixels through the renderer            ("features" decoding: deterministic)
    codes  -> code vectors -> diffusion decoder -> renderer latents -> pixels      ("diffusion" decoding)

The causal queries make code k depend only on codes < k, the order an LLM writes them in (SEED's argument).
The renderer is a frozen `GridTokenizer` trained on the user's images: its decoder renders latents to pixels (as a
VAE does for Stable Diffusion), and by default its encoder's features are what the codes must carry. Its weights are
stored inside this tokenizer's `model.safetensors`, so the directory stands alone; an attached diffusion decoder
lives in `decoder/` in diffusers format. Alternatively the features come from a frozen `transformers` vision model
(CLIP, SigLIP, DINOv2, ...; SEED's choice), stored in `feature_encoder/`: its features cannot be rendered, so such a
tokenizer decodes only through a diffusion decoder trained on its codes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmgen.config import strict_from_dict
from mmgen.decoders.conditioning import code_conditions
from mmgen.decoders.diffusion import DiffusionDecoder, is_decoder_dir

from .base import VisualTokenizer, _eval_mode, register_visual_tokenizer
from .quantizers import Quantizer, QuantizerConfig
from .vision_features import VisionFeatureEncoder
from .vq_grid import GridTokenizer, GridTokenizerConfig

DECODER_SUBDIR = "decoder"
FEATURE_ENCODER_SUBDIR = "feature_encoder"
DECODINGS = ("auto", "features", "diffusion")


@dataclass
class SemanticTokenizerConfig:
    num_queries: int = 32  # codes per image
    width: int = 256
    num_layers: int = 4  # causal query transformer
    decoder_layers: int = 2  # feature decoder
    num_heads: int = 4
    quantizer: QuantizerConfig = field(default_factory=lambda: QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]))
    # "auto": through the diffusion decoder when one is attached, else through the feature decoder.
    decoding: str = "auto"
    decode_seed: int = 0  # diffusion decoding draws its noise from this seed: decode(codes) is deterministic
    renderer: GridTokenizerConfig = field(default_factory=GridTokenizerConfig)
    # None: the codes carry the renderer's encoder features. [tokens, channels]: they carry the patch features of a
    # frozen vision model kept in `feature_encoder/` (set from that model, never by hand).
    vision_features: list[int] | None = None

    def __post_init__(self):
        if isinstance(self.quantizer, dict):
            self.quantizer = QuantizerConfig.from_dict(self.quantizer)
        if isinstance(self.renderer, dict):
            self.renderer = GridTokenizerConfig.from_dict(self.renderer)
        if self.quantizer.codes_per_position != 1:
            raise ValueError("the semantic tokenizer needs one code per query: use vq, fsq or lfq, not rvq")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads {self.num_heads}")
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        for name in ("num_queries", "num_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.vision_features is not None:
            self.vision_features = [int(v) for v in self.vision_features]
            if self.decoding == "features":
                raise ValueError("decoding 'features' needs the renderer's own features; a tokenizer over a vision "
                                 "model's features decodes through a diffusion decoder ('auto' or 'diffusion')")

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["quantizer"] = self.quantizer.to_dict()
        data["renderer"] = self.renderer.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SemanticTokenizerConfig:
        return strict_from_dict(cls, data)


def _transformer(width: int, heads: int, layers: int) -> nn.TransformerDecoder:
    layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(width))


@register_visual_tokenizer
class SemanticTokenizer(VisualTokenizer):
    """1D codes [B, num_queries] from a causal query transformer over a frozen renderer's encoder features."""

    tokenizer_type = "semantic"

    def __init__(self, config: SemanticTokenizerConfig | None = None, renderer: GridTokenizer | None = None,
                 vision_encoder: VisionFeatureEncoder | None = None):
        """`vision_encoder`: read the images through this frozen vision model instead of the renderer's encoder.
        When loading a saved tokenizer it is attached afterwards, from `feature_encoder/`."""
        super().__init__()
        config = config or SemanticTokenizerConfig()
        if renderer is not None:  # the renderer's own shape wins (without changing the caller's config)
            config = replace(config, renderer=renderer.config)
        if vision_encoder is not None:
            config = replace(config, vision_features=[vision_encoder.num_features, vision_encoder.channels])
        self.config = config
        self.renderer = renderer or GridTokenizer(config.renderer)
        self.renderer.requires_grad_(False)
        self.vision_encoder = vision_encoder
        self.image_size = self.renderer.image_size
        self.in_channels = self.renderer.in_channels
        self.num_tokens = config.num_queries
        self.grid_shape = (config.num_queries,)
        self.codebook_size = config.quantizer.total_codebook_size
        if config.vision_features is not None:
            self.num_features, self.feature_channels = config.vision_features
        else:
            self.num_features = self.renderer.config.grid_size ** 2
            self.feature_channels = self.renderer.config.latent_channels
        width, heads = config.width, config.num_heads

        # Positions and queries start at unit scale, like the content they are added to: at BERT's 0.02 the
        # position signal drowns and the feature decoder sat at the mean (relative MSE 0.93 after 650 steps,
        # 0.37 after 900 with unit scale).
        self.feature_in = nn.Linear(self.feature_channels, width)
        self.feature_positions = nn.Parameter(torch.randn(self.num_features, width))
        self.queries = nn.Parameter(torch.randn(config.num_queries, width))
        self.query_transformer = _transformer(width, heads, config.num_layers)
        code_dim = config.quantizer.vector_dim(width)
        self.to_code = nn.Linear(width, code_dim)
        self.quantizer = Quantizer(config.quantizer, dim=code_dim)
        self.from_code = nn.Linear(code_dim, width)
        self.code_positions = nn.Parameter(torch.randn(config.num_queries, width))
        self.feature_queries = nn.Parameter(torch.randn(self.num_features, width))
        self.feature_decoder = _transformer(width, heads, config.decoder_layers)
        self.feature_out = nn.Linear(width, self.feature_channels)
        causal = nn.Transformer.generate_square_subsequent_mask(config.num_queries)
        self.register_buffer("causal_mask", causal, persistent=False)
        self.diffusion_decoder: DiffusionDecoder | None = None

    def train(self, mode: bool = True) -> SemanticTokenizer:
        super().train(mode)
        self.renderer.eval()  # frozen: a vq renderer in train mode would move its EMA codebook
        if self.vision_encoder is not None:
            self.vision_encoder.eval()
        return self

    @property
    def renders_features(self) -> bool:
        """True when decoded features can be rendered to pixels (they are the renderer's own encoder features)."""
        return self.config.vision_features is None

    # ---- encoding ---------------------------------------------------------------------------------------------

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: pixels -> (encoder features, features decoded from the codes, quantizer aux loss)."""
        features = self.features(pixels)
        vectors, _, aux = self.quantize(features)
        return features, self.decode_features(vectors), aux

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's features [B, P, C] the codes must carry (the renderer's pre-quantization latents,
        or the vision model's patch features)."""
        if not self.renders_features:
            if self.vision_encoder is None:
                raise ValueError(f"this tokenizer reads images through a vision model, but none is attached (a saved "
                                 f"tokenizer keeps it in {FEATURE_ENCODER_SUBDIR}/)")
            return self.vision_encoder(pixels)
        return self._encoder_output(pixels).flatten(2).transpose(1, 2).float()

    def _encoder_output(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.renderer.encoder(self.renderer.patchify(pixels))

    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features [B, P, C] -> (code vectors [B, N, code_dim], codes [B, N], aux loss)."""
        memory = self.feature_in(features) + self.feature_positions
        queries = self.queries.expand(features.shape[0], -1, -1)
        hidden = self.query_transformer(queries, memory, tgt_mask=self.causal_mask, tgt_is_causal=True)
        vectors = self.to_code(hidden)  # [B, N, code_dim]
        z_q, codes, aux = self.quantizer(vectors.transpose(1, 2)[..., None])  # the quantizer takes [B, D, h, w]
        return z_q[..., 0].transpose(1, 2), codes[..., 0], aux

    def decode_features(self, code_vectors: torch.Tensor) -> torch.Tensor:
        """Code vectors [B, N, code_dim] -> reconstructed features [B, P, C]."""
        memory = self.from_code(code_vectors) + self.code_positions
        queries = self.feature_queries.expand(code_vectors.shape[0], -1, -1)
        return self.feature_out(self.feature_decoder(queries, memory))

    def render_features(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, P, C] -> pixels through the renderer (its quantizer, then its decoder)."""
        z_q = self.renderer.quantizer(self.renderer.quant_conv(self._feature_grid(features)))[0]
        return self.renderer._pixels(z_q)

    def feature_map(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> the features decoded from them as a map [B, C, side, side] on the renderer's latent grid:
        what a SEED-style diffusion decoder reads beside the code embeddings."""
        return self._feature_grid(self.decode_features(self.code_vectors(codes)))

    def _feature_grid(self, features: torch.Tensor) -> torch.Tensor:
        if not self.renders_features:
            raise ValueError("a vision model's features are not the renderer's: they cannot be rendered to pixels "
                             "or laid on its latent grid. Decode through a diffusion decoder trained on this "
                             "tokenizer's codes alone (`mmgen train recipes/decoder/...` with "
                             "model.spatial_condition: none)")
        side = self.renderer.config.grid_size
        return features.transpose(1, 2).reshape(features.shape[0], self.feature_channels, side, side)

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.quantize(self.features(pixels))[1]

    # ---- decoding ---------------------------------------------------------------------------------------------

    def code_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> their vectors [B, N, code_dim]."""
        return self.quantizer.codes_to_latents(codes[..., None]).squeeze(-1).transpose(1, 2)

    @property
    def decoding(self) -> str:
        if self.config.decoding == "auto":
            return "diffusion" if self.diffusion_decoder is not None or not self.renders_features else "features"
        return self.config.decoding

    def _decode(self, codes: torch.Tensor) -> torch.Tensor:
        if self.decoding == "features":
            return self.render_features(self.decode_features(self.code_vectors(codes)))
        return self.decode_diffusion(codes)

    def decode_diffusion(self, codes: torch.Tensor, num_inference_steps: int | None = None,
                         guidance_scale: float | None = None) -> torch.Tensor:
        if self.diffusion_decoder is None:
            raise ValueError("decoding is 'diffusion' but no diffusion decoder is attached: train one with "
                             "`mmgen train recipes/decoder/shapes-semantic.yaml`")
        # what the decoder stage trained it on
        vectors, spatial = code_conditions(self, self.diffusion_decoder.config, codes)
        generator = torch.Generator(device=codes.device).manual_seed(self.config.decode_seed)
        latents = self.diffusion_decoder.sample(vectors, num_inference_steps, guidance_scale, generator=generator,
                                                spatial=spatial)
        return self.renderer.render(latents)

    def code_embeddings(self) -> torch.Tensor:
        return self.quantizer.code_vectors()

    def attach_decoder(self, decoder: DiffusionDecoder | None) -> None:
        """Decode through `decoder` (conditioned on code vectors, generating renderer latents)."""
        if decoder is not None:
            expected = (self.code_embeddings().shape[1], self.num_tokens, self.renderer.latent_shape)
            got = (decoder.config.cond_dim, decoder.config.num_cond_tokens,
                   (decoder.config.latent_channels, decoder.config.latent_size, decoder.config.latent_size))
            if decoder.config.conditioning != "codes" or got != expected:
                raise ValueError(f"this diffusion decoder does not fit the tokenizer: it takes {got} "
                                 f"(cond dim, tokens, latent shape) conditioned on {decoder.config.conditioning}, "
                                 f"the tokenizer needs {expected} conditioned on codes")
            spatial = decoder.config.spatial_condition
            if spatial == "features" and (not self.renders_features
                                          or decoder.config.spatial_channels != self.feature_channels):
                raise ValueError(f"this diffusion decoder reads a {decoder.config.spatial_channels}-channel feature "
                                 f"map; the tokenizer's features are {self.feature_channels} channels"
                                 f"{'' if self.renders_features else ' and not on its renderer grid'}")
        self.diffusion_decoder = decoder

    # ---- the renderer interface (a diffusion decoder generates in the renderer's latent space) ----------------

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.renderer.latent_shape

    def image_latents(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.renderer.image_latents(pixels)

    @torch.no_grad()
    def encode_with_latents(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, renderer latents) from one pass of the frozen encoder."""
        self._check_pixels(pixels)
        if not self.renders_features:  # two encoders: the vision model's codes, the renderer's latents
            with _eval_mode(self):
                return self.quantize(self.features(pixels))[1], self.renderer.image_latents(pixels)
        with _eval_mode(self):
            grid = self._encoder_output(pixels)
            codes = self.quantize(grid.flatten(2).transpose(1, 2).float())[1]
            latents = self.renderer.quantizer(self.renderer.quant_conv(grid))[0]
        return codes, latents

    def render(self, latents: torch.Tensor) -> torch.Tensor:
        return self.renderer.render(latents)

    # ---- persistence ------------------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        return {"tokenizer_type": self.tokenizer_type, **self.config.to_dict()}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SemanticTokenizer:
        config = {key: value for key, value in config.items() if key != "tokenizer_type"}
        return cls(SemanticTokenizerConfig.from_dict(config))

    # The diffusion decoder and the vision model are saved on their own (diffusers / transformers format);
    # everything else goes in model.safetensors.
    _SEPARATE = ("diffusion_decoder.", "vision_encoder.")

    def _save_weights(self, file: Path) -> None:
        state = {k: v.contiguous() for k, v in self.state_dict().items() if not k.startswith(self._SEPARATE)}
        save_file(state, str(file))

    def _load_weights(self, file: Path) -> None:
        missing, unexpected = self.load_state_dict(load_file(str(file)), strict=False)
        missing = [key for key in missing if not key.startswith(self._SEPARATE)]
        if missing or unexpected:
            raise ValueError(f"{file} does not match this semantic tokenizer: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")

    def _write_files(self, directory: Path) -> None:
        super()._write_files(directory)
        if self.vision_encoder is not None:
            (directory / FEATURE_ENCODER_SUBDIR).mkdir()
            self.vision_encoder.save_pretrained(directory / FEATURE_ENCODER_SUBDIR)
        if self.diffusion_decoder is not None:
            (directory / DECODER_SUBDIR).mkdir()
            self.diffusion_decoder.write_to(directory / DECODER_SUBDIR)

    def _load_attachments(self, path: Path) -> None:
        if not self.renders_features:
            encoder = VisionFeatureEncoder.from_pretrained(path / FEATURE_ENCODER_SUBDIR)
            if [encoder.num_features, encoder.channels] != self.config.vision_features:
                raise ValueError(f"{path / FEATURE_ENCODER_SUBDIR} gives {encoder.num_features} x {encoder.channels} "
                                 f"features; the tokenizer was built for {self.config.vision_features}")
            self.vision_encoder = encoder
        if is_decoder_dir(path / DECODER_SUBDIR):
            self.attach_decoder(DiffusionDecoder.from_pretrained(path / DECODER_SUBDIR))
