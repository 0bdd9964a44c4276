"""metatrain engine: options building (pure), submission checks, and real ``mtt train`` runs."""

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.engine import run_get_node
from aiida.plugins import CalculationFactory, ParserFactory
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from aiida_trainspot.data import PESData
from aiida_trainspot.training.metatrain import config
from aiida_trainspot.training.metatrain.calculation import (
    MetatrainTrainCalculation,
    latest_checkpoint,
    write_metatrain_xyz,
)
from aiida_trainspot.training.metatrain.parser import MetatrainTrainParser
from aiida_trainspot.training.model import PotentialModel

TINY_PET_MODEL = {
    'cutoff': 4.0,
    'd_pet': 16,
    'd_head': 16,
    'd_node': 32,
    'd_feedforward': 32,
    'num_heads': 2,
    'num_gnn_layers': 1,
    'num_attention_layers': 1,
}
TINY_PET = {
    'architecture': {
        'name': 'pet',
        'model': TINY_PET_MODEL,
        'training': {'batch_size': 4, 'num_epochs': 3, 'checkpoint_interval': 2},
    }
}
TINY_SOAP_BPNN = {
    'architecture': {
        'name': 'soap_bpnn',
        'model': {
            'soap': {'max_angular': 2, 'max_radial': 2, 'cutoff': {'radius': 3.5}},
            'bpnn': {'num_hidden_layers': 1, 'num_neurons_per_layer': 16},
        },
        'training': {'batch_size': 4, 'num_epochs': 2},
    },
    'final_eval': False,
}
VALIDATION_ENERGY = 'rmse_e_per_atom_meV'
VALIDATION_FORCES = 'rmse_f_meV_per_A'

pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit:DeprecationWarning')

# Real runs shared between tests of this module (the profile lives for the whole session).
_RUNS: dict = {}


@pytest.fixture
def carbon_sets(labelled_carbon_frames):
    """24 training and 6 validation frames, stored once for the module."""
    if 'sets' not in _RUNS:
        dataset = PESData.from_ase(labelled_carbon_frames)
        _RUNS['sets'] = (
            dataset.subset(np.arange(24)).store(),
            dataset.subset(np.arange(24, 30)).store(),
        )
    return _RUNS['sets']


def train(code, sets, parameters, seed=1, **inputs):
    training, validation = sets
    return run_get_node(
        MetatrainTrainCalculation,
        code=code,
        training=training,
        validation=validation,
        parameters=orm.Dict(parameters),
        seed=orm.Int(seed),
        **inputs,
    )


@pytest.fixture
def pet_committee(mtt_code, carbon_sets):
    """Two tiny PET members (seeds 1 and 2), trained once."""
    if 'committee' not in _RUNS:
        _RUNS['committee'] = [train(mtt_code, carbon_sets, TINY_PET, seed) for seed in (1, 2)]
    return _RUNS['committee']


def predict(model: PotentialModel, atoms):
    atoms = atoms.copy()
    with model.calculator() as calculator:
        atoms.calc = calculator
        return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()


# ----------------------------------------------------------------------------------------- pure
def test_entry_points():
    assert CalculationFactory('trainspot.metatrain.train') is MetatrainTrainCalculation
    assert ParserFactory('trainspot.metatrain.train') is MetatrainTrainParser
    options = MetatrainTrainCalculation.spec().inputs['metadata']['options']
    assert options['parser_name'].default == 'trainspot.metatrain.train'


def test_options_always_set_from_inputs():
    options = config.build_options(
        TINY_PET, seed=17, dtype='float32', device='cuda', stress=False, test_file='test.xyz'
    )
    assert options['seed'] == 17
    assert options['base_precision'] == 32
    assert options['device'] == 'cuda'
    assert options['architecture']['name'] == 'pet'
    assert options['architecture']['model'] == TINY_PET_MODEL
    assert options['architecture']['training']['num_epochs'] == 3
    assert options['architecture']['training']['log_interval'] == 1
    for key, path in (
        ('training_set', 'train.xyz'),
        ('validation_set', 'valid.xyz'),
        ('test_set', 'test.xyz'),
    ):
        entry = options[key]
        assert entry['systems'] == {'read_from': path, 'length_unit': 'angstrom'}
        energy = entry['targets']['energy']
        assert energy['key'] == 'REF_energy'
        assert energy['unit'] == 'eV'
        assert energy['forces'] == {'key': 'REF_forces'}
        assert energy['stress'] is False
        assert 'read_from' not in energy
    paths = [options[k]['systems']['read_from'] for k in ('training_set', 'validation_set')]
    assert all(not p.startswith('/') and '..' not in p for p in paths)
    assert 'finetune' not in options['architecture']['training']
    # no test set: metatrain's "fraction" form, zero
    assert config.build_options({}, seed=1)['test_set'] == 0.0
    # defaults: PET, float64 on the CPU
    default = config.build_options({}, seed=3)
    assert default['architecture'] == {'name': 'pet', 'training': {'log_interval': 1}}
    assert (default['base_precision'], default['device']) == (64, 'cpu')
    # round trip through YAML unchanged
    assert yaml.safe_load(yaml.safe_dump(options)) == options


