"""What a diffusion decoder is conditioned on, computed the same way in training and in sampling."""

from __future__ import annotations

import torch

from mmgen.vocab import ImageVocab


def code_embedding_condition(tokenizer, codes: torch.Tensor) -> torch.Tensor:
    """(a) Codes [B, N] -> the visual tokenizer's code embeddings [B, N, D]."""
    return tokenizer.code_embeddings().to(codes.device)[codes]


def code_conditions(tokenizer, decoder_config, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(a) with what else the decoder was built to read: (code embeddings [B, N, D], spatial map or None).

    The "features" map is SEED's de-tokenizer input: the semantic tokenizer's own reconstruction of its features
    from the codes (`feature_map`), computed from the codes alone, as it must be when the codes come from an LLM.
    """
    cond = code_embedding_condition(tokenizer, codes)
    if decoder_config.spatial_condition == "none":
        return cond, None
    if not hasattr(tokenizer, "feature_map"):
        raise ValueError(f"this decoder reads a {decoder_config.spatial_condition!r} map, which a "
                         f"{tokenizer.tokenizer_type!r} tokenizer does not make (a semantic tokenizer does)")
    return cond, tokenizer.feature_map(codes)


def image_span_hidden_states(body: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                             vocab: ImageVocab, num_tokens: int) -> torch.Tensor:
    """(b) The LLM's last hidden states [B, N, H] at the N code tokens of each sequence (BLIP3o-NEXT style).

    `body` is the transformer without its LM head (`model.get_decoder()`); sequences may be padded on either side
    (`attention_mask` marks real tokens). The hidden state at code i has read the prompt and codes <= i: in
    sampling, a teacher-forced pass over prompt + sampled codes gives exactly what generation computed.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    first = vocab.first_code_id
    is_code = (input_ids >= first) & (input_ids < first + vocab.codebook_size) & attention_mask.bool()
    counts = is_code.sum(-1)
    if not torch.all(counts == num_tokens):
        raise ValueError(f"every sequence must hold exactly {num_tokens} image codes, got counts "
                         f"{sorted(set(counts.tolist()))}")
    return hidden[is_code].view(input_ids.shape[0], num_tokens, hidden.shape[-1])
