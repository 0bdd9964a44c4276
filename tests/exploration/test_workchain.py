"""ExplorationWorkChain end to end: LAMMPS Tersoff (real lmp) and the ASE engine (real MD)."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase import Atoms
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.exploration.plan import (
    DEFAULT_PROTOCOL,
    ExplorationProtocol,
    ase_parameters,
    choose_member,
    lammps_settings,
    make_plan,
)
from aiida_trainspot.exploration.workchain import ExplorationWorkChain

SIC_TERSOFF = '/usr/share/lammps/potentials/SiC.tersoff'
SHORT = {
    'steps': 60,
    'thermalisation_steps': 0,
    'sample_interval': 20,
    'temperature_range': [300, 600],
}


@pytest.fixture
def raw_code(lammps_code, code_factory):
    return code_factory('lmp-raw', str(lammps_code.filepath_executable), 'lammps.raw')


@pytest.fixture
def tersoff_file():
    return orm.SinglefileData(SIC_TERSOFF)


def test_plan_is_seeded_and_skips_single_atoms():
    n_atoms = np.array([1, 8, 2, 1, 64])
    first = make_plan(n_atoms, 5, {}, seed=3)
    assert first == make_plan(n_atoms, 5, {}, seed=3)
    assert first != make_plan(n_atoms, 5, {}, seed=4)
    assert set(first.frames) <= {1, 2, 4}
    assert all(1.0 <= t <= 1000.0 for t in first.temperatures)
    assert all(-5.0 <= p <= 5.0 for p in first.pressures_kbar)
    explicit = make_plan(n_atoms, 4, {'temperatures': [300, 900], 'pressures_kbar': [0]}, seed=1)
    assert explicit.temperatures == (300.0, 900.0, 300.0, 900.0)
    assert explicit.pressures_kbar == (0.0,) * 4
    members = ['member_0', 'member_1', 'member_2']
    assert choose_member(members, 5) == choose_member(list(reversed(members)), 5)
    assert {choose_member(members, s) for s in range(30)} == set(members)


@pytest.mark.slow
def test_lammps_tersoff_two_species(raw_code, tersoff_file):
    sic = bulk('SiC', 'zincblende', a=4.36, cubic=True)  # 8 atoms, Si first
    cis = sic[np.argsort(-sic.numbers)]  # C first
    diamond = bulk('C', 'diamond', a=3.567, cubic=True)
    pool = PESData.from_ase([sic, cis, diamond, bulk('C', 'diamond', a=3.567)[:1]])
    results, node = run_get_node(
        ExplorationWorkChain,
        structures=pool,
        n_structures=orm.Int(3),
        engine=orm.Str('lammps'),
        code=raw_code,
        lammps={'pair_style': orm.Str('tersoff'), 'parameter_file': tersoff_file},
        protocol=orm.Dict(SHORT),
        max_concurrent=orm.Int(2),
        seed=orm.Int(5),
    )
    assert node.is_finished_ok, node.exit_message
    trajectory = results['trajectory']
    assert len(trajectory) == 3 * 3  # 3 runs x 60 steps / 20
    source, _ = trajectory.get_column('source_frame')
    engine, _ = trajectory.get_column('engine')
    assert set(engine) == {'lammps'}
    assert set(source) <= {0, 1, 2}
    frames = trajectory.to_ase()
    for atoms, src in zip(frames, source, strict=True):
        # every atom keeps its element, whatever the species order of the start
        assert list(atoms.numbers) == list(pool.get_atoms(int(src)).numbers)
    temperature, _ = trajectory.get_column('temperature')
    assert ((temperature >= 300) & (temperature <= 600)).all()


def test_bad_inputs_rejected(raw_code, tersoff_file):
    pool = PESData.from_ase([bulk('C', 'diamond', a=3.567)])
    base = {'structures': pool, 'code': raw_code}
    with pytest.raises(ValueError, match='engine: unknown engine'):
        run_get_node(ExplorationWorkChain, engine=orm.Str('gromacs'), **base)
    with pytest.raises(ValueError, match='model: the ase engine needs a model'):
        run_get_node(ExplorationWorkChain, **base)
    with pytest.raises(ValueError, match='protocol: unknown key'):
        run_get_node(
            ExplorationWorkChain,
            engine=orm.Str('lammps'),
            lammps={'pair_style': orm.Str('tersoff'), 'parameter_file': tersoff_file},
            protocol=orm.Dict({'temprature_range': [0, 10]}),
            **base,
        )
    single = PESData.from_ase([bulk('C', 'diamond', a=3.567)[:1]])
    with pytest.raises(ValueError, match='structures: every frame is a single atom'):
        run_get_node(
            ExplorationWorkChain,
            structures=single,
            code=raw_code,
            engine=orm.Str('lammps'),
            lammps={'pair_style': orm.Str('tersoff'), 'parameter_file': tersoff_file},
        )


@pytest.mark.slow
@pytest.mark.parametrize('model_fixture', ['tiny_mace_model', 'tiny_metatrain_model'])
def test_ase_engine_with_a_committee(model_fixture, ase_md_code, request):
    model = request.getfixturevalue(model_fixture)
    from ase.build import graphene
    from ase.lattice.hexagonal import Graphite

    layer = graphene(a=2.46, vacuum=6.0).repeat((2, 2, 1))
    graphite = Graphite('C', latticeconstant={'a': 2.46, 'c': 6.7}, size=(1, 1, 1))  # AB, 4 atoms
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    ring = Atoms('C6', positions=np.c_[1.54 * np.cos(angles), 1.54 * np.sin(angles), np.zeros(6)])
    ring.center(vacuum=6.0)  # a cluster: no periodic direction, NVT
    cells = [bulk('C', 'diamond', a=3.567, cubic=True), layer, graphite, ring]
    pool = PESData.from_ase(cells)
    inputs = {
        'structures': pool,
        'n_structures': orm.Int(4),
        'code': ase_md_code,
        'models': {'member_0': model, 'member_1': model},
        'protocol': orm.Dict(
            {**SHORT, 'steps': 20, 'sample_interval': 10, 'pressures_kbar': [0.0]}
        ),
        'max_concurrent': orm.Int(2),
        'seed': orm.Int(4),
    }
    results, node = run_get_node(ExplorationWorkChain, **inputs)
    assert node.is_finished_ok, node.exit_message
    trajectory = results['trajectory']
    assert len(trajectory) == 8
    source, _ = trajectory.get_column('source_frame')
    runs = [r for job in results['summary']['jobs'].values() for r in job['runs']]
    assert sorted(set(source)) == [0, 1, 2, 3], runs
    # NPT where any axis is periodic, NVT for the cluster; the slab's vacuum axis keeps its length
    ensemble, _ = trajectory.get_column('ensemble')
    assert set(ensemble[source != 3]) == {'npt'}
    assert set(ensemble[source == 3]) == {'nvt'}
    cells = trajectory.get_columns([]).frame['cell']
    ring_frames = np.flatnonzero(source == 3)
    np.testing.assert_array_equal(cells[ring_frames], np.broadcast_to(ring.cell.array, (2, 3, 3)))
    slab = np.flatnonzero(source == 1)
    np.testing.assert_allclose(
        np.linalg.norm(cells[slab, 2], axis=1), np.linalg.norm(layer.cell[2])
    )
    engine, _ = trajectory.get_column('engine')
    assert set(engine) == {'ase'}
    assert results['model'].pk == model.pk
    # the same seed gives the same frames
    again, _ = run_get_node(ExplorationWorkChain, **inputs)
    first = trajectory.get_columns()
    second = again['trajectory'].get_columns()
    np.testing.assert_array_equal(first.atom['positions'], second.atom['positions'])


@pytest.mark.slow
@pytest.mark.parametrize('model_fixture', ['tiny_mace_model', 'tiny_metatrain_model'])
def test_ase_frames_do_not_depend_on_max_concurrent(model_fixture, ase_md_code, request):
    model = request.getfixturevalue(model_fixture)
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    ring = Atoms('C6', positions=np.c_[1.54 * np.cos(angles), 1.54 * np.sin(angles), np.zeros(6)])
    ring.center(vacuum=6.0)
    diamond = bulk('C', 'diamond', a=3.567, cubic=True)
    diamond.rattle(0.05, seed=2)
    pool = PESData.from_ase([diamond, ring, bulk('C', 'diamond', a=3.567)])
    inputs = {
        'structures': pool,
        'n_structures': orm.Int(5),
        'code': ase_md_code,
        'model': model,
        'protocol': orm.Dict(
            {
                **SHORT,
                'relax_steps': 5,
                'thermalisation_steps': 4,
                'steps': 20,
                'sample_interval': 10,
                'pressures_kbar': [0.0, 1.0],
            }
        ),
        'seed': orm.Int(8),
    }
    outputs = {}
    for max_concurrent in (1, 3):
        results, node = run_get_node(
            ExplorationWorkChain, max_concurrent=orm.Int(max_concurrent), **inputs
        )
        assert node.is_finished_ok, node.exit_message
        assert len(results['summary']['jobs']) == max_concurrent  # grouped differently
        outputs[max_concurrent] = results['trajectory'].get_columns()
    one, three = outputs[1], outputs[3]
    assert one.n_frames == three.n_frames == 5 * 2  # every run reached production, 2 frames each
    # the same frames, bit for bit, in the same order, with the same run ids and steps
    for name in ('positions', 'numbers'):
        assert np.array_equal(one.atom[name], three.atom[name]), name
    for name in ('cell', 'step', 'source_frame', 'temperature', 'run_id', 'ensemble'):
        assert np.array_equal(one.frame[name], three.frame[name]), name
    assert np.array_equal(one.frame['pressure'], three.frame['pressure'], equal_nan=True)
    assert one.frame['step'].tolist() == [14, 24] * 5  # after relaxation and thermalisation
    run_ids = list(dict.fromkeys(one.frame['run_id']))
    prefix = run_ids[0].rsplit('-', 1)[0]
    assert run_ids == [f'{prefix}-{r}' for r in range(5)]  # one per run, in run order


#: The stage's defaults of one MD run, as they were before ExplorationProtocol (pinned).
RUN_DEFAULTS = {
    'steps': 2000,
    'thermalisation_steps': 200,
    'relax_steps': 100,
    'relax_fmax': 0.1,
    'sample_interval': 200,
    'timestep_fs': 1.0,
    'dispersion_d2': False,
    'min_distance': 0.5,
    'max_force': 50.0,
    'max_temperature_factor': 5.0,
}


def test_exploration_protocol_defaults_and_round_trip():
    default = ExplorationProtocol()
    assert ExplorationProtocol.from_dict({}) == default
    assert default.to_dict() == DEFAULT_PROTOCOL
    assert DEFAULT_PROTOCOL == {
        'temperature_range': [0.0, 1000.0],
        'pressure_range_kbar': [-5.0, 5.0],
        **RUN_DEFAULTS,
    }
    explicit = ExplorationProtocol.from_dict({'temperatures': [300, 900], 'pressures_kbar': [0]})
    assert explicit.temperatures == (300, 900)
    assert ExplorationProtocol.from_dict(explicit.to_dict()) == explicit


def test_exploration_protocol_gives_the_jobs_what_they_got_before():
    """The stage's defaults (sample_interval 200, ...) reach both engines; kbar become bar."""
    assert ase_parameters({}, [300.0], [1.5], [7], ['r-0']) == {
        **RUN_DEFAULTS,
        'temperatures': [300.0],
        'pressures': [1500.0],
        'seeds': [7],
        'run_ids': ['r-0'],
    }
    assert lammps_settings({'timestep_fs': 2}, 300.0, -1.0, 7) == {
        'temperature': 300.0,
        'pressure': -1000.0,
        'relax_steps': 100,
        'relax_fmax': 0.1,
        'thermalisation_steps': 200,
        'steps': 2000,
        'sample_interval': 200,
        'timestep_fs': 2,
        'seed': 7,
        'min_distance': 0.5,
        'max_force': 50.0,
        'max_temperature': 1500.0,
    }
    with pytest.raises(ValueError, match='one temperature, pressure, seed and run id per run'):
        ase_parameters({}, [300.0, 400.0], [0.0], [1], ['a'])


