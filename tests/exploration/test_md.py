"""The pure core of the ``ase`` MD engine: protocol, ensembles, abort rules, D2, the run loop.

The run loop is driven by ASE's Tersoff (carbon parameters of Debian's SiC.tersoff): fast and
physical, so these tests check the MD machinery, not a trained model (see test_ase_md.py).
"""

import itertools
import json
import sys

import numpy as np
import pytest
from ase import Atoms, units
from ase.build import bulk, graphene
from ase.calculators.calculator import Calculator
from ase.calculators.lj import LennardJones

from aiida_trainspot.exploration.md import (
    D2_PARAMETERS,
    METADATA_COLUMNS,
    Abort,
    D2Dispersion,
    FiniteResults,
    MaxForce,
    MdProtocol,
    MinDistance,
    ProtocolError,
    TemperatureRunaway,
    cell_problem,
    ensemble_of,
    explore,
    make_integrator,
    relax,
    run_trajectory,
    with_dispersion,
)

SIC_TERSOFF = '/usr/share/lammps/potentials/SiC.tersoff'


def tersoff():
    from ase.calculators.tersoff import Tersoff

    return Tersoff.from_lammps(SIC_TERSOFF)


def diamond():
    return bulk('C', 'diamond', a=3.567, cubic=True)


def graphene_slab():
    """2x2 graphene (8 atoms), periodic in-plane, 10 Å vacuum cell vector along z."""
    slab = graphene(size=(2, 2, 1), vacuum=5.0)
    slab.pbc = (True, True, False)
    return slab


def carbon_ring():
    """A six-membered carbon ring (1.42 Å bonds), not periodic, no cell."""
    angles = np.arange(6) * np.pi / 3
    return Atoms('C6', positions=np.c_[1.42 * np.cos(angles), 1.42 * np.sin(angles), np.zeros(6)])


def protocol(**overrides):
    values = {'temperatures': 300.0, 'steps': 20, 'sample_interval': 5, 'ptime': 50.0}
    values.update(overrides)
    return MdProtocol.from_dict(values)


# --------------------------------------------------------------------------- protocol


def test_protocol_defaults_and_round_trip():
    p = MdProtocol.from_dict({'temperatures': [300, 600], 'steps': 100})
    assert p.temperatures == (300.0, 600.0)
    assert p.pressures == (0.0,)
    assert (p.timestep_fs, p.thermalisation_steps, p.sample_interval) == (1.0, 0, 10)
    assert (p.friction, p.ttime, p.ptime) == (0.01, 100.0, 1000.0)
    assert (p.min_distance, p.max_force, p.max_temperature_factor) == (0.5, 50.0, 5.0)
    assert (p.dispersion_d2, p.d2_s6, p.d2_cutoff) == (False, 0.75, 30.0)
    assert (p.relax_steps, p.relax_fmax, p.seeds, p.run_ids) == (0, 0.1, None, None)
    assert MdProtocol.from_dict(p.to_dict()) == p
    assert 'seeds' not in p.to_dict()  # per-run lists only when set
    listed = MdProtocol.from_dict(
        {'temperatures': 300, 'steps': 10, 'seeds': [7, 2**40], 'run_ids': ['a-3', 'a-4']}
    )
    assert (listed.seeds, listed.run_ids) == ((7, 2**40), ('a-3', 'a-4'))
    assert MdProtocol.from_dict(listed.to_dict()) == listed
    assert (listed.run_seed(1), listed.run_id(1, 'x')) == (2**40, 'a-4')
    assert (p.run_seed(1), p.run_id(1, 'x')) == (None, 'x-1')
    assert p.target(1) == (600.0, 0.0)
    assert MdProtocol.from_dict({'temperatures': 500, 'pressures': [1, 2], 'steps': 10}).target(
        1
    ) == (500.0, 2.0)


