"""Every trained member carries the file its LAMMPS pair style loads.

The training parsers run on the files of real tiny trainings (``tiny_committee_files``: real
``mace_run_train`` and ``mtt train`` runs, laid out as the training jobs retrieve them), so no
model is trained here. The exports are then loaded as LAMMPS loads them (MACE: the TorchScript
``LAMMPS_MACE`` called as ``pair_style mace`` calls it; metatomic: metatomic's ASE calculator on
the exported file with its extensions) and must give the member's own energy and forces.
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from aiida import orm
from aiida.common.links import LinkType
from ase import Atoms
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.training.lammps_export import (
    evaluate_mace_export,
    mace_head,
    metatomic_export_problem,
)
from aiida_trainspot.training.mace.parser import MaceTrainParser
from aiida_trainspot.training.metatrain.parser import MetatrainTrainParser
from aiida_trainspot.training.model import PotentialModel

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def frames():
    """A rattled periodic diamond cell and a carbon ring without a cell."""
    diamond = bulk('C', 'diamond', a=3.6, cubic=True)
    diamond.rattle(0.05, seed=3)
    angles = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    ring = Atoms('C6', positions=np.c_[1.45 * np.cos(angles), 1.45 * np.sin(angles), np.zeros(6)])
    ring.rattle(0.03, seed=4)
    return [diamond, ring]


def member_prediction(model: PotentialModel, atoms):
    atoms = atoms.copy()
    with model.calculator(dtype='float64') as calculator:
        atoms.calc = calculator
        return atoms.get_potential_energy(), atoms.get_forces()


def parse(parser, engine, inputs, files, computer):
    """Run ``parser`` on a finished job of ``engine`` with these inputs and retrieved files."""
    node = orm.CalcJobNode(computer=computer, process_type=f'aiida.calculations:{engine}')
    node.set_option('resources', {'num_machines': 1})
    for label, data in inputs.items():
        node.base.links.add_incoming(data.store(), link_type=LinkType.INPUT_CALC, link_label=label)
    node.store()
    retrieved = orm.FolderData()
    for path, content in files.items():
        retrieved.base.repository.put_object_from_bytes(content, path)
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
    retrieved.store()
    results, calcfunction = parser.parse_from_node(node, store_provenance=False)
    assert calcfunction.is_finished_ok, calcfunction.exit_message
    return results['model']


def training_inputs(labelled_carbon_frames, seed):
    dataset = PESData.from_ase(labelled_carbon_frames)
    return {
        'training': dataset.subset(range(24)),
        'validation': dataset.subset(range(24, 30)),
        'seed': orm.Int(seed),
        'dtype': orm.Str('float64'),
    }


def mace_files(member, model_bytes=None):
    """A MACE member's run folder as ``MaceTrainCalculation`` retrieves it."""
    folder = member['model'].parent
    files = {
        'train.out': b'',
        'train.err': b'',
        'config.yaml': yaml.safe_dump({'model': 'MACE', 'r_max': member['cutoff']}).encode(),
        'model/mace.model': model_bytes or member['model'].read_bytes(),
    }
    for sub in ('results', 'logs', 'checkpoints'):
        for path in sorted((folder / sub).glob('*')):
            files[f'{sub}/{path.name}'] = path.read_bytes()
    return files


def metatrain_files(member, model_bytes=None):
    """A metatrain member's run folder as ``MetatrainTrainCalculation`` retrieves it."""
    folder = member['model'].parent
    files = {
        'train.out': (folder / 'train.log').read_bytes(),
        'train.err': b'',
        'model.pt': model_bytes or member['model'].read_bytes(),
        'model.ckpt': (folder / 'model.ckpt').read_bytes(),
    }
    for name in ('train.csv', 'options_restart.yaml'):
        (path,) = folder.glob(f'outputs/*/*/{name}')
        files[name] = path.read_bytes()
    if member['extensions'] is not None:
        for path in sorted(member['extensions'].rglob('*')):
            if path.is_file():
                relative = path.relative_to(member['extensions'].parent)
                files[str(relative)] = path.read_bytes()
    return files


