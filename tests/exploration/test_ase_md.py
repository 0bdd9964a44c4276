"""``AseMdCalculation`` end to end on the local computer with tiny MACE and PET models."""

import json

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, ParserFactory
from ase import Atoms
from ase.build import bulk, graphene

from aiida_trainspot.data import PESData
from aiida_trainspot.exploration.ase.calculation import AseMdCalculation
from aiida_trainspot.exploration.ase.parser import AseMdParser
from aiida_trainspot.exploration.md import METADATA_COLUMNS, MdProtocol, explore
from aiida_trainspot.training.model import PotentialModel

_NODES: dict = {}


def diamond():
    return bulk('C', 'diamond', a=3.567, cubic=True)


def graphene_slab():
    slab = graphene(size=(2, 2, 1), vacuum=5.0)
    slab.pbc = (True, True, False)
    return slab


def carbon_ring():
    """Six carbons in a ring with single-bond lengths (1.54 Å): stable under the tiny models."""
    angles = np.arange(6) * np.pi / 3
    return Atoms('C6', positions=np.c_[1.54 * np.cos(angles), 1.54 * np.sin(angles), np.zeros(6)])


@pytest.fixture
def starting_frames():
    """Diamond (NPT), a graphene slab with vacuum (NPT in-plane), a ring (NVT), one atom."""
    if 'frames' not in _NODES:
        lone = Atoms('C', cell=[6, 6, 6], pbc=True)
        _NODES['frames'] = PESData.from_ase(
            [diamond(), graphene_slab(), carbon_ring(), lone]
        ).store()
    return _NODES['frames']


@pytest.fixture
def small_frames():
    """Diamond and a ring."""
    if 'small' not in _NODES:
        _NODES['small'] = PESData.from_ase([diamond(), carbon_ring()]).store()
    return _NODES['small']


def parameters(**overrides):
    values = {
        'temperatures': [600.0, 600.0, 500.0, 300.0],
        'pressures': [1000.0, 0.0, 0.0, 0.0],
        'steps': 20,
        'sample_interval': 5,
        'ptime': 50.0,
    }
    values.update(overrides)
    return orm.Dict(values)