def test_protocol_sampling_steps():
    p = MdProtocol.from_dict(
        {'temperatures': 300, 'steps': 20, 'thermalisation_steps': 7, 'sample_interval': 5}
    )
    assert p.total_steps == 27
    assert [s for s in range(p.total_steps + 1) if p.is_sample_step(s)] == [12, 17, 22, 27]


@pytest.mark.parametrize(
    ('values', 'match'),
    [
        ({'steps': 10}, "'temperatures' is required"),
        ({'temperatures': 300}, "'steps' is required"),
        ({'temperatures': 300, 'steps': 10, 'stepz': 3}, r"unknown keys \['stepz'\]"),
        ({'temperatures': [300, -1], 'steps': 10}, "'temperatures' holds -1"),
        ({'temperatures': [], 'steps': 10}, "'temperatures' is empty"),
        ({'temperatures': 'hot', 'steps': 10}, "'temperatures' holds 'hot', not a number"),
        ({'temperatures': 300, 'pressures': [float('nan')], 'steps': 10}, "'pressures' holds"),
        ({'temperatures': 300, 'steps': 0}, "'steps' must be at least 1"),
        ({'temperatures': 300, 'steps': 2.5}, "'steps' must be an integer"),
        ({'temperatures': 300, 'steps': True}, "'steps' must be an integer"),
        ({'temperatures': 300, 'steps': 10, 'sample_interval': 11}, 'no frame would be sampled'),
        ({'temperatures': 300, 'steps': 10, 'thermalisation_steps': -1}, 'at least 0'),
        ({'temperatures': 300, 'steps': 10, 'timestep_fs': 0}, "'timestep_fs' must be larger"),
        ({'temperatures': 300, 'steps': 10, 'timestep_fs': 50}, 'too long'),
        ({'temperatures': 300, 'steps': 10, 'min_distance': 0.05}, "'min_distance' must be at"),
        ({'temperatures': 300, 'steps': 10, 'max_force': -1}, "'max_force' must be larger"),
        ({'temperatures': 300, 'steps': 10, 'max_temperature_factor': 1}, 'larger than 1.0'),
        ({'temperatures': 300, 'steps': 10, 'dispersion_d2': 'yes'}, 'true or false'),
        ({'temperatures': 300, 'steps': 10, 'd2_cutoff': 500}, "'d2_cutoff' 500.0"),
        ({'temperatures': 300, 'steps': 10, 'relax_steps': -1}, "'relax_steps' must be at"),
        ({'temperatures': 300, 'steps': 10, 'relax_fmax': 0}, "'relax_fmax' must be larger"),
        ({'temperatures': 300, 'steps': 10, 'seeds': [1, -2]}, r"'seeds' holds -2"),
        ({'temperatures': 300, 'steps': 10, 'seeds': [1.5]}, r"'seeds' holds 1.5, not an int"),
        ({'temperatures': 300, 'steps': 10, 'seeds': 3}, r"'seeds' must be a non-empty list"),
        ({'temperatures': 300, 'steps': 10, 'run_ids': ['a', 'a']}, r"not distinct: \['a'\]"),
        ({'temperatures': 300, 'steps': 10, 'run_ids': ['a', 3]}, r"'run_ids' holds 3"),
    ],
)
def test_protocol_rejects(values, match):
    with pytest.raises(ProtocolError, match=match):
        MdProtocol.from_dict(values)


def test_protocol_targets_per_frame():
    p = MdProtocol.from_dict({'temperatures': [300, 400, 500], 'steps': 10})
    p.check_frames(3)
    with pytest.raises(ProtocolError, match="'temperatures' has 3 values for 2 starting frames"):
        MdProtocol.from_dict(p.to_dict(), n_frames=2)
    MdProtocol.from_dict({'temperatures': 300, 'steps': 10}, n_frames=7)  # one for all
    # a run's own seed and id: one per frame, never one for all
    with pytest.raises(ProtocolError, match="'seeds' has 1 values for 2 starting frames"):
        MdProtocol.from_dict({'temperatures': 300, 'steps': 10, 'seeds': [4]}, n_frames=2)
    with pytest.raises(ProtocolError, match="'run_ids' has 3 values for 2 starting frames"):
        MdProtocol.from_dict({'temperatures': 300, 'steps': 10, 'run_ids': list('abc')}, 2)


