"""MACE engine: configuration, committee members, fine-tuning, restart, failures, parser."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, ParserFactory
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from aiida_trainspot.data import PESData
from aiida_trainspot.training.mace import config as mace_config
from aiida_trainspot.training.mace.calculation import MaceTrainCalculation
from aiida_trainspot.training.mace.parser import MaceTrainParser
from aiida_trainspot.training.model import PotentialModel

TINY = {
    'num_channels': 8,
    'max_L': 0,
    'r_max': 4.0,
    'num_interactions': 2,
    'correlation': 2,
    'batch_size': 4,
    'valid_batch_size': 6,
    'max_num_epochs': 5,
}


@pytest.fixture
def carbon_sets(labelled_carbon_frames):
    dataset = PESData.from_ase(labelled_carbon_frames)
    return dataset.subset(range(24)), dataset.subset(range(24, 30))


def train(code, sets, seed, parameters=None, **extra):
    training, validation = sets
    return run_get_node(
        MaceTrainCalculation,
        code=code,
        training=training,
        validation=validation,
        seed=orm.Int(seed),
        parameters=orm.Dict({**TINY, **(parameters or {})}),
        **extra,
    )


def retrieved_config(node) -> dict:
    return yaml.safe_load(node.outputs.retrieved.base.repository.get_object_content('config.yaml'))


def diamond():
    atoms = bulk('C', 'diamond', a=3.6, cubic=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def test_entry_points():
    assert CalculationFactory('trainspot.mace.train') is MaceTrainCalculation
    assert ParserFactory('trainspot.mace.train') is MaceTrainParser
    assert 'max_num_epochs' in MaceTrainCalculation.KNOWN_KEYS
    assert mace_config.RESERVED_KEYS <= MaceTrainCalculation.KNOWN_KEYS


# ------------------------------------------------------------------------------- configuration


def _config(parameters=None, **kwargs):
    arguments = {
        'seed': 7,
        'device': 'cpu',
        'dtype': 'float64',
        'train_file': 'train.xyz',
        'valid_file': 'valid.xyz',
        'species': [6],
        **kwargs,
    }
    return mace_config.build_config(parameters, **arguments)


def test_config_defaults_and_fixed_settings():
    config = _config()
    assert config['seed'] == 7 and config['name'] == 'mace'
    assert config['default_dtype'] == 'float64' and config['device'] == 'cpu'
    assert config['E0s'] == 'average' and config['loss'] == 'weighted'
    assert (config['energy_key'], config['forces_key'], config['stress_key']) == (
        'REF_energy',
        'REF_forces',
        'REF_stress',
    )
    assert config['model'] == 'MACE' and config['r_max'] == 5.0 and config['num_channels'] == 128
    assert 'foundation_model' not in config and 'restart_latest' not in config
    assert 'test_file' not in config
    paths = [config[k] for k in config if k.endswith(('_dir', '_file'))]
    assert len(paths) == 8
    assert all(not p.startswith('/') and '..' not in p for p in paths), paths
    # user parameters win over the defaults; the fixed settings win over nothing else
    config = _config({'max_num_epochs': 3, 'r_max': 4.0}, test_file='test.xyz', dtype='float32')
    assert config['max_num_epochs'] == 3 and config['r_max'] == 4.0
    assert config['test_file'] == 'test.xyz' and config['default_dtype'] == 'float32'


def test_config_stress_and_e0s():
    assert _config(has_stress=True)['loss'] == 'stress'
    assert _config({'loss': 'ef'}, has_stress=True)['loss'] == 'ef'
    with pytest.raises(ValueError, match="loss 'stress' trains on stresses"):
        _config({'loss': 'stress'}, has_stress=False)
    # isolated atoms of every element: their energies are the E0s
    frames = [
        ([6], [False] * 3, -1.5),
        ([6], [False] * 3, -1.7),
        ([1], [False] * 3, -0.5),
        ([6], [True] * 3, -9.0),  # periodic: not an isolated atom
        ([6, 6], [False] * 3, -4.0),
    ]
    isolated = mace_config.isolated_atom_energies(frames)
    assert isolated == pytest.approx({1: -0.5, 6: -1.6})
    config = _config(species=[1, 6], isolated_atoms=isolated)
    assert config['E0s'] == '{1: -0.5, 6: -1.6}'
    # an element without an isolated atom: average
    assert _config(species=[1, 6, 8], isolated_atoms=isolated)['E0s'] == 'average'
    # the user's E0s, by symbol or number
    assert _config({'E0s': {'C': -1.0, '1': -0.25}})['E0s'] == '{1: -0.25, 6: -1.0}'


def test_config_fine_tuning_and_restart():
    config = _config(
        {'max_num_epochs': 2},
        foundation_model='initial/mace.model',
        foundation_cutoff=4.5,
        foundation_architecture='ScaleShiftMACE',
        foundation_species=[6, 8],
        restart=True,
    )
    assert config['foundation_model'] == 'initial/mace.model'
    assert config['multiheads_finetuning'] is False
    assert config['r_max'] == 4.5 and config['model'] == 'ScaleShiftMACE'
    assert 'num_channels' not in config
    assert config['E0s'] == 'foundation'
    assert config['restart_latest'] is True
    # the initial model does not know every element: average
    assert _config(foundation_model='m', foundation_species=[8])['E0s'] == 'average'
    # its recorded E0s are used as they are; MACE's 'foundation' fails on one element
    config = _config(foundation_model='m', foundation_species=[6], foundation_e0s={6: -2.5})
    assert config['E0s'] == '{6: -2.5}'
    assert _config(foundation_model='m', foundation_species=[6])['E0s'] == 'average'
    # isolated atoms of the training set come first
    config = _config(foundation_model='m', foundation_e0s={6: -2.5}, isolated_atoms={6: -1.0})
    assert config['E0s'] == '{6: -1.0}'


def test_parse_e0s():
    log = (
        '2026 INFO: Atomic Energies used (z: eV) for head pt_head: {6: -1.0}\n'
        '2026 INFO: Atomic Energies used (z: eV) for head Default: {1: -0.5, 6: -6.84}\n'
    )
    assert mace_config.parse_e0s(log) == {1: -0.5, 6: -6.84}
    assert mace_config.parse_e0s('nothing') is None


def test_config_yaml_is_what_mace_reads(tmp_path):
    from mace.tools import build_default_arg_parser

    config = _config(
        {'radial_MLP': [16, 16], 'E0s': {'C': -1.25}, 'ema': True, 'lr': 5e-3},
        foundation_model='initial/mace.model',
        restart=True,
    )
    path = tmp_path / 'config.yaml'
    path.write_text(mace_config.to_yaml(config))
    args = build_default_arg_parser().parse_args(['--config', str(path)])
    assert args.seed == 7 and args.name == 'mace' and args.train_file == 'train.xyz'
    assert args.radial_MLP == '[16, 16]' and args.E0s == '{6: -1.25}'
    assert args.ema is True and args.restart_latest is True and args.lr == 5e-3
    assert args.multiheads_finetuning is False and args.plot is False
    assert args.foundation_model == 'initial/mace.model'


def test_parse_results():
    lines = [
        json.dumps(
            {
                'loss': 2.0,
                'rmse_e_per_atom': 0.5,
                'rmse_f': 1.0,
                'mode': 'eval',
                'epoch': None,
                'head': 'Default',
            }
        ),
        json.dumps({'loss': 4.0, 'time': 0.1, 'mode': 'opt', 'epoch': 0}),
        json.dumps({'loss': 2.0, 'time': 0.1, 'mode': 'opt', 'epoch': 0}),
        json.dumps(
            {
                'loss': 1.0,
                'rmse_e_per_atom': 0.2,
                'rmse_f': 0.3,
                'rmse_stress': 0.01,
                'rel_rmse_f': 30.0,
                'mode': 'eval',
                'epoch': 0,
                'head': 'Default',
            }
        ),
        json.dumps({'loss': 1.0, 'time': 0.1, 'mode': 'opt', 'epoch': 1}),
        '{"loss": NaN, "rmse_e_per_atom": 0.1, "rmse_f": 0.2, "mode": "eval", "epoch": 1, "head": "Default"}',  # noqa: E501
        '{"loss": 0.5, "mode": "ev',  # cut short
    ]
    metrics = mace_config.parse_results(lines)
    assert metrics['epoch'] == [0, 1]
    assert metrics['train']['loss'] == [3.0, 1.0]
    validation = metrics['validation']
    assert validation['rmse_e_per_atom_meV'] == pytest.approx([200.0, 100.0])
    assert validation['rmse_f_meV_per_A'] == pytest.approx([300.0, 200.0])
    assert validation['rmse_stress_meV_per_A3'] == [pytest.approx(10.0), None]
    assert validation['rel_rmse_f_percent'] == [30.0, None]
    assert validation['loss'] == [1.0, None]
    assert metrics['initial']['validation']['rmse_f_meV_per_A'] == pytest.approx(1000.0)
    assert metrics['final']['epoch'] == 0
    with pytest.raises(ValueError, match='no per-epoch'):
        mace_config.parse_results(lines[:3])


# ------------------------------------------------------------------------------- submission


@pytest.mark.parametrize(
    ('parameters', 'message'),
    [
        ({'no_such_option': 1}, "unknown mace configuration keys \\['no_such_option'\\]"),
        ({'seed': 3}, "\\['seed'\\] are set by the calculation"),
        ({'train_file': '/data/train.xyz'}, "\\['train_file'\\] are set by the calculation"),
        ({'E0s': {'Xx': 1.0}}, 'E0s'),
    ],
)
def test_bad_parameters_rejected_at_submission(carbon_sets, mace_code, parameters, message):
    with pytest.raises(ValueError, match=message):
        train(mace_code, carbon_sets, 1, parameters)


def test_stress_loss_without_stresses_rejected(labelled_carbon_frames, mace_code):
    frames = [atoms.copy() for atoms in labelled_carbon_frames]
    for atoms, source in zip(frames, labelled_carbon_frames, strict=True):
        atoms.info['REF_energy'] = source.get_potential_energy()
        atoms.arrays['REF_forces'] = source.get_forces()
    dataset = PESData.from_ase(frames, energy_key='REF_energy', forces_key='REF_forces')
    assert dataset.base.attributes.get('n_labelled')['stress'] == 0
    sets = dataset.subset(range(24)), dataset.subset(range(24, 30))
    with pytest.raises(ValueError, match='trains on stresses'):
        train(mace_code, sets, 1, {'loss': 'stress'})


# ------------------------------------------------------------------------------- job folder


def test_job_folder(labelled_carbon_frames, mace_code, tmp_path, monkeypatch):
    """Dry run: the files of the job, E0s from an isolated atom, no stress, relative paths."""
    monkeypatch.chdir(tmp_path)  # a dry run writes its folder under ./submit_test
    frames = []
    for source in labelled_carbon_frames:
        atoms = source.copy()
        atoms.calc = SinglePointCalculator(
            atoms, energy=source.get_potential_energy(), forces=source.get_forces()
        )
        frames.append(atoms)
    isolated = Atoms('C', positions=[[5.0, 5.0, 5.0]], cell=[10.0, 10.0, 10.0], pbc=False)
    isolated.calc = SinglePointCalculator(isolated, energy=-1.25, forces=np.zeros((1, 3)))
    dataset = PESData.from_ase([*frames, isolated])
    assert dataset.base.attributes.get('n_labelled')['stress'] == 0
    model_file = tmp_path / 'foundation.model'
    model_file.write_bytes(b'weights')
    initial = PotentialModel.from_files(
        model_file, engine='mace', architecture='MACE', species=['C'], cutoff=4.5, dtype='float64'
    )
    checkpoint = orm.FolderData()
    checkpoint.base.repository.put_object_from_bytes(b'state', 'mace_run-3_epoch-7.pt')
    _, node = run_get_node(
        MaceTrainCalculation,
        code=mace_code,
        training=dataset.subset([*range(24), 30]),
        validation=dataset.subset(range(24, 30)),
        seed=orm.Int(3),
        dtype=orm.Str('float32'),
        parameters=orm.Dict(TINY),
        initial_model=initial,
        restart_checkpoint=checkpoint,
        metadata={'dry_run': True, 'store_provenance': False},
    )
    folder = Path(node.dry_run_info['folder'])
    assert '--config' in (folder / '_aiidasubmit.sh').read_text()
    assert (folder / 'initial' / 'foundation.model').read_bytes() == b'weights'
    assert (folder / 'checkpoints' / 'mace_run-3_epoch-7.pt').read_bytes() == b'state'
    config = yaml.safe_load((folder / 'config.yaml').read_text())
    assert config['E0s'] == '{6: -1.25}'
    assert config['loss'] == 'weighted'
    assert config['seed'] == 3 and config['default_dtype'] == 'float32'
    assert config['foundation_model'] == 'initial/foundation.model' and config['r_max'] == 4.5
    assert config['restart_latest'] is True
    outputs = {'model_dir', 'results_dir', 'log_dir', 'downloads_dir'}  # MACE creates these
    paths = {k: v for k, v in config.items() if k.endswith(('_file', '_dir', '_model'))}
    assert len(paths) == 9, paths  # 6 folders, 2 datasets, the foundation model
    for key, value in paths.items():
        assert not value.startswith('/') and '..' not in value, (key, value)
        assert key in outputs or (folder / value).exists(), (key, value)
    assert 'REF_stress' not in (folder / 'train.xyz').read_text()


def test_2d_stress_is_written_as_mace_needs_it(labelled_carbon_frames, mace_code, tmp_path):
    """MACE divides a 2D frame's virial by its own, lengthened cell: the label is scaled to it,
    and its stress weight undoes the scale in the loss.

    Read back through MACE's own data pipeline, the virial MACE trains on (its stress label
    times the volume of the graph's cell) is the dataset's stress times the frame's volume,
    for the graphene layer and the bulk frames alike.
    """
    from ase.build import graphene
    from ase.io import read
    from mace.data import AtomicData, KeySpecification, config_from_atoms
    from mace.tools import AtomicNumberTable, torch_tools

    layer = graphene(a=2.46, vacuum=8.0)  # pbc (T, T, F), c = 16 Å
    layer.positions += np.random.default_rng(1).normal(0.0, 0.02, layer.positions.shape)
    label = np.array([-0.012, -0.011, 1e-5, 2e-6, -3e-6, 0.004])
    layer.calc = SinglePointCalculator(layer, energy=-18.0, forces=np.zeros((2, 3)), stress=label)
    training = PESData.from_ase([*labelled_carbon_frames[:6], layer])
    validation = PESData.from_ase(labelled_carbon_frames[24:27])
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        _, node = run_get_node(
            MaceTrainCalculation,
            code=mace_code,
            training=training,
            validation=validation,
            seed=orm.Int(1),
            parameters=orm.Dict(TINY),
            metadata={'dry_run': True, 'store_provenance': False},
        )
    folder = tmp_path / node.dry_run_info['folder']
    config = yaml.safe_load((folder / 'config.yaml').read_text())
    assert config['loss'] == 'stress'
    written = read(folder / 'train.xyz', index=':')
    keys = KeySpecification(
        info_keys={'energy': 'REF_energy', 'stress': 'REF_stress'},
        arrays_keys={'forces': 'REF_forces'},
    )
    expected = [*labelled_carbon_frames[:6], layer]
    with torch_tools.default_dtype('float64'):
        for atoms, source in zip(written, expected, strict=True):
            graph = AtomicData.from_config(
                config_from_atoms(atoms, key_specification=keys),
                z_table=AtomicNumberTable([6]),
                cutoff=config['r_max'],
            )
            volume = abs(float(np.linalg.det(graph.cell.numpy())))
            trained = graph.stress.numpy().reshape(3, 3) * volume
            own = source.get_stress(voigt=False) * source.cell.volume
            np.testing.assert_allclose(trained, own, rtol=1e-7, atol=1e-10)
            # MACE's loss weighs the squared stress error by the frame's stress weight; times the
            # square of the label's scale it is one: a 2D frame's error counts as a bulk one's
            scale = abs(source.cell.volume) / volume
            assert float(graph.stress_weight) * scale**2 == pytest.approx(1.0, rel=1e-9)
    # the layer's label was scaled (MACE's cell is longer along the vacuum); bulk ones were not
    assert written[-1].info['REF_stress'][0] / label[0] < 0.5
    np.testing.assert_allclose(
        np.ravel(written[0].info['REF_stress']),
        labelled_carbon_frames[0].get_stress(),
        rtol=1e-7,
    )
    # a validation set of bulk frames only is left as the shared writer wrote it
    assert 'REF_stress' in (folder / 'valid.xyz').read_text()


# ------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_committee_of_two_seeds(carbon_sets, mace_code):
    models, energies = [], []
    for seed in (11, 12):
        results, node = train(mace_code, carbon_sets, seed)
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        model = results['model']
        assert model.engine == 'mace' and model.seed == seed
        attributes = model.base.attributes
        assert attributes.get('architecture') == 'MACE' and attributes.get('cutoff') == 4.0
        assert attributes.get('dtype') == 'float64' and model.species == ['C']
        assert model.checkpoint_filename.startswith(f'mace_run-{seed}_epoch-')
        config = retrieved_config(node)
        assert config['seed'] == seed and config['loss'] == 'stress'
        # per-epoch metrics: one value per epoch
        metrics = results['metrics'].get_dict()
        assert metrics['epoch'] == list(range(TINY['max_num_epochs']))
        for name in ('rmse_e_per_atom_meV', 'rmse_f_meV_per_A', 'rmse_stress_meV_per_A3'):
            values = metrics['validation'][name]
            assert len(values) == TINY['max_num_epochs'] and all(v > 0 for v in values)
        assert len(metrics['train']['loss']) == TINY['max_num_epochs']
        assert attributes.get('metrics') == metrics['final']
        # the compiled variant rides along in the extensions folder
        assert attributes.get('compiled_model_filename') == 'mace_compiled.model'
        assert model.base.repository.list_object_names('extensions') == ['mace_compiled.model']
        assert set(attributes.get('e0s')) == {'6'}
        assert sorted(results['checkpoint'].base.repository.list_object_names()) == [
            model.checkpoint_filename
        ]
        atoms = diamond()
        with model.calculator() as calculator:
            atoms.calc = calculator
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces()
            stress = atoms.get_stress()
        assert np.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()
        assert forces.shape == (8, 3) and stress.shape == (6,)
        models.append(model)
        energies.append(energy)
    assert energies[0] != pytest.approx(energies[1], rel=1e-9, abs=1e-9)


@pytest.mark.slow
def test_fine_tuning_starts_from_the_initial_model(carbon_sets, mace_code):
    # a fresh model (also the foundation of the fine-tuning)
    results, fresh = train(mace_code, carbon_sets, 21, {'max_num_epochs': 10})
    assert fresh.is_finished_ok, fresh.exit_message
    foundation = results['model']
    # fine-tuning from it: same data, same seed
    tuned_results, tuned = train(
        mace_code, carbon_sets, 21, {'max_num_epochs': 2}, initial_model=foundation
    )
    assert tuned.is_finished_ok, tuned.exit_message
    config = retrieved_config(tuned)
    assert config['foundation_model'] == f'initial/{foundation.model_filename}'
    assert config['multiheads_finetuning'] is False
    e0 = foundation.base.attributes.get('e0s')['6']
    assert config['E0s'] == f'{{6: {e0!r}}}'
    assert config['r_max'] == 4.0
    log = tuned.outputs.retrieved.base.repository.get_object_content('logs/mace_run-21.log')
    assert 'Using foundation model initial/' in log and 'Loading FOUNDATION model' in log
    before = results['metrics'].get_dict()
    after = tuned_results['metrics'].get_dict()
    # MACE evaluates the model before its first step: the fine-tuning starts exactly where the
    # foundation ended (its saved model: the epoch of lowest validation loss), far below a
    # fresh model of the same data and seed, and its first epoch is still below
    assert after['initial']['validation']['loss'] == pytest.approx(
        before['final']['validation']['loss'], rel=1e-6
    )
    for name in ('loss', 'rmse_f_meV_per_A'):
        assert after['initial']['validation'][name] < before['initial']['validation'][name]
        assert after['validation'][name][0] < before['validation'][name][0]
    assert tuned_results['model'].base.attributes.get('cutoff') == 4.0


@pytest.mark.slow
def test_restart_resumes_from_the_checkpoint(carbon_sets, mace_code):
    results, first = train(mace_code, carbon_sets, 31, {'max_num_epochs': 3})
    assert first.is_finished_ok, first.exit_message
    checkpoint = results['checkpoint']
    (name,) = checkpoint.base.repository.list_object_names()
    epoch = int(name.split('_epoch-')[1].removesuffix('.pt'))
    # another seed has no checkpoint there: refused (MACE would silently start over)
    with pytest.raises(ValueError, match='no MACE checkpoint of a run with seed 32'):
        train(mace_code, carbon_sets, 32, {'max_num_epochs': 5}, restart_checkpoint=checkpoint)
    results, second = train(
        mace_code, carbon_sets, 31, {'max_num_epochs': 5}, restart_checkpoint=checkpoint
    )
    assert second.is_finished_ok, second.exit_message
    assert retrieved_config(second)['restart_latest'] is True
    log = second.outputs.retrieved.base.repository.get_object_content('logs/mace_run-31.log')
    assert f'Loading checkpoint: checkpoints/{name}' in log
    assert results['metrics']['epoch'] == list(range(epoch, 5))


@pytest.mark.slow
def test_crash_at_run_time(carbon_sets, mace_code):
    _, node = train(mace_code, carbon_sets, 1, {'num_channels': 0})
    assert node.exit_status == MaceTrainCalculation.exit_codes.ERROR_TRAINING_CRASHED.status
    assert 'num_channels must be positive integer' in node.exit_message
    assert 'model' not in node.outputs


# ------------------------------------------------------------------------------- parser


def test_out_of_walltime_keeps_the_checkpoint(aiida_localhost):
    node = orm.CalcJobNode(
        computer=aiida_localhost, process_type='aiida.calculations:trainspot.mace.train'
    )
    node.set_option('resources', {'num_machines': 1})
    node.set_process_state('finished')
    node.set_exit_status(MaceTrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status)
    node.store()
    retrieved = orm.FolderData()
    repository = retrieved.base.repository
    repository.put_object_from_bytes(b'checkpoint', 'checkpoints/mace_run-1_epoch-3.pt')
    repository.put_object_from_bytes(b'a model copy', 'checkpoints/mace_run-1.model')
    repository.put_object_from_bytes(b'', 'train.err')
    repository.put_object_from_bytes(
        b'{"loss": 1.0, "rmse_f": 0.1, "mode": "eval", "epoch": 0, "head": "Default"}\n',
        'results/mace_run-1_train.txt',
    )
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
    retrieved.store()
    results, calcfunction = MaceTrainParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == MaceTrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status
    assert results['checkpoint'].base.repository.list_object_names() == ['mace_run-1_epoch-3.pt']
    assert 'model' not in results


def test_model_missing_without_crash(aiida_localhost):
    node = orm.CalcJobNode(
        computer=aiida_localhost, process_type='aiida.calculations:trainspot.mace.train'
    )
    node.set_option('resources', {'num_machines': 1})
    node.store()
    retrieved = orm.FolderData()
    retrieved.base.repository.put_object_from_bytes(b'killed\n', 'train.err')
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
    retrieved.store()
    results, calcfunction = MaceTrainParser.parse_from_node(node, store_provenance=False)
    assert calcfunction.exit_status == MaceTrainCalculation.exit_codes.ERROR_MODEL_MISSING.status
    assert 'killed' in calcfunction.exit_message
    assert results == {}


@pytest.mark.slow
def test_default_weights_learn_energies_and_stresses(mace_code, emt_copper):
    """With the package's loss weights a short training beats a constant energy per atom.

    The truth is independent of the model: a predictor that learned no energy (the training
    mean per atom) and one that learned no stress (zero). MACE's own weights (1 / 100 / 1) fail
    this: the forces are learned, the energy-volume curve is not.
    """
    training = PESData.from_ase(emt_copper(0, 24))
    validation = PESData.from_ase(emt_copper(1, 6))
    test = emt_copper(2, 12)
    parameters = {**TINY, 'max_num_epochs': 30, 'batch_size': 4}
    results, node = train(mace_code, (training, validation), 5, parameters)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    config = retrieved_config(node)
    assert config['loss'] == 'stress'
    mean = np.mean([a.calc.results['energy'] / len(a) for a in training.to_ase()])
    reference = np.array([a.calc.results['energy'] / len(a) for a in test])
    stresses = np.array([a.calc.results['stress'] for a in test])
    with results['model'].calculator() as calculator:
        predicted, predicted_stress = [], []
        for atoms in test:
            atoms = atoms.copy()
            atoms.calc = calculator
            predicted.append(atoms.get_potential_energy() / len(atoms))
            predicted_stress.append(atoms.get_stress())
    rmse = np.sqrt(np.mean((np.array(predicted) - reference) ** 2))
    constant = np.sqrt(np.mean((reference - mean) ** 2))
    assert rmse < 0.5 * constant, (rmse, constant)
    stress_rmse = np.sqrt(np.mean((np.array(predicted_stress) - stresses) ** 2))
    assert stress_rmse < 0.5 * np.sqrt(np.mean(stresses**2)), stress_rmse
