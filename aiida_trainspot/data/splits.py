"""Sticky, stratified train/validation/test splits (no AiiDA import)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from aiida_trainspot.common.seeds import derive_rng

SPLITS = ('train', 'validation', 'test')
DEFAULT_FRACTIONS = {'train': 0.8, 'validation': 0.1, 'test': 0.1}
UNASSIGNED = ''


def check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    """Return the fractions in split order, or raise naming what is wrong."""
    unknown = set(fractions) - set(SPLITS)
    if unknown:
        raise ValueError(f'unknown split names {sorted(unknown)}; use {list(SPLITS)}')
    values = {name: float(fractions.get(name, 0.0)) for name in SPLITS}
    if any(v < 0 for v in values.values()):
        raise ValueError(f'split fractions must be non-negative, got {values}')
    if not np.isclose(sum(values.values()), 1.0):
        raise ValueError(f'split fractions must add up to 1, got {sum(values.values())}')
    if values['train'] <= 0:
        raise ValueError('the train fraction must be positive')
    return values


def assign_splits(
    current: np.ndarray,
    strata: np.ndarray,
    always_train: np.ndarray,
    seed: int,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
) -> np.ndarray:
    """Give a split to every frame that has none; frames that have one keep it.

    Frames are grouped by ``strata`` (e.g. the generation method) and each group is
    divided by the fractions, counting the frames of that group already assigned,
    so every structural motif is represented in every split as far as counts allow.
    Frames flagged ``always_train`` (isolated atoms: the reference energies) go to
    training. The draw depends only on the seed and the frames, not on history.
    """
    values = check_fractions(fractions)
    current = np.asarray(current, dtype=object)
    out = current.copy()
    rng = derive_rng(seed)
    out[(out == UNASSIGNED) & np.asarray(always_train, dtype=bool)] = 'train'
    strata = np.asarray(strata, dtype=object)
    for stratum in sorted(set(strata.tolist()), key=str):
        in_group = strata == stratum
        todo = np.flatnonzero(in_group & (out == UNASSIGNED))
        if todo.size == 0:
            continue
        group_total = int(in_group.sum())
        have = {name: int(np.sum(in_group & (out == name))) for name in SPLITS}
        want = _target_counts(group_total, values)
        need = {name: max(want[name] - have[name], 0) for name in SPLITS}
        order = rng.permutation(todo)
        labels = _fill(len(order), need, values)
        out[order] = labels
    return out


def _target_counts(total: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Largest-remainder rounding of ``total * fraction`` per split (train first on ties)."""
    raw = {name: total * fractions[name] for name in SPLITS}
    counts = {name: int(np.floor(raw[name])) for name in SPLITS}
    left = total - sum(counts.values())
    by_remainder = sorted(SPLITS, key=lambda n: (-(raw[n] - counts[n]), SPLITS.index(n)))
    for name in by_remainder[:left]:
        counts[name] += 1
    return counts


def _fill(n: int, need: Mapping[str, int], fractions: Mapping[str, float]) -> np.ndarray:
    labels: list[str] = []
    for name in SPLITS:
        labels += [name] * need[name]
    labels = labels[:n]
    # more frames to place than the targets ask for: give them out by the fractions
    extra = n - len(labels)
    if extra > 0:
        counts = _target_counts(extra, fractions)
        for name in SPLITS:
            labels += [name] * counts[name]
    return np.array(labels, dtype=object)
