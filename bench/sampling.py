"""Image sampling speed with CFG: mmgen's sampler against the `model.generate` call users would write.

Baseline (a): transformers `generate(guidance_scale=..., negative_prompt_ids=...)` with a logits processor that
allows only image-code ids, exactly `tokens_per_image` new tokens. (b): `mmgen.sampling.ImageGenerator`. Same tiny
unified checkpoint (random weights: speed does not depend on them), same prompts, same number of images, same batch,
in fp32 and in bf16 (both sides the same dtype), for a batch of 8 prompts and for one prompt (the usual `mmgen
generate` call), 4 images each. A figure is the median of several timed calls after one warm-up call. Each
measurement runs in a fresh process so its peak resident memory (`VmHWM`) is its own. Under fp32 greedy decoding
both must produce identical codes: the bench fails loudly if they do not (in bf16, rounding in differently batched
matmuls may flip near-ties; the share of agreeing codes is printed).
"""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from bench import peak_rss_mib

# (name, number of prompts): the benchmark's batch of many prompts, and `mmgen generate`'s usual call of one prompt
# (the sampler's fixed per-step cost then dominates, and one batched forward instead of two pays off most).
BATCHES = (("8 prompts", 8), ("1 prompt", 1))
PROMPTS = [
    "a photo of a red circle", "a photo of two blue squares", "a green triangle to the left of a yellow star",
    "a photo of three purple hexagons", "a photo of an orange diamond", "a pink circle below a brown square",
    "a photo of a black star and a white triangle", "a photo of four red squares",
]
IMAGES_PER_PROMPT = 4
CFG_SCALE = 3.0


def build_checkpoint(out: Path) -> Path:
    """A tiny Llama (hidden 256, 6 layers) extended with the demo tokenizer's shape: 1000 codes, 64 per image."""
    from mmgen.data_engine.shapes.corpus import text_corpus

    from mmgen.checkpoint import init_unified
    from mmgen.tiny_lm import save_tiny_lm
    from mmgen.tokenizers import GridTokenizer, GridTokenizerConfig, QuantizerConfig

    base = save_tiny_lm(out / "base", "llama", text_corpus(num=400, seed=0), vocab_size=1000, hidden_size=256,
                        num_layers=6, num_heads=8, num_kv_heads=4)
    torch.manual_seed(0)
    GridTokenizer(GridTokenizerConfig(block_out_channels=(32, 64, 96), mid_block_add_attention=False,
                                      quantizer=QuantizerConfig(kind="fsq", levels=[8, 5, 5, 5]))
                  ).save_pretrained(out / "visual_tokenizer")
    return init_unified(base, out / "visual_tokenizer", out / "unified")


class CodesOnly:
    """The constraint processor a user writes for `generate`: every id but the image codes gets -inf."""

    def __init__(self, vocab, vocab_size: int):
        self.mask = torch.full((vocab_size,), float("-inf"))
        self.mask[vocab.first_code_id:vocab.first_code_id + vocab.codebook_size] = 0

    def __call__(self, input_ids, scores):
        return scores + self.mask.to(scores.device)


def _measure(method: str, path: str, greedy: bool, dtype: str, repeats: int, num_prompts: int) -> dict:
    torch.manual_seed(0)
    from mmgen.sampling import ImageGenerator

    prompts = PROMPTS[:num_prompts]
    generator = ImageGenerator.from_pretrained(path, dtype=dtype)
    rows = len(prompts) * IMAGES_PER_PROMPT
    config = generator.config(num_images=IMAGES_PER_PROMPT, cfg_scale=CFG_SCALE, temperature=0.0 if greedy else 1.0,
                              top_k=0, top_p=1.0, batch_size=rows, seed=0)
    if method == "mmgen":
        def run():
            return generator.generate_codes(prompts, config)
    else:
        run = _baseline(generator, config, greedy, prompts)
    run()  # warm-up: oneDNN kernel selection, allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        codes = run()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)  # the median: a neighbour's burst on a shared machine skews a mean
    return {"tokens_per_s": rows * generator.num_tokens / seconds, "seconds": seconds,
            "peak_rss_mib": peak_rss_mib(), "codes": codes.tolist()}


