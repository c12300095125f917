"""`mmgen data build RECIPE`: pre-tokenized sources -> one SFT data set of token ids, with train and eval splits.

Sequences come from the unified checkpoint's text tokenizer, `mmgen.json` image token ids and prompt format through
`PromptBuilder` (image ids are built from codes, never by tokenizing strings); the LM weights are not loaded.
Output (`output_dir`, `datasets.DatasetDict.save_to_disk`):

    train / eval    input_ids, completion_mask, task, source, source_row, uncond
    build_info.json image_tokens and tokens_per_image copied from mmgen.json, per-source counts, settings

Order of work, per source: build each row's conditional example; drop rows longer than `max_length` (counted);
hold out eval rows (distinct rows, never repeated, never in train); sample the train rows to the source's weight
share (see `mixture`); replace `cond_dropout` of the t2i / edit train examples by their unconditional form
(caption or instruction dropped). Then all train rows are shuffled together.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, List, Value, concatenate_datasets

from mmgen.checkpoint import load_text_tokenizer, read_meta
from mmgen.config import must_exist
from mmgen.errors import UserError
from mmgen.files import atomic_directory
from mmgen.sequences import PromptBuilder
from mmgen.vocab import ImageVocab

from .mixture import DROPOUT, SAMPLE, SPLIT, dropout_mask, proportional_counts, repeat_sample, rng_for, split_eval
from .pretokenize import SOURCE_ROW_COLUMN
from .readers import TASKS, TEXT_FIELDS
from .sources import stable_hash
from .tokenized import CODE_COLUMNS, SKIPPED_NAME, Tokenized, empty_split_shards, load_tokenized, tokenizer_fingerprint

BUILD_INFO_NAME = "build_info.json"
BUILD_FORMAT_VERSION = 1
DEFAULT_EVAL_FRACTION = 0.02
MAX_EVAL_SHARE = 0.25  # an eval_size meant for a large corpus never takes more than this share of a small one
CONDITIONED_TASKS = ("t2i", "edit")  # tasks whose condition cond_dropout may drop (understanding has none)
EXAMPLE_FEATURES = Features({
    "input_ids": List(Value("int64")),
    "completion_mask": List(Value("int8")),
    "task": Value("string"),
    "source": Value("int32"),  # index into build_info.json's sources
    SOURCE_ROW_COLUMN: Value("int64"),  # the row's index in its original source (see the tokenized data set)
    "uncond": Value("bool"),  # the caption / instruction was dropped (classifier-free guidance's branch)
})


@dataclass
class MixtureSource:
    path: str = must_exist()  # a tokenized directory (`mmgen data tokenize`), or a sharded run's parent directory
    task: str | None = None  # optional check: must equal the task the data was tokenized for
    weight: float = 1.0  # share of the train split: weight / sum(weights)


@dataclass
class DataBuildRecipe:
    model: str = must_exist()  # unified checkpoint (`mmgen init`): text tokenizer + mmgen.json, no LM weights read
    sources: list[MixtureSource] = field(default_factory=list)
    output_dir: str = "data/built"
    stage: str = "data"
    train_size: int | None = None  # train rows of the mixture; None: the sum of the sources' train rows
    eval_size: int | None = None  # eval rows in all (split over sources by weight); or give eval_fraction
    eval_fraction: float | None = None  # eval_size = fraction x all usable rows; 0.02 when neither is given
    cond_dropout: float = 0.1  # share of t2i / edit train examples whose caption / instruction is dropped
    max_length: int | None = None  # longer examples are skipped (counted in build_info.json)
    seed: int = 0

    def __post_init__(self):
        if self.stage != "data":
            raise ValueError(f"stage must be 'data' for a data recipe, got {self.stage!r}")
        if not self.sources:
            raise ValueError("sources is empty: list at least one tokenized directory (path, weight)")
        for index, source in enumerate(self.sources):
            if not Path(source.path).exists():
                raise ValueError(f"key 'sources[{index}].path' points to a missing path: {source.path} "
                                 "(create it with `mmgen data tokenize`)")
            if source.task is not None and source.task not in TASKS:
                raise ValueError(f"sources[{index}].task must be one of {', '.join(TASKS)}, got {source.task!r}")
            if source.weight < 0:
                raise ValueError(f"sources[{index}].weight must be >= 0, got {source.weight}")
        if sum(source.weight for source in self.sources) <= 0:
            raise ValueError("the source weights sum to 0: give at least one source a positive weight")
        if self.eval_size is not None and self.eval_fraction is not None:
            raise ValueError("give eval_size or eval_fraction, not both")
        if self.eval_size is not None and self.eval_size < 0:
            raise ValueError(f"eval_size must be >= 0, got {self.eval_size}")
        if self.eval_fraction is not None and not 0 <= self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if not 0 <= self.cond_dropout < 1:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be >= 1, got {self.train_size}")


class ExampleMaker:
    """Token ids of each task's training example, through `PromptBuilder` (the only place sequences are made)."""

    def __init__(self, prompts: PromptBuilder, task: str):
        self.prompts, self.task = prompts, task

    def conditional(self, row: dict[str, Any]) -> dict[str, list[int]]:
        if self.task == "t2i":
            return self.prompts.text_to_image_example(row["caption"], row["codes"])
        if self.task == "edit":
            return self.prompts.edit_example(row["source_codes"], row["instruction"], row["target_codes"])
        return self.prompts.understanding_example(row["codes"], row["question"], row["answer"])

    def unconditional(self, row: dict[str, Any]) -> dict[str, list[int]]:
        if self.task == "t2i":
            return self.prompts.text_to_image_example(None, row["codes"])
        if self.task == "edit":
            return self.prompts.edit_example(row["source_codes"], None, row["target_codes"])
        raise ValueError(f"task {self.task} has no unconditional form")

    def conditional_batch(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        examples = [self.conditional(row) for row in rows]
        return {"input_ids": [e["input_ids"] for e in examples],
                "completion_mask": [e["completion_mask"] for e in examples],
                "length": [len(e["input_ids"]) for e in examples]}


@dataclass
class SourcePlan:
    """One source's part in the build: its rows after the length filter, and how many go to eval and train."""

    spec: MixtureSource
    tokenized: Tokenized
    examples: Dataset  # one conditional example per row (plus the columns needed to rebuild it unconditionally)
    kept: np.ndarray  # rows of `examples` within max_length
    too_long: int
    longest: int
    tokenizer_matches_model: bool
    eval_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    train_pool: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def task(self) -> str:
        return self.tokenized.task


def build_dataset(recipe: DataBuildRecipe, log: Callable[[str], None] = print) -> Path:
    """Run a data recipe; returns `output_dir` holding the DatasetDict and build_info.json."""
    model = Path(recipe.model)
    meta = read_meta(model)
    tokenizer = load_text_tokenizer(model)
    vocab = ImageVocab.from_dict(meta["image_tokens"])
    vocab.check_tokenizer(tokenizer)
    prompts = PromptBuilder(tokenizer, vocab, meta["prompt_format"])
    model_fingerprint = tokenizer_fingerprint(model / meta["visual_tokenizer"])
    out = Path(recipe.output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Intermediate map outputs go to a scratch directory next to the output (same disk), never into the sources.
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.work-", dir=out.parent) as scratch:
        plans = [_plan_source(index, spec, meta, model, model_fingerprint, prompts, recipe, Path(scratch), log)
                 for index, spec in enumerate(recipe.sources)]
        _split_eval(plans, recipe, log)
        splits, reports = _mix(plans, recipe, prompts, Path(scratch), log)
        info = _build_info(recipe, model, meta, splits, reports)
        try:
            with atomic_directory(out, replace_marker=BUILD_INFO_NAME) as staging:
                splits.save_to_disk(str(staging), num_shards=empty_split_shards(splits))
                (staging / BUILD_INFO_NAME).write_text(json.dumps(info, indent=2) + "\n")
        except FileExistsError as err:
            raise UserError(f"{err}; pick another output_dir") from None
    log(f"train {len(splits['train'])} rows, eval {len(splits['eval'])} rows -> {out}")
    return out


def _mix(plans: list[SourcePlan], recipe: DataBuildRecipe, prompts: PromptBuilder, scratch: Path,
         log: Callable[[str], None]) -> tuple[DatasetDict, list[dict[str, Any]]]:
    """Sample each source's train rows to its weight share, drop conditions, shuffle; eval rows as they are."""
    total = recipe.train_size or sum(plan.train_pool.size for plan in plans)
    if total == 0:
        raise UserError("no rows left for training: every row is held out for eval or longer than max_length")
    train_parts, eval_parts, reports = [], [], []
    for index, (plan, count) in enumerate(zip(plans, proportional_counts(total, [p.spec.weight for p in plans]),
                                              strict=True)):
        if count and plan.train_pool.size == 0:
            raise UserError(f"{plan.spec.path}: no rows left for training (all held out or too long)")
        rows = repeat_sample(plan.train_pool, count, rng_for(recipe.seed, index, SAMPLE))
        uncond = (dropout_mask(count, recipe.cond_dropout, rng_for(recipe.seed, index, DROPOUT))
                  if plan.task in CONDITIONED_TASKS else np.zeros(count, dtype=bool))
        maker = ExampleMaker(prompts, plan.task)
        train_parts.append(_finalize(plan.examples, rows, uncond, maker, index, scratch / f"train-{index}"))
        eval_parts.append(_finalize(plan.examples, plan.eval_rows, np.zeros(plan.eval_rows.size, dtype=bool),
                                    maker, index, scratch / f"eval-{index}"))
        reports.append(_source_report(plan, count, int(uncond.sum())))
        log(_source_line(index, reports[-1]))
        if plan.task in CONDITIONED_TASKS and recipe.cond_dropout > 0 and not uncond.any():
            log(f"warning: source {index} has {count} train rows, too few for cond_dropout {recipe.cond_dropout:g} "
                "to drop any condition: the model gets no unconditional rows, so CFG has no branch to guide from")
    splits = DatasetDict({"train": concatenate_datasets(train_parts).shuffle(seed=recipe.seed),
                          "eval": concatenate_datasets(eval_parts)})
    return splits, reports


def _plan_source(index: int, spec: MixtureSource, meta: dict, model: Path, model_fingerprint: str,
                 prompts: PromptBuilder, recipe: DataBuildRecipe, scratch: Path,
                 log: Callable[[str], None]) -> SourcePlan:
    tokenized = load_tokenized(spec.path)
    if len(tokenized.dataset) == 0:
        skipped = tokenized.info.get("rows", {}).get("skipped", 0)
        raise UserError(f"sources[{index}] ({spec.path}) has no rows: {skipped} were skipped when it was tokenized "
                        f"(listed in its {SKIPPED_NAME}); fix or replace those images and re-run "
                        "`mmgen data tokenize`, or drop the source")
    if spec.task is not None and spec.task != tokenized.task:
        raise UserError(f"sources[{index}] ({spec.path}) says task {spec.task} but was tokenized for "
                        f"{tokenized.task}; re-run `mmgen data tokenize --task {spec.task}` or fix the recipe")
    check_compatible(tokenized, meta, model)
    matches = tokenized.visual_tokenizer.get("fingerprint") == model_fingerprint
    if not matches:
        log(f"warning: {spec.path} was tokenized with {tokenized.visual_tokenizer['path']}, whose weights differ "
            f"from {model / meta['visual_tokenizer']}: its codes may mean other images to this model")
    maker = ExampleMaker(prompts, tokenized.task)
    needed = {SOURCE_ROW_COLUMN, *TEXT_FIELDS[tokenized.task], *CODE_COLUMNS[tokenized.task]}
    dataset = tokenized.dataset
    examples = dataset.map(maker.conditional_batch, batched=True, batch_size=1000,
                           remove_columns=[c for c in dataset.column_names if c not in needed],
                           cache_file_name=str(scratch / f"examples-{index}.arrow"),
                           new_fingerprint=stable_hash("examples", index, dataset._fingerprint),
                           desc=f"building {tokenized.task} sequences")
    lengths = np.asarray(examples["length"], dtype=np.int64)
    limit = recipe.max_length or np.iinfo(np.int64).max
    kept = np.flatnonzero(lengths <= limit)
    too_long = int(lengths.size - kept.size)
    if too_long:
        log(f"{spec.path}: skipped {too_long} of {lengths.size} rows longer than max_length {recipe.max_length} "
            f"(longest {int(lengths.max())} tokens)")
    return SourcePlan(spec, tokenized, examples, kept, too_long, int(lengths.max()) if lengths.size else 0, matches)


def check_compatible(tokenized: Tokenized, meta: dict, model: Path) -> None:
    """Refuse codes from a visual tokenizer whose codebook or tokens per image differ from the model's."""
    visual = tokenized.visual_tokenizer
    want_codes, want_tokens = meta["image_tokens"]["codebook_size"], meta["tokens_per_image"]
    if visual["codebook_size"] != want_codes or visual["num_tokens"] != want_tokens:
        raise UserError(
            f"{tokenized.path} was tokenized with {visual['path']} ({visual['codebook_size']} codes, "
            f"{visual['num_tokens']} tokens per image) but {model} expects {want_codes} codes and {want_tokens} "
            f"tokens per image (mmgen.json); re-tokenize with `--tokenizer {model / meta['visual_tokenizer']}`")


def _split_eval(plans: list[SourcePlan], recipe: DataBuildRecipe, log: Callable[[str], None] = print) -> None:
    """Hold out eval rows: `eval_size` (or `eval_fraction` of all kept rows) split over sources by weight.

    An `eval_size` above MAX_EVAL_SHARE of the rows (a recipe written for a larger corpus) is cut to that share, and
    a source keeps at least one train row when it has a positive weight.
    """
    available = sum(plan.kept.size for plan in plans)
    if recipe.eval_size is not None:
        total = recipe.eval_size
        cap = int(MAX_EVAL_SHARE * available)
        if total > cap:
            log(f"warning: eval_size {total} would hold out {total} of {available} rows; holding out {cap} "
                f"({MAX_EVAL_SHARE:.0%}) so training keeps the rest (set eval_size or eval_fraction to choose)")
            total = cap
    else:
        fraction = DEFAULT_EVAL_FRACTION if recipe.eval_fraction is None else recipe.eval_fraction
        total = int(round(fraction * available))
    wanted = proportional_counts(total, [plan.spec.weight for plan in plans])
    for index, (plan, count) in enumerate(zip(plans, wanted, strict=True)):
        keep_for_train = 1 if plan.spec.weight > 0 else 0
        count = max(0, min(count, plan.kept.size - keep_for_train))
        eval_positions, train_positions = split_eval(plan.kept.size, count, rng_for(recipe.seed, index, SPLIT))
        plan.eval_rows, plan.train_pool = plan.kept[eval_positions], plan.kept[train_positions]


def _finalize(examples: Dataset, rows: np.ndarray, uncond: np.ndarray, maker: ExampleMaker, source: int,
              cache: Path) -> Dataset:
    """The chosen rows (repeats allowed) as final examples; rows flagged in `uncond` lose their condition."""
    def finish(batch: dict[str, list], positions: list[int]) -> dict[str, list]:
        input_ids, masks = list(batch["input_ids"]), list(batch["completion_mask"])
        flags = [bool(uncond[position]) for position in positions]
        for offset, flag in enumerate(flags):
            if flag:
                row = {name: batch[name][offset] for name in batch}
                example = maker.unconditional(row)
                input_ids[offset], masks[offset] = example["input_ids"], example["completion_mask"]
        return {"input_ids": input_ids, "completion_mask": masks, "task": [maker.task] * len(flags),
                "source": [source] * len(flags), SOURCE_ROW_COLUMN: batch[SOURCE_ROW_COLUMN], "uncond": flags}

    selected = examples.select(rows.tolist())
    return selected.map(finish, batched=True, batch_size=1000, with_indices=True,
                        remove_columns=[c for c in selected.column_names if c not in EXAMPLE_FEATURES],
                        features=EXAMPLE_FEATURES, cache_file_name=str(cache) + ".arrow",
                        new_fingerprint=stable_hash("finalize", str(cache), rows.tobytes(), uncond.tobytes()),
                        desc="finishing examples")


def _source_report(plan: SourcePlan, train_rows: int, uncond_rows: int) -> dict[str, Any]:
    pool = plan.train_pool.size
    return {
        "path": str(Path(plan.spec.path).resolve()),
        "task": plan.task,
        "weight": plan.spec.weight,
        "rows": len(plan.examples),
        "skipped_too_long": plan.too_long,
        "longest": plan.longest,
        "eval_rows": int(plan.eval_rows.size),
        "train_pool": int(pool),
        "train_rows": train_rows,
        "repeats": round(train_rows / pool, 3) if pool else 0.0,
        "uncond_rows": uncond_rows,
        "visual_tokenizer": plan.tokenized.visual_tokenizer["path"],
        "tokenizer_matches_model": plan.tokenizer_matches_model,
    }


def _source_line(index: int, report: dict[str, Any]) -> str:
    dropped = f", {report['uncond_rows']} without condition" if report["task"] in CONDITIONED_TASKS else ""
    return (f"source {index} {report['path']} ({report['task']}, weight {report['weight']:g}): {report['rows']} rows"
            f", {report['skipped_too_long']} too long, {report['eval_rows']} eval, {report['train_rows']} train "
            f"(x{report['repeats']:.2f} of {report['train_pool']}){dropped}")


def _build_info(recipe: DataBuildRecipe, model: Path, meta: dict, splits: DatasetDict,
                reports: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format_version": BUILD_FORMAT_VERSION,
        "model": str(model.resolve()),
        # Copied from mmgen.json: the trainer checks them against its model before training.
        "image_tokens": meta["image_tokens"],
        "tokens_per_image": meta["tokens_per_image"],
        "grid_shape": meta.get("grid_shape"),
        "prompt_format": meta["prompt_format"],
        "splits": {name: len(split) for name, split in splits.items()},
        "seed": recipe.seed,
        "cond_dropout": recipe.cond_dropout,
        "max_length": recipe.max_length,
        "skipped_too_long": sum(report["skipped_too_long"] for report in reports),
        "sources": reports,
    }
