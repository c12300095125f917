"""`mmgen train RECIPE`: dispatch a recipe to its stage by its `stage` key."""

from __future__ import annotations

from mmgen.cli.tokenizer import add_recipe_arguments, run_tokenizer_train


def add_parser(verbs) -> None:
    train = verbs.add_parser("train", help="run a training recipe (the recipe's `stage` picks the trainer)",
                             description="Run a training recipe. Stages: tokenizer, semantic_tokenizer, decoder, sft, "
                             "grpo. Under torchrun or accelerate launch, every process runs the same command.")
    add_recipe_arguments(train)
    train.add_argument("--dry-run", action="store_true",
                       help="load and check the recipe (keys, types, paths), print it, and stop")
    train.set_defaults(handler=_run_train)


def run_sft_train(args) -> int:
    from mmgen.train import sft

    return _run_recipe(args, sft.SFTRecipe, sft.check_requirements, sft.train_sft)


def run_grpo_train(args) -> int:
    from mmgen.train import grpo

    return _run_recipe(args, grpo.GRPORecipe, grpo.check_requirements, grpo.train_grpo, grpo.check_recipe_parts)


def _run_recipe(args, schema, check_requirements, train, check_parts=None, saved="unified checkpoint") -> int:
    """Load and check a recipe (keys, types, paths), then train, or with --dry-run print it and stop."""
    from mmgen.config import config_to_yaml, load_config
    from mmgen.errors import UserError
    from mmgen.train.run_record import check_resume

    recipe = load_config(schema, args.recipe, args.overrides)
    if getattr(args, "dry_run", False):
        print(config_to_yaml(recipe), end="")
        if check_parts is not None:
            check_parts(recipe)
        try:
            check_requirements(recipe)
        except UserError as problem:  # the recipe is valid; this machine cannot run it
            print(f"note: on this machine: {problem}")
        print(f"recipe OK: {args.recipe}")
        return 0
    check_requirements(recipe)
    check_resume(recipe, recipe.output_dir, restart=args.restart, accept_changes=args.accept_changes)
    final = train(recipe)
    print(f"{saved} saved to {final}")
    return 0


def run_semantic_tokenizer_train(args) -> int:
    from mmgen.train import semantic_tokenizer

    return _run_recipe(args, semantic_tokenizer.SemanticTokenizerRecipe, _no_requirements,
                       semantic_tokenizer.train_semantic_tokenizer, saved="semantic tokenizer")


def run_decoder_train(args) -> int:
    from mmgen.train import decoder

    return _run_recipe(args, decoder.DecoderRecipe, _no_requirements, decoder.train_decoder,
                       saved="diffusion decoder")


def _no_requirements(recipe) -> None:
    """Image-model stages run anywhere (CPU included)."""


TRAINING_STAGES = {"tokenizer": run_tokenizer_train, "semantic_tokenizer": run_semantic_tokenizer_train,
                   "decoder": run_decoder_train, "sft": run_sft_train, "grpo": run_grpo_train}


def _run_train(args) -> int:
    from mmgen.config import ConfigError, read_recipe_key

    stage = read_recipe_key(args.recipe, "stage")
    if stage not in TRAINING_STAGES:
        raise ConfigError(f"{args.recipe}: key 'stage' is {stage!r}; stages in this version: "
                          f"{', '.join(TRAINING_STAGES)}")
    return TRAINING_STAGES[stage](args)
