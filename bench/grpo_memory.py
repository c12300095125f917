"""GRPO peak memory: LoRA with the reference as the disabled adapter, against full fine-tuning with a reference copy.

Baseline: `method: full` with `training.beta > 0`, where TRL keeps a second, frozen copy of the model as the KL
reference. Measured: `method: lora` with the same beta, where the reference is the same weights with the adapter
switched off. Same model (a Llama of ~110M parameters, so weights dominate the process), same prompts, same
rollouts, two GRPO steps each, each run in a fresh process so its peak resident memory (ru_maxrss) is its own. The
peak is read when training ends, before the final checkpoint is written (saving has its own, shared cost).
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import peak_rss_mib

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
    from transformers import TrainerCallback

    from mmgen.config import load_config
    from mmgen.train.grpo import GRPORecipe, train_grpo

    peak = {}

    class PeakAtTrainEnd(TrainerCallback):
        def on_train_end(self, args, state, control, model=None, **kwargs):
            peak["rss"] = peak_rss_mib()
            peak["weights"] = sum(p.numel() for p in model.parameters()) * 4 / 2**20

    torch.set_num_threads(2)
    recipe = load_config(GRPORecipe, None, [
        f"model={model}", f"output_dir={out}", f"method={method}", "rewards=[{name: format}]",
        "prompts.num_prompts=8", "rollout.num_generations=4", "training.max_steps=2", "training.batch_size=8",
        "training.beta=0.04", "training.mixed_precision=fp32", "training.save_steps=100", "benchmark.benchmark=null"])
    start = time.perf_counter()
    train_grpo(recipe, callbacks=[PeakAtTrainEnd()])
    return {"seconds": time.perf_counter() - start, "peak_rss_mib": peak["rss"], "policy_mib": peak["weights"]}


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
    for column in ("run", "policy weights (MiB)", "peak RSS in training (MiB)", "time (s)", "ratio vs baseline"):
        table.add_column(column)
    for method, name, shown in (("full", "full FT + reference copy (baseline)", "1.00x"),
                                ("lora", "LoRA, reference = adapter off", f"{ratio:.2f}x")):
        f = figures[method]
        table.add_row(name, f"{f['policy_mib']:.0f}", f"{f['peak_rss_mib']:.0f}", f"{f['seconds']:.1f}", shown)
    Console().print(table)
    return {**figures, "lora_over_full": ratio}