def test_options_stress_target_only_with_stress_labels():
    with_stress = config.build_options({}, seed=1, stress=True)
    for key in ('training_set', 'validation_set'):
        assert with_stress[key]['targets']['energy']['stress'] == {'key': 'REF_stress'}
    without = config.build_options({}, seed=1, stress=False)
    assert without['training_set']['targets']['energy']['stress'] is False


def test_options_merge_finetune_and_user_targets():
    parameters = {
        'architecture': {'training': {'finetune': {'method': 'lora', 'config': {'rank': 2}}}},
        'training_set': {'targets': {'energy': {'forces': False}}},
    }
    options = config.build_options(parameters, seed=1, finetune_from='initial/model.ckpt')
    finetune = options['architecture']['training']['finetune']
    assert finetune == {'method': 'lora', 'config': {'rank': 2}, 'read_from': 'initial/model.ckpt'}
    assert options['training_set']['targets']['energy']['forces'] is False
    assert options['training_set']['systems']['read_from'] == 'train.xyz'
    assert options['validation_set']['targets']['energy']['forces'] == {'key': 'REF_forces'}
    full = config.build_options(TINY_PET, seed=1, finetune_from='initial/model.ckpt')
    assert full['architecture']['training']['finetune'] == {
        'method': 'full',
        'read_from': 'initial/model.ckpt',
    }
    # the user's dict is not modified
    assert 'read_from' not in parameters['architecture']['training']['finetune']


@pytest.mark.parametrize(
    ('parameters', 'match'),
    [
        ({'bogus_key': 1}, 'bogus_key'),
        ({'seed': 3}, '`seed` is set from the `seed` input'),
        ({'base_precision': 32}, 'from the `dtype` input'),
        ({'device': 'cuda'}, 'from the `device` input'),
        ({'validation_set': 0.1}, '`validation_set` is written from the `validation` input'),
        ({'training_set': {'systems': {'read_from': '/abs/x.xyz'}}}, 'may not set `read_from`'),
        ({'architecture': 'pet'}, '`architecture` must be a mapping'),
        ({'architecture': {'training': {'finetune': {'read_from': 'x.ckpt'}}}}, 'initial_model'),
    ],
)
def test_validate_parameters(parameters, match):
    message = config.validate_parameters(parameters)
    assert message is not None and match in message
    with pytest.raises(ValueError, match='parameters'):
        config.build_options(parameters, seed=1)


def test_read_cutoff():
    assert config.read_cutoff(TINY_PET) == 4.0
    assert config.read_cutoff(TINY_SOAP_BPNN) == 3.5
    assert config.read_cutoff({'architecture': {'name': 'gap'}}) is None


