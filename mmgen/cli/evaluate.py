"""`mmgen eval`: benchmark suites."""

from __future__ import annotations


def add_parser(verbs) -> None:
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