# --------------------------------------------------------------------------- ensembles


def test_ensemble_and_cell_problems():
    assert ensemble_of((True, True, True)) == 'npt'
    assert ensemble_of((True, True, False)) == 'npt'
    assert ensemble_of((False, False, False)) == 'nvt'
    assert cell_problem(diamond().cell, diamond().pbc, 8) is None
    slab = graphene_slab()
    assert cell_problem(slab.cell, slab.pbc, len(slab)) is None
    assert cell_problem(np.zeros((3, 3)), [False] * 3, 6) is None
    assert 'single atom' in cell_problem(np.eye(3), [True] * 3, 1)
    flat = slab.cell.array.copy()
    flat[2] = 0.0
    assert 'no volume' in cell_problem(flat, slab.pbc, 8)
    tilted = slab.cell.array.copy()
    tilted[2] = [1.0, 0.0, 10.0]
    assert 'not orthogonal' in cell_problem(tilted, slab.pbc, 8)


def test_integrators():
    rng = np.random.default_rng(0)
    p = protocol(friction=0.02, ttime=80.0, ptime=400.0)
    atoms = diamond()
    atoms.calc = tersoff()
    npt = make_integrator(atoms, 'npt', 300.0, 1000.0, p, rng)
    assert type(npt).__name__ == 'MTKNPT'
    assert npt._pressure_au == pytest.approx(1000.0 * units.bar)
    slab = graphene_slab()
    slab.calc = tersoff()
    masked = make_integrator(slab, 'npt', 300.0, 0.0, p, rng)
    assert np.array_equal(masked.mask, [True, True, False])
    ring = carbon_ring()
    ring.calc = tersoff()
    nvt = make_integrator(ring, 'nvt', 300.0, 0.0, p, rng)
    assert type(nvt).__name__ == 'Langevin'
    assert nvt.fr == pytest.approx(0.02 / units.fs)
    assert nvt.rng is rng
    with pytest.raises(ValueError, match='unknown ensemble'):
        make_integrator(ring, 'nve', 300.0, 0.0, p, rng)


# --------------------------------------------------------------------------- abort rules


def test_abort_rules():
    atoms = Atoms('C2', positions=[[0, 0, 0], [0.4, 0, 0]], cell=[5, 5, 5], pbc=True)
    abort = MinDistance(0.5).check(atoms, 7, True)
    assert abort == Abort(7, 'min_distance', pytest.approx(0.4), abort.reason)
    assert '0.4 Angstrom apart' in abort.reason
    assert MinDistance(0.5).check(atoms, 7, production=False) is None  # thermalising: no check
    # periodic images count
    images = Atoms('C2', positions=[[0, 0, 0], [2.9, 0, 0]], cell=[3.0, 5, 5], pbc=True)
    assert MinDistance(0.5).check(images, 1, True).value == pytest.approx(0.1)
    images.pbc = False
    assert MinDistance(0.5).check(images, 1, True) is None

    atoms = Atoms('Ar2', positions=[[0, 0, 0], [2.0, 0, 0]])
    atoms.calc = LennardJones(sigma=3.4, epsilon=0.0104)
    force = np.linalg.norm(atoms.get_forces()[0])
    assert MaxForce(force * 1.01).check(atoms, 3, True) is None
    abort = MaxForce(force / 2).check(atoms, 3, True)
    assert (abort.rule, abort.step, abort.value) == ('max_force', 3, pytest.approx(force))
    assert MaxForce(force / 2).check(atoms, 3, production=False) is None

    class NotFinite(LennardJones):
        def calculate(self, *args, **kwargs):
            super().calculate(*args, **kwargs)
            self.results['energy'] = float('nan')

    broken = Atoms('Ar2', positions=[[0, 0, 0], [3.0, 0, 0]])
    broken.calc = NotFinite()
    for production in (False, True):  # non-finite results stop a run in any phase
        assert FiniteResults().check(broken, 2, production).rule == 'non_finite'
    assert FiniteResults().check(atoms, 2, False) is None

    atoms.set_velocities([[0.1, 0, 0], [-0.1, 0, 0]])
    temperature = atoms.get_temperature()
    rule = TemperatureRunaway(target=temperature / 10, factor=5.0)
    assert rule.check(atoms, 5, production=False) is None  # thermalising: no check
    abort = rule.check(atoms, 5, production=True)
    assert (abort.rule, abort.value) == ('max_temperature', pytest.approx(temperature))
    assert TemperatureRunaway(target=temperature, factor=5.0).check(atoms, 5, True) is None
    assert abort.to_dict()['abort_rule'] == 'max_temperature'


