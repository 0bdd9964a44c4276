"""CommitteeCalculator: committee mean, the evaluation stage's disagreement, calibrated uncertainty.

Most tests use cheap stand-in members (EMT and two Lennard-Jones potentials on copper); the last
ones load the real tiny MACE committee of ``tiny_committee_files``.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.cluster import Octahedron
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS
from ase.units import fs

from aiida_trainspot.calculator import CommitteeCalculator, as_calibration
from aiida_trainspot.evaluation.calibration import Calibration, calibrate
from aiida_trainspot.evaluation.disagreement import CommitteePredictions, committee_disagreement

PROPERTIES = ('energy', 'forces', 'stress')


def members():
    """Three stand-in members that disagree: EMT and two Lennard-Jones copper potentials."""
    return [
        EMT(),
        LennardJones(sigma=2.33, epsilon=0.40, rc=5.0, smooth=True),
        LennardJones(sigma=2.30, epsilon=0.45, rc=5.0, smooth=True),
    ]


def copper(seed=0, rattle=0.08):
    atoms = bulk('Cu', 'fcc', a=3.61).repeat(2)
    atoms.positions += np.random.default_rng(seed).normal(0.0, rattle, atoms.positions.shape)
    return atoms


def cluster():
    atoms = Octahedron('Cu', 3)
    atoms.center(vacuum=0.0)
    atoms.positions += np.random.default_rng(3).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def own_results(calculators, atoms, stress=True):
    """Each member's own ASE results on a copy of ``atoms``."""
    out = []
    for calculator in calculators:
        copy = atoms.copy()
        copy.calc = calculator
        result = {'energy': copy.get_potential_energy(), 'forces': copy.get_forces()}
        if stress:
            result['stress'] = copy.get_stress()
        out.append(result)
    return out


def own_disagreement(results, n_atoms, stress=True):
    """``committee_disagreement`` of the members' own results (the evaluation stage's numbers)."""
    predictions = CommitteePredictions(
        n_atoms=[n_atoms],
        energy=[[r['energy']] for r in results],
        forces=[r['forces'] for r in results],
        stress=[[r['stress']] for r in results] if stress else None,
    )
    return committee_disagreement(predictions)


@pytest.fixture(scope='module')
def calibration():
    """A calibration fitted by the package's own ``calibrate`` on synthetic (δ, ε) pairs."""
    rng = np.random.default_rng(11)
    scales = {'energy': 1e-2, 'forces': 0.3, 'stress': 1e-2}
    slopes = {'energy': 2.0, 'forces': 0.7, 'stress': 1.5}
    errors, deltas = {}, {}
    for name in PROPERTIES:
        errors[name] = rng.uniform(0.1, 2.0, 200) * scales[name]
        noise = rng.normal(0.0, 0.1 * scales[name], 200)
        deltas[name] = np.abs(slopes[name] * errors[name] + noise)
    return calibrate(deltas, errors, power_law=True)


# ------------------------------------------------------------------------------ one structure


def test_mean_and_disagreement_are_the_evaluation_stages():
    calculators = members()
    atoms = copper()
    expected = own_results(members(), atoms)
    atoms.calc = CommitteeCalculator(calculators)
    assert atoms.get_potential_energy() == pytest.approx(
        np.mean([r['energy'] for r in expected]), rel=1e-12, abs=1e-12
    )
    mean_forces = np.mean([r['forces'] for r in expected], axis=0)
    np.testing.assert_allclose(atoms.get_forces(), mean_forces, rtol=1e-12, atol=1e-12)
    mean_stress = np.mean([r['stress'] for r in expected], axis=0)
    np.testing.assert_allclose(atoms.get_stress(), mean_stress, rtol=1e-12, atol=1e-15)
    results = atoms.calc.results
    delta = own_disagreement(expected, len(atoms))
    for name in PROPERTIES:
        assert results[f'{name}_disagreement'] == pytest.approx(delta[name][0], rel=1e-12)
        assert results[f'{name}_disagreement'] > 0
    assert results['forces_disagreement_max'] == pytest.approx(delta.forces_max[0], rel=1e-12)
    # brute force: δ_E is the std of E/N, and the per-atom spread the per-component RMS std
    energies = np.array([r['energy'] for r in expected]) / len(atoms)
    assert results['energy_disagreement'] == pytest.approx(np.std(energies), rel=1e-10)
    forces = np.array([r['forces'] for r in expected])
    per_atom = np.sqrt(forces.var(axis=0).sum(axis=1) / 3.0)
    np.testing.assert_allclose(results['forces_disagreement_per_atom'], per_atom, rtol=1e-12)
    assert results['forces_disagreement_per_atom'].shape == (len(atoms),)
    rms = np.sqrt(np.mean(results['forces_disagreement_per_atom'] ** 2))
    assert rms == pytest.approx(results['forces_disagreement'], rel=1e-12)
    assert results['free_energy'] == results['energy']
    assert not any(key.endswith('uncertainty') for key in results)  # no calibration given


