"""``EvaluationCalculation`` end to end on the local computer with real tiny committees."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, ParserFactory
from ase import Atoms
from ase.build import bulk, diamond100

from aiida_trainspot.data import PESData
from aiida_trainspot.evaluation.calculation import EvaluationCalculation, member_order
from aiida_trainspot.evaluation.calibration import Calibration
from aiida_trainspot.evaluation.disagreement import (
    CommitteePredictions,
    ReferenceLabels,
    committee_disagreement,
    committee_statistics,
    error_metrics,
    true_errors,
)
from aiida_trainspot.evaluation.parser import EvaluationParser
from aiida_trainspot.training.model import PotentialModel

TOLERANCE = 1e-10  # float64 predictions against plain ASE, frame by frame
CALIBRATION = Calibration(slopes={'energy': 2.0, 'forces': 1.5, 'stress': 3.0})
# Nodes shared by the tests of this module (the profile lives for the whole session).
_NODES: dict = {}


def explored_frames() -> list[Atoms]:
    """Unlabelled frames as exploration gives them, including non-periodic ones."""
    rng = np.random.default_rng(4)
    frames = []
    for index in range(4):
        atoms = bulk('C', 'diamond', a=3.6, cubic=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.info['run_id'] = index // 2
        frames.append(atoms)
    slab = diamond100('C', size=(2, 2, 3), vacuum=4.0)
    slab.info = {'run_id': 5}
    cluster = Atoms('C4', positions=[[0, 0, 0], [1.4, 0, 0], [0, 1.45, 0], [0.1, 0.2, 1.35]])
    cluster.info['run_id'] = 6
    lone = Atoms('C', positions=[[0.0, 0.0, 0.0]])
    lone.info['run_id'] = 7
    return [*frames[:2], slab, *frames[2:], cluster, lone]


@pytest.fixture
def committees(tiny_committee_files):
    """{'mace': {'member_0': PotentialModel, 'member_1': ...}, 'metatrain': {...}} (stored)."""
    if 'committees' not in _NODES:
        _NODES['committees'] = {
            engine: {
                f'member_{index}': PotentialModel.from_files(
                    member['model'],
                    engine=engine,
                    architecture=member['architecture'],
                    species=member['species'],
                    cutoff=member['cutoff'],
                    dtype=member['dtype'],
                    seed=member['seed'],
                    extensions_dir=member['extensions'],
                ).store()
                for index, member in enumerate(members)
            }
            for engine, members in tiny_committee_files.items()
        }
    return _NODES['committees']


@pytest.fixture
def datasets(labelled_carbon_frames):
    """'labelled': the 30 Tersoff-labelled frames with a split; 'explored': unlabelled frames."""
    if 'datasets' not in _NODES:
        labelled = PESData.from_ase(labelled_carbon_frames).assign_split(seed=3).store()
        explored = PESData.from_ase(explored_frames()).store()
        _NODES['datasets'] = {'labelled': labelled, 'explored': explored}
    return _NODES['datasets']


def direct_predictions(models, dataset) -> CommitteePredictions:
    """Every member on every frame with plain ASE (load_calculator, one call per frame)."""
    frames = dataset.to_ase()
    energies, forces, stresses = [], [], []
    for label in member_order(models):
        model = models[label]
        with model.calculator(dtype='float64') as calculator:
            energy, force, stress = [], [], []
            for atoms in frames:
                atoms = atoms.copy()
                atoms.calc = calculator
                energy.append(atoms.get_potential_energy())
                force.append(atoms.get_forces())
                if atoms.pbc.sum() < 2:  # 0D and 1D frames: no stress
                    stress.append(np.full(6, np.nan))
                else:
                    stress.append(atoms.get_stress())  # the frame's own volume (the loader's)
        energies.append(energy)
        forces.append(np.concatenate(force))
        stresses.append(stress)
    periodic = np.array([atoms.pbc.sum() >= 2 for atoms in frames])  # bulk and 2D frames
    return CommitteePredictions(
        dataset.n_atoms_per_frame(), energies, forces, stresses, stress_mask=periodic
    )


def labels_of(dataset) -> ReferenceLabels:
    columns = dataset.get_columns(['energy', 'forces', 'stress'])
    return ReferenceLabels(
        columns.n_atoms,
        energy=columns.frame['energy'],
        forces=columns.atom['forces'],
        stress=columns.frame['stress'],
        energy_mask=columns.mask('energy'),
        forces_mask=columns.mask('forces'),
        stress_mask=columns.mask('stress'),
    )


def check_predictions(output, dataset, expected, calibration=None, labels=None, stale=False):
    """The columns of ``output`` against the direct predictions and the pure functions."""
    n_frames = len(dataset)
    columns = output.get_columns()
    stats = committee_statistics(expected)
    delta = committee_disagreement(expected)
    periodic = expected.stress_present()

    def close(name, value):
        np.testing.assert_allclose(
            columns.column(name), value, rtol=TOLERANCE, atol=TOLERANCE, err_msg=name
        )

    close('energy_members', expected.energy.T)
    close('forces_members', expected.forces.transpose(1, 0, 2))
    close('stress_members', expected.stress.transpose(1, 0, 2))
    close('energy_mean', stats.mean_energy)
    close('energy_std_per_atom', stats.std_energy_per_atom)
    close('forces_mean', stats.mean_forces)
    close('forces_std', stats.std_forces)
    close('stress_mean', stats.mean_stress)
    close('stress_std', stats.std_stress)
    for name in ('energy', 'forces', 'forces_max', 'stress'):
        close(f'delta_{name}', delta[name])
    for name in ('stress_members', 'stress_mean', 'stress_std', 'delta_stress'):
        np.testing.assert_array_equal(columns.mask(name), periodic, err_msg=name)
    for name in ('energy_members', 'energy_mean', 'delta_energy', 'delta_forces'):
        assert columns.mask(name).all()
    assert not columns.column('non_finite').any()  # every prediction was finite
    if labels is None:
        for name in ('energy', 'forces', 'stress'):
            assert not columns.mask(f'eps_{name}').any()
            assert np.isnan(columns.column(f'eps_{name}')).all()
    else:
        errors = true_errors(expected, labels)
        for name in ('energy', 'forces', 'stress'):
            close(f'eps_{name}', errors[name])
            np.testing.assert_array_equal(
                columns.mask(f'eps_{name}'), np.isfinite(errors[name]), err_msg=name
            )
    if calibration is None:
        assert stale or not any(name.startswith('estimated_error_') for name in columns.names)
    else:
        for name, slope in calibration.slopes.items():
            close(f'estimated_error_{name}', delta[name] / slope)
    # the input's frames, labels and metadata are all there, on shared shards
    assert len(output) == n_frames
    assert set(dataset.column_names) < set(output.column_names)
    for name in dataset.column_names:
        before, after = dataset.get_column(name), output.get_column(name)
        np.testing.assert_array_equal(before[0], after[0], err_msg=name)  # NaN == NaN here
        np.testing.assert_array_equal(before[1], after[1], err_msg=name)
    shards = set(dataset.base.repository.list_object_names('shards'))
    assert shards < set(output.base.repository.list_object_names('shards'))


def test_entry_points():
    assert CalculationFactory('trainspot.evaluation') is EvaluationCalculation
    assert ParserFactory('trainspot.evaluation') is EvaluationParser
    spec = EvaluationCalculation.spec()
    options = spec.inputs['metadata']['options']
    assert options['parser_name'].default == 'trainspot.evaluation'
    assert options['withmpi'].default is False
    assert spec.inputs['batch_size'].default().value == 1
    assert spec.inputs['chunk_size'].default().value == 1000
    assert spec.inputs['device'].default().value == 'cpu'
    codes = {
        code.status for code in spec.exit_codes.values() if code.status >= 300
    }  # fmt: skip
    assert codes == {300, 301, 302, 303, 304}
    # the runner (no AiiDA import) keeps its own copy of the committee's minimum size
    from aiida_trainspot.evaluation.calculation import MIN_MEMBERS
    from aiida_trainspot.runners.evaluate import MIN_USABLE_MEMBERS

    assert MIN_USABLE_MEMBERS == MIN_MEMBERS
    assert member_order(['member_10', 'member_2', 'member_0']) == [
        'member_0', 'member_2', 'member_10'
    ]  # fmt: skip


@pytest.fixture
def mace_run(evaluate_code, committees, datasets):
    """The MACE committee on both datasets, with a calibration, in chunks of 7 frames (once)."""
    if 'mace_run' not in _NODES:
        _NODES['mace_run'] = run_get_node(
            EvaluationCalculation,
            code=evaluate_code,
            models=committees['mace'],
            datasets=datasets,
            chunk_size=orm.Int(7),  # 30 frames: five chunks, the last a short one
            calibration=orm.Dict(CALIBRATION.to_dict()),
        )
    return _NODES['mace_run']


def test_mace_committee(mace_run, committees, datasets):
    models = committees['mace']
    results, node = mace_run
    assert node.is_finished_ok, node.exit_message

    # one job, relative paths only, each dataset's own files copied (no frame rewritten)
    config = json.loads(node.base.repository.get_object_content('evaluation.json'))
    text = json.dumps(config)
    assert os.getcwd() not in text and '"/' not in text
    assert [m['label'] for m in config['members']] == ['member_0', 'member_1']
    assert config['members'][0]['model'] == 'models/member_0/tiny.model'
    assert config['dtype'] == 'float64' and config['batch_size'] == 1
    assert [d['index'] for d in config['datasets']] == [
        'datasets/explored.index.h5',
        'datasets/labelled.index.h5',
    ]
    submit = node.base.repository.get_object_content('_aiidasubmit.sh')
    assert "trainspot-evaluate' 'evaluation.json'" in submit

    assert set(results['predictions']) == {'labelled', 'explored'}
    labelled, explored = results['predictions']['labelled'], results['predictions']['explored']
    assert labelled.base.attributes.get('committee_members') == ['member_0', 'member_1']
    expected = direct_predictions(models, datasets['labelled'])
    labels = labels_of(datasets['labelled'])
    check_predictions(labelled, datasets['labelled'], expected, CALIBRATION, labels)
    expected_explored = direct_predictions(models, datasets['explored'])
    check_predictions(explored, datasets['explored'], expected_explored, CALIBRATION)
    # bulk and the slab (periodic along two axes) carry a stress prediction; the cluster and
    # the lone atom none
    _, mask = explored.get_column('stress_members')
    assert list(mask) == [True, True, True, True, True, False, False]

    metrics = results['metrics'].get_dict()
    assert metrics['members'] == ['member_0', 'member_1']
    assert metrics['dropped_members'] == [] and metrics['non_finite_frames'] == {}
    assert metrics['datasets']['labelled']['n_non_finite'] == 0
    assert metrics['units'] == {
        'energy': 'meV/atom', 'forces': 'meV/Angstrom', 'stress': 'meV/Angstrom^3'
    }  # fmt: skip
    per_split = metrics['datasets']['labelled']['splits']
    assert set(per_split) == {'all', 'train', 'validation', 'test'}  # nothing unassigned
    split, _ = datasets['labelled'].get_column('split')
    assert sum(per_split[name]['n_frames'] for name in ('train', 'validation', 'test')) == 30
    for name in per_split:
        frames = None if name == 'all' else split == name
        for prop, reference in error_metrics(expected, labels, frames).items():
            got = per_split[name][prop]
            assert got['n_frames'] == reference.n_frames > 0
            np.testing.assert_allclose(got['member_rmse'], reference.member_rmse, rtol=1e-8)
            np.testing.assert_allclose(got['member_mae'], reference.member_mae, rtol=1e-8)
            np.testing.assert_allclose(got['committee_rmse'], reference.committee_rmse, rtol=1e-8)
            np.testing.assert_allclose(got['committee_mae'], reference.committee_mae, rtol=1e-8)
            assert got['member_rmse_mean'] == pytest.approx(reference.member_rmse_mean, rel=1e-8)
            assert got['member_rmse_std'] == pytest.approx(reference.member_rmse_std, rel=1e-6)
    unlabelled = metrics['datasets']['explored']
    assert set(unlabelled['splits']) == {'all'}
    assert unlabelled['splits']['all']['energy']['committee_rmse'] is None
    assert unlabelled['n_stress_predicted'] == 5
    summary = unlabelled['disagreement']
    assert summary['delta_stress']['n_frames'] == 5
    delta = committee_disagreement(expected_explored)
    assert summary['delta_forces']['max'] == pytest.approx(delta.forces.max(), rel=1e-10)
    above = {k: int((delta[k] > t).sum()) for k, t in CALIBRATION.thresholds.items()}
    assert summary['calibration']['n_above_threshold'] == above


def test_metatrain_committee_batched(evaluate_code, committees, datasets, mace_run):
    """Batches of 4 frames; 'explored' is the MACE committee's output: its predictions go."""
    models = committees['metatrain']
    earlier = mace_run[0]['predictions']['explored']
    results, node = run_get_node(
        EvaluationCalculation,
        code=evaluate_code,
        models=models,
        datasets={'explored': earlier, 'labelled': datasets['labelled']},
        batch_size=orm.Int(4),
    )
    assert node.is_finished_ok, node.exit_message
    for name, dataset in (('labelled', datasets['labelled']), ('explored', earlier)):
        expected = direct_predictions(models, dataset)
        labels = labels_of(dataset) if name == 'labelled' else None
        output = results['predictions'][name]
        if name == 'labelled':
            check_predictions(output, dataset, expected, None, labels)
            continue
        # the earlier calibrated estimates cannot describe the new predictions: all missing now
        check_predictions(output, datasets['explored'], expected, None, labels, stale=True)
        for prop in ('energy', 'forces', 'stress'):
            values, mask = output.get_column(f'estimated_error_{prop}')
            assert not mask.any() and np.isnan(values).all()
    splits = results['metrics']['datasets']['labelled']['splits']
    assert set(splits) == {'all', 'train', 'validation', 'test'}
    assert splits['all']['forces']['n_values'] == 3 * int(
        datasets['labelled'].n_atoms_per_frame().sum()
    )