# ------------------------------------------------------------------------------------------ MACE


def test_mace_head_is_the_calculators_default():
    assert mace_head(None) is None
    assert mace_head(['Default']) == 'Default'
    assert mace_head(['pt_head', 'DEFAULT']) == 'DEFAULT'
    with pytest.raises(ValueError, match=r"heads \['a', 'b'\] and none is `default`"):
        mace_head(['a', 'b'])


def test_mace_member_carries_its_lammps_export(
    tiny_committee_files, labelled_carbon_frames, aiida_localhost, tmp_path
):
    member = tiny_committee_files['mace'][0]
    inputs = training_inputs(labelled_carbon_frames, member['seed'])
    model = parse(
        MaceTrainParser, 'trainspot.mace.train', inputs, mace_files(member), aiida_localhost
    )
    assert model.lammps_filename == 'mace.model-lammps.pt'
    assert model.lammps_export_error is None
    assert model.base.repository.list_object_names('lammps') == ['mace.model-lammps.pt']
    path = model.write_lammps_model(tmp_path)
    assert path == tmp_path / 'mace.model-lammps.pt'
    content = path.read_bytes()
    assert sha256(content) == sha256(model.lammps_export()[1])
    assert sha256(content) != sha256(member['model'].read_bytes())  # not the training .model
    # what `pair_style mace` loads: the TorchScript LAMMPS_MACE wrapper, in float64, knowing C
    compiled = torch.jit.load(str(path))
    assert compiled.original_name == 'LAMMPS_MACE'
    assert compiled.r_max.dtype == torch.float64
    assert float(compiled.r_max) == pytest.approx(member['cutoff'])
    assert compiled.atomic_numbers.tolist() == [6]
    # and it predicts what the member predicts, with and without a periodic cell
    for atoms in frames():
        energy, forces = evaluate_mace_export(path, atoms)
        expected_energy, expected_forces = member_prediction(model, atoms)
        assert energy == pytest.approx(expected_energy, abs=1e-6)
        np.testing.assert_allclose(forces, expected_forces, atol=1e-6)
        assert np.abs(forces).max() > 1e-3  # rattled: real forces, not zeros


def test_members_of_other_seeds_have_other_exports(tiny_committee_files, tmp_path):
    # the comparison above could pass on a constant; two members must differ in LAMMPS too
    from aiida_trainspot.training.lammps_export import export_mace

    energies = []
    for member in tiny_committee_files['mace']:
        output = export_mace(member['model'], tmp_path / f'{member["seed"]}.pt', 'float64')
        energies.append(evaluate_mace_export(output, frames()[0])[0])
    assert energies[0] != pytest.approx(energies[1], abs=1e-6)


def test_a_failed_mace_export_keeps_the_member(
    tiny_committee_files, labelled_carbon_frames, aiida_localhost
):
    member = tiny_committee_files['mace'][0]
    inputs = training_inputs(labelled_carbon_frames, member['seed'])
    files = mace_files(member, model_bytes=b'not a torch file')
    model = parse(MaceTrainParser, 'trainspot.mace.train', inputs, files, aiida_localhost)
    assert model.lammps_filename is None
    assert 'lammps' not in model.base.repository.list_object_names()
    assert model.lammps_export_error  # the reason, recorded for the exploration's check
    assert model.lammps_export() is None
    with pytest.raises(ValueError, match=r'no LAMMPS export .*its export failed'):
        model.write_lammps_model('/nonexistent')


# ------------------------------------------------------------------------------------- metatrain