# --------------------------------------------------------------------------- D2

#: eV Å^6 per J nm^6 mol^-1, written out independently of the code's conversion.
J_NM6_PER_MOL_IN_EV_A6 = 1e6 / 96485.33212


def test_d2_dimer_against_the_formula():
    r = 3.1
    atoms = Atoms('CO', positions=[[0, 0, 0], [r, 0, 0]])
    atoms.calc = D2Dispersion()
    c6 = np.sqrt(1.75 * 0.70) * J_NM6_PER_MOL_IN_EV_A6
    r0 = 1.452 + 1.342
    expected = -0.75 * c6 / r**6 / (1 + np.exp(-20 * (r / r0 - 1)))
    assert atoms.get_potential_energy() == pytest.approx(expected, rel=1e-6)
    assert D2_PARAMETERS['C'] == (1.75, 1.452)
    assert len(D2_PARAMETERS) == 54  # H to Xe


def d2_frames():
    rng = np.random.default_rng(3)
    triclinic = Atoms(
        'C2OH',
        positions=[[0.1, 0.2, 0.1], [1.3, 1.1, 0.9], [2.2, 0.3, 1.9], [0.7, 2.0, 1.4]],
        cell=[[3.1, 0.0, 0.0], [0.6, 2.9, 0.0], [0.4, -0.3, 3.3]],
        pbc=True,
    )
    triclinic.positions += rng.normal(0, 0.05, (4, 3))
    slab = graphene_slab()
    slab.positions += rng.normal(0, 0.05, slab.positions.shape)
    ring = carbon_ring()
    ring.positions += rng.normal(0, 0.05, ring.positions.shape)
    return {'triclinic': triclinic, 'slab': slab, 'ring': ring}


@pytest.mark.parametrize('name', ['triclinic', 'slab', 'ring'])
def test_d2_forces_and_stress_are_derivatives_of_the_energy(name):
    atoms = d2_frames()[name]
    calc = D2Dispersion(cutoff=12.0)
    atoms.calc = calc
    forces = atoms.get_forces()
    h = 1e-5
    numeric = np.zeros_like(forces)
    for i, k in itertools.product(range(len(atoms)), range(3)):
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * h
            moved.calc = calc
            energies.append(moved.get_potential_energy())
        numeric[i, k] = -(energies[0] - energies[1]) / (2 * h)
    np.testing.assert_allclose(forces, numeric, atol=1e-8)
    assert np.abs(forces).max() > 1e-4
    assert np.abs(forces.sum(axis=0)).max() < 1e-10
    if name == 'ring':
        return
    stress = atoms.get_stress(voigt=False)
    volume = atoms.get_volume()
    numeric = np.zeros((3, 3))
    for a, b in itertools.product(range(3), range(3)):
        energies = []
        for sign in (1, -1):
            strain = np.eye(3)
            strain[a, b] += sign * h
            moved = atoms.copy()
            moved.set_cell(atoms.cell.array @ strain, scale_atoms=True)
            moved.calc = calc
            energies.append(moved.get_potential_energy())
        numeric[a, b] = (energies[0] - energies[1]) / (2 * h) / volume
    np.testing.assert_allclose(stress, 0.5 * (numeric + numeric.T), atol=1e-9)
    assert np.abs(stress).max() > 1e-5


