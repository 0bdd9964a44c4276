"""Committee inference (pure core): real tiny models per frame and batched, columns, metrics."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, diamond100, graphene
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress

from aiida_trainspot.data.columns import Columns, concatenate_columns
from aiida_trainspot.data.convert import columns_from_atoms
from aiida_trainspot.evaluation.calibration import Calibration
from aiida_trainspot.evaluation.disagreement import (
    CommitteePredictions,
    ReferenceLabels,
    committee_disagreement,
    committee_statistics,
    error_metrics,
    true_errors,
)
from aiida_trainspot.evaluation.inference import (
    ATOM_COLUMNS,
    FRAME_COLUMNS,
    InferenceError,
    MetricsAccumulator,
    disagreement_summary,
    frames_as_atoms,
    predict_committee,
    predict_member,
    prediction_columns,
    reference_labels,
    split_column,
    supports_batching,
)
from aiida_trainspot.training.loader import load_calculator


def mixed_frames() -> list[Atoms]:
    """Periodic bulk cells of two sizes, a slab (periodic in 2D), a cluster and a lone atom."""
    rng = np.random.default_rng(11)
    frames = []
    for index in range(7):
        atoms = bulk('C', 'diamond', a=3.567, cubic=index % 2 == 0)
        if index == 3:
            atoms = atoms.repeat((2, 1, 1))
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        frames.append(atoms)
    slab = diamond100('C', size=(2, 2, 3), vacuum=4.0)
    slab.positions += rng.normal(0.0, 0.03, slab.positions.shape)
    frames.insert(2, slab)
    cluster = Atoms('C4', positions=[[0, 0, 0], [1.4, 0, 0], [0, 1.45, 0], [0.1, 0.2, 1.35]])
    frames.insert(5, cluster)
    frames.append(Atoms('C', positions=[[0.0, 0.0, 0.0]]))
    return frames


def direct(calculator, frames):
    """Plain ASE, one frame at a time: energy, forces, stress (None unless fully periodic).

    (The stress of 2D frames is checked against finite differences instead: MACE's own ASE
    stress of a frame with vacuum is over another volume.)
    """
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calculator
        stress = atoms.get_stress() if atoms.pbc.all() else None
        out.append((atoms.get_potential_energy(), atoms.get_forces(), stress))
    return out


@pytest.fixture(scope='module')
def calculators(tiny_committee_files):
    return {
        engine: [
            load_calculator(engine, m['model'], dtype='float64', extensions_dir=m['extensions'])
            for m in members
        ]
        for engine, members in tiny_committee_files.items()
    }


def check_member(result, expected, frames, rtol=0.0, atol=0.0):
    np.testing.assert_allclose(result.energy, [e for e, _, _ in expected], rtol=rtol, atol=atol)
    np.testing.assert_allclose(
        result.forces, np.concatenate([f for _, f, _ in expected]), rtol=rtol, atol=atol
    )
    periodic = np.array([a.pbc.all() for a in frames])
    with_stress = np.array([a.pbc.sum() >= 2 for a in frames])  # bulk and 2D frames
    assert np.isnan(result.stress[~with_stress]).all()
    assert np.isfinite(result.stress[with_stress]).all()
    expected_stress = np.reshape([s for _, _, s in expected if s is not None], (-1, 6))
    np.testing.assert_allclose(result.stress[periodic], expected_stress, rtol=rtol, atol=atol)


@pytest.mark.parametrize('engine', ['mace', 'metatrain'])
def test_per_frame_is_plain_ase(calculators, engine):
    frames = mixed_frames()
    calculator = calculators[engine][0]
    expected = direct(calculator, frames)
    result = predict_member(calculator, frames)
    # the same ASE calls; metatomic keeps Verlet neighbour lists (with a skin) between calls, so
    # a second pass over the frames may sum the pairs in another order
    tolerance = 0.0 if engine == 'mace' else 1e-13
    check_member(result, expected, frames, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('engine', ['mace', 'metatrain'])
@pytest.mark.parametrize('batch_size', [3, 64])
def test_batched_equals_per_frame(calculators, engine, batch_size):
    frames = mixed_frames()
    calculator = calculators[engine][1]
    assert supports_batching(calculator) == ('mace' if engine == 'mace' else 'metatomic')
    expected = direct(calculator, frames)
    result = predict_member(calculator, frames, batch_size=batch_size)
    check_member(result, expected, frames, rtol=1e-10, atol=1e-10)
    # the slab's stress (2D) too: batched MACE rescales with its graph's cell, per frame with
    # MACE's neighbourhood function; metatomic evaluates 2D frames one by one either way
    slab = np.array([a.pbc.tolist() == [True, True, False] for a in frames])
    assert slab.sum() == 1
    per_frame = predict_member(calculator, frames)
    np.testing.assert_allclose(result.stress[slab], per_frame.stress[slab], rtol=1e-10, atol=1e-12)


def layer_wire_cluster():
    """Graphene (periodic along x and y, 16 Å of vacuum), a carbon wire (x only), a cluster."""
    layer = graphene(a=2.46, vacuum=8.0)  # c = 16 Å
    layer.positions += np.random.default_rng(4).normal(0.0, 0.02, layer.positions.shape)
    wire = Atoms('C2', positions=[[0, 5, 5], [1.3, 5.1, 5]], cell=[2.6, 10, 10], pbc=[1, 0, 0])
    cluster = Atoms('C3', positions=[[0, 0, 0], [1.35, 0, 0], [0.6, 1.2, 0.1]])
    return [layer, wire, cluster]


def strained_energy(calculator, atoms, strain):
    """Energy of ``atoms`` with cell and positions scaled by 1 + strain along x."""
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell.array @ np.diag([1.0 + strain, 1.0, 1.0]), scale_atoms=True)
    atoms.calc = calculator
    return atoms.get_potential_energy()


@pytest.mark.parametrize('engine', ['mace', 'metatrain'])
@pytest.mark.parametrize('batch_size', [1, 4])
def test_2d_stress_is_the_full_volume_strain_derivative(calculators, engine, batch_size):
    frames = layer_wire_cluster()
    committee = calculators[engine]
    result = predict_member(committee[0], frames, batch_size=batch_size)
    assert np.isfinite(result.stress[0]).all()  # the layer has a stress ...
    assert np.isnan(result.stress[1:]).all()  # ... the wire (1D) and the cluster (0D) none
    layer = frames[0]
    volume = layer.cell.volume  # the whole cell, vacuum included
    h = 1e-5
    finite_difference = (
        strained_energy(committee[0], layer, h) - strained_energy(committee[0], layer, -h)
    ) / (2 * h * volume)
    assert abs(finite_difference) > 1e-4  # a stress worth comparing
    assert result.stress[0, 0] == pytest.approx(finite_difference, rel=1e-6)
    # every component, from ASE's finite differences of the energy (also over the full volume)
    atoms = layer.copy()
    atoms.calc = committee[0]
    numerical = calculate_numerical_stress(atoms, eps=1e-5, force_consistent=False)
    np.testing.assert_allclose(result.stress[0], numerical, rtol=1e-6, atol=1e-9)
    # the loaded calculator itself, as an MD barostat uses it, gives the same stress
    np.testing.assert_allclose(atoms.get_stress(), numerical, rtol=1e-6, atol=1e-9)
    # the committee's stress disagreement is there for the layer only
    columns = columns_from_atoms(frames)
    predictions = predict_committee(committee, columns, batch_size=batch_size)
    assert predictions.stress_present().tolist() == [True, False, False]
    delta = committee_disagreement(predictions)
    assert np.isfinite(delta.stress[0]) and delta.stress[0] > 0
    assert np.isnan(delta.stress[1:]).all()
    out = prediction_columns(predictions)
    assert out.mask('delta_stress').tolist() == [True, False, False]


def test_mace_batched_float32(tiny_committee_files):
    member = tiny_committee_files['mace'][0]
    calculator = load_calculator('mace', member['model'], dtype='float32')
    frames = mixed_frames()
    expected = direct(calculator, frames)
    result = predict_member(calculator, frames, batch_size=4)
    check_member(result, expected, frames, rtol=1e-5, atol=1e-5)


def test_other_calculators_go_frame_by_frame():
    frames = [
        bulk('Cu', 'fcc', a=3.6, cubic=True),
        Atoms('Cu2', positions=[[0, 0, 0], [2.5, 0, 0]]),
    ]
    frames[0].rattle(0.05, seed=1)
    assert supports_batching(EMT()) is None
    result = predict_member(EMT(), frames, batch_size=8)
    check_member(result, direct(EMT(), frames), frames)


class Failing(Calculator):
    implemented_properties = ('energy', 'forces', 'stress')

    def __init__(self, bad_frame_atoms, value=None):
        super().__init__()
        self.bad = bad_frame_atoms
        self.value = value

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if len(atoms) == self.bad and self.value is None:
            raise RuntimeError('boom\nsecond line')
        energy = self.value if len(atoms) == self.bad else -1.0 * len(atoms)
        self.results = {
            'energy': energy,
            'forces': np.zeros((len(atoms), 3)),
            'stress': np.zeros(6),
        }


def test_failures_name_member_and_frame():
    frames = [Atoms('H', cell=[5, 5, 5], pbc=True), Atoms('H2', [[0, 0, 0], [0, 0, 0.7]])]
    with pytest.raises(InferenceError, match=r'member 3 failed on frame 1: RuntimeError: boom$'):
        predict_member(Failing(2), frames, member=3)
    # a non-finite result is no failure: the frame's values are NaN and the problem recorded
    result = predict_member(Failing(2, np.nan), frames, member=3)
    assert result.non_finite.tolist() == [False, True]
    assert result.problems == {1: 'non-finite energy nan'}
    assert np.isnan(result.forces[1:]).all() and np.isfinite(result.forces[0]).all()
    assert np.isnan(result.stress[1]).all() and np.isfinite(result.stress[0]).all()


def synthetic(rng, n_members=3, n_frames=9, stress_missing=(2, 5)):
    n_atoms = rng.integers(1, 6, n_frames)
    total = int(n_atoms.sum())
    energy = rng.normal(-5.0, 1.0, (n_members, n_frames))
    forces = rng.normal(0.0, 1.0, (n_members, total, 3))
    stress = rng.normal(0.0, 0.01, (n_members, n_frames, 6))
    mask = np.ones(n_frames, dtype=bool)
    mask[list(stress_missing)] = False
    predictions = CommitteePredictions(n_atoms, energy, forces, stress, stress_mask=mask)
    energy_mask = np.ones(n_frames, dtype=bool)
    energy_mask[0] = False
    labels = ReferenceLabels(
        n_atoms,
        energy=rng.normal(-5.0, 1.0, n_frames),
        forces=rng.normal(0.0, 1.0, (total, 3)),
        stress=rng.normal(0.0, 0.01, (n_frames, 6)),
        energy_mask=energy_mask,
    )
    return predictions, labels


def test_prediction_columns_are_the_pure_statistics():
    rng = np.random.default_rng(5)
    predictions, labels = synthetic(rng)
    calibration = Calibration(slopes={'energy': 2.0, 'forces': 0.5})
    columns = prediction_columns(predictions, labels, calibration)
    assert set(columns.frame) == set(FRAME_COLUMNS) | {
        'estimated_error_energy',
        'estimated_error_forces',
    }
    assert set(columns.atom) == set(ATOM_COLUMNS)
    stats = committee_statistics(predictions)
    delta = committee_disagreement(predictions)
    errors = true_errors(predictions, labels)
    has_stress = predictions.stress_present()
    np.testing.assert_array_equal(columns.frame['energy_members'], predictions.energy.T)
    np.testing.assert_array_equal(
        columns.atom['forces_members'], predictions.forces.transpose(1, 0, 2)
    )
    np.testing.assert_array_equal(columns.atom['forces_mean'], stats.mean_forces)
    np.testing.assert_array_equal(columns.atom['forces_std'], stats.std_forces)
    np.testing.assert_array_equal(columns.frame['energy_mean'], stats.mean_energy)
    np.testing.assert_array_equal(columns.frame['energy_std_per_atom'], delta.energy)
    for name in ('energy', 'forces', 'forces_max', 'stress'):
        np.testing.assert_array_equal(columns.frame[f'delta_{name}'], delta[name])
    for name in ('energy', 'forces', 'stress'):
        np.testing.assert_array_equal(columns.frame[f'eps_{name}'], errors[name])
    np.testing.assert_array_equal(columns.frame['estimated_error_energy'], delta.energy / 2.0)
    np.testing.assert_array_equal(columns.frame['estimated_error_forces'], delta.forces / 0.5)
    np.testing.assert_array_equal(
        columns.frame['stress_mean'][has_stress], stats.mean_stress[has_stress]
    )
    # every NaN has its mask False, every mask False a NaN
    for name, values in columns.frame.items():
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        np.testing.assert_array_equal(columns.mask(name), finite, err_msg=name)
    for name in ('stress_members', 'stress_mean', 'stress_std', 'delta_stress'):
        np.testing.assert_array_equal(columns.mask(name), has_stress)
    assert not columns.mask('eps_energy')[0]
    # without labels or calibration: eps columns all missing, no estimated errors
    bare = prediction_columns(predictions)
    assert set(bare.frame) == set(FRAME_COLUMNS)
    assert not bare.mask('eps_forces').any()


def test_metrics_accumulate_over_chunks_exactly():
    rng = np.random.default_rng(9)
    predictions, labels = synthetic(rng, n_frames=12)
    splits = np.array(['train', 'validation', '', 'test'] * 3, dtype=object)
    splits[7] = 'train'
    accumulator = MetricsAccumulator(predictions.n_members)
    offsets = np.concatenate([[0], np.cumsum(predictions.n_atoms)])
    for frames in (np.arange(0, 5), np.arange(5, 6), np.arange(6, 12)):
        atoms = slice(offsets[frames[0]], offsets[frames[-1] + 1])
        part = CommitteePredictions(
            predictions.n_atoms[frames],
            predictions.energy[:, frames],
            predictions.forces[:, atoms],
            predictions.stress[:, frames],
        )
        part_labels = ReferenceLabels(
            labels.n_atoms[frames],
            energy=labels.energy[frames],
            forces=labels.forces[atoms],
            stress=labels.stress[frames],
            energy_mask=labels.energy_mask[frames],
        )
        accumulator.add(part, part_labels, splits[frames])
    result = accumulator.to_dict()
    assert list(result) == ['all', 'train', 'validation', 'test', 'unassigned']
    groups = {
        'all': None,
        'train': splits == 'train',
        'validation': splits == 'validation',
        'test': splits == 'test',
        'unassigned': splits == '',
    }
    for group, mask in groups.items():
        expected = error_metrics(predictions, labels, mask)
        assert result[group]['n_frames'] == (12 if mask is None else int(mask.sum()))
        for name, metrics in expected.items():
            got = result[group][name]
            assert got['n_frames'] == metrics.n_frames
            assert got['n_values'] == metrics.n_values
            assert got['unit'] == metrics.unit
            np.testing.assert_allclose(got['member_rmse'], metrics.member_rmse, rtol=1e-12)
            np.testing.assert_allclose(got['member_mae'], metrics.member_mae, rtol=1e-12)
            np.testing.assert_allclose(got['committee_rmse'], metrics.committee_rmse, rtol=1e-12)
            np.testing.assert_allclose(got['member_rmse_std'], metrics.member_rmse_std, rtol=1e-9)


def test_metrics_without_labels_or_splits():
    rng = np.random.default_rng(2)
    predictions, _ = synthetic(rng)
    accumulator = MetricsAccumulator(predictions.n_members)
    accumulator.add(predictions, None, None)
    result = accumulator.to_dict()
    assert list(result) == ['all']
    assert result['all']['n_frames'] == predictions.n_frames
    assert result['all']['energy']['n_frames'] == 0
    assert result['all']['energy']['committee_rmse'] is None
    assert result['all']['forces']['member_rmse'] == [None] * 3


def test_committee_on_columns_and_labels_from_columns(calculators, labelled_carbon_frames):
    columns = columns_from_atoms(labelled_carbon_frames[:5])
    columns.frame['split'] = np.array(['train', 'test', '', 'train', 'validation'], dtype=object)
    columns.present['split'] = np.array([True, True, False, True, True])
    assert list(split_column(columns)) == ['train', 'test', '', 'train', 'validation']
    labels = reference_labels(columns)
    assert labels.mask('stress').all()
    assert reference_labels(Columns(n_atoms=columns.n_atoms, frame={}, atom={})) is None
    frames = frames_as_atoms(columns)
    assert [len(a) for a in frames] == list(columns.n_atoms)
    committee = calculators['mace']
    predictions = predict_committee(committee, columns)
    for index, calculator in enumerate(committee):
        expected = direct(calculator, labelled_carbon_frames[:5])
        np.testing.assert_array_equal(predictions.energy[index], [e for e, _, _ in expected])
        np.testing.assert_array_equal(predictions.stress[index], [s for *_, s in expected])
    joined = concatenate_columns([prediction_columns(predictions, labels)])
    assert joined.n_frames == 5


def test_disagreement_summary_counts_candidates():
    values = {
        'delta_energy': np.array([0.001, 0.004, np.nan, 0.002]),
        'delta_forces': np.array([0.1, 0.05, 0.3, 0.2]),
        'delta_forces_max': np.array([0.2, 0.1, 0.5, 0.4]),
        'delta_stress': np.full(4, np.nan),
    }
    calibration = Calibration(slopes={'energy': 2.0, 'forces': 1.5})  # tau 2e-3 and 0.15
    summary = disagreement_summary(values, calibration)
    assert summary['delta_energy']['n_frames'] == 3
    assert summary['delta_energy']['max'] == pytest.approx(0.004)
    assert summary['delta_forces']['median'] == pytest.approx(0.15)
    assert summary['delta_forces_max']['unit'] == 'eV/Angstrom'
    assert summary['delta_stress'] == {
        'unit': 'eV/Angstrom^3', 'n_frames': 0, 'mean': None, 'median': None, 'p95': None,
        'max': None,
    }  # fmt: skip
    assert summary['calibration']['n_above_threshold'] == {'energy': 1, 'forces': 2}
    assert summary['calibration']['n_candidates'] == 3


# --------------------------------------------------------------------------------------------------
# Non-finite predictions: a member that blows up on a frame costs that frame, not the evaluation


class Scaled(Calculator):
    """EMT scaled by ``factor`` (a distinct committee member) that turns ``what`` non-finite.

    ``poison``: the positions of the frames it fails on, or ``'all'`` for every frame.
    """

    implemented_properties = ('energy', 'forces', 'stress')

    def __init__(self, factor, poison=(), what='energy'):
        super().__init__()
        self.factor, self.poison, self.what = factor, poison, what

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        frame = self.atoms.copy()
        frame.calc = EMT()
        self.results = {
            'energy': self.factor * frame.get_potential_energy(),
            'forces': self.factor * frame.get_forces(),
            'stress': self.factor * frame.get_stress() if frame.pbc.all() else np.zeros(6),
        }
        hit = self.poison == 'all' or any(
            len(p) == len(frame) and np.allclose(p, frame.positions) for p in self.poison
        )
        if hit and self.what == 'energy':
            self.results['energy'] = np.nan
        elif hit and self.what == 'forces':
            self.results['forces'][0, 1] = np.inf
        elif hit:
            self.results['stress'][2] = np.nan


BAD = 2  # the frame the bad member fails on


def copper_frames():
    """EMT-labelled Cu: periodic cells of two sizes and a cluster (no stress)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(3)
    frames = []
    for index in range(6):
        atoms = bulk('Cu', 'fcc', a=3.55 + 0.03 * index, cubic=True)
        if index == 3:
            atoms = atoms.repeat((2, 1, 1))
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        frames.append(atoms)
    frames.append(Atoms('Cu3', positions=[[0, 0, 0], [2.5, 0, 0], [0.1, 2.4, 0.1]]))
    for atoms in frames:
        atoms.calc = EMT()
        results = {'energy': atoms.get_potential_energy(), 'forces': atoms.get_forces()}
        if atoms.pbc.all():
            results['stress'] = atoms.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
    return frames


