"""``AseLabelCalculation`` end to end on the local computer: inputs, job, parser, exit codes."""

import io
import json
import os

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, ParserFactory
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.tersoff import Tersoff
from ase.cluster import Octahedron

from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.ase.calculation import AseLabelCalculation
from aiida_trainspot.labelling.ase.parser import AseLabelParser

SIC_TERSOFF = '/usr/share/lammps/potentials/SiC.tersoff'
EXECUTABLE = 'trainspot-ase-label'


def emt_frames() -> list[Atoms]:
    """200 frames: rattled Cu bulk, Cu slabs and clusters, and one frame with Fe (index 57)."""
    frames = []
    rng = np.random.default_rng(0)
    for i in range(180):
        atoms = bulk('Cu', 'fcc', a=3.6 * rng.uniform(0.97, 1.03), cubic=True).repeat(2)
        atoms.rattle(0.08, seed=i)
        atoms.info['generation_method'] = 'rattle'
        frames.append(atoms)
    for i in range(10):
        atoms = fcc111('Cu', size=(2, 2, 3), vacuum=6.0)
        atoms.info = {'generation_method': 'slab'}
        atoms.rattle(0.05, seed=1000 + i)
        frames.append(atoms)
    for i in range(10):
        atoms = Atoms(Octahedron('Cu', 3))
        atoms.info['generation_method'] = 'cluster'
        atoms.rattle(0.05, seed=2000 + i)
        frames.append(atoms)
    frames[57][3].symbol = 'Fe'
    for index, atoms in enumerate(frames):
        atoms.info['origin'] = index
    return frames


def reference(atoms: Atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    stress = atoms.get_stress() if atoms.pbc.sum() >= 2 else None  # bulk and 2D frames
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def test_entry_points():
    assert CalculationFactory('trainspot.ase.label') is AseLabelCalculation
    assert ParserFactory('trainspot.ase.label') is AseLabelParser
    options = AseLabelCalculation.spec().inputs['metadata']['options']
    assert options['resources'].default == {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
    assert options['withmpi'].default is False
    assert options['parser_name'].default == 'trainspot.ase.label'


def test_emt_labels_200_frames_in_one_job(ase_code):
    frames = emt_frames()
    dataset = PESData.from_ase(frames).store()
    results, node = run_get_node(
        AseLabelCalculation,
        code=ase_code,
        dataset=dataset,
        calculator=orm.Dict({'name': 'emt'}),
    )
    assert node.is_finished_ok, node.exit_message
    # one job, and nothing of the local machine baked into its input files
    with node.base.repository.open('calculator.json') as handle:
        assert json.load(handle) == {'kwargs': {}, 'name': 'emt', 'parameter_file': None}
    names = [n for n in node.base.repository.list_object_names() if not n.startswith('.')]
    assert sorted(names) == ['_aiidasubmit.sh', 'calculator.json', 'frames.h5']
    assert os.getcwd().encode() not in node.base.repository.get_object_content('frames.h5', 'rb')
    submit = node.base.repository.get_object_content('_aiidasubmit.sh')
    assert "'frames.h5' 'calculator.json' 'labels.h5'" in submit

    labelled, failed, summary = results['labelled'], results['failed'], results['summary']
    assert summary['n_frames'] == 200
    assert summary['n_labelled'] == 199
    assert summary['n_failed'] == 1
    assert summary['n_stress'] == 189  # 179 bulk and 10 slabs
    assert summary['failed_indices'] == [57]
    assert summary['failure_reasons'] == {'57': 'NotImplementedError: No EMT-potential for Fe'}
    ok = summary['labelled_indices']
    assert ok == [i for i in range(200) if i != 57]

    # the labels are ASE's, frame by frame
    assert len(labelled) == 199
    energy, energy_mask = labelled.get_column('energy')
    stress, stress_mask = labelled.get_column('stress')
    forces, forces_mask = labelled.get_column('forces')
    assert energy_mask.all()
    assert forces_mask.all()
    expected = [reference(frames[i], EMT()) for i in ok]
    np.testing.assert_allclose(energy, [e for e, _, _ in expected], rtol=1e-10, atol=0)
    np.testing.assert_allclose(
        forces, np.concatenate([f for _, f, _ in expected]), rtol=1e-10, atol=1e-12
    )
    periodic = np.array([s is not None for _, _, s in expected])
    np.testing.assert_array_equal(stress_mask, periodic)
    assert np.isnan(stress[~periodic]).all()
    np.testing.assert_allclose(
        stress[periodic], [s for _, _, s in expected if s is not None], rtol=1e-10, atol=1e-14
    )
    # every input column is kept; the structure is the input's
    assert set(dataset.column_names) <= set(labelled.column_names)
    origin, _ = labelled.get_column('origin')
    np.testing.assert_array_equal(origin, ok)
    method, _ = labelled.get_column('generation_method')
    assert list(method) == [frames[i].info['generation_method'] for i in ok]
    np.testing.assert_array_equal(
        labelled.get_column('positions')[0], dataset.get_column('positions', ok)[0]
    )
    assert labelled.base.attributes.get('n_labelled') == {
        'energy': 199,
        'forces': 199,
        'stress': 189,
    }

    assert len(failed) == 1
    assert failed.get_column('origin')[0].tolist() == [57]
    assert failed.get_column('failure_reason')[0].tolist() == [
        'NotImplementedError: No EMT-potential for Fe'
    ]
    assert failed.get_column('exit_status')[0].tolist() == [0]
    assert failed.base.attributes.get('n_labelled_energy') == 0


def test_tersoff_with_lammps_parameter_file(ase_code):
    diamond = bulk('C', 'diamond', a=3.567, cubic=True)
    frames = []
    for seed in range(3):
        atoms = diamond.repeat((1, 1, 2)) if seed == 2 else diamond.copy()
        atoms.rattle(0.04, seed=seed)
        frames.append(atoms)
    cluster = Atoms('C4', positions=[[0, 0, 0], [1.4, 0, 0], [0, 1.4, 0], [0, 0, 1.4]])
    frames.append(cluster)
    dataset = PESData.from_ase(frames)
    parameters = orm.SinglefileData(SIC_TERSOFF)
    results, node = run_get_node(
        AseLabelCalculation,
        code=ase_code,
        dataset=dataset,
        calculator=orm.Dict({'name': 'tersoff', 'kwargs': {'skin': 0.3}}),
        parameter_file=parameters,
    )
    assert node.is_finished_ok, node.exit_message
    with node.base.repository.open('calculator.json') as handle:
        spec = json.load(handle)
    assert spec['parameter_file'] == 'calculator.parameters.tersoff'
    assert not any(os.sep in str(v) for v in spec.values() if isinstance(v, str))

    labelled = results['labelled']
    assert len(labelled) == 4
    energy, _ = labelled.get_column('energy')
    forces, _ = labelled.get_column('forces')
    stress, stress_mask = labelled.get_column('stress')
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in frames])])
    for i, atoms in enumerate(frames):
        e, f, s = reference(atoms, Tersoff.from_lammps(SIC_TERSOFF))
        assert energy[i] == pytest.approx(e, rel=1e-10)
        np.testing.assert_allclose(forces[offsets[i] : offsets[i + 1]], f, rtol=1e-10, atol=1e-12)
        if s is None:
            assert not stress_mask[i]
        else:
            np.testing.assert_allclose(stress[i], s, rtol=1e-10, atol=1e-14)
    assert stress_mask.tolist() == [True, True, True, False]
    assert len(results['failed']) == 0


