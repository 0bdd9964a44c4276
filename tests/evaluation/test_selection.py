"""Selection: candidates, trust bound, near-duplicate thinning, strategies; end to end."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.evaluation.calibration import calibrate
from aiida_trainspot.evaluation.disagreement import (
    CommitteePredictions,
    ReferenceLabels,
    committee_disagreement,
    committee_statistics,
    max_force_norm,
    true_errors,
)
from aiida_trainspot.evaluation.selection import (
    REJECTION_REASONS,
    STRATEGIES,
    SelectionInput,
    SelectionSettings,
    StrategyChoice,
    candidate_mask,
    disagreement_strategy,
    excess_over_threshold,
    get_strategy,
    paper_strategy,
    register_strategy,
    select_frames,
    thin_near_duplicates,
    trust_violations,
)

FAST = settings(max_examples=40, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)
TAUS = {'energy': 0.01, 'forces': 0.1, 'stress': 0.005}


def random_disagreement(seed, n_frames, stress=True):
    rng = np.random.default_rng(seed)
    data = {
        'energy': rng.uniform(0, 0.02, n_frames),
        'forces': rng.uniform(0, 0.3, n_frames),
        'stress': rng.uniform(0, 0.01, n_frames) if stress else np.full(n_frames, np.nan),
    }
    data['stress'][rng.random(n_frames) < 0.3] = np.nan  # some frames lack stress
    return data


# --------------------------------------------------------------------------------------------------
# Candidates and trust bound


@FAST
@given(SEEDS, st.integers(0, 50), st.booleans())
def test_candidates_match_brute_force(seed, n_frames, stress):
    data = random_disagreement(seed, n_frames, stress)
    got = candidate_mask(data, TAUS)
    for f in range(n_frames):
        expected = any(data[name][f] > tau for name, tau in TAUS.items())  # NaN > x is False
        assert got[f] == expected


def test_candidates_use_only_properties_with_thresholds():
    data = {'energy': np.array([1.0, 0.0]), 'forces': np.array([0.0, 1.0])}
    assert candidate_mask(data, {'forces': 0.5}).tolist() == [False, True]
    assert candidate_mask(data, {'stress': 0.5}).tolist() == [False, False]


def test_trust_violations_per_reason():
    reasons = trust_violations(
        4,
        force_disagreement=[0.1, 2.0, 0.1, 0.1],
        force_threshold=0.1,
        min_distances=[1.0, 1.0, 0.4, 1.0],
        max_forces=[1.0, 1.0, 1.0, 60.0],
    )
    assert set(reasons) == set(REJECTION_REASONS)
    # no bound on the disagreement unless asked for: δ_F = 20 τ_F is not a reason
    assert not reasons['force_disagreement'].any()
    relative = trust_violations(
        4,
        force_disagreement=[0.1, 2.0, 0.1, 0.1],
        force_threshold=0.1,
        settings=SelectionSettings(force_disagreement_factor=10.0),
    )
    assert relative['force_disagreement'].tolist() == [False, True, False, False]
    assert reasons['too_close'].tolist() == [False, False, True, False]
    assert reasons['large_force'].tolist() == [False, False, False, True]
    explicit = trust_violations(
        4,
        force_disagreement=[0.1, 2.0, 0.6, 0.1],
        settings=SelectionSettings(max_force_disagreement=0.5),
    )
    assert explicit['force_disagreement'].tolist() == [False, True, True, False]
    nothing = trust_violations(4, force_disagreement=[9.0] * 4)  # no τ_F, no explicit bound
    assert not any(v.any() for v in nothing.values())


@FAST
@given(SEEDS, st.integers(1, 60), st.integers(0, 30))
def test_selection_never_selects_rejected_and_respects_cap(seed, n_frames, cap):
    rng = np.random.default_rng(seed)
    data = random_disagreement(seed, n_frames)
    data['forces'][rng.random(n_frames) < 0.1] = 5.0  # far beyond τ_F: still selectable
    min_distances = rng.uniform(0.3, 2.0, n_frames)
    max_forces = rng.uniform(0.0, 80.0, n_frames)
    result = select_frames(
        data,
        TAUS,
        seed=seed,
        min_distances=min_distances,
        max_forces=max_forces,
        settings=SelectionSettings(max_selected=cap),
    )
    candidates = [f for f in range(n_frames) if any(data[k][f] > t for k, t in TAUS.items())]
    bad = [f for f in range(n_frames) if min_distances[f] < 0.5 or max_forces[f] > 50.0]
    assert result.candidates.tolist() == candidates
    assert result.rejected.tolist() == sorted(set(candidates) & set(bad))
    assert result.selected.size == min(cap, len(candidates) - result.rejected.size)
    assert not set(result.selected.tolist()) & set(bad)
    assert set(result.selected.tolist()) <= set(candidates)
    assert result.selected.tolist() == sorted(result.selected.tolist())
    for f in result.rejected.tolist():
        reasons = result.rejection_reasons(f)
        assert reasons
        assert ('too_close' in reasons) == (min_distances[f] < 0.5)
        assert ('large_force' in reasons) == (max_forces[f] > 50.0)
        assert 'force_disagreement' not in reasons
    counts = result.counts
    assert (
        counts['candidates']
        == counts['rejected'] + counts['thinned'] + counts['capped'] + (counts['selected'])
    )
    json.dumps(result.to_dict(), allow_nan=False)


def test_cap_reproducible_with_seed_and_different_with_another():
    data = {'forces': np.linspace(0.2, 0.9, 300)}  # all candidates, all trusted
    options = SelectionSettings(max_selected=50)
    first = select_frames(data, {'forces': 0.1}, seed=7, settings=options)
    again = select_frames(data, {'forces': 0.1}, seed=7, settings=options)
    other = select_frames(data, {'forces': 0.1}, seed=8, settings=options)
    assert first.selected.size == 50
    assert first.selected.tolist() == again.selected.tolist()
    assert first.selected.tolist() != other.selected.tolist()
    assert len(np.unique(first.selected)) == 50
    uncapped = select_frames(data, {'forces': 0.1}, seed=7, settings=SelectionSettings(None))
    assert uncapped.selected.tolist() == list(range(300))


def test_cap_by_disagreement_takes_the_frames_furthest_above_their_thresholds():
    rng = np.random.default_rng(3)
    data = {'forces': rng.uniform(0.0, 1.0, 40), 'energy': rng.uniform(0.0, 0.02, 40)}
    taus = {'forces': 0.2, 'energy': 0.005}
    options = SelectionSettings(max_selected=6, cap_order='disagreement', max_force=None)
    result = select_frames(data, taus, seed=0, settings=options)
    # brute force: rank every trusted candidate by its largest δ/τ
    excess = np.maximum(data['forces'] / 0.2, data['energy'] / 0.005)
    trusted = [i for i in range(40) if excess[i] > 1 and data['forces'][i] <= 10 * 0.2]
    expected = sorted(sorted(trusted, key=lambda i: -excess[i])[:6])
    assert len(trusted) > 6  # the cap acts
    assert result.selected.tolist() == expected
    # no randomness: another seed selects the same frames
    again = select_frames(data, taus, seed=99, settings=options)
    assert again.selected.tolist() == expected


def test_cap_order_must_be_known():
    with pytest.raises(ValueError, match=r"cap_order must be one of .* got 'largest'"):
        SelectionSettings(cap_order='largest')
    assert SelectionSettings().cap_order == 'random'


def test_default_cap_is_1000():
    data = {'energy': np.ones(1500)}
    result = select_frames(data, {'energy': 0.5}, seed=0)
    assert result.selected.size == 1000 and result.counts['capped'] == 500


# --------------------------------------------------------------------------------------------------
# Near-duplicate thinning


def trajectory(start, steps, n_atoms=3, seed=0):
    """Positions (len(steps) * n_atoms, 3) of atoms translated along x by the ``steps`` offsets."""
    base = np.random.default_rng(seed).uniform(0, 5, (n_atoms, 3))
    return np.concatenate([base + np.array([start + s, 0.0, 0.0]) for s in steps])


def test_thinning_drops_small_consecutive_displacements():
    # run 'a': x moves 0.03 Å per step, so only every 4th frame is 0.12 Å from the last kept
    # run 'b': 0.2 Å per step, every frame is kept
    steps_a, steps_b = 0.03 * np.arange(10), 0.2 * np.arange(5)
    positions = np.concatenate([trajectory(0, steps_a, seed=1), trajectory(0, steps_b, seed=2)])
    run_id = np.array(['a'] * 10 + ['b'] * 5, dtype=object)
    step = np.concatenate([np.arange(10), np.arange(5)])
    # shuffle frame order: thinning must follow steps within runs, not storage order
    order = np.random.default_rng(0).permutation(15)
    n_atoms = np.full(15, 3)
    shuffled = positions.reshape(15, 3, 3)[order].reshape(-1, 3)
    kept, thinned = thin_near_duplicates(
        np.arange(15), shuffled, n_atoms, run_id=run_id[order], step=step[order]
    )
    inverse = np.argsort(order)  # original frame -> shuffled index
    expected_kept = [0, 4, 8] + [10 + k for k in range(5)]
    assert kept.tolist() == sorted(inverse[expected_kept].tolist())
    assert thinned.tolist() == sorted(set(range(15)) - set(kept.tolist()))
    # only candidates are considered: dropping frame a4 makes a5 the next to compare with a0
    subset = [f for f in range(15) if f != inverse[4]]
    kept, _ = thin_near_duplicates(
        subset, shuffled, n_atoms, run_id=run_id[order], step=step[order]
    )
    assert inverse[5] in kept and inverse[4] not in kept


def test_thinning_keeps_different_runs_and_different_atoms():
    positions = trajectory(0, [0, 0.01, 0.02], n_atoms=2)
    kept, thinned = thin_near_duplicates([0, 1, 2], positions, [2, 2, 2], run_id=[1, 2, 3])
    assert kept.tolist() == [0, 1, 2] and thinned.size == 0
    numbers = np.array([1, 6, 6, 1, 6, 1])  # frames 1 and 2 swap the species of frame 0
    kept, thinned = thin_near_duplicates([0, 1, 2], positions, [2, 2, 2], numbers=numbers)
    assert kept.tolist() == [0, 1] and thinned.tolist() == [2]
    kept, thinned = thin_near_duplicates([0, 1, 2], positions, [2, 2, 2])
    assert kept.tolist() == [0] and thinned.tolist() == [1, 2]
    mixed = np.concatenate([positions[:2], positions[:3]])
    kept, _ = thin_near_duplicates([0, 1], mixed, [2, 3])
    assert kept.tolist() == [0, 1]


def test_thinning_uses_minimum_image_when_cells_are_given():
    first = np.array([[9.99, 5.0, 5.0], [2.0, 2.0, 2.0]])
    second = np.array([[0.01, 5.0, 5.0], [2.0, 2.0, 2.0]])  # wrapped across x
    positions = np.concatenate([first, second])
    cells = np.array([np.eye(3) * 10.0] * 2)
    kept, _ = thin_near_duplicates([0, 1], positions, [2, 2])
    assert kept.tolist() == [0, 1]
    kept, thinned = thin_near_duplicates(
        [0, 1], positions, [2, 2], cells=cells, pbc=[[True] * 3] * 2
    )
    assert kept.tolist() == [0] and thinned.tolist() == [1]
    kept, _ = thin_near_duplicates(
        [0, 1], positions, [2, 2], cells=cells, pbc=[[False, True, True]] * 2
    )
    assert kept.tolist() == [0, 1]


def test_select_frames_thins_before_the_cap():
    n = 20
    positions = trajectory(0, 0.01 * np.arange(n))  # one run, all within 0.19 Å
    data = {'forces': np.full(n, 0.5)}
    result = select_frames(
        data, {'forces': 0.1}, seed=0, n_atoms=np.full(n, 3), positions=positions
    )
    assert result.selected.tolist() == [0, 10] and result.thinned.size == 18
    assert result.counts['thinned'] == 18


# --------------------------------------------------------------------------------------------------
# Settings and end to end


def test_settings_round_trip_and_validation():
    options = SelectionSettings(max_selected=10, min_displacement=0.05, max_force=None)
    assert SelectionSettings.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    with pytest.raises(ValueError, match='unknown selection settings'):
        SelectionSettings.from_dict({'max_selected': 3, 'cap': 4})
    with pytest.raises(ValueError, match='max_selected'):
        SelectionSettings(max_selected=-1)


def test_end_to_end_without_stress():
    rng = np.random.default_rng(0)
    n_frames, n_members = 60, 4
    n_atoms = rng.integers(2, 6, n_frames)
    total = int(n_atoms.sum())
    reference_forces = rng.normal(0, 1, (total, 3))
    # per-frame model quality: members scatter around a biased mean, both growing together
    quality = np.repeat(rng.uniform(0.01, 0.5, n_frames), n_atoms)[:, None]
    bias = rng.normal(0, 1, (total, 3)) * quality
    forces = reference_forces + bias + rng.normal(0, 1, (n_members, total, 3)) * quality
    energies = rng.normal(0, 0.01, (n_members, n_frames)) * n_atoms
    predictions = CommitteePredictions(n_atoms, energies, forces)
    labels = ReferenceLabels(n_atoms, energy=np.zeros(n_frames), forces=reference_forces)
    delta, errors = committee_disagreement(predictions), true_errors(predictions, labels)
    calibration = calibrate(delta, errors)
    assert set(calibration.slopes) == {'energy', 'forces'}
    assert calibration.slopes['forces'] == pytest.approx(1.0, rel=0.3)
    stats = committee_statistics(predictions)
    result = select_frames(
        delta,
        calibration,
        seed=1,
        max_forces=max_force_norm(stats.mean_forces, n_atoms),
        settings=SelectionSettings(max_selected=5),
    )
    assert result.selected.size <= 5
    flagged = candidate_mask(delta, calibration.thresholds)
    assert flagged[result.selected].all()


def test_most_uncertain_physical_frames_are_selected():
    """Frames 100 τ_F above the threshold are the most informative, not untrusted."""
    forces = np.array([0.05, 10.0, 30.0, 0.2])
    result = select_frames({'forces': forces}, {'forces': 0.1}, seed=0, max_forces=[1.0] * 4)
    assert result.selected.tolist() == [1, 2, 3]
    assert result.rejected.size == 0
    unphysical = select_frames(
        {'forces': forces}, {'forces': 0.1}, seed=0, max_forces=[1.0, 1.0, 80.0, 1.0]
    )
    assert unphysical.selected.tolist() == [1, 3]
    assert unphysical.rejection_reasons(2) == ['large_force']


@pytest.mark.parametrize('name', ['force_disagreement_factor', 'max_force_disagreement'])
def test_disagreement_bounds_must_be_positive(name):
    with pytest.raises(ValueError, match=name):
        SelectionSettings(**{name: 0.0})


# --------------------------------------------------------------------------------------------------
# Frames flagged non-finite


def test_a_non_finite_frame_is_a_candidate_with_its_own_reason():
    # frame 1: below τ, frame 3: no disagreement at all (one member left); both flagged
    forces = np.array([0.05, 0.01, 0.5, np.nan, 0.02])
    flags = np.array([False, True, False, True, False])
    plain = select_frames({'forces': forces}, {'forces': 0.1}, seed=0)
    assert plain.candidates.tolist() == [2]
    result = select_frames({'forces': forces}, {'forces': 0.1}, seed=0, non_finite=flags)
    assert result.candidates.tolist() == [1, 2, 3]
    assert result.selected.tolist() == [1, 2, 3]
    assert result.non_finite.tolist() == [1, 3]
    assert result.counts['non_finite'] == 2 and result.counts['selected_non_finite'] == 2
    report = json.loads(json.dumps(result.to_dict()))
    assert report['non_finite'] == [1, 3]
    # still subject to the physical trust bound
    unphysical = select_frames(
        {'forces': forces},
        {'forces': 0.1},
        seed=0,
        non_finite=flags,
        min_distances=[1.0, 0.2, 1.0, 1.0, 1.0],
        max_forces=[1.0, 1.0, 1.0, 90.0, 1.0],
    )
    assert unphysical.selected.tolist() == [2]
    assert unphysical.rejection_reasons(1) == ['too_close']
    assert unphysical.rejection_reasons(3) == ['large_force']
    assert unphysical.counts['selected_non_finite'] == 0
    with pytest.raises(ValueError, match=r'non_finite must have shape \(5,\)'):
        select_frames({'forces': forces}, {'forces': 0.1}, seed=0, non_finite=[True])


def test_non_finite_frames_rank_first_under_the_disagreement_cap():
    rng = np.random.default_rng(5)
    forces = rng.uniform(0.2, 1.0, 30)
    forces[[7, 21]] = [0.0, np.nan]  # flagged: spreads of the finite members small or missing
    flags = np.isin(np.arange(30), [7, 21])
    options = SelectionSettings(max_selected=3, cap_order='disagreement', min_displacement=0.0)
    result = select_frames(
        {'forces': forces}, {'forces': 0.1}, seed=0, non_finite=flags, settings=options
    )
    best = int(np.argmax(np.where(flags, -1.0, forces)))
    assert result.selected.tolist() == sorted([7, 21, best])
    # the random cap draws among all trusted candidates, flagged or not
    random_cap = SelectionSettings(max_selected=3)
    drawn = select_frames(
        {'forces': forces}, {'forces': 0.1}, seed=0, non_finite=flags, settings=random_cap
    )
    assert drawn.candidates.size == 30 and drawn.selected.size == 3


# --------------------------------------------------------------------------------------------------
# Strategies: registry, built-ins equal to the cap before the registry, a toy strategy


def fixed_input(n_frames=160, seed=2026):
    """Four MD runs stored shuffled, δ with NaNs, flagged frames, distances and forces to reject."""
    rng = np.random.default_rng(seed)
    run_id = rng.integers(0, 4, n_frames)
    step = rng.permutation(n_frames)
    sizes = np.array([2, 3, 3, 4])
    n_atoms = sizes[run_id]
    starts = [rng.uniform(0, 6, (size, 3)) for size in sizes]
    positions = np.concatenate(
        [starts[r] + [0.02 * s, 0.0, 0.0] for r, s in zip(run_id, step, strict=True)]
    ) + rng.normal(0, 0.01, (int(n_atoms.sum()), 3))
    deltas = {
        'energy': rng.uniform(0, 0.02, n_frames),
        'forces': rng.uniform(0, 0.4, n_frames),
        'stress': rng.uniform(0, 0.01, n_frames),
    }
    deltas['stress'][rng.random(n_frames) < 0.3] = np.nan
    non_finite = rng.random(n_frames) < 0.05
    deltas['forces'][non_finite & (rng.random(n_frames) < 0.5)] = np.nan
    return {
        'disagreement': deltas,
        'thresholds': {'energy': 0.012, 'forces': 0.25, 'stress': 0.006},
        'n_atoms': n_atoms,
        'positions': positions,
        'run_id': run_id,
        'step': step,
        'min_distances': rng.uniform(0.4, 2.0, n_frames),
        'max_forces': rng.uniform(0.0, 60.0, n_frames),
        'non_finite': non_finite,
    }


def select_fixed(seed, **settings):
    data = fixed_input()
    return select_frames(
        data.pop('disagreement'),
        data.pop('thresholds'),
        seed=seed,
        settings=SelectionSettings(**settings),
        **data,
    )


#: ``select_frames`` on ``fixed_input()`` with ``max_selected=12``, computed by the code before
#: the strategy registry (commit 8c7433b, ``cap_order``): (cap_order, seed) -> selected.
BEFORE_REGISTRY = {
    ('random', 0): [0, 4, 16, 32, 39, 43, 66, 88, 100, 110, 135, 152],
    ('random', 7): [8, 38, 47, 48, 78, 82, 96, 110, 129, 135, 147, 149],
    ('disagreement', 0): [62, 64, 75, 89, 97, 98, 107, 108, 111, 135, 151, 157],
    ('disagreement', 7): [62, 64, 75, 89, 97, 98, 107, 108, 111, 135, 151, 157],
}
BEFORE_COUNTS = {'candidates': 117, 'rejected': 22, 'thinned': 33, 'capped': 50, 'non_finite': 5}


@pytest.mark.parametrize(('cap_order', 'seed'), sorted(BEFORE_REGISTRY))
def test_built_in_strategies_select_what_the_cap_selected_before(cap_order, seed):
    strategy = {'random': 'paper', 'disagreement': 'disagreement'}[cap_order]
    expected = BEFORE_REGISTRY[(cap_order, seed)]
    by_order = select_fixed(seed, max_selected=12, cap_order=cap_order)
    by_name = select_fixed(seed, max_selected=12, strategy=strategy)
    for result in (by_order, by_name):
        assert result.selected.tolist() == expected
        assert {k: result.counts[k] for k in BEFORE_COUNTS} == BEFORE_COUNTS
        assert result.strategy == strategy
    uncapped = select_fixed(seed, max_selected=None, strategy=strategy)
    assert uncapped.selected.size == 62 and uncapped.counts['capped'] == 0
    assert set(uncapped.selection_reasons) == {'within_budget'}


def cap_before_registry(trusted, flagged, deltas, taus, cap, cap_order, seed):
    """The cap of ``select_frames`` before the registry, verbatim."""
    selected = trusted
    if cap is not None and trusted.size > int(cap):
        if cap_order == 'disagreement':
            excess = np.where(flagged, np.inf, excess_over_threshold(deltas, taus))[trusted]
            selected = np.sort(trusted[np.argsort(-excess, kind='stable')[: int(cap)]])
        else:
            rng = np.random.default_rng(int(seed))
            selected = np.sort(rng.choice(trusted, size=int(cap), replace=False))
    return selected


@FAST
@given(SEEDS, st.integers(0, 80), st.integers(0, 40), st.sampled_from(['random', 'disagreement']))
def test_strategies_equal_the_cap_before_the_registry(seed, n_frames, cap, cap_order):
    rng = np.random.default_rng(seed)
    data = random_disagreement(seed, n_frames)
    data['energy'][rng.random(n_frames) < 0.2] = 0.01  # ties in δ/τ
    flagged = rng.random(n_frames) < 0.1
    max_forces = rng.uniform(0.0, 70.0, n_frames)
    result = select_frames(
        data,
        TAUS,
        seed=seed,
        max_forces=max_forces,
        non_finite=flagged,
        settings=SelectionSettings(max_selected=cap, cap_order=cap_order),
    )
    trusted = np.setdiff1d(result.candidates, result.rejected)
    deltas = {k: np.asarray(v) for k, v in data.items()}
    expected = cap_before_registry(trusted, flagged, deltas, TAUS, cap, cap_order, seed)
    assert result.selected.tolist() == expected.tolist()
    strategy = 'paper' if cap_order == 'random' else 'disagreement'
    by_name = select_frames(
        data,
        TAUS,
        seed=seed,
        max_forces=max_forces,
        non_finite=flagged,
        settings=SelectionSettings(max_selected=cap, strategy=strategy),
    )
    assert by_name.selected.tolist() == expected.tolist()
    assert by_name.to_dict() == result.to_dict()


def test_strategy_registry_lookup():
    assert get_strategy('paper') is paper_strategy is STRATEGIES['paper']
    assert get_strategy('disagreement') is disagreement_strategy
    with pytest.raises(
        ValueError, match=r"unknown selection strategy 'papr'; did you mean 'paper'"
    ):
        get_strategy('papr')
    with pytest.raises(ValueError, match=r"unknown selection strategy 'band'.*known: \[.*'paper'"):
        get_strategy('band')
    with pytest.raises(ValueError, match='registered already'):
        register_strategy('paper', disagreement_strategy)
    with pytest.raises(ValueError, match='non-empty name'):
        register_strategy('', paper_strategy)
    with pytest.raises(TypeError, match='callable'):
        register_strategy('nothing', None)
    assert 'nothing' not in STRATEGIES


def test_settings_name_the_strategy_or_the_cap_order():
    default = SelectionSettings()
    assert (default.strategy, default.cap_order) == ('paper', 'random')
    assert SelectionSettings(cap_order='disagreement') == SelectionSettings(strategy='disagreement')
    assert SelectionSettings(cap_order='random', strategy='paper') == default
    assert SelectionSettings(strategy='disagreement').cap_order == 'disagreement'
    for options in (SelectionSettings(cap_order='disagreement'), default):
        assert SelectionSettings.from_dict(json.loads(json.dumps(options.to_dict()))) == options
    with pytest.raises(ValueError, match=r"unknown selection strategy 'band'"):
        SelectionSettings.from_dict({'strategy': 'band'})
    with pytest.raises(ValueError, match=r"cap_order 'random' is the strategy 'paper'"):
        SelectionSettings(cap_order='random', strategy='disagreement')


def first_n(selection: SelectionInput) -> StrategyChoice:
    """A toy strategy: the lowest frame indices of the pool, up to the budget."""
    first_n.seen = selection
    chosen = selection.pool if selection.budget is None else selection.pool[: selection.budget]
    return StrategyChoice(chosen[::-1], 'first')  # any order; one reason for all


@pytest.fixture
def toy_strategy():
    register_strategy('first_n', first_n)
    yield 'first_n'
    STRATEGIES.pop('first_n')


def test_a_registered_strategy_selects(toy_strategy):
    options = SelectionSettings(max_selected=5, strategy=toy_strategy)
    assert options.cap_order is None
    assert SelectionSettings.from_dict(options.to_dict()) == options
    result = select_fixed(0, max_selected=5, strategy=toy_strategy)
    pool = np.setdiff1d(np.setdiff1d(result.candidates, result.rejected), result.thinned)
    assert result.selected.tolist() == pool[:5].tolist()
    assert result.strategy == 'first_n' and result.selection_reasons == ('first',) * 5
    report = json.loads(json.dumps(result.to_dict()))
    assert report['strategy'] == 'first_n'
    assert report['selection_reasons'] == {str(i): 'first' for i in pool[:5].tolist()}
    assert result.counts['capped'] == pool.size - 5
    # what the strategy saw: the pool and the frames, read-only
    seen = first_n.seen
    assert seen.pool.tolist() == pool.tolist() and seen.budget == 5 and seen.seed == 0
    assert seen.n_frames == 160 and seen.non_finite.sum() == 5
    assert set(seen.deltas) == {'energy', 'forces', 'stress'} and seen.thresholds['forces'] == 0.25
    assert seen.positions.shape == (int(seen.n_atoms.sum()), 3)
    assert seen.min_distances.shape == seen.max_forces.shape == (160,)
    with pytest.raises(ValueError, match='read-only'):
        seen.pool[0] = 1
    with pytest.raises(TypeError):
        seen.deltas['energy'] = None


@pytest.mark.parametrize(
    ('choice', 'message'),
    [
        (lambda s: s.pool, r'must return \(selected, reasons\)'),
        (lambda s: (s.pool[:2], ('a',)), 'one non-empty reason per selected frame'),
        (lambda s: (s.pool[:2], ('a', '')), 'one non-empty reason per selected frame'),
        (lambda s: (s.pool[[0, 0]], 'a'), 'selected a frame twice'),
        (lambda s: (np.setdiff1d(np.arange(160), s.pool)[:1], 'a'), 'outside the pool'),
        (lambda s: (s.pool[:6], 'a'), 'over the budget max_selected = 5'),
        (lambda s: (s.pool[:2] + 0.5, 'a'), 'non-integer'),
    ],
    ids=['no_reasons', 'reason_missing', 'reason_empty', 'twice', 'outside', 'budget', 'float'],
)
def test_a_strategy_breaking_the_contract_is_an_error(choice, message):
    register_strategy('broken', choice)
    try:
        with pytest.raises(ValueError, match=f"selection strategy 'broken' .*{message}"):
            select_fixed(0, max_selected=5, strategy='broken')
    finally:
        STRATEGIES.pop('broken')


def test_built_in_strategies_give_their_reasons():
    paper = select_fixed(0, max_selected=12)
    assert paper.selection_reasons == ('random_draw',) * 12
    ranked = select_fixed(0, max_selected=12, strategy='disagreement')
    flagged = set(ranked.non_finite.tolist())
    assert ranked.selection_reasons == tuple(
        'non_finite' if i in flagged else 'largest_excess' for i in ranked.selected.tolist()
    )
    assert 'non_finite' in ranked.selection_reasons