def test_entry_points():
    assert CalculationFactory('trainspot.ase.md') is AseMdCalculation
    assert ParserFactory('trainspot.ase.md') is AseMdParser
    options = AseMdCalculation.spec().inputs['metadata']['options']
    assert options['resources'].default == {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    assert options['withmpi'].default is False
    assert options['parser_name'].default == 'trainspot.ase.md'


def test_mace_npt_on_bulk_and_slab_nvt_on_a_cluster(ase_md_code, tiny_mace_model, starting_frames):
    results, node = run_get_node(
        AseMdCalculation,
        code=ase_md_code,
        model=tiny_mace_model,
        structures=starting_frames,
        parameters=parameters(thermalisation_steps=2),
        seed=orm.Int(1),
    )
    assert node.is_finished_ok, node.exit_message
    with node.base.repository.open('md.json') as handle:
        config = json.load(handle)
    assert config['model'] == {
        'engine': 'mace',
        'path': 'model/tiny.model',
        'extensions': None,
        'dtype': 'float64',
    }
    assert config['protocol']['thermalisation_steps'] == 2
    assert config['protocol']['max_force'] == 50.0  # defaults written out

    trajectory, summary = results['trajectory'], results['summary'].get_dict()
    assert len(trajectory) == 12
    assert set(METADATA_COLUMNS) <= set(trajectory.column_names)
    assert not {'energy', 'forces', 'stress'} & set(trajectory.column_names)  # unlabelled
    frames = trajectory.to_ase()
    info = [atoms.info for atoms in frames]
    assert [i['source_frame'] for i in info] == [0] * 4 + [1] * 4 + [2] * 4
    assert [i['step'] for i in info[:4]] == [7, 12, 17, 22]
    assert [i['time_fs'] for i in info[:4]] == [7.0, 12.0, 17.0, 22.0]
    assert [i['ensemble'] for i in info] == ['npt'] * 8 + ['nvt'] * 4
    assert {i['engine'] for i in info} == {'ase'}
    assert [i['temperature'] for i in info] == [600.0] * 8 + [500.0] * 4
    assert [i['pressure'] for i in info[:8]] == [1000.0] * 4 + [0.0] * 4
    assert all('pressure' not in i for i in info[8:])  # NVT: no target pressure
    prefix = config['run_id_prefix']
    assert prefix.startswith('ase-')
    assert [i['run_id'] for i in info] == [f'{prefix}-{n}' for n in (0,) * 4 + (1,) * 4 + (2,) * 4]

    # diamond: the whole cell moves; slab: in-plane only, the vacuum axis bit for bit; ring: never
    start = diamond().cell.array
    assert max(np.abs(atoms.cell.array - start).max() for atoms in frames[:4]) > 1e-4
    slab = graphene_slab().cell.array
    for atoms in frames[4:8]:
        assert (atoms.cell.array[2] == slab[2]).all()
        assert (atoms.cell.array[:2, 2] == 0).all()
        assert list(atoms.pbc) == [True, True, False]
    assert max(np.abs(a.cell.array[:2] - slab[:2]).max() for a in frames[4:8]) > 1e-4
    for atoms in frames[8:]:
        assert (atoms.cell.array == 0).all()
        assert not atoms.pbc.any()

    assert summary['n_runs'] == 4
    assert (summary['n_sampled'], summary['n_aborted'], summary['n_skipped']) == (12, 0, 1)
    runs = summary['runs']
    assert [r['n_sampled'] for r in runs] == [4, 4, 4, 0]
    assert [r['ensemble'] for r in runs[:3]] == ['npt', 'npt', 'nvt']
    assert runs[3]['skipped'] and runs[3]['skip_reason'].startswith('a single atom')
    for run in runs[:3]:
        assert not run['aborted'] and run['abort_step'] is None
        assert run['steps_done'] == 22
        assert run['final_temperature'] > 0
        assert run['wall_time_s'] >= 0
    assert summary['units']['pressure'] == 'bar'


def test_metatrain_same_seed_same_frames(ase_md_code, tiny_metatrain_model, small_frames):
    def job(seed, **overrides):
        results, node = run_get_node(
            AseMdCalculation,
            code=ase_md_code,
            model=tiny_metatrain_model,
            structures=small_frames,
            parameters=parameters(temperatures=[500.0, 500.0], pressures=0.0, **overrides),
            seed=orm.Int(seed),
        )
        assert node.is_finished_ok, node.exit_message
        columns = results['trajectory'].get_columns()
        assert columns.n_frames == 8
        return columns

    first, again = job(5), job(5)
    assert np.array_equal(first.atom['positions'], again.atom['positions'])
    assert np.array_equal(first.frame['cell'], again.frame['cell'])
    dispersion = job(6, dispersion_d2=True)

    frames = small_frames.to_ase()
    with tiny_metatrain_model.calculator() as calculator:

        def in_process(seed, **overrides):
            values = parameters(temperatures=[500.0, 500.0], pressures=0.0, **overrides)
            protocol = MdProtocol.from_dict(values.get_dict())
            return explore(frames, calculator, protocol, seed=seed)[0].atom['positions']

        # the job runs exactly the pure run loop (up to the thread count of torch's reductions)
        np.testing.assert_allclose(first.atom['positions'], in_process(5), atol=1e-6)
        other_seed = in_process(6)
        assert not np.allclose(first.atom['positions'], other_seed, atol=1e-3)
        # D2 is applied in the job, and changes the dynamics
        np.testing.assert_allclose(
            dispersion.atom['positions'], in_process(6, dispersion_d2=True), atol=1e-6
        )
        assert not np.allclose(dispersion.atom['positions'], other_seed, atol=1e-7)


def test_exploding_trajectory_aborts_and_keeps_the_earlier_frames(
    ase_md_code, tiny_metatrain_model, small_frames
):
    results, node = run_get_node(
        AseMdCalculation,
        code=ase_md_code,
        model=tiny_metatrain_model,
        structures=small_frames,
        parameters=parameters(
            temperatures=[50000.0, 300.0],
            pressures=0.0,
            steps=30,
            sample_interval=1,
            min_distance=1.3,
        ),
        seed=orm.Int(4),
    )
    assert node.is_finished_ok, node.exit_message  # the other run sampled: not a failure
    hot, calm = results['summary']['runs']
    assert hot['aborted'] and hot['abort_rule'] in ('min_distance', 'max_force', 'max_temperature')
    assert hot['abort_step'] >= 2
    assert hot['n_sampled'] == hot['abort_step'] - 1  # every step before the abort
    assert hot['abort_reason']
    assert not calm['aborted'] and calm['n_sampled'] == 30
    trajectory = results['trajectory']
    steps, _ = trajectory.get_column('step')
    sources, _ = trajectory.get_column('source_frame')
    assert list(steps[sources == 0]) == list(range(1, hot['abort_step']))
    assert results['summary']['n_aborted'] == 1


def test_all_runs_aborted(ase_md_code, tiny_metatrain_model, small_frames):
    results, node = run_get_node(
        AseMdCalculation,
        code=ase_md_code,
        model=tiny_metatrain_model,
        structures=small_frames,
        parameters=parameters(temperatures=300.0, pressures=0.0, min_distance=2.0),
    )
    assert node.exit_status == AseMdCalculation.exit_codes.ERROR_ALL_RUNS_ABORTED.status
    assert 'step 1' in node.exit_message and 'closer than the floor' in node.exit_message
    assert len(results['trajectory']) == 0  # still attached
    runs = results['summary']['runs']
    # the rules hold in production only: the first production step is the first they see
    assert [(r['aborted'], r['abort_step'], r['abort_rule']) for r in runs] == [
        (True, 1, 'min_distance')
    ] * 2


def test_model_that_fails_to_load(ase_md_code, small_frames, tmp_path):
    broken = tmp_path / 'broken.pt'
    broken.write_bytes(b'not a model')
    model = PotentialModel.from_files(
        broken, engine='metatrain', architecture='pet', species=['C'], cutoff=4.0, dtype='float64'
    ).store()
    _, node = run_get_node(
        AseMdCalculation,
        code=ase_md_code,
        model=model,
        structures=small_frames,
        parameters=parameters(temperatures=300.0, pressures=0.0),
    )
    assert node.exit_status == AseMdCalculation.exit_codes.ERROR_MODEL_LOAD_FAILED.status
    assert 'could not be loaded' in node.exit_message


def test_runner_wrote_nothing(code_factory, tiny_metatrain_model, small_frames):
    not_the_runner = code_factory('true-as-ase-md', '/bin/true', 'trainspot.ase.md')
    results, node = run_get_node(
        AseMdCalculation,
        code=not_the_runner,
        model=tiny_metatrain_model,
        structures=small_frames,
        parameters=parameters(temperatures=300.0, pressures=0.0),
    )
    assert node.exit_status == AseMdCalculation.exit_codes.ERROR_OUTPUT_MISSING.status
    assert 'wrote no summary.json' in node.exit_message
    assert 'trajectory' not in results


def _tilted_slab():
    slab = graphene_slab()
    cell = slab.cell.array.copy()
    cell[2] = [1.0, 0.0, 10.0]
    slab.set_cell(cell)
    return slab


@pytest.mark.parametrize(
    ('change', 'match'),
    [
        ({'parameters': {'temperatures': 300, 'steps': 10, 'foo': 1}}, r'`parameters`: unknown'),
        ({'parameters': {'temperatures': -5, 'steps': 10}}, r"`parameters`: 'temperatures'"),
        ({'parameters': {'temperatures': 300, 'steps': 5, 'sample_interval': 10}}, 'no frame'),
        ({'parameters': {'temperatures': [1, 2, 3], 'steps': 10}}, r"`parameters`: 'temper"),
        ({'seed': -1}, r'`seed`: must be an integer in \[0, 2\*\*31\)'),
        (
            {'parameters': {'temperatures': 300, 'steps': 10, 'seeds': [1, 2]}, 'seed': 3},
            r'`seed`: 3 is given together with per-run `parameters.seeds`',
        ),
        (
            {'parameters': {'temperatures': 300, 'steps': 10, 'seeds': [1, 2, 3]}},
            r"`parameters`: 'seeds' has 3 values for 2 starting frames",
        ),
        ({'device': 'gpu'}, r"`device`: 'gpu' is not one of"),
        ({'frames': [Atoms('Si2', positions=[[0, 0, 0], [2.3, 0, 0]])]}, r'`structures`: spec'),
        ({'frames': [Atoms('C', cell=[5, 5, 5], pbc=True)]}, r'`structures`: every frame is a'),
        ({'frames': []}, r'`structures`: the dataset has no frames'),
        ({'frames': [_tilted_slab()]}, r'`structures`: frame 0: the non-periodic cell vector'),
    ],
)
def test_bad_inputs_rejected_at_submission(ase_md_code, tiny_mace_model, change, match):
    inputs = {
        'code': ase_md_code,
        'model': tiny_mace_model,
        'structures': PESData.from_ase(change.get('frames', [diamond(), carbon_ring()])),
        'parameters': orm.Dict(change.get('parameters', {'temperatures': 300, 'steps': 10})),
    }
    if 'seed' in change:
        inputs['seed'] = orm.Int(change['seed'])
    if 'device' in change:
        inputs['device'] = orm.Str(change['device'])
    with pytest.raises(ValueError, match=match):
        run_get_node(AseMdCalculation, **inputs)