def column_names(columns):
    return [n for n in columns.names if n not in ('non_finite', 'energy_members')]


@pytest.mark.parametrize('what', ['energy', 'forces', 'stress'])
def test_a_non_finite_prediction_flags_its_frame_and_costs_nothing_else(what):
    frames = copper_frames()
    columns = columns_from_atoms(frames)
    labels = reference_labels(columns)
    poison = [frames[BAD].positions]
    good = [Scaled(1.0), Scaled(1.04), Scaled(0.97)]
    bad = [Scaled(1.0), Scaled(1.04), Scaled(0.97, poison=poison, what=what)]

    member = predict_member(bad[2], [a.copy() for a in frames], member=2)  # no exception
    assert np.flatnonzero(member.non_finite).tolist() == [BAD]
    assert member.problems[BAD].startswith('non-finite ') and what in member.problems[BAD]
    offsets = columns.offsets
    atoms = slice(offsets[BAD], offsets[BAD + 1])
    assert np.isnan(member.energy[BAD]) and np.isnan(member.forces[atoms]).all()
    assert np.isnan(member.stress[BAD]).all()  # every value of the member on that frame

    calibration = Calibration(slopes={'energy': 2.0, 'forces': 0.5, 'stress': 1.0})
    out = prediction_columns(predict_committee(bad, columns), labels, calibration)
    full = prediction_columns(predict_committee(good, columns), labels, calibration)
    without = prediction_columns(predict_committee(good[:2], columns), labels, calibration)
    flags = out.column('non_finite')
    assert flags.dtype == bool and np.flatnonzero(flags).tolist() == [BAD]
    assert not full.column('non_finite').any()
    # the other frames: exactly the values of the committee that never failed
    other = np.arange(len(frames)) != BAD
    other_atoms = np.repeat(other, columns.n_atoms)
    for name in [*column_names(out), 'energy_members']:
        rows = other_atoms if name in out.atom else other
        np.testing.assert_array_equal(out.column(name)[rows], full.column(name)[rows], name)
        np.testing.assert_array_equal(out.mask(name)[other], full.mask(name)[other], name)
    # the flagged frame: the bad member's values are NaN, the statistics those without it
    np.testing.assert_array_equal(out.column('energy_members')[BAD, :2], good_energy(good, frames))
    assert np.isnan(out.column('energy_members')[BAD, 2])
    assert np.isnan(out.column('forces_members')[atoms, 2]).all()
    assert out.mask('energy_members')[BAD] and out.mask('forces_members')[BAD]
    for name in column_names(out):
        if name in ('forces_members', 'stress_members'):
            continue
        rows = atoms if name in out.atom else BAD
        np.testing.assert_allclose(
            out.column(name)[rows], without.column(name)[rows], rtol=1e-14, atol=0, err_msg=name
        )
        assert out.mask(name)[BAD] == without.mask(name)[BAD], name
    assert out.mask('delta_energy')[BAD] and out.mask('delta_stress')[BAD]  # 2 members left


