"""The micro-batch schedule: every unit once per epoch, in micro-batches of at most batch_size."""

import random

from tunewright.train.batching import epoch_batches


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 300) for _ in range(n)]


def test_an_epoch_holds_every_unit_once():
    lengths = _lengths(1000)
    batches = epoch_batches(lengths, 16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