def test_parse_epoch_csv_and_log():
    csv_text = (
        'Epoch,learning rate,training loss,training energy RMSE (per atom),'
        'training forces RMSE,validation loss,validation energy RMSE (per atom),'
        'validation forces RMSE,validation virial RMSE (per atom)\n'
        ',,,meV,meV/A,,meV,meV/A,meV\n'
        '   0,7.500e-05,1.414e+03,1665.0,3971.9,5.209e+02,1563.5,3349.2,nan\n'
        '   1,2.500e-05,1.329e+03,1712.9,4044.9,5.190e+02,1548.0,3351.2,1301.4\n'
    )
    metrics = config.parse_epoch_csv(csv_text)
    assert metrics['epoch'] == [0, 1]
    assert metrics['learning_rate'] == [7.5e-05, 2.5e-05]
    assert metrics['train'] == {
        'loss': [1414.0, 1329.0],
        'rmse_e_per_atom_meV': [1665.0, 1712.9],
        'rmse_f_meV_per_A': [3971.9, 4044.9],
    }
    assert metrics['validation'][VALIDATION_ENERGY] == [1563.5, 1548.0]
    assert metrics['validation']['rmse_virials_per_atom_meV'] == [None, 1301.4]
    log = (
        '[2026-01-01 00:00:00][INFO] - Starting training\n'
        '[2026-01-01 00:00:01][INFO] - Epoch:    0 | learning rate: 7.500e-05 | training loss: '
        '1.414e+03 | training energy RMSE (per atom): 1665.0 meV | validation forces RMSE: '
        '3349.2 meV/A\n'
        '[2026-01-01 00:00:02][INFO] - Using best model from epoch 0\n'
        '[2026-01-01 00:00:03][INFO] - Evaluating validation dataset\n'
        '[2026-01-01 00:00:03][INFO] - Warming up the model with 10 batches...\n'
        '[2026-01-01 00:00:04][INFO] - energy RMSE (per atom): 1544.1 meV | '
        'energy_positions_gradients RMSE: 3351.7 meV/A | energy_strain_gradients RMSE '
        '(per atom): 1299.5 meV\n'
    )
    from_log = config.parse_epoch_log(log)
    assert from_log['epoch'] == [0]
    assert from_log['train'][VALIDATION_ENERGY] == [1665.0]
    assert from_log['validation'][VALIDATION_FORCES] == [3349.2]
    assert config.parse_best_epoch(log) == 0
    final = config.final_metrics(metrics, 0)
    assert final['epoch'] == 0
    assert final['validation'][VALIDATION_ENERGY] == 1563.5
    assert final['train']['loss'] == 1414.0
    assert config.final_metrics(metrics, None)['epoch'] == 1
    assert config.final_metrics(metrics, 7)['validation'][VALIDATION_ENERGY] == 1548.0
    assert config.parse_final_evaluation(log) == {
        'validation': {
            VALIDATION_ENERGY: 1544.1,
            VALIDATION_FORCES: 3351.7,
            'rmse_virials_per_atom_meV': 1299.5,
        }
    }
    with pytest.raises(ValueError):
        config.parse_epoch_csv('Epoch,training loss\n,\n')
    with pytest.raises(ValueError):
        config.parse_epoch_log('nothing here')


@pytest.mark.parametrize(
    ('label', 'unit', 'expected'),
    [
        ('validation energy RMSE (per atom)', 'meV', ('validation', 'rmse_e_per_atom_meV')),
        ('training forces MAE', 'meV/A', ('train', 'mae_f_meV_per_A')),
        ('training virial RMSE (per atom)', 'meV', ('train', 'rmse_virials_per_atom_meV')),
        ('validation loss', '', ('validation', 'loss')),
        ('learning rate', '', (None, 'learning_rate')),
        ('Epoch', '', (None, 'epoch')),
        ('energy_positions_gradients RMSE', 'meV/A', (None, 'rmse_f_meV_per_A')),
        ('validation mtt::dos RMSE', '', ('validation', 'rmse_mtt_dos')),
    ],
)
def test_metric_key(label, unit, expected):
    assert config.metric_key(label, unit) == expected


def test_latest_checkpoint():
    assert latest_checkpoint(['model_2.ckpt', 'model_10.ckpt', 'model_9.ckpt']) == 'model_10.ckpt'
    assert latest_checkpoint(['model.ckpt', 'notes.txt']) == 'model.ckpt'
    assert latest_checkpoint(['notes.txt']) is None


def test_dataset_written_for_metatrain(labelled_carbon_frames, tmp_path):
    """Stress as 3x3; a frame without stress or forces gets NaN there (metatrain masks it)."""
    frames = []
    for index, original in enumerate(labelled_carbon_frames[:3]):
        atoms = original.copy()
        results = {'energy': original.get_potential_energy()}
        if index != 0:
            results['forces'] = original.get_forces()
        if index != 1:
            results['stress'] = original.get_stress()
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    partial = PESData.from_ase(frames)
    path = tmp_path / 'train.xyz'
    assert write_metatrain_xyz(partial, str(path), stress=True) == 0
    back = read(path, ':')
    assert back[0].info['REF_stress'].shape == (3, 3)
    np.testing.assert_allclose(
        back[0].info['REF_stress'], labelled_carbon_frames[0].get_stress(voigt=False), atol=1e-10
    )
    assert np.isnan(back[1].info['REF_stress']).all()
    assert np.isnan(back[0].arrays['REF_forces']).all()
    np.testing.assert_allclose(back[2].arrays['REF_forces'], labelled_carbon_frames[2].get_forces())


