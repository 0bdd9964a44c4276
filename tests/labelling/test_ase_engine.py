"""The ``ase`` labelling engine without AiiDA: calculator specs, the labelling loop, the runner."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from ase.calculators.lj import LennardJones
from ase.calculators.tersoff import Tersoff
from ase.cluster import Octahedron

from aiida_trainspot.data.convert import columns_from_atoms
from aiida_trainspot.data.store import read_shard, write_shard
from aiida_trainspot.labelling.ase.core import (
    ERROR_COLUMN,
    EXIT_SETUP_FAILED,
    SETUP_FAILED,
    CalculatorSpecError,
    check_calculator_spec,
    label_columns,
    make_calculator,
)
from aiida_trainspot.runners.ase_label import main

SIC_TERSOFF = '/usr/share/lammps/potentials/SiC.tersoff'


def cu_bulk(seed: int) -> Atoms:
    atoms = bulk('Cu', 'fcc', a=3.6, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=seed)
    return atoms


def cu_slab() -> Atoms:
    atoms = fcc111('Cu', size=(2, 2, 3), vacuum=6.0)
    atoms.info.clear()  # no ASE adsorbate_info: these tests compare bare frames
    atoms.rattle(0.02, seed=7)
    return atoms


def cu_cluster() -> Atoms:
    atoms = Atoms(Octahedron('Cu', 3))
    atoms.rattle(0.02, seed=8)
    return atoms


def with_fe(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms[0].symbol = 'Fe'
    return atoms


def direct(atoms: Atoms, calculator) -> tuple[float, np.ndarray, np.ndarray | None]:
    atoms = atoms.copy()
    atoms.calc = calculator
    stress = atoms.get_stress() if atoms.pbc.sum() >= 2 else None  # bulk and 2D frames
    return atoms.get_potential_energy(), atoms.get_forces(), stress


class NaNOnSecondCall(Calculator):
    """Energy 1 eV, zero forces, but a NaN energy for the second frame it sees."""

    implemented_properties = ('energy', 'forces')

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def calculate(self, atoms=None, properties=('energy',), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.calls += 1
        energy = np.nan if self.calls == 2 else 1.0
        self.results = {'energy': energy, 'forces': np.zeros((len(self.atoms), 3))}


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ('spec', 'cls'),
    [
        ({'name': 'emt'}, EMT),
        ({'name': 'emt', 'kwargs': {'asap_cutoff': True}}, EMT),
        ({'name': 'lj', 'kwargs': {'sigma': 2.3, 'epsilon': 0.4, 'rc': 6.0}}, LennardJones),
        ({'name': 'ase.calculators.emt:EMT', 'kwargs': {}}, EMT),
    ],
)
def test_make_calculator(spec, cls):
    check_calculator_spec(spec, has_parameter_file=False)
    calculator = make_calculator(spec)
    assert type(calculator) is cls
    for key, value in (spec.get('kwargs') or {}).items():
        assert calculator.parameters[key] == value


def test_make_tersoff_from_lammps_file():
    check_calculator_spec({'name': 'tersoff'}, has_parameter_file=True)
    calculator = make_calculator({'name': 'tersoff', 'kwargs': {'skin': 0.5}}, SIC_TERSOFF)
    assert isinstance(calculator, Tersoff)
    assert ('C', 'C', 'C') in calculator.parameters


@pytest.mark.parametrize(
    ('spec', 'has_file', 'match'),
    [
        ({'name': 'dft'}, False, "unknown calculator 'dft'"),
        ({}, False, 'needs a "name"'),
        ({'name': 'emt', 'kwarg': {}}, False, r"unknown keys \['kwarg'\]"),
        ({'name': 'emt', 'kwargs': {'sigma': 1.0}}, False, r"takes no arguments \['sigma'\]"),
        ({'name': 'lj', 'kwargs': [1, 2]}, False, 'must be a dictionary'),
        ({'name': 'no_such_module_xyz:Calc'}, False, "cannot import module 'no_such_module_xyz'"),
        ({'name': 'ase.calculators.emt:NoSuchClass'}, False, "has no 'NoSuchClass'"),
        ({'name': 'ase.calculators.emt:parameters'}, False, 'is not a class'),
        ({'name': 'ase.calculators.tersoff:Tersoff'}, False, 'does not accept the kwargs'),
        ({'name': 'tersoff'}, False, 'needs a parameter file'),
        ({'name': 'emt'}, True, 'takes no parameter file'),
        ('emt', False, 'is a dictionary'),
    ],
)
def test_bad_specs_are_rejected(spec, has_file, match):
    with pytest.raises(CalculatorSpecError, match=match):
        check_calculator_spec(spec, has_parameter_file=has_file)


# --------------------------------------------------------------------------- labelling loop


def test_label_columns_matches_ase_and_records_failures():
    frames = [cu_bulk(1), cu_slab(), cu_cluster(), with_fe(cu_bulk(2)), cu_bulk(3)]
    labels = label_columns(columns_from_atoms(frames), EMT())

    assert labels.n_frames == len(frames)
    assert list(labels.n_atoms) == [len(a) for a in frames]
    errors = list(labels.frame[ERROR_COLUMN])
    assert errors == ['', '', '', 'NotImplementedError: No EMT-potential for Fe', '']
    np.testing.assert_array_equal(labels.mask('energy'), [True, True, True, False, True])
    np.testing.assert_array_equal(labels.mask('forces'), [True, True, True, False, True])
    # bulk and the slab (periodic along two axes) get a stress; the cluster none: NaN, not zero
    np.testing.assert_array_equal(labels.mask('stress'), [True, True, False, False, True])
    assert np.isnan(labels.frame['stress'][[2, 3]]).all()
    # the slab's stress is (1/V) dE/dε with V the whole cell, vacuum included
    slab = frames[1].copy()
    slab.calc = EMT()
    numerical = calculate_numerical_stress(slab, eps=1e-5, force_consistent=False)
    assert np.abs(numerical[[0, 1, 5]]).max() > 1e-3  # a real in-plane stress to compare
    np.testing.assert_allclose(labels.frame['stress'][1], numerical, rtol=0, atol=1e-8)
    assert np.isnan(labels.frame['energy'][3])

    offsets = labels.offsets
    for i, atoms in enumerate(frames):
        if errors[i]:
            continue
        energy, forces, stress = direct(atoms, EMT())
        assert labels.frame['energy'][i] == pytest.approx(energy, rel=1e-12)
        np.testing.assert_allclose(
            labels.atom['forces'][offsets[i] : offsets[i + 1]], forces, rtol=1e-10, atol=1e-12
        )
        if stress is not None:
            np.testing.assert_allclose(labels.frame['stress'][i], stress, rtol=1e-10, atol=1e-14)


def test_label_columns_non_finite_result_is_a_failure():
    frames = [cu_bulk(1), cu_bulk(2), cu_bulk(3)]
    labels = label_columns(columns_from_atoms(frames), NaNOnSecondCall())
    assert list(labels.frame[ERROR_COLUMN]) == ['', 'FloatingPointError: non-finite energy nan', '']
    np.testing.assert_array_equal(labels.mask('energy'), [True, False, True])
    # the calculator implements no stress: it is missing, and the frames still count as labelled
    assert not labels.mask('stress').any()


def test_label_columns_lennard_jones_overlapping_atoms_fail():
    # two atoms on top of each other: LJ yields inf/NaN, which must not become a label
    pair = Atoms('Ar2', positions=[[0, 0, 0], [0, 0, 0]], cell=[10, 10, 10], pbc=True)
    good = Atoms('Ar2', positions=[[0, 0, 0], [0, 0, 3.8]], cell=[10, 10, 10], pbc=True)
    with np.errstate(all='ignore'):
        labels = label_columns(columns_from_atoms([good, pair]), LennardJones(sigma=3.4, rc=8.0))
    errors = list(labels.frame[ERROR_COLUMN])
    assert errors[0] == ''
    assert errors[1].startswith('FloatingPointError: non-finite')
    energy, _, stress = direct(good, LennardJones(sigma=3.4, rc=8.0))
    assert labels.frame['energy'][0] == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(labels.frame['stress'][0], stress, rtol=1e-10)


def test_tersoff_on_diamond_matches_ase():
    diamond = bulk('C', 'diamond', a=3.567, cubic=True)
    diamond.rattle(0.03, seed=3)
    calculator = make_calculator({'name': 'tersoff'}, SIC_TERSOFF)
    labels = label_columns(columns_from_atoms([diamond]), calculator)
    energy, forces, stress = direct(diamond, Tersoff.from_lammps(SIC_TERSOFF))
    assert labels.frame[ERROR_COLUMN][0] == ''
    assert labels.frame['energy'][0] == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(labels.atom['forces'], forces, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(labels.frame['stress'][0], stress, rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------- runner


def write_inputs(folder, frames, spec):
    columns = columns_from_atoms(frames)
    write_shard(columns, str(folder / 'frames.h5'))
    (folder / 'calculator.json').write_text(json.dumps(spec))


def test_runner_writes_labels(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    frames = [cu_bulk(1), cu_cluster(), with_fe(cu_slab())]
    write_inputs(tmp_path, frames, {'name': 'emt', 'kwargs': {}, 'parameter_file': None})
    assert main(['frames.h5', 'calculator.json', 'labels.h5']) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary['n_frames'] == 3
    assert summary['n_labelled'] == 2
    assert summary['n_failed'] == 1
    assert summary['n_stress'] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'calculator.json',
        'frames.h5',
        'labels.h5',
    ]
    labels = read_shard(tmp_path / 'labels.h5')
    assert sorted(labels.names) == ['energy', 'error', 'forces', 'stress']
    np.testing.assert_array_equal(labels.mask('stress'), [True, False, False])
    np.testing.assert_array_equal(labels.mask('energy'), [True, True, False])
    assert labels.frame['error'][2] == 'NotImplementedError: No EMT-potential for Fe'
    energy, _, stress = direct(frames[0], EMT())
    assert labels.frame['energy'][0] == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(labels.frame['stress'][0], stress, rtol=1e-10, atol=1e-14)


def test_runner_with_tersoff_parameter_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copy(SIC_TERSOFF, tmp_path / 'calculator.parameters.tersoff')
    diamond = bulk('C', 'diamond', a=3.567, cubic=True)
    spec = {'name': 'tersoff', 'kwargs': {}, 'parameter_file': 'calculator.parameters.tersoff'}
    write_inputs(tmp_path, [diamond], spec)
    assert main(['frames.h5', 'calculator.json', 'labels.h5']) == 0
    labels = read_shard('labels.h5')
    energy, _, _ = direct(diamond, Tersoff.from_lammps(SIC_TERSOFF))
    assert labels.frame['energy'][0] == pytest.approx(energy, rel=1e-12)


@pytest.mark.parametrize(
    ('spec', 'reason'),
    [
        ({'name': 'nonsense'}, "CalculatorSpecError: unknown calculator 'nonsense'"),
        ({'name': 'tersoff', 'parameter_file': 'missing.tersoff'}, 'FileNotFoundError'),
    ],
)
def test_runner_setup_failure(tmp_path, monkeypatch, capsys, spec, reason):
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path, [cu_bulk(1)], spec)
    assert main(['frames.h5', 'calculator.json', 'labels.h5']) == EXIT_SETUP_FAILED
    err = capsys.readouterr().err
    assert err.startswith(f'{SETUP_FAILED}: {reason}')
    assert not (tmp_path / 'labels.h5').exists()


def test_runner_imports_no_aiida():
    code = (
        'import sys, aiida_trainspot.runners.ase_label; '
        "print(sorted(m for m in sys.modules if m == 'aiida' or m.startswith('aiida.')))"
    )
    result = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == '[]'
