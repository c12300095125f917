"""SFT throughput: mmgen's SFT stage (TRL's `SFTTrainer` through `train_sft`) against a bare PyTorch training loop.

Both train the same tiny unified checkpoint (the demo's Llama, `mmgen.tiny_lm.DEMO_LM`, with the demo tokenizer's
1000 codes and 64 tokens per image; random weights: speed does not depend on them) on the same pre-tokenized
text-to-image rows, with the same batch, precision and AdamW hyper-parameters (the recipe's learning rate,
betas (0.9, 0.999), eps 1e-8, weight decay, gradient clipping at `max_grad_norm`). The stage runs the demo recipe
(recipes/sft/shapes-t2i.yaml: full fine-tuning, its logging) with only the model, data, steps, batch and precision
overridden. The bare loop is what a user would write: one tensor batch per step, `model(ids).logits`, cross-entropy
on the completion, backward, clip, step. Every row has the same length, so both loops see the same tokens per step
and no padding.

A figure is the median of the step times after a few warm-up steps; a stage step is the time between two
`on_step_end` callbacks, so it includes the data loader, collation, TRL's metrics and logging. Throughput counts
every position of the batch (each runs forward and backward). The share of peak counts training FLOPs as
6 * N * tokens, with N the parameters that take part in matmuls (every `nn.Linear` weight, LM head included;
embedding lookups, norms and the attention-score products are not counted), against this machine's matmul peak
measured here by `mmgen.hardware.matmul_peak_gflops` (square matmuls up to 2048, median of 3 calls).
bf16 (autocast, fp32 master weights, as the stage runs it) is benchmarked only where the CPU has native bf16.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from transformers import TrainerCallback

from mmgen.hardware import cpu_has_native_bf16, matmul_peak_gflops

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "sft" / "shapes-t2i.yaml"


def precisions() -> list[str]:
    """fp32 everywhere; bf16 only where it is native (emulated bf16 runs ~20x slower and tells nothing)."""
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


# ---- inputs --------------------------------------------------------------------------------------------------


def build_checkpoint(out: Path, layers: int | None = None) -> Path:
    """The demo-sized tiny Llama extended with the demo tokenizer's shape: 1000 FSQ codes, an 8x8 grid per image.
    `layers` shrinks the LM for quick tests."""
    from mmgen.data_engine.shapes.corpus import text_corpus

    from mmgen.checkpoint import init_unified
    from mmgen.tiny_lm import DEMO_LM, save_tiny_lm
    from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, QuantizerConfig

    sizes = {**DEMO_LM, "num_layers": layers or DEMO_LM["num_layers"]}
    base = save_tiny_lm(out / "base", "llama", text_corpus(num=400, seed=0), **sizes)
    torch.manual_seed(0)
    GridTokenizer(GridTokenizerConfig(block_out_channels=(32, 64, 96), mid_block_add_attention=False,
                                      quantizer=QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]))
                  ).save_pretrained(out / "visual_tokenizer")
    return init_unified(base, out / "visual_tokenizer", out / "unified")


def build_dataset(unified_dir: Path, out: Path, rows: int) -> Path:
    """`rows` text-to-image examples with random codes, saved like `mmgen data build` saves them. The captions are
    the shapes world's, all of one token length, so that every batch has the same number of tokens."""
    from datasets import Dataset, DatasetDict
    from mmgen.data_engine.shapes.corpus import text_corpus

    from mmgen.checkpoint import load_unified

    unified = load_unified(unified_dir, with_model=False)
    builder = unified.prompts
    captions = text_corpus(num=max(600, rows), seed=1)
    length = Counter(len(builder.text_to_image(c)) for c in captions).most_common(1)[0][0]
    same_length = [c for c in captions if len(builder.text_to_image(c)) == length]
    generator = torch.Generator().manual_seed(0)
    examples = []
    for i in range(rows):
        codes = torch.randint(unified.vocab.codebook_size, (unified.num_image_tokens,), generator=generator)
        examples.append(builder.text_to_image_example(same_length[i % len(same_length)], codes))
    DatasetDict({"train": Dataset.from_list(examples)}).save_to_disk(out)
    return out


def matmul_parameters(model: torch.nn.Module) -> int:
    """Parameters that take part in matmuls: every Linear weight, the LM head included (a tied head counts once
    more: it is a matmul even though it shares the embedding's storage)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


# ---- the two loops -------------------------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Wall time between consecutive optimizer steps: the whole loop body (data, forward, backward, clip, step,
    scheduler, metrics, logging)."""

    def __init__(self):
        self.times: list[float] = []
        self._last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self._last)
        self._last = now


def stage_recipe(model_dir: Path, data_dir: Path, out: Path, precision: str, batch_size: int, steps: int):
    from mmgen.config import load_config
    from mmgen.train.sft import SFTRecipe

    return load_config(SFTRecipe, RECIPE, [
        f"model={model_dir}", f"data={data_dir}", f"output_dir={out}", f"training.max_steps={steps}",
        f"training.batch_size={batch_size}", f"training.mixed_precision={precision}", "samples.prompts=[]",
        f"training.save_steps={steps + 1000}"])