def _baseline(generator, config, greedy: bool, prompts: list[str]):
    from transformers import LogitsProcessorList

    from mmgen.sampling import left_pad

    builder = generator.prompts
    cond = [builder.text_to_image(p) for p in prompts for _ in range(IMAGES_PER_PROMPT)]
    uncond = [builder.text_to_image(None)] * len(cond)
    cond_ids, cond_mask = left_pad(cond, generator.pad_id, generator.device)
    uncond_ids, uncond_mask = left_pad(uncond, generator.pad_id, generator.device)
    processors = LogitsProcessorList([CodesOnly(generator.vocab, generator.model.config.vocab_size)])
    n = generator.num_tokens

    def run():
        torch.manual_seed(config.seed)
        out = generator.model.generate(
            input_ids=cond_ids, attention_mask=cond_mask, negative_prompt_ids=uncond_ids,
            negative_prompt_attention_mask=uncond_mask, guidance_scale=CFG_SCALE, logits_processor=processors,
            max_new_tokens=n, min_new_tokens=n, do_sample=not greedy, temperature=None if greedy else 1.0,
            top_k=None, top_p=None, pad_token_id=generator.pad_id, eos_token_id=None, suppress_tokens=None)
        return generator.vocab.ids_to_codes(out[:, cond_ids.shape[1]:])

    return run


def run(repeats: int = 5) -> dict:
    context = multiprocessing.get_context("spawn")
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(build_checkpoint(Path(tmp)))
        for (batch_name, num_prompts), dtype, (mode, greedy) in itertools.product(
                BATCHES, ("fp32", "bf16"), (("greedy", True), ("sampled", False))):
            results = {}
            for method in ("baseline", "mmgen"):
                with ProcessPoolExecutor(1, mp_context=context) as pool:
                    # a one-prompt call is short: more repeats keep its timing noise down
                    results[method] = pool.submit(_measure, method, path, greedy, dtype,
                                                  repeats if num_prompts > 1 else 3 * repeats, num_prompts).result()
            keys = ("tokens_per_s", "peak_rss_mib")
            row = {
                **{f"{m}_{k}": round(r[k], 1) for m, r in results.items() for k in keys},
                "ratio": round(results["mmgen"]["tokens_per_s"] / results["baseline"]["tokens_per_s"], 2),
            }
            if greedy:
                a, b = torch.tensor(results["baseline"]["codes"]), torch.tensor(results["mmgen"]["codes"])
                row["identical_codes"] = bool(torch.equal(a, b))
                row["agreeing_codes"] = round(float((a == b).float().mean()), 4)
                if dtype == "fp32" and not row["identical_codes"]:
                    raise AssertionError("fp32 greedy codes differ between transformers generate and mmgen")
            figures[f"{batch_name}, {mode} {dtype}"] = row
    table = Table(title=f"image sampling, CFG {CFG_SCALE}, {IMAGES_PER_PROMPT} images per prompt x 64 tokens, "
                        f"tiny Llama, {torch.get_num_threads()} threads")
    for column in ("prompts, decoding, dtype", "generate tokens/s (baseline)", "mmgen tokens/s", "ratio",
                   "peak RSS MiB (a / b)", "greedy codes identical"):
        table.add_column(column, justify="right")
    for name, f in figures.items():
        agreement = "-" if "identical_codes" not in f else (
            "yes" if f["identical_codes"] else f"no ({f['agreeing_codes']:.1%} agree)")
        table.add_row(name, f"{f['baseline_tokens_per_s']:.0f}", f"{f['mmgen_tokens_per_s']:.0f}", f"{f['ratio']:.2f}x",
                      f"{f['baseline_peak_rss_mib']:.0f} / {f['mmgen_peak_rss_mib']:.0f}", agreement)
    Console().print(table)
    return figures
