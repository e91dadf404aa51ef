"""The training loop's batch order (``loop.global_batches``): contiguous runs."""

from __future__ import annotations

import numpy as np
import pytest

from distilkit.errors import DistilkitError
from distilkit.loop import TrainConfig, epoch_batches, global_batches


def test_contiguous_batches_are_shuffled_runs_of_consecutive_sequences():
    lengths = np.full(40, 10)
    batches = global_batches(lengths, 8, seed=1, epoch=0, group_by_length=True, contiguous=4)
    assert len(batches) == 5
    for b in batches:
        runs = b.reshape(2, 4)
        assert all(np.array_equal(r, np.arange(r[0], r[0] + 4)) for r in runs)
        assert all(r[0] % 4 == 0 for r in runs)  # runs start on a multiple of the run length
    # Every index once per epoch; the order depends on the seed and the epoch, not on chance.
    seen = np.concatenate(batches)
    assert len(set(seen.tolist())) == len(seen)
    again = global_batches(lengths, 8, seed=1, epoch=0, group_by_length=True, contiguous=4)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = global_batches(lengths, 8, seed=1, epoch=1, group_by_length=True, contiguous=4)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    # A short last run: every index is still drawn at most once.
    odd = global_batches(np.full(42, 10), 8, seed=1, epoch=0, group_by_length=True, contiguous=4)
    flat = np.concatenate(odd).tolist()
    assert len(flat) == 40 and len(set(flat)) == 40
    # Two processes with half the batch each see exactly the one-process batches.
    halves = [epoch_batches(lengths, 4, 1, 0, True, world=2, rank=r, contiguous=4) for r in (0, 1)]
    for whole, a, b in zip(batches, *halves):
        assert np.array_equal(whole, np.concatenate([a, b]))


def test_contiguous_one_is_the_plain_order_and_zero_is_refused():
    lengths = np.arange(30) % 7 + 3
    plain = global_batches(lengths, 5, seed=3, epoch=0, group_by_length=True)
    same = global_batches(lengths, 5, seed=3, epoch=0, group_by_length=True, contiguous=1)
    assert all(np.array_equal(a, b) for a, b in zip(plain, same))
    with pytest.raises(DistilkitError, match="train.contiguous must be >= 1"):
        TrainConfig(contiguous=0).validate()