def test_uncertainty_is_the_calibrations_own_estimate(calibration):
    atoms = copper(1)
    atoms.calc = CommitteeCalculator(members(), calibration=calibration)
    atoms.get_forces()
    results = atoms.calc.results
    for name in PROPERTIES:
        delta = results[f'{name}_disagreement']
        estimate = calibration.estimate_error(name, delta)
        assert results[f'{name}_uncertainty'] == pytest.approx(float(estimate), rel=1e-12)
        assert results[f'{name}_uncertainty'] == pytest.approx(
            delta / calibration.slopes[name], rel=1e-12
        )
        sigma = calibration.power_law[name].sigma(delta)
        assert results[f'{name}_uncertainty_sigma'] == pytest.approx(float(sigma), rel=1e-12)
    per_atom = calibration.estimate_error('forces', results['forces_disagreement_per_atom'])
    np.testing.assert_allclose(results['forces_uncertainty_per_atom'], per_atom, rtol=1e-12)
    rms = np.sqrt(np.mean(results['forces_uncertainty_per_atom'] ** 2))
    assert rms == pytest.approx(results['forces_uncertainty'], rel=1e-12)


def test_a_named_member_drives_and_the_committee_watches(calibration):
    atoms = copper(2)
    expected = own_results(members(), atoms)
    atoms.calc = CommitteeCalculator(members(), calibration=calibration, member=1)
    assert atoms.get_potential_energy() == pytest.approx(expected[1]['energy'], rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), expected[1]['forces'], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(atoms.get_stress(), expected[1]['stress'], rtol=1e-12, atol=1e-15)
    delta = own_disagreement(expected, len(atoms))
    assert atoms.calc.results['forces_disagreement'] == pytest.approx(delta.forces[0], rel=1e-12)
    with pytest.raises(ValueError, match='member 3'):
        CommitteeCalculator(members(), member=3)
    with pytest.raises(ValueError, match='at least one'):
        CommitteeCalculator([])


def test_a_cluster_has_no_stress_nor_stress_uncertainty(calibration):
    atoms = cluster()
    assert not atoms.pbc.any()
    expected = own_results(members(), atoms, stress=False)
    atoms.calc = CommitteeCalculator(members(), calibration=calibration)
    np.testing.assert_allclose(
        atoms.get_forces(), np.mean([r['forces'] for r in expected], axis=0), atol=1e-12
    )
    results = atoms.calc.results
    assert 'stress' not in results
    assert 'stress_disagreement' not in results
    assert 'stress_uncertainty' not in results
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
    delta = own_disagreement(expected, len(atoms), stress=False)
    assert results['energy_disagreement'] == pytest.approx(delta.energy[0], rel=1e-12)
    assert math.isfinite(results['energy_uncertainty'])
    assert math.isfinite(results['forces_uncertainty'])


def test_calibration_from_json_a_dict_or_nothing(calibration, tmp_path):
    path = tmp_path / 'calibration.json'
    path.write_text(json.dumps(calibration.to_dict(), allow_nan=False))
    back = as_calibration(path)
    assert back.slopes == calibration.slopes
    assert back.error_thresholds == calibration.error_thresholds
    assert back.power_law == calibration.power_law
    assert as_calibration(calibration.to_dict()).slopes == calibration.slopes
    assert as_calibration(None) is None
    with pytest.raises(TypeError, match='calibration must be'):
        as_calibration(3.0)
    atoms = copper(4)
    atoms.calc = CommitteeCalculator(members(), calibration=path)
    atoms.get_forces()
    from_file = dict(atoms.calc.results)
    atoms.calc = CommitteeCalculator(members(), calibration=calibration)
    atoms.get_forces()
    for name in PROPERTIES:
        key = f'{name}_uncertainty'
        assert from_file[key] == pytest.approx(atoms.calc.results[key], rel=1e-12)


def test_only_the_calibrated_properties_get_an_uncertainty():
    forces_only = Calibration(slopes={'forces': 0.5})
    atoms = copper(5)
    atoms.calc = CommitteeCalculator(members(), calibration=forces_only)
    atoms.get_forces()
    results = atoms.calc.results
    assert results['forces_uncertainty'] == pytest.approx(2 * results['forces_disagreement'])
    assert 'energy_uncertainty' not in results and 'stress_uncertainty' not in results
    assert 'energy_disagreement' in results and 'stress_disagreement' in results


def test_the_module_imports_no_aiida():
    code = 'import sys, aiida_trainspot.calculator; print(any(m == "aiida" for m in sys.modules))'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == 'False'


# ------------------------------------------------------------------------------ dynamics


def finite_uncertainties(calculator):
    results = calculator.results
    values = [results[f'{name}_uncertainty'] for name in PROPERTIES]
    values += list(results['forces_uncertainty_per_atom'])
    return bool(np.all(np.isfinite(values)))


