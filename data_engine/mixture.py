"""Mixture arithmetic: how many rows each source gives, and which ones.

The rule (`mmgen data build`): the train split has a fixed total size T (the recipe's `train_size`, by default the
sum of the sources' train rows). Source i contributes T * w_i / sum(w) rows, rounded by largest remainder so the
counts add up to T exactly. A source with fewer rows than its share is repeated: whole shuffled passes over its
rows, then part of one more pass, so every row appears floor(k) or ceil(k) times for k = share / rows. A source with
more rows than its share is subsampled without replacement. All choices come from numpy generators seeded by
(seed, source index, purpose), so a build is reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Purposes of the random streams: separate streams keep each choice independent of how many draws another made.
SPLIT, SAMPLE, DROPOUT = 0, 1, 2


def rng_for(seed: int, source: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, source, purpose])


def proportional_counts(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights`, rounded by largest remainder: the counts sum to `total` exactly.

    Ties in the remainders go to the earlier source, so the split is deterministic.
    """
    weights = np.asarray(weights, dtype=np.float64)
    if total < 0 or weights.size == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"need a non-negative total and non-negative weights with a positive sum, got {total}, "
                         f"{weights.tolist()}")
    exact = total * weights / weights.sum()
    counts = np.floor(exact).astype(np.int64)
    leftover = total - int(counts.sum())
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:leftover]] += 1
    return counts.tolist()


def repeat_sample(pool: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` items of `pool`: whole shuffled passes, then a partial pass without replacement."""
    if count == 0:
        return pool[:0]
    if pool.size == 0:
        raise ValueError(f"cannot draw {count} rows from a source with no rows")
    passes, rest = divmod(count, pool.size)
    parts = [rng.permutation(pool) for _ in range(passes)]
    parts.append(rng.permutation(pool)[:rest])
    return np.concatenate(parts)


def split_eval(num_rows: int, eval_count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint `(eval, train)` row indices: `eval_count` random rows held out, the rest for training."""
    order = rng.permutation(num_rows)
    return np.sort(order[:eval_count]), np.sort(order[eval_count:])


def dropout_mask(count: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly round(rate * count) of `count` examples marked, chosen at random: the share is exact, not noisy."""
    mask = np.zeros(count, dtype=bool)
    mask[rng.permutation(count)[: int(round(rate * count))]] = True
    return mask