def brute_force_d2(atoms, s6=0.75, damping=20.0, cutoff=10.0):
    """Energy, forces and virial/volume by an explicit loop over atom pairs and cell images."""
    cell = atoms.cell.array
    reach = [
        int(np.ceil(cutoff / np.linalg.norm(v))) + 2 if p else 0
        for v, p in zip(cell, atoms.pbc, strict=True)
    ]
    symbols = atoms.get_chemical_symbols()
    energy, forces, virial = 0.0, np.zeros((len(atoms), 3)), np.zeros((3, 3))
    for n in itertools.product(*(range(-r, r + 1) for r in reach)):
        shift = np.array(n) @ cell
        for i, j in itertools.product(range(len(atoms)), repeat=2):
            if i == j and not any(n):
                continue
            vector = atoms.positions[j] + shift - atoms.positions[i]
            r = np.linalg.norm(vector)
            if r >= cutoff:
                continue
            c6 = np.sqrt(D2_PARAMETERS[symbols[i]][0] * D2_PARAMETERS[symbols[j]][0])
            c6 *= J_NM6_PER_MOL_IN_EV_A6
            r0 = D2_PARAMETERS[symbols[i]][1] + D2_PARAMETERS[symbols[j]][1]

            def pair(x, c6=c6, r0=r0):
                return -s6 * c6 / x**6 / (1 + np.exp(-damping * (x / r0 - 1)))

            de = (pair(r + 1e-6) - pair(r - 1e-6)) / 2e-6
            energy += 0.5 * pair(r)
            forces[i] += de * vector / r
            virial += 0.5 * de * np.outer(vector, vector) / r
    return energy, forces, virial / abs(np.linalg.det(cell))


def test_d2_against_a_brute_force_pair_sum():
    atoms = d2_frames()['triclinic']
    atoms.calc = D2Dispersion(cutoff=10.0)
    energy, forces, stress = brute_force_d2(atoms)
    # rel 1e-7: the Faraday constant of ASE's units (CODATA 2014) and of this test (2018) differ
    assert atoms.get_potential_energy() == pytest.approx(energy, rel=1e-7)
    np.testing.assert_allclose(atoms.get_forces(), forces, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), stress, rtol=1e-6, atol=1e-10)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy())


def test_d2_rejects_unknown_species_and_is_added_to_the_model():
    atoms = Atoms('CAu', positions=[[0, 0, 0], [3, 0, 0]])
    atoms.calc = D2Dispersion()
    with pytest.raises(Exception, match=r"no parameters for \['Au'\]"):
        atoms.get_potential_energy()

    slab = graphene_slab()
    model = tersoff()
    slab.calc = model
    alone = slab.get_potential_energy()
    assert with_dispersion(model, protocol()) is model
    combined = with_dispersion(model, protocol(dispersion_d2=True, d2_s6=1.0, d2_cutoff=20.0))
    slab.calc = D2Dispersion(s6=1.0, cutoff=20.0)
    dispersion = slab.get_potential_energy()
    slab.calc = combined
    assert slab.get_potential_energy() == pytest.approx(alone + dispersion, rel=1e-12)
    assert dispersion < 0


# --------------------------------------------------------------------------- runs