def good_energy(calculators, frames):
    energies = []
    for calculator in calculators[:2]:
        atoms = frames[BAD].copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
    return energies


def test_one_finite_member_gives_a_mean_but_no_disagreement():
    frames = copper_frames()
    columns = columns_from_atoms(frames)
    labels = reference_labels(columns)
    poison = [frames[BAD].positions]
    out = prediction_columns(
        predict_committee([Scaled(1.0), Scaled(1.04, poison=poison)], columns), labels
    )
    alone = prediction_columns(predict_committee([Scaled(1.0)], columns), labels)
    assert np.flatnonzero(out.column('non_finite')).tolist() == [BAD]
    offsets = columns.offsets
    atoms = slice(offsets[BAD], offsets[BAD + 1])
    # the mean (and its error) is the one member left ...
    for name in ('energy_mean', 'stress_mean', 'eps_energy', 'eps_forces', 'eps_stress'):
        np.testing.assert_allclose(out.column(name)[BAD], alone.column(name)[BAD], rtol=1e-14)
        assert out.mask(name)[BAD]
    np.testing.assert_array_equal(
        out.column('forces_mean')[atoms], alone.column('forces_mean')[atoms]
    )
    # ... but one member has no spread: missing, not zero
    for name in ('energy_std_per_atom', 'stress_std', *DISAGREEMENT):
        assert np.isnan(out.column(name)[BAD]).all() and not out.mask(name)[BAD], name
    assert np.isnan(out.column('forces_std')[atoms]).all() and not out.mask('forces_std')[BAD]
    assert out.mask('delta_forces')[np.arange(len(frames)) != BAD].all()
    # every member non-finite on a frame: no mean either
    nothing = prediction_columns(
        predict_committee([Scaled(1.0, poison=poison), Scaled(1.04, poison=poison)], columns)
    )
    assert not nothing.mask('energy_mean')[BAD] and not nothing.mask('energy_members')[BAD]
    assert not nothing.mask('forces_mean')[BAD]