def test_all_frames_failed(ase_code):
    frames = [bulk('Fe', 'bcc', a=2.87, cubic=True), bulk('Cu', 'fcc', a=3.6)]
    frames[1][0].symbol = 'Zn'
    dataset = PESData.from_ase(frames)
    results, node = run_get_node(
        AseLabelCalculation, code=ase_code, dataset=dataset, calculator=orm.Dict({'name': 'emt'})
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_ALL_FRAMES_FAILED.status == 310
    assert 'All 2 frames failed' in node.exit_message
    assert 'No EMT-potential for Fe' in node.exit_message
    failed = results['failed']
    assert failed.get_column('failure_reason')[0].tolist() == [
        'NotImplementedError: No EMT-potential for Fe',
        'NotImplementedError: No EMT-potential for Zn',
    ]
    assert failed.get_column('exit_status')[0].tolist() == [310, 310]
    assert results['summary']['n_labelled'] == 0
    assert len(results['labelled']) == 0


def test_relabelling_replaces_old_labels(ase_code):
    """A dataset labelled before (here with made-up values) gets EMT's labels everywhere."""
    frames = [bulk('Cu', 'fcc', a=3.6, cubic=True), Atoms(Octahedron('Cu', 2))]
    old = PESData.from_frames(
        [
            {
                'numbers': a.numbers,
                'positions': a.positions,
                'cell': a.cell.array,
                'pbc': a.pbc,
                'energy': 1.0,
                'forces': np.ones((len(a), 3)),
                'stress': np.ones(6),
            }
            for a in frames
        ]
    )
    results, node = run_get_node(
        AseLabelCalculation, code=ase_code, dataset=old, calculator=orm.Dict({'name': 'emt'})
    )
    assert node.is_finished_ok, node.exit_message
    stress, mask = results['labelled'].get_column('stress')
    # the cluster's made-up stress does not survive next to EMT's energy and forces
    assert mask.tolist() == [True, False]
    np.testing.assert_allclose(stress[0], reference(frames[0], EMT())[2], rtol=1e-10, atol=1e-14)
    energy, _ = results['labelled'].get_column('energy')
    assert energy[1] == pytest.approx(reference(frames[1], EMT())[0], rel=1e-12)


def test_calculator_setup_failure_on_the_computer(ase_code):
    dataset = PESData.from_ase([bulk('C', 'diamond', a=3.567)])
    garbage = orm.SinglefileData(io.BytesIO(b'this is no tersoff file\n'), filename='C.tersoff')
    _, node = run_get_node(
        AseLabelCalculation,
        code=ase_code,
        dataset=dataset,
        calculator=orm.Dict({'name': 'tersoff'}),
        parameter_file=garbage,
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_CALCULATOR_SETUP.status
    assert 'ValueError: The potential file does not have the correct LAMMPS format' in (
        node.exit_message
    )


# --------------------------------------------------------------------------- rejected at submission


@pytest.mark.parametrize(
    ('calculator', 'match'),
    [
        ({'name': 'dft'}, r"`calculator`: unknown calculator 'dft'"),
        ({'name': 'no_such_module_xyz:Calc'}, r'`calculator`: .*cannot import module'),
        ({'name': 'emt', 'kwargs': {'sigma': 1}}, r"`calculator`: calculator 'emt' takes no"),
        ({'name': 'tersoff'}, r"`parameter_file`: calculator 'tersoff' needs the input"),
    ],
)
def test_bad_calculator_rejected_at_submission(ase_code, calculator, match):
    dataset = PESData.from_ase([bulk('Cu', 'fcc', a=3.6)])
    with pytest.raises(ValueError, match=match):
        run_get_node(
            AseLabelCalculation, code=ase_code, dataset=dataset, calculator=orm.Dict(calculator)
        )


def test_parameter_file_for_emt_rejected(ase_code):
    dataset = PESData.from_ase([bulk('Cu', 'fcc', a=3.6)])
    with pytest.raises(ValueError, match=r"`parameter_file`: calculator 'emt' takes no"):
        run_get_node(
            AseLabelCalculation,
            code=ase_code,
            dataset=dataset,
            calculator=orm.Dict({'name': 'emt'}),
            parameter_file=orm.SinglefileData(SIC_TERSOFF),
        )


def test_empty_dataset_rejected(ase_code):
    with pytest.raises(ValueError, match=r'`dataset`: the dataset has no frames'):
        run_get_node(
            AseLabelCalculation,
            code=ase_code,
            dataset=PESData.from_ase([]),
            calculator=orm.Dict({'name': 'emt'}),
        )


# --------------------------------------------------------------------------- parser exit codes


def test_missing_labels_file(code_factory):
    code = code_factory('true', '/bin/true', 'trainspot.ase.label')
    dataset = PESData.from_ase([bulk('Cu', 'fcc', a=3.6)])
    results, node = run_get_node(
        AseLabelCalculation, code=code, dataset=dataset, calculator=orm.Dict({'name': 'emt'})
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_MISSING.status == 300
    assert 'labels.h5' in node.exit_message
    assert 'labelled' not in results


@pytest.mark.parametrize(
    ('script', 'exit_code', 'status', 'message'),
    [
        ('echo "not hdf5" > "$3"', 'ERROR_OUTPUT_UNREADABLE', 301, 'labels.h5'),
        # the failure line of common.runner.run_main names the exit code every runner job shares
        (
            'echo "INPUT UNREADABLE: $1: OSError: truncated" >&2; exit 4',
            'ERROR_INPUT_UNREADABLE',
            303,
            'frames.h5: OSError: truncated',
        ),
    ],
)
def test_runner_failures(code_factory, tmp_path, script, exit_code, status, message):
    path = tmp_path / 'fake-labeller.sh'
    path.write_text(f'#!/bin/sh\n{script}\n')
    path.chmod(0o755)
    code = code_factory(f'fake-labeller-{status}', str(path), 'trainspot.ase.label')
    dataset = PESData.from_ase([bulk('Cu', 'fcc', a=3.6)])
    _, node = run_get_node(
        AseLabelCalculation, code=code, dataset=dataset, calculator=orm.Dict({'name': 'emt'})
    )
    assert node.exit_status == getattr(AseLabelCalculation.exit_codes, exit_code).status == status
    assert message in node.exit_message
