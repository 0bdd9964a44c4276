"""Committee disagreement, true errors and metrics against brute-force per-frame loops."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiida_trainspot.evaluation.disagreement import (
    CommitteePredictions,
    ReferenceLabels,
    check_n_atoms,
    committee_disagreement,
    committee_statistics,
    error_metrics,
    errors_of,
    force_disagreement,
    frame_of_atom,
    frame_offsets,
    max_force_norm,
    member_errors,
    true_errors,
    voigt_rms,
)

FAST = settings(max_examples=40, deadline=None)


def voigt_to_tensor(v):
    xx, yy, zz, yz, xz, xy = v
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def tensor_to_voigt(t):
    return np.array([t[0, 0], t[1, 1], t[2, 2], t[1, 2], t[0, 2], t[0, 1]])


def random_committee(seed, n_frames, n_members, stress=True):
    rng = np.random.default_rng(seed)
    n_atoms = rng.integers(1, 6, size=n_frames)
    total = int(n_atoms.sum())
    return CommitteePredictions(
        n_atoms=n_atoms,
        energy=rng.normal(-5.0, 1.0, size=(n_members, n_frames)) * n_atoms,
        forces=rng.normal(0.0, 1.0, size=(n_members, total, 3)),
        stress=rng.normal(0.0, 0.01, size=(n_members, n_frames, 6)) if stress else None,
    )


def random_labels(seed, predictions, missing=0.3):
    rng = np.random.default_rng(seed + 1)
    n_frames, total = predictions.n_frames, int(predictions.n_atoms.sum())
    return ReferenceLabels(
        n_atoms=predictions.n_atoms,
        energy=rng.normal(-5.0, 1.0, size=n_frames) * predictions.n_atoms,
        forces=rng.normal(0.0, 1.0, size=(total, 3)),
        stress=rng.normal(0.0, 0.01, size=(n_frames, 6)),
        energy_mask=rng.random(n_frames) > missing,
        forces_mask=rng.random(n_frames) > missing,
        stress_mask=rng.random(n_frames) > missing,
    )


def committee_with_labels(case):
    """A random committee of a hypothesis ``committees`` case, and random labels for it."""
    seed, n_frames, n_members, with_stress = case
    pred = random_committee(seed, n_frames, n_members, with_stress)
    return pred, random_labels(seed, pred)


def frame_slices(n_atoms):
    start = 0
    for n in n_atoms:
        yield slice(start, start + n)
        start += n


committees = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(1, 7), st.integers(1, 5), st.booleans()
)


# --------------------------------------------------------------------------------------------------
# Layout


def test_offsets_and_frame_index():
    assert frame_offsets([2, 1, 3]).tolist() == [0, 2, 3, 6]
    assert frame_of_atom([2, 1, 3]).tolist() == [0, 0, 1, 2, 2, 2]


@pytest.mark.parametrize('bad', [[1, 0, 2], [[1, 2]], [1.5, 2]])
def test_n_atoms_validated(bad):
    with pytest.raises(ValueError, match=r'n_atoms|at least one atom'):
        check_n_atoms(bad)


def test_shapes_validated():
    with pytest.raises(ValueError, match='forces'):
        CommitteePredictions(n_atoms=[2, 1], energy=np.zeros((2, 2)), forces=np.zeros((2, 4, 3)))
    with pytest.raises(ValueError, match='stress'):
        CommitteePredictions(
            n_atoms=[2, 1],
            energy=np.zeros((2, 2)),
            forces=np.zeros((2, 3, 3)),
            stress=np.zeros((2, 3, 6)),
        )
    with pytest.raises(ValueError, match='energy'):
        ReferenceLabels(n_atoms=[2, 1], energy=np.zeros(3))


# --------------------------------------------------------------------------------------------------
# Disagreement and statistics


@FAST
@given(committees)
def test_disagreement_matches_brute_force(case):
    seed, n_frames, n_members, with_stress = case
    pred = random_committee(seed, n_frames, n_members, with_stress)
    got = committee_disagreement(pred)
    for f, atoms in enumerate(frame_slices(pred.n_atoms)):
        n = pred.n_atoms[f]
        per_atom = [pred.energy[m, f] / n for m in range(n_members)]
        assert got.energy[f] == pytest.approx(np.std(per_atom), abs=1e-12)
        forces = pred.forces[:, atoms]  # (M, n, 3)
        variances = [
            [np.var([forces[m, i, c] for m in range(n_members)]) for c in range(3)]
            for i in range(n)
        ]
        assert got.forces[f] == pytest.approx(np.sqrt(np.sum(variances) / (3 * n)), abs=1e-12)
        per_atom_norm = [np.sqrt(sum(row)) for row in variances]
        assert got.forces_max[f] == pytest.approx(max(per_atom_norm), abs=1e-12)
        if with_stress:
            tensors = np.array([voigt_to_tensor(pred.stress[m, f]) for m in range(n_members)])
            expected = np.sqrt(np.mean(np.var(tensors, axis=0)))  # 9 components
            assert got.stress[f] == pytest.approx(expected, abs=1e-14)
        else:
            assert np.isnan(got.stress[f])


@FAST
@given(committees)
def test_committee_statistics_match_brute_force(case):
    seed, n_frames, n_members, with_stress = case
    pred = random_committee(seed, n_frames, n_members, with_stress)
    stats = committee_statistics(pred)
    for f in range(n_frames):
        energies = [pred.energy[m, f] for m in range(n_members)]
        assert stats.mean_energy[f] == pytest.approx(sum(energies) / n_members)
    np.testing.assert_allclose(stats.std_energy_per_atom, committee_disagreement(pred).energy)
    for i in range(int(pred.n_atoms.sum())):
        for c in range(3):
            values = [pred.forces[m, i, c] for m in range(n_members)]
            assert stats.mean_forces[i, c] == pytest.approx(np.mean(values))
            assert stats.std_forces[i, c] == pytest.approx(np.std(values), abs=1e-12)
    if with_stress:
        np.testing.assert_allclose(stats.mean_stress, pred.stress.mean(axis=0))
        np.testing.assert_allclose(stats.std_stress, pred.stress.std(axis=0))
    else:
        assert stats.mean_stress is None and stats.std_stress is None


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


@FAST
@given(st.integers(0, 2**32 - 1))
def test_force_and_stress_disagreement_are_rotation_invariant(seed):
    pred = random_committee(seed, 4, 3)
    rot = random_rotation(np.random.default_rng(seed))
    stress = np.array(
        [
            [tensor_to_voigt(rot @ voigt_to_tensor(v) @ rot.T) for v in member]
            for member in pred.stress
        ]
    )
    rotated = CommitteePredictions(pred.n_atoms, pred.energy, pred.forces @ rot.T, stress)
    before, after = committee_disagreement(pred), committee_disagreement(rotated)
    for name in ('energy', 'forces', 'forces_max', 'stress'):
        np.testing.assert_allclose(after[name], before[name], rtol=1e-10, atol=1e-15)


def test_identical_members_do_not_disagree():
    pred = random_committee(3, 5, 1)
    clones = CommitteePredictions(
        pred.n_atoms,
        np.repeat(pred.energy, 4, axis=0),
        np.repeat(pred.forces, 4, axis=0),
        np.repeat(pred.stress, 4, axis=0),
    )
    for values in committee_disagreement(clones).as_dict().values():
        np.testing.assert_allclose(values, 0.0, atol=1e-15)


def test_known_two_member_values():
    # one frame of two atoms, members differ by +-d on one force component and +-e in energy
    forces = np.zeros((2, 2, 3))
    forces[0, 0, 0], forces[1, 0, 0] = 0.3, -0.3
    stress = np.zeros((2, 1, 6))
    stress[0, 0, 5], stress[1, 0, 5] = 0.01, -0.01  # xy, counted twice in the tensor
    pred = CommitteePredictions([2], np.array([[1.0], [-1.0]]), forces, stress)
    got = committee_disagreement(pred)
    assert got.energy[0] == pytest.approx(0.5)  # std of +-1 eV over 2 atoms
    assert got.forces[0] == pytest.approx(0.3 / np.sqrt(6))
    assert got.forces_max[0] == pytest.approx(0.3)
    assert got.stress[0] == pytest.approx(0.01 * np.sqrt(2 / 9))


def test_missing_stress_rows_from_mask_and_nan():
    pred = random_committee(5, 4, 3)
    stress = pred.stress.copy()
    stress[1, 2, 0] = np.nan  # one member lacks frame 2
    masked = CommitteePredictions(
        pred.n_atoms, pred.energy, pred.forces, stress, stress_mask=[True, False, True, True]
    )
    assert masked.stress_present().tolist() == [True, False, False, True]
    delta = committee_disagreement(masked).stress
    assert np.isnan(delta[[1, 2]]).all() and np.isfinite(delta[[0, 3]]).all()
    assert np.isfinite(pred.stress).all()  # the input was not modified


@FAST
@given(committees)
def test_max_force_norm_matches_brute_force(case):
    seed, n_frames, n_members, _ = case
    pred = random_committee(seed, n_frames, n_members)
    mean = pred.forces.mean(axis=0)
    got = max_force_norm(mean, pred.n_atoms)
    for f, atoms in enumerate(frame_slices(pred.n_atoms)):
        assert got[f] == pytest.approx(max(np.linalg.norm(v) for v in mean[atoms]))


def test_force_disagreement_rejects_wrong_atom_count():
    with pytest.raises(ValueError, match='atoms'):
        force_disagreement(np.zeros((2, 5, 3)), [2, 2])


# --------------------------------------------------------------------------------------------------
# True errors


@FAST
@given(committees)
def test_true_errors_match_brute_force(case):
    pred, labels = committee_with_labels(case)
    got = true_errors(pred, labels)
    for f, atoms in enumerate(frame_slices(pred.n_atoms)):
        n = pred.n_atoms[f]
        if labels.energy_mask[f]:
            expected = abs(np.mean(pred.energy[:, f]) - labels.energy[f]) / n
            assert got.energy[f] == pytest.approx(expected, abs=1e-12)
        else:
            assert np.isnan(got.energy[f])
        if labels.forces_mask[f]:
            diff = pred.forces[:, atoms].mean(axis=0) - labels.forces[atoms]
            expected = np.sqrt(sum(x**2 for x in diff.ravel()) / (3 * n))
            assert got.forces[f] == pytest.approx(expected, abs=1e-12)
        else:
            assert np.isnan(got.forces[f])
        if pred.stress is not None and labels.stress_mask[f]:
            diff = voigt_to_tensor(pred.stress[:, f].mean(axis=0)) - voigt_to_tensor(
                labels.stress[f]
            )
            assert got.stress[f] == pytest.approx(np.sqrt(np.mean(diff**2)), abs=1e-14)
        else:
            assert np.isnan(got.stress[f])


def one_member(predictions, member):
    """The committee of member ``member`` alone."""
    return CommitteePredictions(
        n_atoms=predictions.n_atoms,
        energy=predictions.energy[member : member + 1],
        forces=predictions.forces[member : member + 1],
        stress=None if predictions.stress is None else predictions.stress[member : member + 1],
    )


@FAST
@given(committees)
def test_member_errors_are_the_rms_of_each_members_own_error(case):
    pred, labels = committee_with_labels(case)
    own = [true_errors(one_member(pred, m), labels).as_dict() for m in range(len(pred.energy))]
    got = member_errors(committee_disagreement(pred), true_errors(pred, labels))
    assert set(got) == {'energy', 'forces', 'stress'}
    for name, values in got.items():
        expected = np.sqrt(np.mean([errors[name] ** 2 for errors in own], axis=0))
        np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-14)
        assert np.array_equal(np.isnan(values), np.isnan(expected))


def test_errors_of_names_the_kind():
    delta, mean = {'forces': np.array([0.3, 0.0])}, {'forces': np.array([0.4, 0.2])}
    assert errors_of('committee_mean', delta, mean)['forces'].tolist() == [0.4, 0.2]
    assert errors_of('members', delta, mean)['forces'] == pytest.approx([0.5, 0.2])
    with pytest.raises(ValueError, match=r"'median'.*committee_mean"):
        errors_of('median', delta, mean)


def test_label_masks_combine_with_finiteness():
    pred = random_committee(1, 3, 2)
    forces = np.zeros((int(pred.n_atoms.sum()), 3))
    forces[0, 1] = np.nan  # first atom of frame 0
    labels = ReferenceLabels(
        pred.n_atoms,
        energy=[1.0, np.nan, 2.0],
        forces=forces,
        energy_mask=[True, True, False],
    )
    assert labels.energy_mask.tolist() == [True, False, False]
    assert labels.forces_mask.tolist() == [False, True, True]
    assert labels.stress_mask.tolist() == [False, False, False]  # stress not given
    with pytest.raises(KeyError):
        labels.mask('virial')


def test_frames_must_match():
    pred = random_committee(1, 3, 2)
    labels = ReferenceLabels(pred.n_atoms[::-1].copy() + 1, energy=np.zeros(3))
    with pytest.raises(ValueError, match='different frames'):
        true_errors(pred, labels)


# --------------------------------------------------------------------------------------------------
# Metrics


def brute_metrics(pred, labels, name, frames):
    """Per-member and committee-mean RMSE/MAE (meV units) by explicit loops over frames."""
    members = [*range(pred.n_members), 'mean']
    errors = {m: [] for m in members}
    slices = list(frame_slices(pred.n_atoms))
    used = 0
    for f in frames:
        if not labels.mask(name)[f]:
            continue
        if name == 'stress' and (pred.stress is None or not pred.stress_present()[f]):
            continue
        used += 1
        for m in members:
            if name == 'energy':
                value = pred.energy[:, f].mean() if m == 'mean' else pred.energy[m, f]
                errors[m].append((value - labels.energy[f]) / pred.n_atoms[f])
            elif name == 'forces':
                block = pred.forces[:, slices[f]]
                value = block.mean(axis=0) if m == 'mean' else block[m]
                errors[m].extend((value - labels.forces[slices[f]]).ravel())
            else:
                voigt = pred.stress[:, f].mean(axis=0) if m == 'mean' else pred.stress[m, f]
                errors[m].extend(
                    (voigt_to_tensor(voigt) - voigt_to_tensor(labels.stress[f])).ravel()
                )
    rmse = {m: 1000 * np.sqrt(np.mean(np.square(e))) if e else np.nan for m, e in errors.items()}
    mae = {m: 1000 * np.mean(np.abs(e)) if e else np.nan for m, e in errors.items()}
    return rmse, mae, used, len(errors['mean'])


@FAST
@given(committees, st.data())
def test_metrics_match_brute_force(case, data):
    pred, labels = committee_with_labels(case)
    subset = data.draw(st.sets(st.integers(0, pred.n_frames - 1)) | st.none())
    frames = range(pred.n_frames) if subset is None else sorted(subset)
    got = error_metrics(pred, labels, None if subset is None else np.array(frames, dtype=int))
    assert set(got) == {'energy', 'forces', 'stress'}
    for name, metrics in got.items():
        rmse, mae, used, n_values = brute_metrics(pred, labels, name, frames)
        assert (metrics.n_frames, metrics.n_values) == (used, n_values)
        members = list(range(len(pred.energy)))
        np.testing.assert_allclose(metrics.member_rmse, [rmse[m] for m in members], rtol=1e-9)
        np.testing.assert_allclose(metrics.member_mae, [mae[m] for m in members], rtol=1e-9)
        np.testing.assert_allclose(metrics.committee_rmse, rmse['mean'], rtol=1e-9)
        np.testing.assert_allclose(metrics.committee_mae, mae['mean'], rtol=1e-9)
        if used:
            member_rmse = [rmse[m] for m in members]
            assert metrics.member_rmse_mean == pytest.approx(np.mean(member_rmse))
            assert metrics.member_rmse_std == pytest.approx(np.std(member_rmse), abs=1e-9)
        json.dumps(metrics.to_dict(), allow_nan=False)


def test_metrics_frame_mask_equals_indices():
    pred = random_committee(11, 8, 3)
    labels = random_labels(11, pred, missing=0.0)
    mask = np.arange(8) % 3 == 0
    by_mask = error_metrics(pred, labels, mask)
    by_index = error_metrics(pred, labels, np.flatnonzero(mask))
    for name in by_mask:
        assert by_mask[name] == by_index[name]
        assert by_mask[name].n_frames == 3


def test_metrics_units_and_known_value():
    # two frames of one atom, members off by +-2 meV/atom in energy, the mean exact
    pred = CommitteePredictions(
        [1, 1], np.array([[0.002, -0.002], [-0.002, 0.002]]), np.zeros((2, 2, 3))
    )
    labels = ReferenceLabels([1, 1], energy=np.zeros(2), forces=np.zeros((2, 3)))
    energy = error_metrics(pred, labels)['energy']
    assert energy.unit == 'meV/atom'
    np.testing.assert_allclose(energy.member_rmse, [2.0, 2.0])
    assert energy.committee_rmse == pytest.approx(0.0, abs=1e-12)


def test_absent_stress_everywhere():
    pred = random_committee(2, 5, 3, stress=False)
    labels = ReferenceLabels(
        pred.n_atoms, energy=np.zeros(5), forces=np.zeros((pred.forces.shape[1], 3))
    )
    delta, errors = committee_disagreement(pred), true_errors(pred, labels)
    assert np.isnan(delta.stress).all() and np.isnan(errors.stress).all()
    assert np.isfinite(delta.energy).all() and np.isfinite(errors.forces).all()
    metrics = error_metrics(pred, labels)
    assert metrics['stress'].n_frames == 0 and np.isnan(metrics['stress'].committee_rmse)
    assert metrics['energy'].n_frames == 5
    assert metrics['stress'].to_dict()['committee_rmse'] is None
    # stress predicted but never labelled
    with_stress = random_committee(2, 5, 3)
    assert np.isnan(true_errors(with_stress, labels).stress).all()
    assert error_metrics(with_stress, labels)['stress'].n_values == 0


def test_voigt_rms_counts_off_diagonals_twice():
    assert voigt_rms(np.array([1.0, 0, 0, 0, 0, 0])) == pytest.approx(1 / 3)
    assert voigt_rms(np.array([0, 0, 0, 1.0, 0, 0])) == pytest.approx(np.sqrt(2) / 3)


# --------------------------------------------------------------------------------------------------
# Non-finite members


def poisoned(case, frame, member, where):
    """A random committee with ``member`` non-finite on ``frame`` (in ``where``)."""
    seed, n_frames, n_members, _ = case
    pred = random_committee(seed, n_frames, n_members)
    energy, forces = pred.energy.copy(), pred.forces.copy()
    if where == 'energy':
        energy[member, frame] = np.nan
    else:  # one component of one atom: the member's whole frame goes
        forces[member, frame_offsets(pred.n_atoms)[frame], 1] = -np.inf
    return pred, CommitteePredictions(pred.n_atoms, energy, forces, pred.stress)


def drop_member(pred, member, frames):
    """The committee of ``frames`` without ``member``."""
    keep = [m for m in range(pred.n_members) if m != member]
    offsets = frame_offsets(pred.n_atoms)
    atom_rows = np.concatenate([np.arange(offsets[f], offsets[f + 1]) for f in frames])
    return CommitteePredictions(
        pred.n_atoms[frames],
        pred.energy[keep][:, frames],
        pred.forces[keep][:, atom_rows],
        pred.stress[keep][:, frames],
    )


@FAST
@given(committees, st.sampled_from(['energy', 'forces']), st.data())
def test_a_non_finite_member_is_left_out_of_its_frame_only(case, where, data):
    _, n_frames, n_members, _ = case
    frame = data.draw(st.integers(0, n_frames - 1))
    member = data.draw(st.integers(0, n_members - 1))
    clean, pred = poisoned(case, frame, member, where)
    flags = np.zeros(n_frames, dtype=bool)
    flags[frame] = True
    assert pred.member_finite().sum() == n_members * n_frames - 1
    np.testing.assert_array_equal(pred.non_finite(), flags)
    assert not pred.non_finite([m for m in range(n_members) if m != member]).any()
    offsets = frame_offsets(pred.n_atoms)
    atoms = slice(offsets[frame], offsets[frame + 1])
    assert np.isnan(pred.energy[member, frame]) and np.isnan(pred.forces[member, atoms]).all()
    assert np.isnan(pred.stress[member, frame]).all()
    stats, delta = committee_statistics(pred), committee_disagreement(pred)
    clean_stats, clean_delta = committee_statistics(clean), committee_disagreement(clean)
    other = ~flags
    other_atoms = np.repeat(other, pred.n_atoms)
    # every other frame: bit for bit the values of the committee that never failed
    for name in ('mean_energy', 'std_energy_per_atom', 'mean_stress', 'std_stress'):
        np.testing.assert_array_equal(
            getattr(stats, name)[other], getattr(clean_stats, name)[other]
        )
    for name in ('mean_forces', 'std_forces'):
        np.testing.assert_array_equal(
            getattr(stats, name)[other_atoms], getattr(clean_stats, name)[other_atoms]
        )
    for name in ('energy', 'forces', 'forces_max', 'stress'):
        np.testing.assert_array_equal(delta[name][other], clean_delta[name][other])
    # the flagged frame: the committee without the member (NaN spreads with one member left)
    if n_members == 1:
        assert np.isnan(stats.mean_energy[frame]) and np.isnan(delta.energy[frame])
        assert not pred.stress_present()[frame]
        return
    without = drop_member(clean, member, [frame])
    w_stats, w_delta = committee_statistics(without), committee_disagreement(without)
    assert stats.mean_energy[frame] == pytest.approx(w_stats.mean_energy[0], rel=1e-13)
    np.testing.assert_allclose(stats.mean_forces[atoms], w_stats.mean_forces, rtol=1e-13)
    np.testing.assert_allclose(stats.mean_stress[frame], w_stats.mean_stress[0], rtol=1e-13)
    for name in ('energy', 'forces', 'forces_max', 'stress'):
        if n_members == 2:
            assert np.isnan(delta[name][frame]), name  # one member has no spread
        else:
            assert delta[name][frame] == pytest.approx(w_delta[name][0], rel=1e-12), name
    assert pred.stress_present()[frame]


def test_error_metrics_skip_flagged_frames_and_unscored_members():
    clean, pred = poisoned((3, 6, 3, True), 2, 1, 'energy')
    labels = random_labels(3, clean, missing=0.0)
    kept = np.arange(6) != 2
    got, expected = error_metrics(pred, labels), error_metrics(clean, labels, kept)
    for name in ('energy', 'forces', 'stress'):
        assert got[name].n_frames == expected[name].n_frames == 5
        np.testing.assert_allclose(got[name].member_rmse, expected[name].member_rmse, rtol=1e-12)
        assert got[name].committee_rmse == pytest.approx(expected[name].committee_rmse)
    # scoring two members: the third has no values, the committee mean is over the two
    two = error_metrics(pred, labels, members=[0, 2])
    reference = error_metrics(drop_member(clean, 1, np.arange(6)), labels)
    assert np.isnan(two['forces'].member_rmse[1])
    assert two['forces'].n_frames == 6  # member 1's bad frame does not matter any more
    assert two['forces'].committee_rmse == pytest.approx(reference['forces'].committee_rmse)
    assert two['forces'].member_rmse_mean == pytest.approx(reference['forces'].member_rmse_mean)
    assert json.dumps(two['forces'].to_dict())  # NaN becomes None


def test_a_single_member_committee_still_has_zero_spread():
    pred = random_committee(1, 4, 1)
    delta = committee_disagreement(pred)
    assert (delta.energy == 0).all() and (delta.forces == 0).all() and (delta.stress == 0).all()
