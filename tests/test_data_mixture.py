"""Mixture arithmetic: exact proportional counts, balanced repetition, exact dropout share, disjoint eval split."""

import numpy as np
import pytest
from mmgen.data_engine.mixture import dropout_mask, proportional_counts, repeat_sample, rng_for, split_eval


@pytest.mark.parametrize(("total", "weights", "expected"), [
    (100, [3, 1], [75, 25]),
    (10, [1, 1, 1], [4, 3, 3]),  # the leftover row goes to the earliest of equal remainders
    (7, [0.6, 0.25, 0.15], [4, 2, 1]),
    (5, [1, 0], [5, 0]),
])
def test_proportional_counts_sum_exactly(total, weights, expected):
    assert proportional_counts(total, weights) == expected


def test_proportional_counts_refuse_nonsense():
    with pytest.raises(ValueError):
        proportional_counts(10, [0, 0])
    with pytest.raises(ValueError):
        proportional_counts(10, [1, -1])


def test_small_source_is_repeated_evenly_large_one_subsampled_without_repeats():
    pool = np.arange(10, 20)
    repeated = repeat_sample(pool, 25, rng_for(0, 0, 1))
    counts = np.bincount(repeated - 10, minlength=10)
    assert repeated.size == 25 and set(counts) == {2, 3} and counts.sum() == 25
    subsample = repeat_sample(pool, 4, rng_for(0, 0, 1))
    assert len(set(subsample.tolist())) == 4 and set(subsample.tolist()) <= set(pool.tolist())
    assert np.array_equal(repeat_sample(pool, 25, rng_for(0, 0, 1)), repeated)  # seeded: reproducible


def test_dropout_share_is_exact_and_seeded():
    mask = dropout_mask(1000, 0.1, rng_for(3, 0, 2))
    assert mask.sum() == 100
    assert np.array_equal(mask, dropout_mask(1000, 0.1, rng_for(3, 0, 2)))
    assert not np.array_equal(mask, dropout_mask(1000, 0.1, rng_for(4, 0, 2)))


def test_eval_split_is_disjoint_and_complete():
    held_out, train = split_eval(50, 7, rng_for(0, 1, 0))
    assert held_out.size == 7 and not set(held_out) & set(train) and sorted([*held_out, *train]) == list(range(50))