# ----------------------------------------------------------------------------- submission checks
def test_2d_stress_is_written_and_read_by_metatrain_over_the_full_volume(tmp_path):
    """A graphene layer's stress goes to metatrain as it is; metatrain trains on stress x volume.

    metatrain turns a stress label into a virial with the volume of the frame's whole cell,
    vacuum included, the volume the dataset's stress is over: nothing needs rescaling. Frames
    without stress (a cluster) get NaN, which metatrain masks.
    """
    from ase.build import graphene
    from metatrain.utils.data.readers.ase import _read_stress_ase

    layer = graphene(a=2.46, vacuum=8.0)
    label = np.array([-0.012, -0.011, 1e-5, 2e-6, -3e-6, 0.004])
    layer.calc = SinglePointCalculator(layer, energy=-18.0, forces=np.zeros((2, 3)), stress=label)
    cluster = Atoms('C3', positions=[[0, 0, 0], [1.35, 0, 0], [0.6, 1.2, 0.1]])
    cluster.calc = SinglePointCalculator(cluster, energy=-20.0, forces=np.zeros((3, 3)))
    path = tmp_path / 'train.xyz'
    assert write_metatrain_xyz(PESData.from_ase([layer, cluster]), str(path), stress=True) == 0
    blocks = _read_stress_ase(str(path), 'REF_stress')
    virial = blocks[0].values.numpy().reshape(3, 3)
    np.testing.assert_allclose(virial, layer.get_stress(voigt=False) * layer.cell.volume)
    assert np.isnan(blocks[1].values.numpy()).all()


def test_unknown_options_key_rejected_at_submission(mtt_code, carbon_sets):
    with pytest.raises(ValueError, match='bogus_key'):
        train(mtt_code, carbon_sets, {**TINY_PET, 'bogus_key': {'a': 1}})
    with pytest.raises(ValueError, match='`seed` is set from the `seed` input'):
        train(mtt_code, carbon_sets, {**TINY_PET, 'seed': 5})


def test_finetune_needs_a_checkpoint_of_the_same_architecture(mtt_code, carbon_sets, tmp_path):
    model_file = tmp_path / 'model.pt'
    model_file.write_bytes(b'not read at submission')
    no_checkpoint = PotentialModel.from_files(
        model_file, engine='metatrain', architecture='pet', species=['C'], cutoff=4.0,
        dtype='float64',
    )  # fmt: skip
    with pytest.raises(ValueError, match='no checkpoint'):
        train(mtt_code, carbon_sets, TINY_PET, initial_model=no_checkpoint)
    checkpoint = tmp_path / 'model.ckpt'
    checkpoint.write_bytes(b'x')
    soap = PotentialModel.from_files(
        model_file, engine='metatrain', architecture='soap_bpnn', species=['C'], cutoff=4.0,
        dtype='float64', checkpoint_file=checkpoint,
    )  # fmt: skip
    with pytest.raises(ValueError, match='soap_bpnn model cannot be fine-tuned as pet'):
        train(mtt_code, carbon_sets, TINY_PET, initial_model=soap)
    silicon = PotentialModel.from_files(
        model_file, engine='metatrain', architecture='pet', species=['Si'], cutoff=4.0,
        dtype='float64', checkpoint_file=checkpoint,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"species \['C'\]"):
        train(mtt_code, carbon_sets, TINY_PET, initial_model=silicon)


# ------------------------------------------------------------------------------------ real runs
@pytest.mark.slow
def test_pet_committee_trains_loads_and_predicts(pet_committee, labelled_carbon_frames):
    predictions = []
    for seed, (results, node) in zip((1, 2), pet_committee, strict=True):
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        # the job's input: relative paths only, seed and precision set
        with node.base.repository.open('options.yaml') as handle:
            options = yaml.safe_load(handle)
        assert options['seed'] == seed
        assert options['base_precision'] == 64
        assert options['training_set']['systems']['read_from'] == 'train.xyz'
        assert options['training_set']['targets']['energy']['stress'] == {'key': 'REF_stress'}
        assert 'finetune' not in options['architecture']['training']
        model = results['model']
        attributes = model.base.attributes
        assert (attributes.get('engine'), attributes.get('architecture')) == ('metatrain', 'pet')
        assert model.species == ['C']
        assert attributes.get('cutoff') == 4.0
        assert attributes.get('dtype') == 'float64'
        assert model.seed == seed
        assert model.checkpoint_filename == 'model.ckpt'
        # metrics: one entry per epoch, validation energy and force errors
        metrics = results['metrics'].get_dict()
        assert metrics['epoch'] == [0, 1, 2]
        for key in (VALIDATION_ENERGY, VALIDATION_FORCES, 'loss'):
            values = metrics['validation'][key]
            assert len(values) == 3 and all(np.isfinite(values)), key
        assert len(metrics['train'][VALIDATION_FORCES]) == 3
        assert len(metrics['train']['rmse_virials_per_atom_meV']) == 3
        final = metrics['final']
        assert final['epoch'] in (0, 1, 2)
        index = metrics['epoch'].index(final['epoch'])
        assert (
            final['validation'][VALIDATION_FORCES]
            == metrics['validation'][VALIDATION_FORCES][index]
        )
        assert np.isfinite(metrics['evaluation']['validation'][VALIDATION_ENERGY])
        assert attributes.get('metrics')['validation'] == final['validation']
        # intermediate checkpoint (checkpoint_interval 2) kept to resume from
        assert results['checkpoint'].list_object_names() == ['model_2.ckpt']
        energy, forces, stress = predict(model, labelled_carbon_frames[25])
        assert np.isfinite(energy)
        assert forces.shape == (len(labelled_carbon_frames[25]), 3) and np.isfinite(forces).all()
        assert stress.shape == (6,) and np.isfinite(stress).all()
        predictions.append((energy, forces))
    # different seeds, different models
    assert predictions[0][0] != predictions[1][0]
    assert not np.allclose(predictions[0][1], predictions[1][1])


