"""`mmgen tokenizer`: train, evaluate and run visual tokenizers."""

from __future__ import annotations

from pathlib import Path


def add_parser(verbs) -> None:
    tokenizer = verbs.add_parser("tokenizer", help="train, evaluate and run visual tokenizers",
                                 description="Visual tokenizers: images <-> discrete codes.")
    actions = tokenizer.add_subparsers(dest="tokenizer_verb", metavar="ACTION", required=True)

    train = actions.add_parser("train", help="train a tokenizer from a recipe",
                               description="Train a visual tokenizer (resumes from the last checkpoint).")
    add_recipe_arguments(train)
    train.set_defaults(handler=run_tokenizer_train)

    evaluate = actions.add_parser("eval", help="reconstruction, codebook and detector-fidelity metrics",
                                  description="PSNR, SSIM, codebook usage, code perplexity and detector fidelity.")
    evaluate.add_argument("--tokenizer", required=True, help="tokenizer directory (mmgen or diffusers VQModel)")
    evaluate.add_argument("--data", required=True,
                          help="'shapes' (held-out procedural scenes), an image folder, a datasets dir or parquet")
    evaluate.add_argument("--num", type=int, default=500, help="images to evaluate (default 500)")
    evaluate.add_argument("--json", help="also write the metrics to this JSON file")
    evaluate.add_argument("--no-detector", action="store_true", help="skip detector fidelity (non-shapes data)")
    evaluate.add_argument("--grid", metavar="PNG",
                          help="also save the first 8 images (top row) above their reconstructions (bottom row)")
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


def add_recipe_arguments(parser) -> None:
    parser.add_argument("recipe", help="YAML recipe")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="dotted overrides, e.g. training.max_steps=100")
    resume = parser.add_argument_group("an output_dir that already holds checkpoints of a run with other settings")
    resume.add_argument("--restart", action="store_true",
                        help="remove that run's checkpoints and log and start afresh")
    resume.add_argument("--accept-changes", action="store_true",
                        help="resume from its checkpoints under the new settings (default: refuse; the step "
                             "budget and logging/saving cadence may always change)")


def run_tokenizer_train(args) -> int:
    from mmgen.config import load_config, read_recipe_key
    from mmgen.train.run_record import check_resume
    from mmgen.train.tokenizer import TokenizerRecipe, train_tokenizer

    if read_recipe_key(args.recipe, "stage") == "semantic_tokenizer":
        from mmgen.cli.train import run_semantic_tokenizer_train

        return run_semantic_tokenizer_train(args)

    recipe = load_config(TokenizerRecipe, args.recipe, args.overrides)
    if getattr(args, "dry_run", False):
        from mmgen.config import config_to_yaml

        print(config_to_yaml(recipe), end="")
        print(f"recipe OK: {args.recipe}")
        return 0
    check_resume(recipe, recipe.output_dir, restart=args.restart, accept_changes=args.accept_changes)
    final = train_tokenizer(recipe)
    print(f"tokenizer saved to {final}")
    return 0


def _run_tokenizer_eval(args) -> int:
    import json

    from mmgen.tokenizers.tools import evaluate_on, open_tokenizer, reconstruction_grid

    tokenizer = open_tokenizer(args.tokenizer)  # loaded once for the metrics and the grid
    metrics = evaluate_on(tokenizer, args.data, args.num, detector=not args.no_detector)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.json:
        from mmgen.files import write_json_atomic

        write_json_atomic(args.json, metrics)
    if args.grid:
        Path(args.grid).parent.mkdir(parents=True, exist_ok=True)
        reconstruction_grid(tokenizer, args.data).save(args.grid)
    return 0


def _run_tokenizer_stats(args) -> int:
    import json

    from mmgen.tokenizers.tools import open_tokenizer, statistics_on

    stats = statistics_on(open_tokenizer(args.tokenizer), args.data, args.num)
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
