"""LoRA for a unified checkpoint, shared by the SFT and GRPO stages: adapters on the transformer's linear layers,
plus the *new* image-token rows of the embedding table and LM head (the text rows stay bit-identical)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

LLM_LINEAR_LAYERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LLM_LINEAR_LAYERS))
    # Train the image-token rows of embed_tokens / lm_head (the text rows stay frozen by a gradient mask).
    train_new_rows: bool = True



def add_lora(model, settings: LoraSettings, first_new_row: int, quantized: bool = False,
             gradient_checkpointing: bool = False):
    """Wrap `model` in LoRA adapters; with `train_new_rows`, the image-token rows of the embedding table and LM
    head train too (through `modules_to_save`), the text rows stay frozen."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model, gradient_checkpointing)
    tied = model.get_input_embeddings().weight is model.get_output_embeddings().weight
    row_tables = ["embed_tokens", "lm_head"] if settings.train_new_rows else None
    # With tied embeddings, peft keeps the two trainable copies tied too (one table, as in the base model).
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, modules_to_save=row_tables, task_type="CAUSAL_LM",
                        ensure_weight_tying=tied)
    model = get_peft_model(model, config)
    if settings.train_new_rows:
        freeze_text_rows(model, first_new_row)
    return model


def freeze_text_rows(model, first_new_row: int) -> list[torch.nn.Parameter]:
    """Zero the gradient of every row below `first_new_row` in the trainable embedding / LM-head copies.

    peft's `modules_to_save` trains whole tables; with this mask (and no weight decay on them, see
    `MMGenSFTTrainer`) the text rows never move, so the model's text behaviour is exactly the base model's.
    """
    tables = [p for name, p in model.named_parameters() if p.requires_grad and "modules_to_save" in name
              and p.dim() == 2 and p.shape[0] > first_new_row]
    if not tables:
        raise RuntimeError("no trainable embedding table found to mask; check lora.train_new_rows")
    for table in tables:
        mask = torch.zeros(table.shape[0], 1, dtype=table.dtype, device=table.device)
        mask[first_new_row:] = 1
        table.register_hook(lambda grad, mask=mask: grad * mask.to(grad.dtype))
    return tables


def without_row_tables(decay_names: list[str]) -> list[str]:
    """Weight decay must skip the `modules_to_save` tables: it would shrink the frozen text rows even though their
    gradient is zero."""
    return [name for name in decay_names if "modules_to_save" not in name]
