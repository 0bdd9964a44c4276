"""``aiida-trainspot deploy PK --out DIR`` on a stored stand-in campaign of the tiny committees.

The campaign is a stored ``TrainsPotWorkChain``-like node with the real one's output links
(``models``, ``calibration``, ``dataset`` and the ``iterations`` checkpoints), its members the
tiny MACE and PET committees of ``tiny_committee_files``.
"""

import json
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.io import read
from click.testing import CliRunner

from aiida_trainspot.calculator import CommitteeCalculator
from aiida_trainspot.cli import cli
from aiida_trainspot.evaluation.calibration import Calibration, calibrate


@pytest.fixture(scope='module')
def calibration():
    """A calibration fitted by the package's own ``calibrate`` on synthetic (δ, ε) pairs."""
    rng = np.random.default_rng(5)
    errors = {name: rng.uniform(0.1, 2.0, 50) * 0.1 for name in ('energy', 'forces', 'stress')}
    deltas = {name: np.abs(1.5 * e + rng.normal(0.0, 0.01, 50)) for name, e in errors.items()}
    return calibrate(deltas, errors, power_law=True)


def stored_models(members, engine, lammps_files=None):
    """``{'member_<i>': PotentialModel}`` of the tiny members, stored."""
    from aiida_trainspot.training.model import PotentialModel

    lammps_files = lammps_files or {}
    return {
        f'member_{i}': PotentialModel.from_files(
            m['model'],
            engine=engine,
            architecture=m['architecture'],
            species=m['species'],
            cutoff=m['cutoff'],
            dtype=m['dtype'],
            seed=m['seed'],
            extensions_dir=m['extensions'],
            lammps_file=lammps_files.get(i),
        ).store()
        for i, m in enumerate(members)
    }


def fake_run(models, calibration=None, dataset=None, process='trainspot.trainspot'):
    """A stored, finished work-chain node with the outputs of a campaign (or a training)."""
    from aiida import orm
    from aiida.common.links import LinkType
    from plumpy import ProcessState

    node = orm.WorkflowNode()
    node.set_process_type(f'aiida.workflows:{process}')
    node.set_process_state(ProcessState.FINISHED)
    node.set_exit_status(0)
    node.store()
    links = {f'models__{k}': m for k, m in models.items()}
    if process == 'trainspot.trainspot':
        links.update({f'iterations__iteration_01__models__{k}': m for k, m in models.items()})
    if calibration is not None:
        calibration_node = orm.Dict(calibration.to_dict()).store()
        links['calibration'] = calibration_node
        links['iterations__iteration_01__calibration'] = calibration_node
    if dataset is not None:
        links['dataset'] = dataset
    for label, target in links.items():
        target.base.links.add_incoming(node, LinkType.RETURN, label)
    return node


@pytest.fixture
def carbon_dataset(aiida_profile, labelled_carbon_frames):
    from aiida_trainspot.data import PESData

    return PESData.from_ase(labelled_carbon_frames[:6]).store()


def deploy(*args):
    return CliRunner().invoke(cli, ['deploy', *map(str, args)])


def one_line_error(result, *words):
    assert result.exit_code != 0, result.output
    assert 'Traceback' not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    for word in words:
        assert word in lines[0], lines[0]