@pytest.mark.parametrize(
    ('change', 'port', 'message'),
    [
        ('one_model', 'inputs.models', 'at least 2 models, got 1'),
        ('mixed_engines', 'inputs.models', 'same engine'),
        ('empty_dataset', 'inputs.datasets', '`datasets.empty`: the dataset has no frames'),
        ('no_dataset', 'inputs.datasets', 'give at least one dataset'),
        ('unknown_species', 'inputs', "`datasets.copper`: species \\['Cu'\\] are unknown"),
        ('metatrain_float32', 'inputs', '`dtype`: metatrain models evaluate in the dtype'),
        ('batch_size', 'inputs.batch_size', 'must be at least 1, got 0'),
        ('device', 'inputs.device', "'gpu' is not one of"),
        ('calibration', 'inputs.calibration', 'not a calibration'),
        ('committee_size', 'inputs', 'predictions of a committee of 2 members, which those of 3'),
    ],
)
def test_bad_inputs_rejected_at_submission(
    evaluate_code, committees, datasets, change, port, message, request
):
    inputs = {
        'code': evaluate_code,
        'models': dict(committees['mace']),
        'datasets': {'labelled': datasets['labelled']},
    }
    if change == 'one_model':
        inputs['models'] = {'member_0': committees['mace']['member_0']}
    elif change == 'mixed_engines':
        inputs['models']['member_1'] = committees['metatrain']['member_1']
    elif change == 'empty_dataset':
        inputs['datasets']['empty'] = datasets['labelled'].subset([])
    elif change == 'no_dataset':
        inputs['datasets'] = {}
    elif change == 'unknown_species':
        inputs['datasets']['copper'] = PESData.from_ase([bulk('Cu', 'fcc', a=3.6)])
    elif change == 'metatrain_float32':
        inputs['models'] = dict(committees['metatrain'])
        inputs['dtype'] = orm.Str('float32')
    elif change == 'batch_size':
        inputs['batch_size'] = orm.Int(0)
    elif change == 'device':
        inputs['device'] = orm.Str('gpu')
    elif change == 'calibration':
        inputs['calibration'] = orm.Dict({'slopes': {'energy': -1.0}})
    elif change == 'committee_size':
        inputs['models']['member_2'] = committees['mace']['member_0']
        earlier = request.getfixturevalue('mace_run')[0]['predictions']['explored']
        inputs['datasets'] = {'explored': earlier}
    before = orm.QueryBuilder().append(orm.CalcJobNode).count()
    with pytest.raises(ValueError, match=message) as info:
        run_get_node(EvaluationCalculation, **inputs)
    assert f"validating port '{port}': " in str(info.value)
    assert orm.QueryBuilder().append(orm.CalcJobNode).count() == before


