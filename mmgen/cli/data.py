"""`mmgen data`: make shapes data, pre-tokenize sources to visual codes, merge shards, build SFT mixtures.

The chain: `mmgen data shapes` (or your own images) -> `mmgen data tokenize` (images -> codes, once) ->
`mmgen data build RECIPE` (codes + text -> token ids for the SFT trainer).
"""

from __future__ import annotations

TASK_CHOICES = ("t2i", "edit", "understanding")


def add_parser(verbs) -> None:
    data = verbs.add_parser("data", help="build and inspect datasets",
                            description="Make, pre-tokenize and mix datasets.")
    actions = data.add_subparsers(dest="data_verb", metavar="ACTION", required=True)

    shapes = actions.add_parser(
        "shapes",
        help="write a procedural shapes-world dataset",
        description="Render a reproducible shapes-world dataset (Hugging Face `datasets` directory).",
    )
    shapes.add_argument("--num", type=int, required=True, help="number of rows")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels (32-256, default 64)")
    shapes.add_argument("--out", required=True, help="output directory (datasets.save_to_disk format)")
    shapes.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    kind = shapes.add_mutually_exclusive_group()
    kind.add_argument("--edits", action="store_true", help="write edit triplets (source, instruction, target)")
    kind.add_argument("--questions", action="store_true",
                      help="write questions with exact answers about each image (image, question, answer)")
    shapes.add_argument("--tasks", help="comma-separated tasks to draw from (uniformly): GenEval tasks and 'describe' "
                        "for images (default: half describe, half GenEval), edit types with --edits (default: all)")
    shapes.add_argument("--grid", type=int, metavar="N",
                        help="images only: stand every object on whole cells of an N x N grid (use the visual "
                        "tokenizer's code grid, e.g. 8 for 64 codes); default: anywhere, any size")
    shapes.add_argument("--span", type=int, metavar="K",
                        help="with --grid: every object K x K cells (default: the fewest the detector reads, "
                        "1 on a 4 x 4 grid, 2 on an 8 x 8 one)")
    shapes.set_defaults(handler=_run_data_shapes)

    tokenize = actions.add_parser(
        "tokenize",
        help="encode a source's images to visual codes once (cached, shardable)",
        description="Read a source, skip and report bad rows, encode every image with a visual tokenizer and write "
        "a datasets directory of codes + text, with tokenize_info.json and skipped.jsonl. Re-running the same "
        "command reuses the cached codes.",
    )
    tokenize.add_argument("--data", required=True,
                          help="'shapes' (with --num), a captions table (.jsonl/.json/.csv), an image folder with "
                          "captions.jsonl/captions.csv/metadata.jsonl/metadata.csv, a datasets directory or parquet")
    tokenize.add_argument("--tokenizer", required=True,
                          help="visual tokenizer directory, or a unified checkpoint (its visual_tokenizer/ is used)")
    tokenize.add_argument("--out", required=True, help="output directory (shard i of N goes to OUT/shard-i-of-N)")
    tokenize.add_argument("--task", choices=TASK_CHOICES, default="t2i", help="what the rows are (default t2i)")
    tokenize.add_argument("--batch-size", type=int, default=64, help="images per encoder call (default 64)")
    tokenize.add_argument("--num-shards", type=int, default=1, help="split the rows into N contiguous shards")
    tokenize.add_argument("--shard-index", type=int, default=0, help="which shard this process encodes (0..N-1)")
    tokenize.add_argument("--num-proc", type=int,
                          help="CPU worker processes for encoding, one torch thread each (default: this process); "
                          "on a busy machine one worker per core is much faster than one process with many threads")
    tokenize.add_argument("--threads", type=int,
                          help="torch threads when encoding in this process (default: torch's own setting)")
    tokenize.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when present)")
    tokenize.add_argument("--cache-dir", help="where encoded batches are cached (default: HF_DATASETS_CACHE/"
                          "mmgen_tokenize)")
    tokenize.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                          help="read a field from another column, e.g. caption=text (repeatable)")
    tokenize.add_argument("--allow-outside-paths", action="store_true",
                          help="read image paths that lead outside the data's folder (../x.jpg, absolute paths); "
                               "by default such rows are skipped and listed")
    tokenize.add_argument("--num", type=int, help="shapes source only: number of rows to render")
    tokenize.add_argument("--seed", type=int, default=0, help="shapes source only: random seed (default 0)")
    tokenize.set_defaults(handler=_run_data_tokenize)

    merge = actions.add_parser("merge", help="write a sharded tokenize run as one directory",
                               description="Concatenate the finished shards of a `mmgen data tokenize "
                               "--num-shards N` run (in shard order) into one tokenized directory.")
    merge.add_argument("shards", help="the --out directory of the sharded run")
    merge.add_argument("--out", required=True, help="output directory")
    merge.set_defaults(handler=_run_data_merge)

    build = actions.add_parser("build", help="mix tokenized sources into SFT token ids (train/eval splits)",
                               description="Build input_ids / completion_mask sequences for a unified checkpoint "
                               "from tokenized sources, mixed by weight, with caption dropout for CFG.")
    build.add_argument("recipe", help="data recipe (YAML), e.g. recipes/data/shapes-t2i.yaml")
    build.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. seed=1")
    build.set_defaults(handler=_run_data_build)


