"""`mmgen data`: build datasets."""

from __future__ import annotations


def add_parser(verbs) -> None:
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
