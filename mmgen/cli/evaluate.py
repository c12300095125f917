"""`mmgen eval geneval / dpg / shapes`: generate a benchmark's images with a unified checkpoint, score, report.

Every suite checks all it can before it loads the checkpoint: the detector or judge spec (kind, local directory,
model type, safetensors weights), the prompt files, the checkpoint's mmgen.json and the sampling settings. A typo
then costs seconds, not the hours of a generation run. GenEval and DPG-Bench generation resumes (finished prompts are
skipped) and `--score-only` scores an existing image folder with no checkpoint at all. Each suite writes
results.json, results.md and report.html into --out and prints a per-task table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

from mmgen.cli.options import add_checkpoint_options, add_sampling_options, open_generator, sampling_settings

REPORT_FILES = ("results.json", "results.md", "report.html")


def add_parser(verbs) -> None:
    evaluate = verbs.add_parser("eval", help="run GenEval, DPG-Bench or the shapes benchmark",
                                description="Generate a benchmark's images with a unified checkpoint and score them "
                                "with the benchmark's rules.")
    suites = evaluate.add_subparsers(dest="suite", metavar="SUITE", required=True)
    _add_geneval_parser(suites)
    _add_dpg_parser(suites)
    _add_shapes_parser(suites)


# ---- parsers --------------------------------------------------------------------------------------------------


def _add_geneval_parser(suites) -> None:
    geneval = suites.add_parser(
        "geneval", help="GenEval: objects, counts, colours and positions judged by a detector",
        description="Generate images for GenEval's prompts into the official folder layout (resumable), score them "
        "with a detector and GenEval's rules or with the official script, and write reports.")
    geneval.add_argument("--model", metavar="DIR",
                         help="unified checkpoint directory to sample from (not needed with --score-only)")
    geneval.add_argument("--metadata", metavar="FILE", help="GenEval metadata file, e.g. "
                         "geneval/evaluation_metadata.jsonl (not needed with --score-only)")
    geneval.add_argument("--out", required=True, metavar="DIR",
                         help="image folder (00000/samples/0000.png ...) and reports")
    geneval.add_argument("--images-per-prompt", type=_positive_int, default=4, metavar="N",
                         help="images per prompt (default 4)")
    geneval.add_argument("--seed", type=int, default=42, metavar="N",
                         help="image k of prompt i uses seed + i * images-per-prompt + k (default 42)")
    geneval.add_argument("--batch-prompts", type=_positive_int, default=8, metavar="N",
                         help="prompts per sampler call (default 8)")
    geneval.add_argument("--score-only", action="store_true", help="score the images already in --out")
    scoring = geneval.add_argument_group("scoring: a --detector, or the official script")
    scoring.add_argument("--detector", metavar="SPEC",
                         help="shapes, owlv2:PATH or grounding-dino:PATH (local model directories)")
    scoring.add_argument("--color-classifier", metavar="SPEC",
                         help="detected, shapes or clip:PATH (default: the detector's colours)")
    scoring.add_argument("--official-script", metavar="PATH", help="<geneval checkout>/evaluation/evaluate_images.py")
    scoring.add_argument("--official-python", metavar="EXE",
                         help="the Python of your GenEval environment (mmdet 2.x, CUDA)")
    scoring.add_argument("--official-model-dir", metavar="DIR", help="the folder evaluation/download_models.sh filled")
    _add_sampling_arguments(geneval)
    geneval.set_defaults(handler=_run_geneval)


def _add_dpg_parser(suites) -> None:
    dpg = suites.add_parser(
        "dpg", help="DPG-Bench: dense prompts judged question by question by a VQA model",
        description="Generate a 2x2 grid per DPG-Bench prompt (resumable), score it with a VQA judge and ELLA's "
        "rules, and write reports. Scores from a judge other than mPLUG-large are not comparable with published "
        "DPG-Bench numbers.")
    dpg.add_argument("--model", metavar="DIR",
                     help="unified checkpoint directory to sample from (not needed with --score-only)")
    dpg.add_argument("--prompts", metavar="DIR", help="DPG-Bench prompts directory of <item_id>.txt files "
                     "(with --score-only optional: the report's prompt texts)")
    dpg.add_argument("--questions", required=True, metavar="CSV", help="DPG-Bench questions file (dpg_bench.csv)")
    dpg.add_argument("--judge", required=True, metavar="SPEC",
                     help="VQA judge: blip:PATH (a local BlipForQuestionAnswering directory)")
    dpg.add_argument("--out", required=True, metavar="DIR", help="image folder (<item_id>.png grids) and reports")
    dpg.add_argument("--seed", type=int, default=42, metavar="N",
                     help="image k of prompt i uses seed + 4 * i + k (default 42)")
    dpg.add_argument("--batch-prompts", type=_positive_int, default=8, metavar="N",
                     help="prompts per sampler call (default 8)")
    dpg.add_argument("--score-only", action="store_true", help="score the grids already in --out")
    _add_sampling_arguments(dpg)
    dpg.set_defaults(handler=_run_dpg)


def _add_shapes_parser(suites) -> None:
    shapes = suites.add_parser(
        "shapes", help="the shapes benchmark (GenEval rules, exact detector)",
        description="Score the shapes benchmark: a checkpoint's images (scored at the size the model makes them), or "
        "with --ground-truth the rendered reference scenes (a perfect generator).")
    source = shapes.add_mutually_exclusive_group(required=True)
    source.add_argument("--ground-truth", action="store_true", help="score the rendered ground-truth scenes")
    source.add_argument("--model", metavar="DIR", help="unified checkpoint directory to sample from")
    shapes.add_argument("--out", required=True, metavar="DIR", help="output directory for samples/ and the reports")
    shapes.add_argument("--images-per-prompt", type=_positive_int, default=1, metavar="N",
                        help="images per prompt (default 1)")
    shapes.add_argument("--seed", type=int, default=0, metavar="N",
                        help="image k of prompt line i uses seed + i * images-per-prompt + k (default 0)")
    shapes.add_argument("--limit", type=_positive_int, metavar="N",
                        help="only the first N prompts of each task (quick checks)")
    shapes.add_argument("--tasks", type=_task_list, metavar="T1,T2",
                        help="only these tasks, comma-separated, e.g. single_object,colors (default: all)")
    shapes.add_argument("--batch-prompts", type=_positive_int, default=32, metavar="N",
                        help="prompts per sampler call (default 32)")
    shapes.add_argument("--prompts", metavar="FILE",
                        help="benchmark prompt file (default: the packaged shapes benchmark)")
    truth = shapes.add_argument_group("ground truth only")
    truth.add_argument("--size", type=_positive_int, metavar="PX", help="render size in pixels (default 64)")
    truth.add_argument("--degrade", action="store_true", help="blur (sigma 1 px) and JPEG (q60) the images first")
    truth.add_argument("--through-tokenizer", metavar="DIR",
                       help="encode and decode the scenes (rendered at its image size) with this visual tokenizer "
                            "first: the best score a model drawing with its codes can reach")
    truth.add_argument("--grid", type=_positive_int, metavar="N",
                       help="redraw each prompt's scene with its objects on whole cells of an N x N grid (as `mmgen "
                            "data shapes --grid N` does) instead of the benchmark's own scenes")
    _add_sampling_arguments(shapes)
    shapes.set_defaults(handler=_run_shapes)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    add_sampling_options(parser)
    add_checkpoint_options(parser)


def _grid_layout(grid: int | None):
    from mmgen.data_engine.shapes.scenes import Layout
    from mmgen.errors import UserError

    if grid is None:
        return None
    try:
        return Layout(grid=grid)
    except ValueError as err:
        raise UserError(f"--grid: {err}") from None


def _task_list(text: str) -> list[str]:
    tasks = [task.strip() for task in text.split(",") if task.strip()]
    if not tasks:
        raise argparse.ArgumentTypeError("expected task names separated by commas, e.g. single_object,colors")
    return tasks


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


# ---- handlers -------------------------------------------------------------------------------------------------


def _run_geneval(args) -> int:
    from mmgen.eval.geneval.runner import load_geneval_metadata, run_geneval
    from mmgen.eval.reports import geneval_report

    score, classnames = _geneval_scorer(args)  # a bad detector or official setup fails here, before generating
    run = {}
    if not args.score_only:
        _require_for_generation(args, "model", "metadata")
        _check_classes(load_geneval_metadata(args.metadata), classnames, args.metadata)
        generate_images, run = _open_sampler(args)
        counts = run_geneval(generate_images, args.metadata, args.out, args.images_per_prompt, args.seed,
                             args.batch_prompts)
        _print_counts(counts)
    summary, records = score(args.out)
    paths = geneval_report(args.out, {**summary, **run}, records)
    _print_scores("GenEval", summary)
    _print_reports(paths)
    return 0


def _run_dpg(args) -> int:
    from mmgen.eval.dpg import (
        check_judge_spec,
        load_dpg_prompts,
        load_dpg_questions,
        load_judge,
        read_dpg_results,
        run_dpg,
        score_dpg_folder,
    )
    from mmgen.eval.dpg.scorer import RESULTS_FILE
    from mmgen.eval.reports import dpg_report

    check_judge_spec(args.judge)
    load_dpg_questions(args.questions)
    if not args.score_only:
        _require_for_generation(args, "model", "prompts")
    prompts = load_dpg_prompts(args.prompts) if args.prompts else None
    run = {}
    if not args.score_only:
        generate_images, run = _open_sampler(args)
        _print_counts(run_dpg(generate_images, args.prompts, args.out, args.seed, args.batch_prompts))
    summary = score_dpg_folder(args.out, args.questions, load_judge(args.judge), progress=True)
    records = read_dpg_results(Path(args.out) / RESULTS_FILE)
    paths = dpg_report(args.out, {**summary, **run}, records, prompts)
    _print_scores("DPG-Bench", summary, scale=100.0)
    _print_reports(paths)
    return 0


def _run_shapes(args) -> int:
    from mmgen.errors import UserError
    from mmgen.eval.shapes_benchmark import (
        TokenizerRoundTrip,
        benchmark_prompts,
        blur_and_jpeg,
        score_generator,
        score_ground_truth,
    )

    if args.ground_truth:
        if args.through_tokenizer and (args.size or args.degrade):
            raise UserError("--through-tokenizer renders at the tokenizer's image size and is its own degradation: "
                            "drop --size and --degrade")
        round_trip = TokenizerRoundTrip(args.through_tokenizer) if args.through_tokenizer else None
        summary = score_ground_truth(args.out, size=args.size or 64, degrade=blur_and_jpeg() if args.degrade else None,
                                     benchmark_path=args.prompts, limit=args.limit, round_trip=round_trip,
                                     tasks=args.tasks, layout=_grid_layout(args.grid))
        _print_scores("shapes benchmark: ground truth" + (" through the tokenizer" if round_trip else ""), summary)
    else:
        if args.size or args.degrade or args.through_tokenizer or args.grid:
            raise UserError("--size, --degrade, --through-tokenizer and --grid apply to --ground-truth; a model's "
                            "images are scored at the size its visual tokenizer decodes")
        benchmark_prompts(args.prompts, args.limit, args.tasks)  # a bad prompt file fails before the checkpoint loads
        generate_images, run = _open_sampler(args)
        summary = score_generator(generate_images, args.out, args.images_per_prompt, args.seed, args.limit,
                                  args.batch_prompts, args.prompts, details=run, tasks=args.tasks)
        _print_scores("shapes benchmark", summary)
        print(f"images scored at {summary['size']} px, where the ground truth of these prompts scores "
              f"{summary['ground_truth_overall']:.3f} (the ceiling)")
    _print_reports({name: Path(args.out) / name for name in REPORT_FILES})
    return 0


# ---- shared steps ---------------------------------------------------------------------------------------------


def _require_for_generation(args, *names: str) -> None:
    from mmgen.errors import UserError

    missing = [f"--{name}" for name in names if not getattr(args, name)]
    if missing:
        raise UserError(f"generating needs {' and '.join(missing)} (or --score-only to score the images in --out)")


def _open_sampler(args) -> tuple[Callable, dict]:
    """Check the checkpoint's mmgen.json and the sampling settings, then load the checkpoint.

    Returns the runners' `generate_images(prompts, images_per_prompt, seed)` with this command's sampling settings,
    and the settings for the reports.
    """
    generator, config = open_generator(args, sampling_settings(args))

    def generate_images(prompts: list[str], images_per_prompt: int, seed: int):
        return generator.generate(prompts, config, num_images=images_per_prompt, seed=seed)

    sampling = {key: value for key, value in config.to_dict().items() if key not in ("num_images", "seed")}
    return generate_images, {"model": str(args.model), "sampling": sampling,
                             "precision": generator.precision.to_dict()}


def _geneval_scorer(args) -> tuple[Callable[[str], tuple[dict, list[dict]]], tuple[str, ...]]:
    """Check the chosen scorer without loading it; returns `score(out_dir) -> (summary, per-image records)` and the
    object classes its detector knows."""
    from mmgen.errors import UserError
    from mmgen.eval.geneval.object_names import GENEVAL_OBJECT_NAMES

    official = (args.official_script, args.official_python, args.official_model_dir)
    if any(official):
        if args.detector or args.color_classifier:
            raise UserError("choose one scorer: --detector (with --color-classifier) or the official script")
        if not all(official):
            raise UserError("the official GenEval script needs --official-script, --official-python and "
                            "--official-model-dir")
        from mmgen.eval.geneval.official import check_official_setup

        check_official_setup(args.official_script, args.official_model_dir, args.official_python)
        return partial(_score_official, script=args.official_script, python=args.official_python,
                       model_dir=args.official_model_dir), GENEVAL_OBJECT_NAMES  # Mask2Former on COCO's classes
    if not args.detector:
        raise UserError("give a --detector (shapes, owlv2:PATH or grounding-dino:PATH) or the official script "
                        "(--official-script, --official-python, --official-model-dir)")
    from mmgen.eval.detectors import check_color_classifier_spec, check_detector_spec
    from mmgen.eval.detectors.registry import detector_classnames

    check_detector_spec(args.detector)
    if args.color_classifier:
        check_color_classifier_spec(args.color_classifier)
    return (partial(_score_with_detector, detector_spec=args.detector, color_spec=args.color_classifier),
            detector_classnames(args.detector))


def _check_classes(prompts: list[dict], classnames: tuple[str, ...], metadata_path: str) -> None:
    """Every class the prompts name must be one the detector finds: the scorer would refuse after generating."""
    from mmgen.errors import UserError

    wanted = {clause["class"] for prompt in prompts for clause in prompt["include"] + prompt.get("exclude", [])}
    unknown = sorted(wanted - set(classnames))
    if unknown:
        raise UserError(f"{metadata_path} names classes the detector does not know ({', '.join(map(repr, unknown))});"
                        f" it knows {', '.join(classnames[:8])}{', ...' if len(classnames) > 8 else ''}")


def _score_with_detector(out_dir: str, detector_spec: str, color_spec: str | None) -> tuple[dict, list[dict]]:
    from mmgen.eval.detectors import load_color_classifier, load_detector
    from mmgen.eval.geneval.results import read_results
    from mmgen.eval.geneval.runner import RESULTS_FILE, score_geneval_folder

    colors = load_color_classifier(color_spec) if color_spec else None
    summary = score_geneval_folder(out_dir, load_detector(detector_spec), colors, progress=True)
    return summary, read_results(Path(out_dir) / RESULTS_FILE)


def _score_official(out_dir: str, script: str, python: str, model_dir: str) -> tuple[dict, list[dict]]:
    from mmgen.eval.geneval.official import OFFICIAL_RESULTS_FILE, run_official_geneval
    from mmgen.eval.geneval.results import read_results

    summary = run_official_geneval(out_dir, script, model_dir, python=python)
    return summary, read_results(Path(out_dir) / OFFICIAL_RESULTS_FILE)


# ---- output ---------------------------------------------------------------------------------------------------


def _print_counts(counts: dict) -> None:
    print(f"{counts['generated']} prompts generated, {counts['skipped']} already done, in {counts['out_dir']}")


def _print_scores(title: str, summary: dict, scale: float = 1.0) -> None:
    """Score per task; GenEval-style summaries count images per task, DPG-Bench's only overall."""
    from rich.console import Console
    from rich.table import Table

    from mmgen.eval.reports import format_score

    per_task = summary["images"] if isinstance(summary["images"], dict) else {}
    total = sum(per_task.values()) if per_task else summary["images"]
    table = Table(title=title)
    table.add_column("task")
    table.add_column("score", justify="right")
    table.add_column("images", justify="right")
    for task, score in {**summary["tasks"], **summary.get("other_tasks", {})}.items():
        table.add_row(task, format_score(score, scale), str(per_task.get(task, "")))
    table.add_row("overall", format_score(summary["overall"], scale), str(total), style="bold")
    Console().print(table)


def _print_reports(paths: dict) -> None:
    print("reports: " + ", ".join(str(path) for path in paths.values()))