def _run_data_shapes(args) -> int:
    import time

    from mmgen.data_engine.shapes.dataset import write_shapes_dataset
    from mmgen.data_engine.shapes.questions import write_shapes_vqa_dataset
    from mmgen.data_engine.shapes.scenes import Layout
    from mmgen.errors import UserError

    if args.num < 1:
        raise UserError(f"--num must be at least 1, got {args.num}")
    if not 32 <= args.size <= 256:
        raise UserError(f"--size must be between 32 and 256 pixels, got {args.size}")
    start = time.perf_counter()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if tasks and args.questions:
        raise UserError("--tasks applies to images and --edits, not --questions")
    if args.grid is not None and (args.questions or args.edits):
        raise UserError("--grid applies to images, not --edits or --questions (edits move objects off any grid)")
    if args.span is not None and args.grid is None:
        raise UserError("--span needs --grid N")
    try:
        layout = Layout(grid=args.grid, span=args.span)
    except ValueError as err:
        raise UserError(f"--grid/--span: {err}") from None
    if args.questions:
        write_shapes_vqa_dataset(args.out, num=args.num, size=args.size, seed=args.seed)
        kind = "questions"
    else:
        try:
            write_shapes_dataset(args.out, num=args.num, size=args.size, seed=args.seed, edits=args.edits, tasks=tasks,
                                 layout=layout)
        except ValueError as err:  # unknown task names, with the valid ones
            raise UserError(f"--tasks: {err}") from None
        kind = "edit triplets" if args.edits else "images"
    print(f"wrote {args.num} {kind} at {args.size}x{args.size} to {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def _parse_columns(items: list[str]) -> dict[str, str]:
    from mmgen.errors import UserError

    columns = {}
    for item in items:
        name, _, column = item.partition("=")
        if not name or not column:
            raise UserError(f"--column {item!r} must look like FIELD=COLUMN, e.g. caption=text")
        columns[name] = column
    return columns


def _run_data_tokenize(args) -> int:
    from mmgen.data_engine.pretokenize import summary_line, tokenize
    from mmgen.data_engine.tokenized import SKIPPED_NAME
    from mmgen.errors import UserError

    result = tokenize(args.data, args.tokenizer, args.out, task=args.task, num=args.num, seed=args.seed,
                      columns=_parse_columns(args.column), batch_size=args.batch_size, num_shards=args.num_shards,
                      shard_index=args.shard_index, num_proc=args.num_proc, threads=args.threads,
                      cache_dir=args.cache_dir, device=args.device, allow_outside_paths=args.allow_outside_paths)
    print(summary_line(result.info))
    if result.info["rows"]["skipped"]:
        print(f"skipped rows are listed in {result.path / SKIPPED_NAME}")
    print(f"wrote {result.path}")
    if result.info["rows"]["written"] == 0:
        raise UserError(f"no usable rows: all {result.info['rows']['read']} rows of {args.data} were skipped (see "
                        f"{result.path / SKIPPED_NAME}); the next stage has nothing to build from")
    return 0


def _run_data_merge(args) -> int:
    from mmgen.data_engine.tokenized import load_tokenized, merge_tokenized

    out = merge_tokenized(args.shards, args.out)
    info = load_tokenized(out).info
    print(f"merged {len(info['shards'])} shards: {info['rows']['written']} rows "
          f"({info['rows']['skipped']} skipped) -> {out}")
    return 0


def _run_data_build(args) -> int:
    from mmgen.config import load_config
    from mmgen.data_engine.build import DataBuildRecipe, build_dataset

    recipe = load_config(DataBuildRecipe, args.recipe, args.overrides)
    build_dataset(recipe)
    return 0