def test_metatrain_member_carries_its_lammps_export(
    tiny_committee_files, labelled_carbon_frames, aiida_localhost, tmp_path
):
    from metatomic_ase import MetatomicCalculator

    member = tiny_committee_files['metatrain'][0]
    inputs = {
        **training_inputs(labelled_carbon_frames, member['seed']),
        'parameters': orm.Dict({'architecture': {'name': 'pet'}}),
    }
    files = metatrain_files(member)
    model = parse(MetatrainTrainParser, 'trainspot.metatrain.train', inputs, files, aiida_localhost)
    assert model.lammps_filename == 'model.pt'
    assert model.lammps_export_error is None
    repository = model.base.repository
    assert repository.list_object_names('lammps') == ['model.pt']
    # metatrain's model.pt is the metatomic export itself: the same bytes (stored once)
    assert sha256(repository.get_object_content('lammps/model.pt', 'rb')) == sha256(
        repository.get_object_content('model/model.pt', 'rb')
    )
    path = model.write_lammps_model(tmp_path / 'lammps')
    assert sha256(path.read_bytes()) == sha256(member['model'].read_bytes())
    assert metatomic_export_problem(path) is None
    extensions = model.export(tmp_path / 'files')['extensions']
    kwargs = {'extensions_directory': str(extensions)} if extensions else {}
    calculator = MetatomicCalculator(str(path), device='cpu', **kwargs)
    for atoms in frames():
        expected_energy, expected_forces = member_prediction(model, atoms)
        atoms = atoms.copy()
        atoms.calc = calculator
        assert atoms.get_potential_energy() == pytest.approx(expected_energy, abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), expected_forces, atol=1e-6)


def test_a_metatrain_file_that_is_no_export_is_recorded(
    tiny_committee_files, labelled_carbon_frames, aiida_localhost, tmp_path
):
    member = tiny_committee_files['metatrain'][0]
    # the checkpoint is a model file of metatrain's, but not an exported one
    checkpoint = (member['model'].parent / 'model.ckpt').read_bytes()
    problem_file = tmp_path / 'model.pt'
    problem_file.write_bytes(checkpoint)
    assert metatomic_export_problem(problem_file)
    inputs = {
        **training_inputs(labelled_carbon_frames, member['seed']),
        'parameters': orm.Dict({'architecture': {'name': 'pet'}}),
    }
    files = metatrain_files(member, model_bytes=checkpoint)
    model = parse(MetatrainTrainParser, 'trainspot.metatrain.train', inputs, files, aiida_localhost)
    assert model.lammps_filename is None
    error = model.lammps_export_error
    assert 'metatomic model' in error and "'model.pt'" in error
    assert '/' not in error  # no temporary path of the parser in the provenance
    assert model.lammps_export() is None  # not even the model file: LAMMPS could not load it


# ---------------------------------------------------------------------------- models from files


def test_models_from_files_without_an_export(tmp_path):
    model_file = tmp_path / 'some.model'
    model_file.write_bytes(b'weights')
    common = {'architecture': 'x', 'species': ['C'], 'cutoff': 4.0, 'dtype': 'float64'}
    mace = PotentialModel.from_files(model_file, engine='mace', **common)
    assert mace.lammps_filename is None and mace.lammps_export() is None
    with pytest.raises(ValueError, match='mace_create_lammps_model'):
        mace.write_lammps_model(tmp_path / 'out')
    # a metatrain model file is its own export
    pet = PotentialModel.from_files(model_file, engine='metatrain', **common)
    assert pet.lammps_export() == ('some.model', b'weights')
    # a given export is stored under lammps/ and written back as it was
    export = tmp_path / 'some.model-lammps.pt'
    export.write_bytes(b'lammps model')
    mace = PotentialModel.from_files(model_file, engine='mace', lammps_file=export, **common)
    assert mace.lammps_filename == 'some.model-lammps.pt'
    assert mace.base.repository.list_object_names('lammps') == ['some.model-lammps.pt']
    written = mace.write_lammps_model(tmp_path / 'out')
    assert Path(written).read_bytes() == b'lammps model'
