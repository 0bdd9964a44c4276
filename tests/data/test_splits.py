"""Train/validation/test splits: default fractions, seeds, strata, stickiness, isolated atoms."""

import numpy as np
import pytest
from aiida import orm

from aiida_trainspot.data import PESData
from aiida_trainspot.data.splits import (
    DEFAULT_FRACTIONS,
    SPLITS,
    UNASSIGNED,
    assign_splits,
    check_fractions,
)


def counts(splits, where=None):
    splits = np.asarray(splits, dtype=object)
    if where is not None:
        splits = splits[where]
    return {name: int(np.sum(splits == name)) for name in SPLITS}


def assert_near_targets(found, total, fractions=DEFAULT_FRACTIONS):
    """Every split holds its fraction of ``total`` frames, to within one frame."""
    assert sum(found.values()) == total
    for name in SPLITS:
        assert abs(found[name] - total * fractions.get(name, 0.0)) < 1, (name, found, total)


def unassigned(n):
    return np.full(n, UNASSIGNED, dtype=object)


# --------------------------------------------------------------------------------------------------
# The pure function.


def test_default_fractions_are_80_10_10():
    assert DEFAULT_FRACTIONS == {'train': 0.8, 'validation': 0.1, 'test': 0.1}
    splits = assign_splits(unassigned(200), unassigned(200), np.zeros(200, bool), seed=0)
    assert counts(splits) == {'train': 160, 'validation': 20, 'test': 20}
    for n in (1, 2, 7, 10, 11, 19, 33, 101):
        splits = assign_splits(unassigned(n), unassigned(n), np.zeros(n, bool), seed=n)
        assert set(splits) <= set(SPLITS)
        assert_near_targets(counts(splits), n)


def test_custom_fractions():
    fractions = {'train': 0.5, 'validation': 0.5}
    splits = assign_splits(unassigned(40), unassigned(40), np.zeros(40, bool), 1, fractions)
    assert counts(splits) == {'train': 20, 'validation': 20, 'test': 0}
    fractions = {'train': 0.7, 'validation': 0.2, 'test': 0.1}
    splits = assign_splits(unassigned(90), unassigned(90), np.zeros(90, bool), 1, fractions)
    assert_near_targets(counts(splits), 90, fractions)


def test_same_seed_same_split_other_seed_another():
    args = (unassigned(200), np.array(['a', 'b'] * 100, dtype=object), np.zeros(200, bool))
    first = assign_splits(*args, seed=11)
    assert np.array_equal(first, assign_splits(*args, seed=11))
    others = [assign_splits(*args, seed=seed) for seed in (12, 13, 14)]
    assert all(not np.array_equal(first, other) for other in others)
    # every seed gives the same counts: only which frames go where changes
    assert all(counts(other) == counts(first) for other in others)


def test_stratified_by_group():
    rng = np.random.default_rng(0)
    sizes = {'md': 123, 'rattle': 57, 'slab': 10, 'strain': 24, 'rare': 3}
    strata = np.array([k for k, n in sizes.items() for _ in range(n)], dtype=object)
    rng.shuffle(strata)
    splits = assign_splits(unassigned(len(strata)), strata, np.zeros(len(strata), bool), seed=5)
    assert UNASSIGNED not in set(splits)
    for stratum, size in sizes.items():
        found = counts(splits, strata == stratum)
        assert sum(found.values()) == size
        if size >= 10:
            assert all(found[name] > 0 for name in SPLITS), (stratum, found)
            assert_near_targets(found, size)


def test_sticky_splits_keep_their_frames():
    strata = np.array(['md', 'rattle'] * 60, dtype=object)
    first = assign_splits(unassigned(120), strata, np.zeros(120, bool), seed=1)
    # 80 new frames arrive; the old ones keep their split whatever the seed
    current = np.concatenate([first, unassigned(80)])
    strata = np.concatenate([strata, np.array(['md', 'rattle'] * 40, dtype=object)])
    second = assign_splits(current, strata, np.zeros(200, bool), seed=2)
    assert np.array_equal(second[:120], first)
    assert UNASSIGNED not in set(second)
    # the new frames top every stratum up to its targets
    for stratum in ('md', 'rattle'):
        assert_near_targets(counts(second, strata == stratum), 100)
    # frames assigned earlier are not moved even when they break the fractions
    current = np.concatenate([np.full(50, 'test', dtype=object), unassigned(50)])
    third = assign_splits(current, unassigned(100), np.zeros(100, bool), seed=3)
    assert (third[:50] == 'test').all()
    assert set(third[50:]) <= set(SPLITS)


def test_isolated_atoms_always_train():
    rng = np.random.default_rng(1)
    isolated = np.zeros(200, bool)
    isolated[rng.choice(200, 30, replace=False)] = True
    for seed in range(5):
        splits = assign_splits(unassigned(200), unassigned(200), isolated, seed)
        assert (splits[isolated] == 'train').all()
        assert set(splits[~isolated]) == set(SPLITS)
    # an isolated atom that already has a split keeps it (sticky wins)
    current = unassigned(200)
    current[np.flatnonzero(isolated)[0]] = 'test'
    splits = assign_splits(current, unassigned(200), isolated, 0)
    assert splits[np.flatnonzero(isolated)[0]] == 'test'


