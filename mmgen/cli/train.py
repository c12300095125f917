"""`mmgen train RECIPE`: dispatch a recipe to its stage by its `stage` key."""

from __future__ import annotations

from mmgen.cli.tokenizer import add_recipe_arguments, run_tokenizer_train


def add_parser(verbs) -> None:
    train = verbs.add_parser("train", help="run a training recipe (the recipe's `stage` picks the trainer)",
                             description="Run a training recipe. Stages in this version: tokenizer.")
    add_recipe_arguments(train)
    train.set_defaults(handler=_run_train)


TRAINING_STAGES = {"tokenizer": run_tokenizer_train}


def _run_train(args) -> int:
    from mmgen.config import ConfigError, read_recipe_key

    stage = read_recipe_key(args.recipe, "stage")
    if stage not in TRAINING_STAGES:
        raise ConfigError(f"{args.recipe}: key 'stage' is {stage!r}; stages in this version: "
                          f"{', '.join(TRAINING_STAGES)}")
    return TRAINING_STAGES[stage](args)