DISAGREEMENT = ('delta_energy', 'delta_forces', 'delta_forces_max', 'delta_stress')


def test_a_member_non_finite_everywhere_is_left_out():
    frames = copper_frames()
    columns = columns_from_atoms(frames)
    labels = reference_labels(columns)
    committee = [Scaled(1.0), Scaled(1.04), Scaled(0.97, poison='all')]
    predictions = predict_committee(committee, columns)
    reference = predict_committee(committee[:2], columns)
    assert predictions.non_finite().all()  # counting it, every frame would be flagged
    assert not predictions.non_finite([0, 1]).any()
    out = prediction_columns(predictions, labels, members=[0, 1])
    without = prediction_columns(reference, labels)
    assert not out.column('non_finite').any()
    for name in column_names(out):
        if name in ('forces_members', 'stress_members'):
            continue
        np.testing.assert_allclose(
            out.column(name), without.column(name), rtol=1e-14, atol=0, err_msg=name
        )
        np.testing.assert_array_equal(out.mask(name), without.mask(name), name)
    np.testing.assert_array_equal(
        out.column('energy_members')[:, :2], without.column('energy_members')
    )
    assert np.isnan(out.column('energy_members')[:, 2]).all()
    # error metrics: the member has none, the committee's are those without it
    splits = np.array(['train', 'test', 'validation', 'train', '', 'test', 'train'], dtype=object)
    accumulator = MetricsAccumulator(3)
    for frames_ in (slice(0, 3), slice(3, 7)):
        accumulator.add(*chunk(predictions, labels, frames_), splits[frames_])
    for members in (None, [0, 1]):
        result = accumulator.to_dict(members)
        for group in ('all', 'train', 'test'):
            mask = None if group == 'all' else splits == group
            assert result[group]['n_non_finite'] == 0
            for name, expected in error_metrics(reference, labels, mask).items():
                got = result[group][name]
                assert got['n_frames'] == expected.n_frames
                assert got['member_rmse'][2] is None and got['member_mae'][2] is None
                np.testing.assert_allclose(got['member_rmse'][:2], expected.member_rmse, rtol=1e-12)
                assert got['committee_rmse'] == pytest.approx(expected.committee_rmse, rel=1e-12)
                assert got['member_rmse_mean'] == pytest.approx(expected.member_rmse_mean)
    with pytest.raises(ValueError, match=r'members \[1\] have finite predictions'):
        accumulator.to_dict([0])