def time_stage(model_dir: Path, data_dir: Path, out: Path, precision: str, batch_size: int, steps: int) -> list[float]:
    """Step times of `mmgen train` on the recipe (the real entry point, `train_sft`)."""
    from mmgen.train.sft import train_sft

    timer = StepTimer()
    train_sft(stage_recipe(model_dir, data_dir, out, precision, batch_size, steps), callbacks=[timer])
    return timer.times


def time_bare_loop(model_dir: Path, data_dir: Path, precision: str, batch_size: int, steps: int,
                   learning_rate: float, weight_decay: float, max_grad_norm: float) -> list[float]:
    """Step times of the training loop a user writes by hand on the same model and data."""
    from datasets import load_from_disk

    from mmgen.checkpoint import load_causal_lm
    from mmgen.runtime import pick_attn_implementation

    device = torch.device("cpu")
    model = load_causal_lm(model_dir, device, "fp32", pick_attn_implementation("auto", device))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=weight_decay)
    rows = load_from_disk(str(data_dir))["train"]
    ids = torch.tensor(rows["input_ids"])
    labels = ids.masked_fill(~torch.tensor(rows["completion_mask"], dtype=torch.bool), -100)
    order = list(range(len(ids)))
    random.Random(0).shuffle(order)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = torch.tensor([order[(step * batch_size + i) % len(order)] for i in range(batch_size)])
        with autocast:
            logits = model(input_ids=ids[batch]).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[batch, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


# ---- the benchmark -------------------------------------------------------------------------------------------


def measure(batch_size: int = 32, warmup: int = 3, steps: int = 10, layers: int | None = None) -> dict:
    """Both loops in each precision; returns the figures (no printing). `layers` shrinks the LM for quick tests."""
    from mmgen.checkpoint import load_causal_lm

    total = warmup + steps
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = build_checkpoint(tmp / "model", layers)
        data_dir = build_dataset(model_dir, tmp / "data", rows=batch_size * (total + 1))
        model = load_causal_lm(model_dir, torch.device("cpu"), "fp32")
        matmul_params = matmul_parameters(model)
        del model
        tokens_per_step = batch_size * len(_first_row(data_dir))
        hyper = stage_recipe(model_dir, data_dir, tmp / "probe", "fp32", batch_size, total).training
        for precision in precisions():
            peak = matmul_peak_gflops(torch.bfloat16 if precision == "bf16" else torch.float32, budget_s=4.0)
            seconds = {
                "bare": statistics.median(time_bare_loop(
                    model_dir, data_dir, precision, batch_size, total, hyper.learning_rate, hyper.weight_decay,
                    hyper.max_grad_norm)[warmup:]),
                "mmgen": statistics.median(time_stage(
                    model_dir, data_dir, tmp / f"run-{precision}", precision, batch_size, total)[warmup:]),
            }
            row = {"peak_gflops": round(peak, 1)}
            for loop, s in seconds.items():
                gflops = 6 * matmul_params * tokens_per_step / s / 1e9
                row[f"{loop}_step_s"] = round(s, 4)
                row[f"{loop}_tokens_per_s"] = round(tokens_per_step / s, 1)
                row[f"{loop}_peak_share"] = round(gflops / peak, 4)
            row["ratio"] = round(seconds["bare"] / seconds["mmgen"], 3)
            figures[precision] = row
    return {"batch_size": batch_size, "tokens_per_step": tokens_per_step, "matmul_params": matmul_params,
            "timed_steps": steps, "threads": torch.get_num_threads(), "precisions": figures}


def _first_row(data_dir: Path) -> list[int]:
    from datasets import load_from_disk

    return load_from_disk(str(data_dir))["train"][0]["input_ids"]


def print_table(result: dict) -> None:
    table = Table(title=f"SFT throughput, demo Llama ({result['matmul_params'] / 1e6:.2f}M matmul params), batch "
                        f"{result['batch_size']} x {result['tokens_per_step'] // result['batch_size']} tokens, "
                        f"{result['threads']} threads, median of {result['timed_steps']} steps")
    for column in ("precision", "matmul peak GFLOP/s", "bare loop tokens/s (baseline)", "mmgen SFT tokens/s",
                   "ratio mmgen/bare", "share of peak (bare / mmgen)"):
        table.add_column(column, justify="right")
    for precision, f in result["precisions"].items():
        table.add_row(precision, f"{f['peak_gflops']:.0f}", f"{f['bare_tokens_per_s']:.0f}",
                      f"{f['mmgen_tokens_per_s']:.0f}", f"{f['ratio']:.2f}x",
                      f"{f['bare_peak_share']:.1%} / {f['mmgen_peak_share']:.1%}")
    Console().print(table)


def run(batch_size: int = 32, warmup: int = 3, steps: int = 10) -> dict:
    result = measure(batch_size, warmup, steps)
    print_table(result)
    return result