def test_npt_on_diamond_changes_the_cell():
    result = run_trajectory(diamond(), tersoff(), protocol(temperatures=600.0), seed=1)
    assert (result.ensemble, result.abort, result.skip_reason) == ('npt', None, None)
    assert result.steps == [5, 10, 15, 20]
    assert result.steps_done == 20
    assert not np.allclose(result.cells[-1], diamond().cell.array)
    assert result.final_temperature > 0
    assert result.summary()['n_sampled'] == 4


def test_npt_on_a_slab_keeps_the_vacuum_axis_exactly():
    slab = graphene_slab()
    result = run_trajectory(slab, tersoff(), protocol(temperatures=900.0, steps=30), seed=2)
    assert result.abort is None
    cells = np.array(result.cells)
    assert len(cells) == 6
    assert (cells[:, 2] == slab.cell.array[2]).all()  # bit for bit
    assert (cells[:, :2, 2] == 0).all()
    assert np.abs(cells[:, :2, :2] - slab.cell.array[:2, :2]).max() > 1e-3  # in-plane moves
    assert result.pressure == 0.0


def test_nvt_on_a_cluster_never_changes_the_cell():
    ring = carbon_ring()
    result = run_trajectory(ring, tersoff(), protocol(temperatures=500.0), seed=3)
    assert (result.ensemble, result.abort, result.pressure) == ('nvt', None, None)
    assert all((cell == ring.cell.array).all() for cell in result.cells)
    assert not np.allclose(result.positions[-1], ring.positions)


def test_same_seed_same_frames_other_seed_other_frames():
    frames = [diamond(), graphene_slab(), carbon_ring()]
    p = protocol(temperatures=[300.0, 500.0, 400.0], pressures=[1000.0, 0.0, 0.0])
    first, summary = explore(frames, tersoff(), p, seed=11, run_id_prefix='x')
    again, _ = explore(frames, tersoff(), p, seed=11, run_id_prefix='x')
    other, _ = explore(frames, tersoff(), p, seed=12, run_id_prefix='x')
    assert first.n_frames == 12
    for name in ('positions', 'numbers'):
        assert np.array_equal(first.atom[name], again.atom[name])
    assert np.array_equal(first.frame['cell'], again.frame['cell'])
    assert not np.allclose(first.atom['positions'], other.atom['positions'])
    assert [s['run_id'] for s in summary] == ['x-0', 'x-1', 'x-2']
    assert set(METADATA_COLUMNS) <= set(first.frame)
    assert list(first.frame['ensemble']) == ['npt'] * 8 + ['nvt'] * 4
    assert list(first.frame['source_frame']) == [0] * 4 + [1] * 4 + [2] * 4
    assert list(first.frame['time_fs'][:4]) == [5.0, 10.0, 15.0, 20.0]
    assert list(first.frame['pressure'][:8]) == [1000.0] * 4 + [0.0] * 4
    assert list(first.present['pressure']) == [True] * 8 + [False] * 4
    assert not {'energy', 'forces', 'stress'} & set(first.names)


def test_an_exploding_trajectory_aborts_and_keeps_the_earlier_frames():
    hot = protocol(temperatures=20000.0, steps=50, sample_interval=1, min_distance=1.3)
    result = run_trajectory(diamond(), tersoff(), hot, seed=4)
    assert result.abort.rule == 'min_distance'
    assert result.abort.value < 1.3
    assert 1 <= result.n_sampled == result.abort.step - 1
    assert result.steps == list(range(1, result.abort.step))
    summary = result.summary()
    assert summary['aborted'] and summary['abort_step'] == result.abort.step
    assert summary['abort_reason'] == result.abort.reason


def rattled_cold_diamond():
    """Diamond with every atom moved by ~0.1 Å: stored potential energy worth hundreds of K."""
    atoms = diamond()
    atoms.rattle(0.1, seed=3)
    return atoms


