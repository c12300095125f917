"""The recipe's rewards over one batch of completions, as TRL reward functions, with mmgen's error policy.

TRL calls each reward function with the completions' token ids and the dataset's other columns. Here every
function decodes the ids into images once per batch (shared by all rewards), hands the user's signature
`(prompts, images, metadata)` its inputs, and checks what comes back. A reward that raises, returns a non-number,
NaN/inf or the wrong number of scores stops the run with its name and the offending prompt; with
`on_error="skip"` the offending samples are instead excluded from the update (all their rewards become NaN,
which TRL treats as unscorable: advantage 0) and counted in the log as `rewards/<name>/skipped`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from mmgen.errors import UserError
from mmgen.rewards.registry import RewardFn, build_reward

logger = logging.getLogger(__name__)

ON_ERROR = ("stop", "skip")

# completion ids -> images (None for an invalid span), and the per-row metadata dicts the rewards see
DecodeCompletions = Callable[[list[list[int]]], list[Image.Image | None]]


class RewardError(UserError):
    """A reward function failed or returned something unusable; the message names it and the prompt."""


@dataclass
class NamedReward:
    name: str
    function: RewardFn


class RewardSet:
    """The recipe's rewards, ready for TRL: `trl_functions()`, in recipe order (TRL applies `reward_weights`)."""

    def __init__(self, rewards: Sequence[NamedReward], decode: DecodeCompletions, on_error: str = "stop",
                 extra_metadata: Callable[[dict[str, list]], list[dict]] | None = None):
        if on_error not in ON_ERROR:
            raise UserError(f"on_reward_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        names = [r.name for r in rewards]
        if len(set(names)) != len(names):
            raise UserError(f"reward names must be unique (give 'label:' to tell two apart), got {names}")
        if not rewards:
            raise UserError("a GRPO recipe needs at least one reward")
        self.rewards = list(rewards)
        self.decode = decode
        self.on_error = on_error
        self.extra_metadata = extra_metadata
        self.skipped: set[int] = set()  # rows of the current batch excluded from the update
        self._cache: tuple[int, list[Image.Image | None], list[dict]] | None = None

    @classmethod
    def from_specs(cls, specs: Sequence[Any], decode: DecodeCompletions, on_error: str = "stop",
                   extra_metadata=None) -> RewardSet:
        """`specs`: objects with `name`, `options` and an optional `label` (the recipe's entries)."""
        rewards = [NamedReward(spec.label or _short_name(spec.name), build_reward(spec.name, spec.options))
                   for spec in specs]
        return cls(rewards, decode, on_error, extra_metadata)

    def trl_functions(self) -> list[Callable]:
        return [self._trl_function(reward) for reward in self.rewards]

    def batch(self, completion_ids: list[list[int]], columns: dict[str, list]) -> tuple[list, list[dict]]:
        """Images and metadata, built once per batch (TRL passes the same list object to every reward function);
        each reward gets its own copies of the metadata dicts."""
        if self._cache is None or self._cache[0] != id(completion_ids):
            images = self.decode(completion_ids)
            self._cache = (id(completion_ids), images, self._metadata(columns, len(images)))
            self.skipped = set()
        return self._cache[1], [dict(meta) for meta in self._cache[2]]

    def _trl_function(self, reward: NamedReward) -> Callable:
        def score(prompts, completions, completion_ids, **columns) -> list[float]:
            images, metadata = self.batch(completion_ids, columns)
            captions = list(columns.get("caption") or prompts)
            scores = self._call(reward, captions, images, metadata)
            log_metric = columns.get("log_metric")
            if log_metric is not None and self.on_error == "skip":
                log_metric(f"rewards/{reward.name}/skipped", float(sum(math.isnan(s) for s in scores)))
            return scores

        score.__name__ = reward.name  # TRL logs each reward under its function's name
        return score

    def _metadata(self, columns: dict[str, list], rows: int) -> list[dict]:
        raw = columns.get("metadata") or [None] * rows
        metadata = [dict(json.loads(m)) if isinstance(m, str) else dict(m or {}) for m in raw]
        if self.extra_metadata is not None:
            for meta, extra in zip(metadata, self.extra_metadata(columns), strict=True):
                meta.update(extra)
        return metadata

    def _call(self, reward: NamedReward, prompts: list[str], images: list, metadata: list[dict]) -> list[float]:
        try:
            scores = list(reward.function(prompts, images, metadata))
        except UserError:
            raise
        except Exception as err:
            if self.on_error == "stop":
                raise RewardError(f"reward {reward.name!r} raised {type(err).__name__}: {err} (batch starting with "
                                  f"prompt {prompts[0]!r}); fix the reward, or set on_reward_error: skip to "
                                  "leave such samples out") from err
            return self._call_one_by_one(reward, prompts, images, metadata)
        if len(scores) != len(images):
            raise RewardError(f"reward {reward.name!r} returned {len(scores)} scores for {len(images)} images "
                              f"(batch starting with prompt {prompts[0]!r}); it must return one score per image")
        return [self._checked(reward, value, prompts[row], row) for row, value in enumerate(scores)]

    def _call_one_by_one(self, reward: NamedReward, prompts, images, metadata) -> list[float]:
        """After a batch failed under on_error=skip: find the samples that fail and leave only those out."""
        scores = []
        for row, (prompt, image, meta) in enumerate(zip(prompts, images, metadata, strict=True)):
            try:
                (value,) = reward.function([prompt], [image], [meta])
            except Exception as err:
                logger.warning("reward %r failed on prompt %r (%s: %s); sample skipped", reward.name, prompt,
                               type(err).__name__, err)
                value = math.nan
            scores.append(self._checked(reward, value, prompt, row))
        return scores

    def _checked(self, reward: NamedReward, value, prompt: str, row: int) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
            problem = f"returned {value!r}, not a number"
        else:
            problem = None if math.isfinite(number) else f"returned {number}"
        if problem is None:
            return number
        if self.on_error == "stop":
            raise RewardError(f"reward {reward.name!r} {problem} for prompt {prompt!r}; fix the reward, or set "
                              "on_reward_error: skip to leave such samples out")
        self.skipped.add(row)
        return math.nan


def _short_name(spec: str) -> str:
    """`pkg.mod:fn` / `dir/file.py:fn` -> `fn`: the name rewards are logged under."""
    return spec.rpartition(":")[2] if ":" in spec else spec
