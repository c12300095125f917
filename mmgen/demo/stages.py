"""The demo's stages: each is a list of `mmgen` commands (exactly what a user would type) and a summary read back
from the files those commands wrote.

Budgets live in `DemoBudget`: `FULL` fits the whole run, set-up included, in 30 minutes on 2 CPU cores; `QUICK`
checks the plumbing in about a minute (its numbers mean nothing).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmgen.recipes import recipe_path
from mmgen.train.settings import PRECISION_FILE
from mmgen.train.train_log import read_train_log


@dataclass(frozen=True)
class DemoBudget:
    sft_images: int  # scenes of GenEval's six tasks rendered for SFT
    tokenizer_steps: int
    tokenizer_eval_images: int
    sft_steps: int
    grpo_steps: int
    benchmark_limit: int | None  # prompts per benchmark task (None: all 100)
    guard_limit: int  # prompts per task of GRPO's benchmark guard


# Sized in work, not minutes (docs/experiments/2026-12-08-grid-aligned-codes.md): on a 2-core CPU without native
# bf16 (fp32, ~120 GFLOP/s matmul) the whole run, set-up included, stays under 30 minutes; faster hardware is faster.
FULL = DemoBudget(sft_images=24000, tokenizer_steps=4000, tokenizer_eval_images=300, sft_steps=1500, grpo_steps=180,
                  benchmark_limit=None, guard_limit=10)
QUICK = DemoBudget(sft_images=320, tokenizer_steps=30, tokenizer_eval_images=50, sft_steps=6, grpo_steps=2,
                   benchmark_limit=2, guard_limit=1)


@dataclass(frozen=True)
class DemoRun:
    """One demo run's choices: the budgets, the seed every stage draws from, and the training / sampling precision
    ("auto": bf16 where the hardware has it natively, else fp32)."""

    budget: DemoBudget
    seed: int = 0
    precision: str = "auto"


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    commands: Callable[[Path, DemoRun], list[list[str]]]  # (run dir, run choices) -> `mmgen` argv lists
    summarize: Callable[[Path], dict]  # run dir -> summary (JSON-able)
    headline: Callable[[dict], str]  # the key metric, one line
    resumable: bool = False  # training stages keep an interrupted run's checkpoints and resume from them


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _train(recipe: str, overrides: dict[str, object]) -> list[str]:
    """`mmgen train <shipped recipe> key=value ...`"""
    return ["train", str(recipe_path(recipe)), *(f"{key}={value}" for key, value in overrides.items())]


# ---- shapes data and the benchmark's ceiling -----------------------------------------------------------------

SFT_TASKS = "single_object,two_object,counting,colors,position,color_attr"  # GenEval's six, drawn uniformly
# The demo's images stand their objects on whole cells of a 4 x 4 grid (see `Layout`), and the tokenizer maps each
# 16 x 16 px cell to one code (`patch_size` 4: 16 codes per image): every object is then one code of one
# (shape, colour) pattern, and each image a 16-code sequence the tiny LLM learns several times faster per FLOP
# than 64 codes of free-standing objects (docs/experiments/2026-12-08-grid-aligned-codes.md).
GRID = 4
TOKENIZER_PATCH = 4


def _data_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    def scenes(num: int, seed: int, out: str) -> list[str]:
        return ["data", "shapes", "--num", str(num), "--size", "64", "--tasks", SFT_TASKS, "--grid", str(GRID),
                "--seed", str(seed), "--out", str(run / "data" / out)]

    # Held-out scenes (another seed) for the tokenizer's fidelity: it trains on the first set.
    return [scenes(demo.budget.sft_images, demo.seed, "shapes"),
            scenes(demo.budget.tokenizer_eval_images, 1000 + demo.seed, "heldout")]


def _data_summary(run: Path) -> dict:
    import datasets

    rows = datasets.load_from_disk(str(run / "data" / "shapes"))
    return {"images": len(rows), "size": 64, "tasks": SFT_TASKS, "grid": GRID}


def _ground_truth_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    return [["eval", "shapes", "--ground-truth", "--out", str(run / "ground_truth")]]


def _benchmark_summary(directory: Path) -> dict:
    results = _read_json(directory / "results.json")
    summary = {"overall": results["overall"], "tasks": results["tasks"],
               "images": sum(results["details"]["images"].values())}
    if "precision" in results["details"]:
        summary["precision"] = results["details"]["precision"]
    return summary


def _precision(stage_dir: Path) -> dict | None:
    path = stage_dir / PRECISION_FILE
    return _read_json(path) if path.exists() else None


# ---- visual tokenizer ----------------------------------------------------------------------------------------


def _tokenizer_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    out = run / "tokenizer"
    steps = demo.budget.tokenizer_steps
    return [
        # It learns from the demo's own scenes (on the grid), one code per cell.
        _train("tokenizer/shapes-vq.yaml", {"output_dir": out, "model.patch_size": TOKENIZER_PATCH,
                                            "data.source": run / "data" / "shapes",
                                            "data.num_images": demo.budget.sft_images,
                                            "training.max_steps": steps,
                                            "training.seed": demo.seed, "training.mixed_precision": demo.precision,
                                            "training.checkpoint_every": max(steps // 6, 1),
                                            "training.sample_every": max(steps // 3, 1)}),
        ["tokenizer", "eval", "--tokenizer", str(out / "tokenizer"), "--data", str(run / "data" / "heldout"),
         "--num", str(demo.budget.tokenizer_eval_images), "--json", str(out / "eval.json"),
         "--grid", str(out / "reconstructions.png")],
        # The benchmark's prompts drawn on the grid, through the codes: the best score the LLM stages can reach.
        ["eval", "shapes", "--ground-truth", "--through-tokenizer", str(out / "tokenizer"), "--grid", str(GRID),
         *_limit(demo), "--out", str(out / "ceiling")],
    ]


def _tokenizer_summary(run: Path) -> dict:
    log = read_train_log(run / "tokenizer" / "train_log.jsonl")
    ceiling = _read_json(run / "tokenizer" / "ceiling" / "results.json")
    return {**_read_json(run / "tokenizer" / "eval.json"), "steps": log[-1]["step"] if log else 0,
            "benchmark_ceiling": ceiling["overall"], "precision": _precision(run / "tokenizer")}


# ---- vocabulary extension and SFT data -----------------------------------------------------------------------


def _vocab_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    return [["init", "--tiny-llm", "llama", "--init", "codebook", "--tokenizer", str(run / "tokenizer" / "tokenizer"),
             "--seed", str(demo.seed), "--out", str(run / "vocab" / "model")]]


def _vocab_summary(run: Path) -> dict:
    from safetensors import safe_open

    model = run / "vocab" / "model"
    info = _read_json(model / "mmgen.json")
    with safe_open(str(model / "model.safetensors"), "pt") as weights:
        parameters = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return {"vocab_size": info["image_tokens"]["vocab_size"], "codebook_size": info["image_tokens"]["codebook_size"],
            "tokens_per_image": info["tokens_per_image"], "parameters": parameters, "init": info["init"]}


def _sft_data_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    out = run / "sft_data"
    sources = f"sources=[{{path: {out / 'tokenized'}, task: t2i, weight: 1.0}}]"
    return [
        ["data", "tokenize", "--data", str(run / "data" / "shapes"), "--task", "t2i",
         "--tokenizer", str(run / "vocab" / "model"), "--out", str(out / "tokenized")],
        ["data", "build", str(recipe_path("data/shapes-t2i.yaml")), f"model={run / 'vocab' / 'model'}", sources,
         f"seed={demo.seed}", f"output_dir={out / 'built'}"],
    ]


def _sft_data_summary(run: Path) -> dict:
    tokenized = _read_json(run / "sft_data" / "tokenized" / "tokenize_info.json")
    built = _read_json(run / "sft_data" / "built" / "build_info.json")
    return {"images_per_second": tokenized["images_per_second"], "skipped": tokenized["rows"]["skipped"],
            "train_rows": built["splits"]["train"], "eval_rows": built["splits"]["eval"]}


# ---- SFT, GRPO and their benchmarks --------------------------------------------------------------------------


def _sft_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    steps = demo.budget.sft_steps
    every = max(steps // 3, 1)
    return [_train("sft/shapes-t2i.yaml", {"model": run / "vocab" / "model", "data": run / "sft_data" / "built",
                                           "output_dir": run / "sft", "training.max_steps": steps,
                                           "training.seed": demo.seed, "training.mixed_precision": demo.precision,
                                           "training.eval_steps": every, "training.save_steps": every,
                                           "training.logging_steps": max(steps // 45, 1)})]


def _sft_summary(run: Path) -> dict:
    log = read_train_log(run / "sft" / "train_log.jsonl")
    losses = [row["loss"] for row in log if "loss" in row]
    evals = [row["eval_loss"] for row in log if "eval_loss" in row]
    return {"steps": max((row["step"] for row in log), default=0), "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "eval_loss": evals[-1] if evals else None,
            "precision": _precision(run / "sft")}


def _limit(demo: DemoRun) -> list[str]:
    return [] if demo.budget.benchmark_limit is None else ["--limit", str(demo.budget.benchmark_limit)]


def _benchmark_commands(model: str, out: str) -> Callable[[Path, DemoRun], list[list[str]]]:
    def commands(run: Path, demo: DemoRun) -> list[list[str]]:
        return [["eval", "shapes", "--model", str(run / model / "model"), "--out", str(run / out), *_limit(demo),
                 "--seed", str(demo.seed), "--dtype", demo.precision]]

    return commands


def _grpo_commands(run: Path, demo: DemoRun) -> list[list[str]]:
    steps = demo.budget.grpo_steps
    return [_train("grpo/shapes-geneval.yaml", {"model": run / "sft" / "model", "output_dir": run / "grpo",
                                                "training.max_steps": steps,
                                                "training.seed": demo.seed, "prompts.seed": 1000 + demo.seed,
                                                "training.mixed_precision": demo.precision,
                                                "training.save_steps": max(steps // 4, 1),
                                                "training.logging_steps": max(steps // 40, 1),
                                                "benchmark.every": max(steps // 2, 1),
                                                "benchmark.limit": demo.budget.guard_limit})]


def _grpo_summary(run: Path) -> dict:
    log = read_train_log(run / "grpo" / "train_log.jsonl")
    rewards = [row["reward"] for row in log if row.get("reward") is not None]
    guard_path = run / "grpo" / "benchmark" / "history.json"
    guard = json.loads(guard_path.read_text()) if guard_path.exists() else []
    return {"steps": max((row["step"] for row in log), default=0),
            "first_reward": rewards[0] if rewards else None, "final_reward": rewards[-1] if rewards else None,
            "guard": [{"step": row["step"], "overall": row["benchmark/overall"]} for row in guard],
            "precision": _precision(run / "grpo")}


def _score_line(summary: dict) -> str:
    tasks = ", ".join(f"{task} {score:.2f}" for task, score in summary["tasks"].items())
    return f"overall {summary['overall']:.3f} on {summary['images']} images ({tasks})"


def _optional(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


STAGES: tuple[Stage, ...] = (
    Stage("data", "Shapes data", _data_commands, _data_summary,
          lambda s: (f"{s['images']} scenes of GenEval's six tasks at {s['size']}px"
                     + (f", objects on a {s['grid']} x {s['grid']} grid" if s.get("grid") else ""))),
    Stage("ground_truth", "Benchmark ceiling", _ground_truth_commands,
          lambda run: _benchmark_summary(run / "ground_truth"),
          lambda s: f"rendered ground truth scores {s['overall']:.3f} ({s['images']} images): the detector is exact"),
    Stage("tokenizer", "Visual tokenizer", _tokenizer_commands, _tokenizer_summary,
          lambda s: (f"{s['tokens_per_image']} codes/image from {s['codebook_size']}, detector fidelity "
                     f"{s['detector_fidelity']:.3f}, PSNR {s['psnr']:.1f} dB, "
                     f"codebook usage {s['codebook_usage']:.2f}; the benchmark through its codes scores "
                     f"{s['benchmark_ceiling']:.3f}"),
          resumable=True),
    Stage("vocab", "Vocabulary extension", _vocab_commands, _vocab_summary,
          lambda s: (f"tiny Llama ({s['parameters'] / 1e6:.1f}M parameters), vocabulary {s['vocab_size']} "
                     f"(+{s['codebook_size']} codes + 2 markers), rows initialised from the codebook")),
    Stage("sft_data", "SFT data", _sft_data_commands, _sft_data_summary,
          lambda s: (f"{s['train_rows']} train + {s['eval_rows']} eval rows, tokenized at "
                     f"{s['images_per_second']:.0f} images/s, {s['skipped']} skipped")),
    Stage("sft", "Supervised fine-tuning", _sft_commands, _sft_summary,
          lambda s: (f"{s['steps']} steps, loss {_optional(s['first_loss'], '.2f')} -> "
                     f"{_optional(s['final_loss'], '.2f')}, eval loss {_optional(s['eval_loss'], '.3f')}"),
          resumable=True),
    Stage("benchmark_sft", "Shapes benchmark after SFT", _benchmark_commands("sft", "benchmark_sft"),
          lambda run: _benchmark_summary(run / "benchmark_sft"), _score_line),
    Stage("grpo", "GRPO", _grpo_commands, _grpo_summary,
          lambda s: (f"{s['steps']} steps, reward {_optional(s['first_reward'], '.3f')} -> "
                     f"{_optional(s['final_reward'], '.3f')}"),
          resumable=True),
    Stage("benchmark_grpo", "Shapes benchmark after GRPO", _benchmark_commands("grpo", "benchmark_grpo"),
          lambda run: _benchmark_summary(run / "benchmark_grpo"), _score_line),
)