def positions_of_run(columns, run_id):
    """The positions of the frames of ``run_id`` in ``columns`` (one array per frame)."""
    ends = np.cumsum(columns.n_atoms)
    starts = ends - columns.n_atoms
    return [
        columns.atom['positions'][start:end]
        for start, end, run in zip(starts, ends, columns.frame['run_id'], strict=True)
        if run == run_id
    ]


def test_rules_apply_from_the_first_production_step_only():
    # the diamond bond (1.54 Å) is below a 1.6 Å floor from the start, through the whole
    # thermalisation: the rule fires at the first production step, never before
    for thermalisation in (0, 4):
        too_close = protocol(min_distance=1.6, thermalisation_steps=thermalisation)
        result = run_trajectory(diamond(), tersoff(), too_close)
        assert (result.abort.step, result.abort.rule) == (thermalisation + 1, 'min_distance')
        assert result.n_sampled == 0
    # a force bound below any force of a moving crystal: the same
    strict = protocol(temperatures=600.0, max_force=1e-9, thermalisation_steps=3)
    result = run_trajectory(diamond(), tersoff(), strict, seed=1)
    assert (result.abort.step, result.abort.rule) == (4, 'max_force')


def test_relax_lowers_the_forces_with_the_cell_fixed():
    atoms = rattled_cold_diamond()
    atoms.calc = tersoff()
    cell = atoms.cell.array.copy()
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() > 5.0
    steps = relax(atoms, protocol(relax_steps=100, relax_fmax=0.1))
    assert 0 < steps < 100  # converged before the cap
    assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.1
    assert (atoms.cell.array == cell).all()
    capped = rattled_cold_diamond()
    capped.calc = tersoff()
    assert relax(capped, protocol(relax_steps=3)) == 3
    assert relax(capped, protocol()) == 0  # relax_steps 0: no relaxation


def test_a_rattled_cold_start_reaches_production_and_samples():
    cold = {'temperatures': 50.0, 'steps': 20, 'sample_interval': 10}
    # unrelaxed, the stored energy heats the run past 5 x 50 K at once: in production, it aborts
    hot = run_trajectory(rattled_cold_diamond(), tersoff(), protocol(**cold), seed=1)
    assert (hot.abort.rule, hot.abort.step, hot.n_sampled) == ('max_temperature', 1, 0)
    assert hot.abort.value > 5 * 50.0
    # relaxed first, it thermalises (never sampled) and samples every production frame
    relaxed = protocol(**cold, relax_steps=100, thermalisation_steps=10)
    result = run_trajectory(rattled_cold_diamond(), tersoff(), relaxed, seed=1)
    assert result.abort is None
    assert 0 < result.relax_steps_done < 100
    assert result.steps == [20, 30]  # thermalisation steps 1-10 are never sampled
    assert result.steps_done == 30
    assert result.final_temperature < 5 * 50.0
    assert result.summary()['relax_steps_done'] == result.relax_steps_done


def test_a_run_with_its_own_seed_does_not_depend_on_its_job():
    frames = [diamond(), graphene_slab(), carbon_ring()]
    targets = {'temperatures': [300.0, 500.0, 400.0], 'pressures': [1000.0, 0.0, 0.0]}
    listed = {'seeds': [11, 12, 13], 'run_ids': ['r0', 'r1', 'r2'], 'steps': 10}
    together, summary = explore(frames, tersoff(), protocol(**targets, **listed), seed=5)
    assert [run['run_id'] for run in summary] == ['r0', 'r1', 'r2']
    # the same runs in other jobs, at other positions, with another job seed
    swapped = {
        'temperatures': [400.0, 300.0],
        'pressures': [0.0, 1000.0],
        'seeds': [13, 11],
        'run_ids': ['r2', 'r0'],
        'steps': 10,
    }
    other, _ = explore([frames[2], frames[0]], tersoff(), protocol(**swapped), seed=6)
    one = {'temperatures': 500.0, 'pressures': 0.0, 'seeds': [12], 'run_ids': ['r1'], 'steps': 10}
    alone, _ = explore([frames[1]], tersoff(), protocol(**one), seed=7)
    for run_id, job in (('r0', other), ('r1', alone), ('r2', other)):
        mine, theirs = positions_of_run(together, run_id), positions_of_run(job, run_id)
        assert len(mine) == len(theirs) == 2
        for a, b in zip(mine, theirs, strict=True):
            assert np.array_equal(a, b)  # bit for bit
    # and the seed matters: another seed for r0, other frames
    reseeded, _ = explore(
        [frames[0]],
        tersoff(),
        protocol(temperatures=300.0, pressures=1000.0, seeds=[14], run_ids=['r0'], steps=10),
    )
    assert not np.allclose(positions_of_run(reseeded, 'r0')[0], positions_of_run(together, 'r0')[0])