def frame():
    atoms = bulk('C', 'diamond', a=3.6)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def predictions(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces(), dict(calc.results)


def python_blocks(text):
    return re.findall(r'```python\n(.*?)```', text, flags=re.DOTALL)


def test_deploy_a_mace_campaign(
    aiida_profile, tiny_committee_files, carbon_dataset, calibration, tmp_path
):
    from aiida_trainspot.training.lammps_export import evaluate_mace_export, export_mace
    from aiida_trainspot.training.loader import load_calculator

    files = tiny_committee_files['mace']
    # member 0 as trained (its LAMMPS export stored), member 1 without: deploy converts it
    stored_export = export_mace(files[0]['model'], tmp_path / 'tiny.model-lammps.pt', 'float64')
    models = stored_models(files, 'mace', {0: stored_export})
    assert models['member_0'].lammps_filename and not models['member_1'].lammps_filename
    node = fake_run(models, calibration, carbon_dataset)
    out = tmp_path / 'deployed'

    result = deploy(node.pk, '--out', out)
    assert result.exit_code == 0, result.output
    for name in ('README.md', 'calibration.json', 'dataset.xyz', 'committee.json'):
        assert (out / name).is_file(), name
    for i in range(len(files)):
        assert (out / f'member_{i}' / 'tiny.model').is_file()
        assert (out / f'member_{i}' / 'tiny.model-lammps.pt').is_file()
    assert (out / 'member_0' / 'tiny.model-lammps.pt').read_bytes() == stored_export.read_bytes()
    assert len(read(out / 'dataset.xyz', index=':')) == len(carbon_dataset)

    atoms = frame()
    # the deployed members load as the engines load them, and the LAMMPS files agree with them
    for i in range(len(files)):
        single = load_calculator('mace', out / f'member_{i}' / 'tiny.model', dtype='float64')
        energy, forces, _ = predictions(single, atoms)
        lammps_energy, lammps_forces = evaluate_mace_export(
            out / f'member_{i}' / 'tiny.model-lammps.pt', atoms
        )
        assert lammps_energy == pytest.approx(energy, rel=1e-9)
        np.testing.assert_allclose(lammps_forces, forces, atol=1e-9)

    # from_folder is the committee of the campaign, calibration included
    expected = CommitteeCalculator.from_models(
        [models[k] for k in sorted(models)], calibration=calibration
    )
    energy, forces, results = predictions(expected, atoms)
    deployed = CommitteeCalculator.from_folder(out)
    assert deployed.n_members == len(files)
    assert deployed.calibration == Calibration.from_dict(node.outputs.calibration.get_dict())
    got_energy, got_forces, got_results = predictions(deployed, atoms)
    assert got_energy == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(got_forces, forces, atol=1e-12)
    assert got_results['forces_uncertainty'] == pytest.approx(results['forces_uncertainty'])

    readme = (out / 'README.md').read_text()
    assert node.uuid in readme and f'PK {node.pk}' in readme
    assert 'species: C' in readme and 'committee: 2 members' in readme
    assert 'pair_style mace no_domain_decomposition' in readme
    assert 'pair_coeff * * member_1/tiny.model-lammps.pt C' in readme
    # the README's Python lines work and give the same committee
    blocks = python_blocks(readme)
    assert len(blocks) == 2 and 'from_folder' in blocks[0] and 'from_files' in blocks[1]
    for block in blocks:
        namespace = {}
        exec(block, namespace)
        calc = namespace['calc']
        assert calc.calibration == deployed.calibration
        assert predictions(calc, atoms)[0] == pytest.approx(energy, rel=1e-12)

    # an existing non-empty --out: refused, unless --force
    again = deploy(node.pk, '--out', out)
    one_line_error(again, str(out), 'not empty', '--force')
    (out / 'mine.txt').write_text('kept')
    (out / 'member_0' / 'stale').write_text('x')
    forced = deploy(node.pk, '--out', out, '--force')
    assert forced.exit_code == 0, forced.output
    assert (out / 'mine.txt').read_text() == 'kept'
    assert not (out / 'member_0' / 'stale').exists()

    # `export --models DIR` (no manifest) also loads with from_folder
    exported = tmp_path / 'exported'
    result = CliRunner().invoke(cli, ['export', str(node.pk), '--models', str(exported)])
    assert result.exit_code == 0, result.output
    by_export = CommitteeCalculator.from_folder(exported)
    assert predictions(by_export, atoms)[0] == pytest.approx(energy, rel=1e-12)
    assert by_export.calibration == deployed.calibration

    # a TrainingWorkChain's committee: deployed, without a calibration
    training = fake_run(models, dataset=carbon_dataset, process='trainspot.training')
    result = deploy(training.pk, '--out', tmp_path / 'training')
    assert result.exit_code == 0, result.output
    assert 'no calibration' in result.output
    assert not (tmp_path / 'training' / 'calibration.json').exists()
    from_training = CommitteeCalculator.from_folder(tmp_path / 'training')
    assert from_training.calibration is None
    assert predictions(from_training, atoms)[0] == pytest.approx(energy, rel=1e-12)
    for committee in (expected, deployed, by_export, from_training):
        committee.close()


def test_deploy_a_metatrain_campaign(
    aiida_profile, tiny_committee_files, carbon_dataset, calibration, tmp_path
):
    files = tiny_committee_files['metatrain']
    models = stored_models(files, 'metatrain')
    node = fake_run(models, calibration, carbon_dataset)
    out = tmp_path / 'deployed'
    result = deploy(node.pk, '--out', out)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / 'committee.json').read_text())
    assert [m['engine'] for m in manifest['members']] == ['metatrain', 'metatrain']
    readme = (out / 'README.md').read_text()
    for i in range(len(files)):
        assert (out / f'member_{i}' / 'model.pt').is_file()
        assert (out / f'member_{i}' / 'extensions').is_dir() == (files[i]['extensions'] is not None)
    extensions = ' extensions member_0/extensions' if files[0]['extensions'] else ''
    assert f'pair_style metatomic member_0/model.pt device cpu{extensions}' in readme
    assert 'pair_coeff * * 6' in readme

    frame_ = frame()
    atoms = Atoms(frame_.numbers, frame_.positions, cell=frame_.cell, pbc=True)
    expected = CommitteeCalculator.from_models(
        [models[k] for k in sorted(models)], calibration=calibration
    )
    energy, forces, _ = predictions(expected, atoms)
    deployed = CommitteeCalculator.from_folder(out)
    assert deployed.calibration == Calibration.from_dict(node.outputs.calibration.get_dict())
    got_energy, got_forces, _ = predictions(deployed, atoms)
    assert got_energy == pytest.approx(energy, rel=1e-10)
    np.testing.assert_allclose(got_forces, forces, atol=1e-10)
    namespace = {}
    exec(python_blocks(readme)[1], namespace)  # the from_files lines
    assert predictions(namespace['calc'], atoms)[0] == pytest.approx(energy, rel=1e-10)
    for committee in (expected, deployed, namespace['calc']):
        committee.close()


def test_bad_input_is_one_line(aiida_profile, tmp_path):
    from aiida import orm

    data = orm.Dict({'a': 1}).store()
    one_line_error(
        deploy(data.pk, '--out', tmp_path / 'a'), f'node {data.pk}', 'TrainsPotWorkChain'
    )
    one_line_error(deploy(999999999, '--out', tmp_path / 'a'), 'no node', '999999999')
    empty = fake_run({})
    one_line_error(deploy(empty.pk, '--out', tmp_path / 'a'), f'<{empty.pk}>', 'no committee')
    assert not (tmp_path / 'a').exists()  # nothing written for a bad run
    missing = CliRunner().invoke(cli, ['deploy', str(empty.pk)])
    assert missing.exit_code != 0 and '--out' in missing.output
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    one_line_error(deploy(empty.pk, '--out', a_file), 'no committee')  # the run is checked first
    with pytest.raises(ValueError, match='not a committee'):
        CommitteeCalculator.from_folder(tmp_path)
