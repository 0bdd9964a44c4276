"""How every random draw of the package gets its seed (numpy only, no AiiDA import).

A seed is an integer in ``[0, SEED_LIMIT)``. Each consumer derives its own stream from the seed it
is given and a few integer *tags* that name the consumer (a stage, a run, an augmentation), with
NumPy's :class:`~numpy.random.SeedSequence`, never by drawing from a shared generator. So:

- streams are independent, whatever the number of draws made elsewhere: adding a run, an
  iteration or an augmentation leaves the numbers of every other consumer as they were;
- the same seed gives the same result whatever the parallelism (how runs are grouped into jobs,
  in which order stages or members run), and a restarted campaign draws what an uninterrupted
  one would have drawn.

``seed_sequence(seed, *tags)`` is ``SeedSequence([seed, *tags])``: with no tag it is
``SeedSequence(seed)``, so ``derive_rng(seed)`` is ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import numpy as np

#: Seeds are integers in ``[0, SEED_LIMIT)`` (what a signed 32-bit integer holds, which every
#: engine accepts).
SEED_LIMIT = 2**31


def seed_sequence(seed: int, *tags: int) -> np.random.SeedSequence:
    """The :class:`~numpy.random.SeedSequence` of ``seed`` and ``tags``: one per consumer.

    Different tags give statistically independent streams, so no consumer's numbers depend on
    how many draws another one made.
    """
    return np.random.SeedSequence([int(seed), *map(int, tags)])


def derive_rng(seed: int, *tags: int) -> np.random.Generator:
    """A generator of its own for ``(seed, *tags)`` (``default_rng(seed)`` when no tag)."""
    return np.random.default_rng(seed_sequence(seed, *tags))


def derive_seeds(
    seed: int,
    *tags: int,
    n: int,
    low: int = 0,
    high: int = SEED_LIMIT,
    distinct: bool = False,
) -> list[int]:
    """``n`` seeds in ``[low, high)`` derived from ``(seed, *tags)``.

    Seed ``i`` is ``low + w_i % (high - low)`` where ``w`` are the 32-bit words of the sequence's
    state: it depends on ``seed``, ``tags`` and ``i`` alone, so asking for more seeds leaves the
    first ones as they were (each run, member or job keeps its seed whatever their number).

    ``distinct=True``: no two seeds are equal (committee members must differ). The words are
    taken ``2 n`` at a time, keeping values not yet seen in order; when still short, the next
    ``2 n`` words come from a child sequence (:meth:`~numpy.random.SeedSequence.spawn`). The
    first seeds are then still the non-distinct ones unless a collision occurred among them.
    """
    if n < 0:
        raise ValueError(f'n must be non-negative, got {n}')
    if high <= low:
        raise ValueError(f'empty seed range [{low}, {high})')
    span = high - low
    sequence = seed_sequence(seed, *tags)
    if not distinct:
        return [low + int(word) % span for word in sequence.generate_state(n, dtype=np.uint32)]
    if n > span:
        raise ValueError(f'cannot draw {n} distinct seeds from [{low}, {high})')
    seeds: list[int] = []
    while len(seeds) < n:
        for word in sequence.generate_state(2 * n, dtype=np.uint32):
            value = low + int(word) % span
            if value not in seeds and len(seeds) < n:
                seeds.append(value)
        sequence = sequence.spawn(1)[0]
    return seeds


def derive_seed(seed: int, *tags: int, low: int = 0, high: int = SEED_LIMIT) -> int:
    """One seed in ``[low, high)`` from ``(seed, *tags)``: the first of :func:`derive_seeds`."""
    return derive_seeds(seed, *tags, n=1, low=low, high=high)[0]


__all__ = ('SEED_LIMIT', 'derive_rng', 'derive_seed', 'derive_seeds', 'seed_sequence')