@pytest.mark.parametrize(
    ('fractions', 'message'),
    [
        ({'train': 0.9, 'validation': 0.2, 'test': -0.1}, 'non-negative'),
        ({'train': 0.8, 'validation': 0.1}, 'add up to 1'),
        ({'train': 0.8, 'validation': 0.1, 'test': 0.2}, 'add up to 1'),
        ({'train': 0.8, 'valid': 0.1, 'test': 0.1}, 'valid'),
        ({'train': 0.0, 'validation': 0.5, 'test': 0.5}, 'train'),
    ],
)
def test_bad_fractions(fractions, message):
    with pytest.raises(ValueError, match=message):
        check_fractions(fractions)
    with pytest.raises(ValueError, match=message):
        assign_splits(unassigned(10), unassigned(10), np.zeros(10, bool), 0, fractions)


# --------------------------------------------------------------------------------------------------
# Through the node.


def _dataset(n_md=120, n_rattle=50, n_slab=12, n_rare=4, n_isolated=6, n_periodic_single=30):
    """Frames of several generation methods, isolated atoms, periodic one-atom cells."""
    frames = []
    for method, n in (('md', n_md), ('rattle', n_rattle), ('slab', n_slab), ('rare', n_rare)):
        for k in range(n):
            frames.append(
                {
                    'numbers': [1, 8],
                    'positions': [[0, 0, 0], [0.97 + 0.001 * k, 0, 0]],
                    'energy': -float(k),
                    'info': {'generation_method': method},
                }
            )
    for k in range(n_isolated):  # isolated atoms: one atom, no periodicity
        frames.insert(7 * k, {'numbers': [8], 'positions': [[0, 0, 0]], 'energy': -0.1 * k})
    for _ in range(n_periodic_single):  # one atom in a periodic cell: a crystal, not isolated
        frames.append(
            {
                'numbers': [29],
                'positions': [[0, 0, 0]],
                'cell': np.eye(3) * 2.5,
                'pbc': True,
                'info': {'generation_method': 'bulk'},
            }
        )
    return PESData.from_frames(frames)


def _splits(node):
    values, present = node.get_column('split')
    return np.where(present, values, UNASSIGNED)


def test_node_assign_split():
    node = _dataset().store()
    n = len(node)
    assert node.split_indices('').tolist() == list(range(n))
    assert node.split_indices('train').size == 0
    split = node.assign_split(seed=4).store()
    loaded = orm.load_node(split.pk)
    indices = {name: loaded.split_indices(name) for name in SPLITS}
    assert sorted(np.concatenate(list(indices.values())).tolist()) == list(range(n))
    found = {name: len(v) for name, v in indices.items()}
    assert loaded.base.attributes.get('split_counts') == {**found, 'unassigned': 0}
    assert loaded.split_indices('').size == 0
    # isolated atoms: train; one-atom periodic cells are not isolated
    n_atoms = loaded.n_atoms_per_frame()
    pbc = loaded.get_columns().frame['pbc'].any(axis=1)
    splits = _splits(loaded)
    assert (splits[(n_atoms == 1) & ~pbc] == 'train').all()
    assert set(splits[(n_atoms == 1) & pbc]) == set(SPLITS)
    # stratified by generation_method
    methods, present = loaded.get_column('generation_method')
    for method in ('md', 'rattle', 'slab', 'bulk'):
        where = present & (methods == method)
        assert where.sum() >= 10
        assert_near_targets(counts(splits, where), int(where.sum()))
    # the parent is untouched
    assert node.base.attributes.get('split_counts')['unassigned'] == n
    assert 'split' not in node.column_names


def test_node_split_is_seeded():
    node = _dataset()
    a = _splits(node.assign_split(seed=1))
    assert np.array_equal(a, _splits(node.assign_split(seed=1)))
    assert not np.array_equal(a, _splits(node.assign_split(seed=2)))


def test_node_split_is_sticky():
    first = _dataset().assign_split(seed=1).store()
    old = _splits(first)
    more = _dataset(n_md=40, n_rattle=20, n_slab=0, n_rare=0, n_isolated=2, n_periodic_single=0)
    joined = PESData.concatenate([first, more])
    assert joined.base.attributes.get('split_counts')['unassigned'] == len(more)
    second = joined.assign_split(seed=2).store()
    splits = _splits(second)
    assert np.array_equal(splits[: len(first)], old)
    assert UNASSIGNED not in set(splits)
    assert second.base.attributes.get('split_counts') == {
        **counts(splits),
        'unassigned': 0,
    }
    # assigning again changes nothing
    third = second.assign_split(seed=3)
    assert np.array_equal(_splits(third), splits)
    assert third.base.attributes.get('checksum') == second.base.attributes.get('checksum')


def test_node_split_with_fractions_and_other_strata():
    node = _dataset()
    fractions = {'train': 0.6, 'validation': 0.2, 'test': 0.2}
    split = node.assign_split(seed=0, fractions=fractions, stratify_by='no_such_column')
    found = counts(_splits(split))
    assert sum(found.values()) == len(node)
    isolated = 6
    # one stratum: the isolated atoms count as training frames of it
    assert_near_targets(found, len(node), fractions)
    assert found['train'] >= isolated
    with pytest.raises(ValueError, match='add up to 1'):
        node.assign_split(seed=0, fractions={'train': 0.5, 'test': 0.1})
    with pytest.raises(ValueError, match='non-negative'):
        node.assign_split(seed=0, fractions={'train': 1.2, 'test': -0.2})
    with pytest.raises(ValueError, match='unknown split'):
        node.assign_split(seed=0, fractions={'train': 0.8, 'holdout': 0.2})
