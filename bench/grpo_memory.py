"""GRPO peak memory: LoRA with the reference as the disabled adapter, against full fine-tuning with a reference copy.

Baseline: `method: full` with `training.beta > 0`, where TRL keeps a second, frozen copy of the model as the KL
reference. Measured: `method: lora` with the same beta, where the reference is the same weights with the adapter
switched off. Same model (a Llama of ~110M parameters, so weights dominate the process), same prompts, same
rollouts, two GRPO steps each, each run in a fresh process so its peak resident memory (ru_maxrss) is its own.
"""

from __future__ import annotations

import multiprocessing
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

HIDDEN, LAYERS = 768, 12


def build_checkpoint(out: Path) -> Path:
    import torch
    from mmgen.data_engine.shapes.corpus import text_corpus

    from mmgen.checkpoint import init_unified
    from mmgen.tiny_lm import save_tiny_lm
    from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, QuantizerConfig

    base = save_tiny_lm(out / "base", "llama", text_corpus(num=400, seed=0), vocab_size=1000, hidden_size=HIDDEN,
                        num_layers=LAYERS, num_heads=12, num_kv_heads=4)
    torch.manual_seed(0)
    GridTokenizer(GridTokenizerConfig(image_size=32, block_out_channels=(16, 32), norm_num_groups=8,
                                      quantizer=QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]))
                  ).save_pretrained(out / "visual_tokenizer")
    return init_unified(base, out / "visual_tokenizer", out / "unified")


def _measure(method: str, model: str, out: str) -> dict:
    import torch

    from mmgen.config import load_config
    from mmgen.train.grpo import GRPORecipe, train_grpo

    torch.set_num_threads(2)
    recipe = load_config(GRPORecipe, None, [
        f"model={model}", f"output_dir={out}", f"method={method}", "rewards=[{name: format}]",
        "prompts.num_prompts=8", "rollout.num_generations=4", "training.max_steps=2", "training.batch_size=8",
        "training.beta=0.04", "training.mixed_precision=fp32", "training.save_steps=100", "benchmark.benchmark=null"])
    start = time.perf_counter()
    train_grpo(recipe)
    return {"seconds": time.perf_counter() - start,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run() -> dict:
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        model = str(build_checkpoint(Path(tmp)))
        figures = {}
        for method in ("full", "lora"):
            with ProcessPoolExecutor(1, mp_context=context) as pool:
                figures[method] = pool.submit(_measure, method, model, f"{tmp}/{method}").result()
    ratio = figures["lora"]["peak_rss_mib"] / figures["full"]["peak_rss_mib"]
    table = Table(title=f"GRPO peak memory, beta 0.04, Llama {HIDDEN}x{LAYERS} (2 steps, 8 completions each)")
    for column in ("run", "peak RSS (MiB)", "time (s)", "ratio vs baseline"):
        table.add_column(column)
    table.add_row("full FT + reference copy (baseline)", f"{figures['full']['peak_rss_mib']:.0f}",
                  f"{figures['full']['seconds']:.1f}", "1.00x")
    table.add_row("LoRA, reference = adapter off", f"{figures['lora']['peak_rss_mib']:.0f}",
                  f"{figures['lora']['seconds']:.1f}", f"{ratio:.2f}x")
    Console().print(table)
    return {**figures, "lora_over_full": ratio}