def test_model_that_fails_to_load(evaluate_code, committees, datasets, tmp_path):
    broken = tmp_path / 'broken.model'
    broken.write_bytes(b'not a torch file')
    models = {
        'member_0': committees['mace']['member_0'],
        'member_1': PotentialModel.from_files(
            broken, engine='mace', architecture='MACE', species=['C'], cutoff=4.0, dtype='float64'
        ),
    }
    _, node = run_get_node(
        EvaluationCalculation, code=evaluate_code, models=models, datasets=datasets
    )
    assert node.exit_status == EvaluationCalculation.exit_codes.ERROR_MODEL_LOAD_FAILED.status
    assert 'member_1' in node.exit_message


@pytest.mark.parametrize(
    ('script', 'exit_code', 'message'),
    [
        ('echo "no luck" >&2', 'ERROR_OUTPUT_MISSING', 'no luck'),
        ('echo "{" > metrics.json', 'ERROR_OUTPUT_UNREADABLE', 'metrics.json'),
        (
            'echo "INPUT UNREADABLE: labelled: broken" >&2; exit 4',
            'ERROR_INPUT_UNREADABLE',
            'broken',
        ),
    ],
)
def test_parser_exit_codes(
    code_factory, committees, datasets, tmp_path, script, exit_code, message
):
    executable = tmp_path / 'fake-evaluate'
    executable.write_text(f'#!/bin/sh\n{script}\n')
    executable.chmod(0o755)
    code = code_factory(f'fake-{tmp_path.name}', str(executable), 'trainspot.evaluation')
    _, node = run_get_node(
        EvaluationCalculation, code=code, models=committees['mace'], datasets=datasets
    )
    assert node.exit_status == getattr(EvaluationCalculation.exit_codes, exit_code).status
    assert message in node.exit_message