def test_frames_that_cannot_run():
    single = run_trajectory(Atoms('C', cell=[5, 5, 5], pbc=True), tersoff(), protocol())
    assert single.skip_reason.startswith('a single atom')
    assert single.summary()['skipped'] and not single.summary()['aborted']


class Failing(Calculator):
    implemented_properties = ('energy', 'forces')

    def calculate(self, atoms=None, properties=('energy',), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        self.calls = getattr(self, 'calls', 0) + 1
        if self.calls > 3:
            raise RuntimeError('the model fell over\nsecond line')
        self.results = {'energy': 0.0, 'forces': np.zeros((len(self.atoms), 3))}


def test_a_calculator_error_stops_the_run():
    columns, summary = explore([carbon_ring()], Failing(), protocol(sample_interval=1))
    (run,) = summary
    assert run['aborted'] and run['abort_rule'] == 'error'
    assert run['abort_reason'] == 'RuntimeError: the model fell over'
    assert columns.n_frames == run['n_sampled'] == run['abort_step'] - 1


def test_nothing_sampled_gives_empty_columns():
    columns, summary = explore([diamond()], tersoff(), protocol(min_distance=2.0))
    assert columns.n_frames == 0
    assert set(METADATA_COLUMNS) <= set(columns.frame)
    assert summary[0]['n_sampled'] == 0


def test_pure_modules_import_no_aiida():
    import subprocess

    code = (
        'import sys, aiida_trainspot.exploration, aiida_trainspot.exploration.md, '
        'aiida_trainspot.runners.ase_md; '
        "print(any(m == 'aiida' or m.startswith('aiida.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == 'False'


def test_runner_exit_statuses(tmp_path, capsys, monkeypatch):
    from aiida_trainspot.data.convert import columns_from_atoms
    from aiida_trainspot.data.store import write_shard
    from aiida_trainspot.runners import ase_md

    monkeypatch.chdir(tmp_path)
    assert ase_md.main(['missing.json']) == ase_md.EXIT_INPUT_FAILED
    assert 'INPUT UNREADABLE: missing.json: FileNotFoundError' in capsys.readouterr().err

    write_shard(columns_from_atoms([diamond()]), 'frames.h5')
    config = {
        'frames': 'frames.h5',
        'model': {'engine': 'mace', 'path': 'model/none.model', 'dtype': 'float64'},
        'protocol': {'temperatures': 300.0, 'steps': 10},
    }
    (tmp_path / 'md.json').write_text(json.dumps(config))
    assert ase_md.main(['md.json']) == ase_md.EXIT_MODEL_LOAD_FAILED
    assert 'MODEL LOAD FAILED: FileNotFoundError' in capsys.readouterr().err

    config['protocol']['temperatures'] = [300.0, 400.0]  # two targets for one frame
    (tmp_path / 'md.json').write_text(json.dumps(config))
    assert ase_md.main(['md.json']) == ase_md.EXIT_INPUT_FAILED
    assert "INPUT UNREADABLE: ProtocolError: 'temperatures' has 2" in capsys.readouterr().err
    assert not (tmp_path / 'trajectory.h5').exists()
