"""`mmgen` command line: one entry point, one verb per stage.

Verbs import their stage lazily so `mmgen --help` stays instant (no torch import). A verb whose stage is not
in this version says so and exits non-zero; errors the user can fix print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2
EXIT_NOT_AVAILABLE = 3

# Verbs that are part of the kit's design but not shipped in this version. They are listed in `--help` so the
# roadmap is visible, and refuse to run instead of pretending.
NOT_YET_AVAILABLE: dict[str, str] = {
    "init": "extend an LLM's vocabulary with image tokens and write a unified checkpoint",
    "generate": "sample images from a unified checkpoint",
    "edit": "edit an image with an instruction",
    "export": "merge a LoRA adapter into a clean unified checkpoint",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmgen",
        description="Turn an open causal LLM into a unified multimodal generator.",
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _add_data(verbs)
    _add_tokenizer(verbs)
    _add_train(verbs)
    _add_eval(verbs)
    _add_demo(verbs)
    for verb, summary in NOT_YET_AVAILABLE.items():
        sub = verbs.add_parser(verb, help=f"{summary} (not in this version yet)", description=summary)
        sub.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        sub.set_defaults(handler=_not_available(verb))
    return parser


def _add_data(verbs) -> None:
    data = verbs.add_parser("data", help="build and inspect datasets", description="Build datasets.")
    sources = data.add_subparsers(dest="data_verb", metavar="SOURCE", required=True)

    shapes = sources.add_parser(
        "shapes",
        help="write a procedural shapes-world dataset",
        description="Render a reproducible shapes-world dataset (Hugging Face `datasets` directory).",
    )
    shapes.add_argument("--num", type=int, required=True, help="number of rows")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (32-256, default 64)")
    shapes.add_argument("--out", required=True, help="output directory (datasets.save_to_disk format)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    shapes.add_argument("--edits", action="store_true", help="write edit triplets (source, instruction, target)")
    shapes.set_defaults(handler=_run_data_shapes)


def _run_data_shapes(args) -> int:
    import time

    from mmgen.data_engine.shapes.dataset import write_shapes_dataset
    from mmgen.errors import UserError

    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    if not 32 <= args.size <= 256:
        raise UserError(f"--size must be between 32 and 256 pixels, got {args.size}")
    start = time.perf_counter()
    write_shapes_dataset(args.out, num=args.num, size=args.size, seed=args.seed, edits=args.edits)
    kind = "edit triplets" if args.edits else "images"
    print(f"wrote {args.num} {kind} at {args.size}x{args.size} to {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def _add_tokenizer(verbs) -> None:
    tokenizer = verbs.add_parser("tokenizer", help="train, evaluate and run visual tokenizers",
                                 description="Visual tokenizers: images <-> discrete codes.")
    actions = tokenizer.add_subparsers(dest="tokenizer_verb", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a tokenizer from a recipe",
                               description="Train a visual tokenizer (resumes from the last checkpoint).")
    _add_recipe_arguments(train)
    train.set_defaults(handler=_run_tokenizer_train)

    evaluate = actions.add_parser("eval", help="reconstruction, codebook and detector-fidelity metrics",
                                  description="PSNR, SSIM, codebook usage, code perplexity and detector fidelity.")
    evaluate.add_argument("--tokenizer", required=True, help="tokenizer directory (mmgen or diffusers VQModel)")
    evaluate.add_argument("--data", required=True,
                          help="'shapes' (held-out procedural scenes), an image folder, a datasets dir or parquet")
    evaluate.add_argument("--num", type=int, default=500, help="images to evaluate (default 500)")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--no-detector", action="store_true", help="skip detector fidelity (non-shapes data)")
    evaluate.set_defaults(handler=_run_tokenizer_eval)

    stats = actions.add_parser("stats", help="code frequency statistics (Zipf fit, entropy, per-position usage)",
                               description="Token statistics of a tokenizer's codes on a dataset.")
    stats.add_argument("--tokenizer", required=True, help="tokenizer directory")
    stats.add_argument("--data", required=True, help="'shapes', an image folder, a datasets dir or parquet")
    stats.add_argument("--num", type=int, default=2000, help="images to encode (default 2000)")
    stats.add_argument("--json", help="also write the statistics to this JSON file")
    stats.set_defaults(handler=_run_tokenizer_stats)

    encode = actions.add_parser("encode", help="encode one image to codes (JSON)", description="Image -> codes.")
    encode.add_argument("--tokenizer", required=True, help="tokenizer directory")
    encode.add_argument("--image", required=True, help="input image file")
    encode.add_argument("--out", help="write the codes as JSON here (default: print)")
    encode.set_defaults(handler=_run_tokenizer_encode)

    decode = actions.add_parser("decode", help="decode codes (JSON) to an image", description="Codes -> image.")
    decode.add_argument("--tokenizer", required=True, help="tokenizer directory")
    decode.add_argument("--codes", required=True, help="JSON file with a list of codes (as written by encode)")
    decode.add_argument("--out", required=True, help="output PNG")
    decode.set_defaults(handler=_run_tokenizer_decode)


def _add_recipe_arguments(parser) -> None:
    parser.add_argument("recipe", help="YAML recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. training.max_steps=100")


def _run_tokenizer_train(args) -> int:
    from mmgen.config import load_config
    from mmgen.train.tokenizer import TokenizerRecipe, train_tokenizer

    recipe = load_config(TokenizerRecipe, args.recipe, args.overrides)
    final = train_tokenizer(recipe)
    print(f"tokenizer saved to {final}")
    return 0


def _run_tokenizer_eval(args) -> int:
    import json

    from mmgen.tokenizers.tools import evaluate_on

    metrics = evaluate_on(args.tokenizer, args.data, args.num, detector=not args.no_detector)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        from mmgen.files import write_json_atomic

        write_json_atomic(args.json, metrics)
    return 0


def _run_tokenizer_stats(args) -> int:
    import json

    from mmgen.tokenizers.tools import statistics_on

    stats = statistics_on(args.tokenizer, args.data, args.num)
    summary = {k: v for k, v in stats.items() if k != "per_position"}
    print(json.dumps(summary, indent=2))
    per_position = stats["per_position"]
    print("distinct codes per position:", " ".join(str(p["distinct"]) for p in per_position))
    if args.json:
        from mmgen.files import write_json_atomic

        write_json_atomic(args.json, stats)
    return 0


def _run_tokenizer_encode(args) -> int:
    import json

    from mmgen.tokenizers.tools import encode_image

    codes = encode_image(args.tokenizer, args.image)
    text = json.dumps({"codes": codes})
    if args.out:
        from pathlib import Path

        Path(args.out).write_text(text + "\n")
        print(f"{len(codes)} codes written to {args.out}")
    else:
        print(text)
    return 0


def _run_tokenizer_decode(args) -> int:
    from mmgen.tokenizers.tools import decode_codes

    decode_codes(args.tokenizer, args.codes).save(args.out)
    print(f"image written to {args.out}")
    return 0


def _add_train(verbs) -> None:
    train = verbs.add_parser("train", help="run a training recipe (the recipe's `stage` picks the trainer)",
                             description="Run a training recipe. Stages in this version: tokenizer.")
    _add_recipe_arguments(train)
    train.set_defaults(handler=_run_train)


TRAINING_STAGES = {"tokenizer": _run_tokenizer_train}


def _run_train(args) -> int:
    from mmgen.config import ConfigError, read_recipe_key

    stage = read_recipe_key(args.recipe, "stage")
    if stage not in TRAINING_STAGES:
        raise ConfigError(f"{args.recipe}: key 'stage' is {stage!r}; stages in this version: "
                          f"{', '.join(TRAINING_STAGES)}")
    return TRAINING_STAGES[stage](args)


def _add_eval(verbs) -> None:
    evaluate = verbs.add_parser("eval", help="run GenEval, DPG-Bench or the shapes benchmark",
                                description="Score images with benchmark rules.")
    suites = evaluate.add_subparsers(dest="suite", metavar="SUITE", required=True)
    shapes = suites.add_parser(
        "shapes",
        help="the shapes benchmark (GenEval rules, exact detector)",
        description="Score the shapes benchmark. --ground-truth scores the rendered reference scenes "
        "(a perfect generator); scoring a model needs the sampling stage, not in this version yet.",
    )
    source = shapes.add_mutually_exclusive_group(required=True)
    source.add_argument("--ground-truth", action="store_true", help="score the rendered ground-truth scenes")
    source.add_argument("--model", help="unified checkpoint directory to sample from")
    shapes.add_argument("--out", required=True, help="output directory for results.json")
    shapes.add_argument("--size", type=int, default=64, help="render size in pixels (default 64)")
    shapes.add_argument("--degrade", action="store_true", help="blur (sigma 1 px) and JPEG (q60) the images first")
    shapes.add_argument("--prompts", help="benchmark prompt file (default: the packaged shapes benchmark)")
    shapes.set_defaults(handler=_run_eval_shapes)


def _run_eval_shapes(args) -> int:
    from mmgen.errors import UserError

    if args.model:
        raise UserError("scoring a model needs the sampling stage (mmgen generate), not in this version yet")
    from mmgen.eval.shapes_benchmark import blur_and_jpeg, score_ground_truth

    summary = score_ground_truth(args.out, size=args.size, degrade=blur_and_jpeg() if args.degrade else None,
                                 benchmark_path=args.prompts)
    _print_scores(summary)
    print(f"results: {args.out}/results.json")
    return 0


def _print_scores(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="shapes benchmark (GenEval rules)")
    table.add_column("task")
    table.add_column("score", justify="right")
    table.add_column("images", justify="right")
    for task, score in summary["tasks"].items():
        table.add_row(task, f"{score:.3f}", str(summary["images"][task]))
    table.add_row("overall", f"{summary['overall']:.3f}", str(sum(summary["images"].values())), style="bold")
    Console().print(table)


def _add_demo(verbs) -> None:
    demo = verbs.add_parser("demo", help="run the end-to-end demo on the shapes world",
                            description="Run every stage this version ships, end to end, in one run directory. "
                            "Finished stages are reused; --force redoes them.")
    demo.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    demo.add_argument("--force", action="store_true", help="redo finished stages")
    demo.add_argument("--quick", action="store_true",
                      help="toy training budgets: checks the whole pipeline in about a minute (numbers meaningless)")
    demo.set_defaults(handler=_run_demo)


def _run_demo(args) -> int:
    from mmgen.demo import run_demo

    run_demo(args.out, force=args.force, quick=args.quick)
    return 0


def _not_available(verb: str) -> Callable[[argparse.Namespace], int]:
    def handler(args) -> int:
        print(f"mmgen {verb}: not available in this version yet ({NOT_YET_AVAILABLE[verb]}).", file=sys.stderr)
        return EXIT_NOT_AVAILABLE

    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mmgen.errors import UserError

    try:
        return args.handler(args)
    except UserError as err:
        print(f"mmgen {args.verb}: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"mmgen {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