def test_job_folder_of_a_dry_run(evaluate_code, committees, datasets, tmp_path):
    """Models (with metatrain's extensions) and each dataset's own files, at relative paths."""
    exported = committees['metatrain']['member_1'].export(tmp_path / 'model')
    extensions = tmp_path / 'extensions'
    (extensions / 'lib').mkdir(parents=True)
    (extensions / 'lib' / 'libfake.so').write_bytes(b'fake')
    models = {
        'member_0': committees['metatrain']['member_0'],
        'member_1': PotentialModel.from_files(
            exported['model'], engine='metatrain', architecture='pet', species=['C'], cutoff=4.0,
            dtype='float64', extensions_dir=extensions,
        ),
    }  # fmt: skip
    both = PESData.concatenate([datasets['labelled'], datasets['explored']])
    _, node = run_get_node(
        EvaluationCalculation,
        code=evaluate_code,
        models=models,
        datasets={'both': both, 'explored': datasets['explored']},
        metadata={'dry_run': True, 'store_provenance': False},
    )
    folder = Path(node.dry_run_info['folder'])
    paths = [p.relative_to(folder) for p in folder.rglob('*') if p.is_file()]
    files = sorted(str(p) for p in paths if '.aiida' not in p.parts)
    shards = sorted(f'shards/{n}' for n in both.base.repository.list_object_names('shards'))
    assert files == sorted([
        '_aiidasubmit.sh', 'evaluation.json', 'datasets/both.index.h5',
        'datasets/explored.index.h5', 'models/member_0/model.pt', 'models/member_1/model.pt',
        'models/member_1/extensions/lib/libfake.so', *shards,
    ])  # fmt: skip
    config = json.loads((folder / 'evaluation.json').read_text())
    assert [m['extensions'] for m in config['members']] == [None, 'models/member_1/extensions']