@pytest.mark.parametrize('dynamics', ['verlet', 'langevin'])
def test_md_steps_with_the_committee_mean(calibration, dynamics):
    atoms = copper(6, rattle=0.03)
    atoms.calc = CommitteeCalculator(members(), calibration=calibration)
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    if dynamics == 'verlet':
        md = VelocityVerlet(atoms, timestep=1.0 * fs)
    else:
        rng = np.random.default_rng(1)
        md = Langevin(
            atoms, timestep=1.0 * fs, temperature_K=300, friction=0.02, fixcm=False, rng=rng
        )
    steps = []

    def check():
        # the forces MD used are the mean of the members' own forces at these positions
        expected = own_results(members(), atoms, stress=False)
        mean = np.mean([r['forces'] for r in expected], axis=0)
        np.testing.assert_allclose(atoms.get_forces(), mean, rtol=1e-10, atol=1e-12)
        steps.append(finite_uncertainties(atoms.calc))

    md.attach(check, interval=1)
    start = atoms.positions.copy()
    md.run(20)
    assert len(steps) == 21 and all(steps)
    assert not np.allclose(atoms.positions, start)


def test_bfgs_relaxation(calibration):
    atoms = copper(7, rattle=0.1)
    atoms.calc = CommitteeCalculator(members(), calibration=calibration)
    start = np.linalg.norm(atoms.get_forces(), axis=1).max()
    uncertainties = []
    optimizer = BFGS(atoms, logfile=None)
    optimizer.attach(lambda: uncertainties.append(finite_uncertainties(atoms.calc)))
    optimizer.run(fmax=0.1, steps=8)
    assert uncertainties and all(uncertainties)
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < start


# ------------------------------------------------------------------------------ real members


def test_real_mace_members_from_files(tiny_committee_files, labelled_carbon_frames, calibration):
    from aiida_trainspot.evaluation.inference import predict_committee
    from aiida_trainspot.training.loader import load_calculator

    files = tiny_committee_files['mace']
    committee = CommitteeCalculator.from_files(
        [m['model'] for m in files], engine='mace', calibration=calibration
    )
    assert committee.n_members == len(files)
    frame = labelled_carbon_frames[25].copy()
    atoms = Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=frame.pbc)
    atoms.calc = committee
    singles = [load_calculator('mace', m['model'], dtype='float64') for m in files]
    expected = own_results(singles, atoms)
    assert atoms.get_potential_energy() == pytest.approx(
        np.mean([r['energy'] for r in expected]), rel=1e-10
    )
    np.testing.assert_allclose(
        atoms.get_forces(), np.mean([r['forces'] for r in expected], axis=0), atol=1e-10
    )
    from aiida_trainspot.data.convert import columns_from_atoms

    delta = committee_disagreement(predict_committee(singles, columns_from_atoms([atoms])))
    results = committee.results
    for name in PROPERTIES:
        assert results[f'{name}_disagreement'] == pytest.approx(delta[name][0], rel=1e-9)
        assert results[f'{name}_disagreement'] > 0
        assert math.isfinite(results[f'{name}_uncertainty'])


def test_from_models_and_from_campaign(
    aiida_profile, tiny_committee_files, calibration, tmp_path, fake_campaign
):
    from aiida_trainspot.cli.campaign import export_run
    from aiida_trainspot.training.model import PotentialModel

    files = tiny_committee_files['mace']
    models = {
        f'member_{i}': PotentialModel.from_files(
            m['model'],
            engine='mace',
            architecture=m['architecture'],
            species=m['species'],
            cutoff=m['cutoff'],
            dtype=m['dtype'],
            seed=m['seed'],
        ).store()
        for i, m in enumerate(files)
    }
    atoms = bulk('C', 'diamond', a=3.6)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)

    direct = CommitteeCalculator.from_files([m['model'] for m in files], calibration=calibration)
    atoms.calc = direct
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    expected = dict(direct.results)

    by_models = CommitteeCalculator.from_models(list(models.values()), calibration=calibration)
    node = fake_campaign(models, calibration)
    by_campaign = CommitteeCalculator.from_campaign(node.pk)
    later = CommitteeCalculator.from_campaign(fake_campaign(models, calibration, final=False))
    # the folder `aiida-trainspot export --models DIR` writes is a deployable committee
    folder = tmp_path / 'models'
    lines = export_run(node, None, folder)
    assert lines[-1] == f'calibration: {folder / "calibration.json"}'
    paths = sorted(folder.glob('member_*/*.model'))
    assert len(paths) == len(files)
    deployed = CommitteeCalculator.from_files(paths, calibration=folder / 'calibration.json')
    for committee in (by_models, by_campaign, later, deployed):
        atoms.calc = committee
        assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-12)
        np.testing.assert_allclose(atoms.get_forces(), forces, atol=1e-12)
        for name in PROPERTIES:
            key = f'{name}_uncertainty'
            assert committee.results[key] == pytest.approx(expected[key], rel=1e-10)
        committee.close()
    stale = fake_campaign(models, calibration, final=False, uncalibrated_iteration=True)
    with pytest.warns(UserWarning, match='earlier committee'):
        CommitteeCalculator.from_campaign(stale).close()