def chunk(predictions, labels, frames):
    """The predictions and labels of a slice of frames."""
    offsets = np.concatenate([[0], np.cumsum(predictions.n_atoms)])
    indices = np.arange(predictions.n_frames)[frames]
    atoms = slice(offsets[indices[0]], offsets[indices[-1] + 1])
    part = CommitteePredictions(
        predictions.n_atoms[frames],
        predictions.energy[:, frames],
        predictions.forces[:, atoms],
        predictions.stress[:, frames],
        stress_mask=predictions.stress_mask[frames],
    )
    part_labels = ReferenceLabels(
        labels.n_atoms[frames],
        energy=labels.energy[frames],
        forces=labels.forces[atoms],
        stress=labels.stress[frames],
        stress_mask=labels.stress_mask[frames],
    )
    return part, part_labels


def test_flagged_frames_are_left_out_of_the_error_metrics():
    frames = copper_frames()
    columns = columns_from_atoms(frames)
    labels = reference_labels(columns)
    poison = [frames[BAD].positions, frames[5].positions]
    committee = [Scaled(1.0), Scaled(1.04), Scaled(0.97, poison=poison)]
    good = predict_committee([Scaled(1.0), Scaled(1.04), Scaled(0.97)], columns)
    predictions = predict_committee(committee, columns)
    accumulator = MetricsAccumulator(3)
    for frames_ in (slice(0, 4), slice(4, 7)):  # the flagged frames in different chunks
        accumulator.add(*chunk(predictions, labels, frames_))
    result = accumulator.to_dict()
    assert result['all']['n_frames'] == 7 and result['all']['n_non_finite'] == 2
    kept = ~np.isin(np.arange(7), [BAD, 5])
    for name, expected in error_metrics(good, labels, kept).items():
        got = result['all'][name]
        assert got['n_frames'] == expected.n_frames > 0
        np.testing.assert_allclose(got['member_rmse'], expected.member_rmse, rtol=1e-12)
        assert got['committee_mae'] == pytest.approx(expected.committee_mae, rel=1e-12)
    # the pure function skips them the same way
    direct_metrics = error_metrics(predictions, labels)
    assert direct_metrics['energy'].n_frames == int(kept.sum())
    assert direct_metrics['forces'].committee_rmse == pytest.approx(
        result['all']['forces']['committee_rmse'], rel=1e-12
    )