@pytest.mark.parametrize(
    ('values', 'match'),
    [
        ({'temprature_range': [0, 10]}, "did you mean 'temperature_range'"),
        ({'timestep_fs': 10.5}, r"'timestep_fs' 10.5 fs is too long .*at most 10.0 fs"),
        ({'timestep_fs': 0}, 'timestep_fs must be positive'),
        ({'steps': 100}, r"'sample_interval' \(200\) is larger than 'steps'"),
        ({'temperature_range': [500, 100]}, 'temperature_range must be \\[low, high\\]'),
        ({'pressures_kbar': []}, 'pressures_kbar must be a non-empty list'),
        ({'temperatures': [300, 'hot']}, 'temperatures must be a non-empty list of numbers'),
        ({'min_distance': 0.01}, "'min_distance' must be at least"),
        ({'max_temperature_factor': 1.0}, "'max_temperature_factor' must be larger than 1.0"),
    ],
)
def test_exploration_protocol_refuses(values, match):
    with pytest.raises(ValueError, match=match):
        ExplorationProtocol.from_dict(values)


@pytest.mark.parametrize(
    ('protocol', 'match'),
    [
        ({'timestep_fs': 20.0}, r"protocol: 'timestep_fs' 20.0 fs is too long"),
        ({'stesp': 10}, "protocol: unknown keys \\['stesp'\\]; did you mean 'steps'"),
    ],
)
def test_bad_protocol_refused_at_submission(raw_code, tersoff_file, protocol, match):
    """The MD jobs' own checks (the 10 fs limit) refuse a protocol before anything runs."""
    builder = ExplorationWorkChain.get_builder()
    builder.structures = PESData.from_ase([bulk('C', 'diamond', a=3.567)])
    builder.code = raw_code
    builder.engine = orm.Str('lammps')
    builder.lammps = {'pair_style': orm.Str('tersoff'), 'parameter_file': tersoff_file}
    builder.protocol = orm.Dict(protocol)
    with pytest.raises(ValueError, match=match):
        instantiate_process(get_manager().get_runner(), builder)