# --------------------------------------------------------------------------------------------------
# Non-finite predictions: the real runner and parser, with one member's calculator wrapped so that
# it returns a NaN energy on chosen frames

SLAB = 2  # the slab of explored_frames(), its only frame of 12 atoms


def test_a_nan_on_one_frame_costs_that_frame_only(poisoned_evaluate_code, committees, datasets):
    from aiida_trainspot.evaluation.operations import select_for_labelling

    models = committees['mace']
    assert datasets['explored'].n_atoms_per_frame().tolist().count(12) == 1
    assert datasets['explored'].n_atoms_per_frame()[SLAB] == 12
    code = poisoned_evaluate_code({'member_1': 12})
    results, node = run_get_node(
        EvaluationCalculation,
        code=code,
        models=models,
        datasets=datasets,
        calibration=orm.Dict(CALIBRATION.to_dict()),
    )
    assert node.is_finished_ok, node.exit_message
    metrics = results['metrics'].get_dict()
    assert metrics['non_finite_frames'] == {'explored': [SLAB]}
    assert metrics['dropped_members'] == []
    explored = metrics['datasets']['explored']
    assert explored['n_non_finite'] == 1 and explored['non_finite_members'] == {'member_1': 1}
    assert metrics['datasets']['labelled']['n_non_finite'] == 0
    stdout = node.outputs.retrieved.base.repository.get_object_content('trainspot-evaluate.out')
    assert 'NON-FINITE: member member_1 on 1 of 7 frames of dataset explored (first: frame 2' in (
        stdout
    )
    # the labelled frames (no 12-atom frame among them) are untouched
    labelled = results['predictions']['labelled']
    expected = direct_predictions(models, datasets['labelled'])
    labels = labels_of(datasets['labelled'])
    check_predictions(labelled, datasets['labelled'], expected, CALIBRATION, labels)
    # the explored frames: the slab is flagged, member_1 NaN there, the rest as without the NaN
    output = results['predictions']['explored']
    columns = output.get_columns()
    flags = columns.column('non_finite')
    assert flags.tolist() == [i == SLAB for i in range(len(output))]
    clean = direct_predictions(models, datasets['explored'])
    other = ~flags
    stats = committee_statistics(clean)
    delta = committee_disagreement(clean)
    np.testing.assert_allclose(columns.column('energy_mean')[other], stats.mean_energy[other])
    np.testing.assert_allclose(columns.column('delta_forces')[other], delta.forces[other])
    energies = columns.column('energy_members')
    assert np.isnan(energies[SLAB, 1]) and columns.mask('energy_members')[SLAB]
    assert energies[SLAB, 0] == pytest.approx(clean.energy[0, SLAB], abs=TOLERANCE)
    # one member left: the mean is its prediction, there is no disagreement
    assert columns.column('energy_mean')[SLAB] == pytest.approx(clean.energy[0, SLAB], abs=1e-10)
    assert not columns.mask('delta_forces')[SLAB] and not columns.mask('delta_energy')[SLAB]
    # and the campaign goes on: the flagged frame is a candidate for labelling
    selection = select_for_labelling(
        output,
        orm.Dict(CALIBRATION.to_dict()),
        orm.Dict({'min_displacement': 0.0}),
        orm.Int(0),
    )
    report = selection['report'].get_dict()
    assert report['non_finite'] == [SLAB] and SLAB in report['selected']