@pytest.mark.slow
def test_soap_bpnn_loads_with_its_extensions(mtt_code, carbon_sets, labelled_carbon_frames):
    # the validation frames double as a test set: metatrain evaluates the model on it at the end
    parameters = {**TINY_SOAP_BPNN, 'final_eval': True}
    results, node = train(mtt_code, carbon_sets, parameters, seed=4, test=carbon_sets[1])
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    with node.base.repository.open('options.yaml') as handle:
        assert yaml.safe_load(handle)['test_set']['systems']['read_from'] == 'test.xyz'
    test_errors = results['metrics']['evaluation']['test']
    assert np.isfinite(test_errors[VALIDATION_ENERGY]) and np.isfinite(
        test_errors[VALIDATION_FORCES]
    )
    model = results['model']
    assert model.base.attributes.get('architecture') == 'soap_bpnn'
    assert model.base.attributes.get('cutoff') == 3.5
    assert model.has_extensions
    assert results['metrics']['epoch'] == [0, 1]
    energy, forces, stress = predict(model, labelled_carbon_frames[0])
    assert np.isfinite(energy) and np.isfinite(forces).all() and stress.shape == (6,)


@pytest.mark.slow
def test_finetuning_starts_from_the_foundation(mtt_code, carbon_sets, pet_committee):
    foundation_parameters = {
        'architecture': {
            'name': 'pet',
            'model': TINY_PET_MODEL,
            'training': {'batch_size': 4, 'num_epochs': 12, 'learning_rate': 3e-3},
        },
        'final_eval': False,
    }
    results, node = train(mtt_code, carbon_sets, foundation_parameters, seed=7)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    foundation = results['model']
    assert foundation.checkpoint_filename == 'model.ckpt'

    tuned, node = train(mtt_code, carbon_sets, TINY_PET, seed=1, initial_model=foundation)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    with node.base.repository.open('options.yaml') as handle:
        finetune = yaml.safe_load(handle)['architecture']['training']['finetune']
    assert finetune == {'method': 'full', 'read_from': 'initial/model.ckpt'}
    fresh = pet_committee[0][0]['metrics']['validation']
    tuned_metrics = tuned['metrics']['validation']
    # same options, same seed, same data: only the starting point differs
    for key in (VALIDATION_ENERGY, VALIDATION_FORCES):
        assert tuned_metrics[key][0] < fresh[key][0], (key, tuned_metrics[key], fresh[key])
    assert tuned['model'].base.attributes.get('cutoff') == 4.0


@pytest.mark.slow
def test_restart_from_checkpoint_continues(mtt_code, carbon_sets, pet_committee):
    checkpoint = pet_committee[0][0]['checkpoint']
    parameters = {
        'architecture': {
            **TINY_PET['architecture'],
            'training': {'batch_size': 4, 'num_epochs': 4},
        },
        'final_eval': False,
    }
    results, node = train(mtt_code, carbon_sets, parameters, seed=1, restart_checkpoint=checkpoint)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    submit = node.base.repository.get_object_content('_aiidasubmit.sh')
    assert "'--restart' 'checkpoints/model_2.ckpt'" in submit
    # resumed after epoch 2: only epoch 3 is trained
    assert results['metrics']['epoch'] == [3]


@pytest.mark.slow
def test_runtime_failure_is_exit_code_301(mtt_code, carbon_sets):
    broken = {'architecture': {'name': 'pet', 'model': {'not_an_option': 1}}}
    results, node = train(mtt_code, carbon_sets, broken)
    assert node.exit_status == MetatrainTrainCalculation.exit_codes.ERROR_TRAINING_CRASHED.status
    assert 'not_an_option' in node.exit_message
    assert 'model' not in results