def test_a_member_nan_everywhere_is_dropped(poisoned_evaluate_code, committees, datasets):
    mace = committees['mace']
    models = {**mace, 'member_2': mace['member_0']}  # a third member, which fails everywhere
    code = poisoned_evaluate_code({'member_2': None})
    results, node = run_get_node(EvaluationCalculation, code=code, models=models, datasets=datasets)
    assert node.is_finished_ok, node.exit_message
    metrics = results['metrics'].get_dict()
    assert metrics['dropped_members'] == ['member_2']
    assert metrics['non_finite_frames'] == {}
    stdout = node.outputs.retrieved.base.repository.get_object_content('trainspot-evaluate.out')
    assert 'MEMBER DROPPED: member_2' in stdout
    # every statistic is the two-member committee's
    expected = direct_predictions(mace, datasets['labelled'])
    labels = labels_of(datasets['labelled'])
    columns = results['predictions']['labelled'].get_columns()
    assert not columns.column('non_finite').any()
    assert np.isnan(columns.column('energy_members')[:, 2]).all()
    stats = committee_statistics(expected)
    delta = committee_disagreement(expected)
    errors = true_errors(expected, labels)
    for name, value in (
        ('energy_mean', stats.mean_energy),
        ('forces_mean', stats.mean_forces),
        ('stress_std', stats.std_stress),
        ('delta_energy', delta.energy),
        ('delta_forces_max', delta.forces_max),
        ('eps_forces', errors.forces),
    ):
        np.testing.assert_allclose(columns.column(name), value, rtol=TOLERANCE, atol=TOLERANCE)
    for name, reference in error_metrics(expected, labels).items():
        got = metrics['datasets']['labelled']['splits']['all'][name]
        assert got['n_frames'] == reference.n_frames > 0
        assert got['member_rmse'][2] is None
        np.testing.assert_allclose(got['member_rmse'][:2], reference.member_rmse, rtol=1e-8)
        np.testing.assert_allclose(got['committee_rmse'], reference.committee_rmse, rtol=1e-8)
    explored = results['predictions']['explored'].get_columns()
    assert not explored.column('non_finite').any()  # its flags were rewritten without member_2


def test_too_few_members_left_fails_the_job(poisoned_evaluate_code, committees, datasets):
    code = poisoned_evaluate_code({'member_1': None})
    _, node = run_get_node(
        EvaluationCalculation,
        code=code,
        models=committees['mace'],
        datasets={'explored': datasets['explored']},
    )
    assert node.exit_status == EvaluationCalculation.exit_codes.ERROR_INFERENCE_FAILED.status
    assert "members ['member_1'] predicted non-finite values on every frame" in node.exit_message
    assert "which leaves ['member_0']; a committee needs at least 2" in node.exit_message
