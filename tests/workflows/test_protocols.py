"""get_builder_from_protocol: every protocol builds and validates; overrides; bad input."""

import numpy as np
import pytest
from aiida import orm
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from aiida_trainspot.data import PESData
from aiida_trainspot.data.convert import write_labelled_extxyz
from aiida_trainspot.evaluation.calibration import HELD_OUT_SPLITS, CalibrationSettings
from aiida_trainspot.evaluation.disagreement import DEFAULT_ERROR_KIND
from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

from .conftest import carbon_structures


@pytest.mark.parametrize('protocol', ['fast', 'moderate', 'precise'])
def test_every_protocol_builds_a_valid_builder(protocol, loop_codes, tersoff_file):
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        loop_codes,
        carbon_structures(),
        protocol=protocol,
        ase_calculator={'name': 'tersoff'},
        ase_parameter_file=tersoff_file,
    )
    process = instantiate_process(get_manager().get_runner(), builder)  # validates every port
    inputs = process.inputs
    assert inputs.training.engine.value == 'mace'
    assert inputs.exploration.engine.value == 'ase'
    assert inputs.labelling.engine.value == 'ase'
    size = {'fast': 3, 'moderate': 4, 'precise': 8}[protocol]
    assert inputs.training.committee_size.value == size
    assert inputs.error_thresholds.get_dict()['forces'] == (0.2 if protocol == 'fast' else 0.1)
    assert inputs.calibration.get_dict()['error'] == 'committee_mean'


def test_overrides_merge(loop_codes, tersoff_file):
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        loop_codes,
        carbon_structures(),
        protocol='fast',
        overrides={
            'max_iterations': 7,
            'training': {'parameters': {'mace': {'max_num_epochs': 3}}},
            'exploration': {'protocol': {'steps': 10}},
        },
        ase_calculator={'name': 'tersoff'},
        ase_parameter_file=tersoff_file,
    )
    assert builder.max_iterations.value == 7
    parameters = builder.training.parameters.get_dict()
    assert parameters['max_num_epochs'] == 3 and parameters['num_channels'] == 8
    protocol = builder.exploration.protocol.get_dict()
    assert protocol['steps'] == 10 and protocol['sample_interval'] == 20


def fast_tersoff_builder(codes, tersoff_file, overrides):
    """The `fast` protocol's builder for the carbon structures, labelled by Tersoff."""
    return TrainsPotWorkChain.get_builder_from_protocol(
        codes,
        carbon_structures(),
        protocol='fast',
        overrides=overrides,
        ase_calculator={'name': 'tersoff'},
        ase_parameter_file=tersoff_file,
    )


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        ({'max_iteratons': 3}, "unknown key 'max_iteratons'; did you mean 'max_iterations'?"),
        (
            {'training': {'comittee_size': 8}},
            "unknown key 'training.comittee_size'; did you mean 'training.committee_size'?",
        ),
        # a key one level too high: the namespace that has it
        ({'committee_size': 8}, "unknown key 'committee_size'; did you mean 'training.committee"),
        ({'zzzz': 1}, "unknown key 'zzzz'; known: ["),
        ({'labelling': {'qe': {'protocol': 'fast'}}}, 'labelling.qe is not used'),
    ],
)
def test_unknown_override_keys_are_errors(loop_codes, tersoff_file, overrides, message):
    """A typo in the overrides must not leave the protocol's value in place unnoticed."""
    with pytest.raises(ValueError) as caught:
        fast_tersoff_builder(loop_codes, tersoff_file, overrides)
    assert message in str(caught.value)
    assert str(caught.value).startswith('overrides: ')


def _labelled(atoms, rng):
    atoms = atoms.copy()
    forces = rng.normal(size=(len(atoms), 3))
    atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=forces)
    return atoms


def test_labelled_structures_are_refused(loop_codes, tersoff_file, tmp_path):
    """Labels in `structures` would be dropped or mixed with the campaign's: refused."""
    rng = np.random.default_rng(3)
    structures = carbon_structures()

    def build(given):
        return TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes,
            given,
            protocol='fast',
            ase_calculator={'name': 'tersoff'},
            ase_parameter_file=tersoff_file,
        )

    path = tmp_path / 'labelled.xyz'
    write(path, [structures[0], _labelled(structures[1], rng)], format='extxyz')
    with pytest.raises(ValueError, match=r'labelled\.xyz frame 1 carries labels') as caught:
        build([path])
    assert '`dataset`' in str(caught.value) and 'never recomputed' in str(caught.value)
    exported = structures[2].copy()
    exported.info['REF_energy'] = -1.0  # what `aiida-trainspot export` writes
    with pytest.raises(ValueError, match=r"structures\[2\] carries labels \['REF_energy'\]"):
        build([structures[0], structures[1], exported])
    with pytest.raises(ValueError, match='frame 0 carries labels'):
        build(PESData.from_ase([_labelled(structures[0], rng)]))
    assert len(build(structures).structures) == len(structures)


def test_dataset_keeps_its_labels(loop_codes, tersoff_file, tmp_path):
    """`dataset` frames keep their labels, from calculator results or REF_ keys."""
    rng = np.random.default_rng(4)
    structures = carbon_structures()
    plain = [_labelled(atoms, rng) for atoms in structures]
    write(tmp_path / 'plain.xyz', plain, format='extxyz')
    write_labelled_extxyz(plain[:2], tmp_path / 'ref.xyz')  # REF_energy, REF_forces
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        loop_codes,
        None,
        protocol='fast',
        dataset=[tmp_path / 'plain.xyz', tmp_path / 'ref.xyz'],
        ase_calculator={'name': 'tersoff'},
        ase_parameter_file=tersoff_file,
    )
    assert 'structures' not in builder
    dataset = builder.dataset
    expected = [atoms.get_potential_energy() for atoms in [*plain, *plain[:2]]]
    energies, present = dataset.get_column('energy')
    assert present.all()
    np.testing.assert_allclose(energies, expected, atol=1e-6)  # extxyz keeps 8 digits
    forces, _ = dataset.get_column('forces')
    given = np.concatenate([atoms.get_forces() for atoms in plain + plain[:2]])
    np.testing.assert_allclose(forces, given, atol=1e-6)
    methods, _ = dataset.get_column('generation_method')
    assert set(methods) == {'user'}
    instantiate_process(get_manager().get_runner(), builder)  # a valid start: no structures
    both = plain[0].copy()
    both.calc = SinglePointCalculator(both, energy=1.0)
    both.info['REF_energy'] = 2.0
    with pytest.raises(ValueError, match='both as'):
        TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes, None, protocol='fast', dataset=[both], ase_calculator={'name': 'emt'}
        )
    with pytest.raises(ValueError, match='give `structures`'):
        TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes, None, protocol='fast', ase_calculator={'name': 'emt'}
        )


def test_member_parameters_per_engine(loop_codes, tersoff_file):
    def build(training):
        return TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes,
            carbon_structures(),
            protocol='fast',
            overrides={'training': training},
            ase_calculator={'name': 'tersoff'},
            ase_parameter_file=tersoff_file,
        )

    members = [{'r_max': 3.5}, {'r_max': 4.5}]
    builder = build({'member_parameters': {'mace': members, 'metatrain': [{}]}})
    assert builder.training.member_parameters.get_list() == members  # the MACE code's entry
    assert 'member_parameters' not in build({'member_parameters': {'metatrain': [{}]}}).training
    # MACE options without the engine level would be dropped unseen: refused, naming them
    with pytest.raises(ValueError, match=r"training\.parameters: \['r_max'\] are not training"):
        build({'parameters': {'r_max': 5.0}})
    with pytest.raises(ValueError, match=r'training\.member_parameters: give one entry per'):
        build({'member_parameters': members})
    # a bad member entry is refused when the workflow is submitted
    builder = build({'member_parameters': {'mace': [{'r_max': 3.5}, {'no_such_key': 1}]}})
    with pytest.raises(ValueError, match=r'member_parameters\[1\]: parameters: unknown'):
        instantiate_process(get_manager().get_runner(), builder)


def test_pw_engine_and_bad_codes(loop_codes, pw_code, mtt_code, tersoff_file):
    codes = {**loop_codes, 'pw': pw_code, 'train': mtt_code}
    codes.pop('ase_label')
    with pytest.raises(ValueError, match='pseudo_family'):
        TrainsPotWorkChain.get_builder_from_protocol(codes, carbon_structures(), protocol='fast')
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        codes, carbon_structures(), protocol='fast', pseudo_family='any-family'
    )
    assert builder.labelling.engine.value == 'qe'
    assert builder.labelling.qe.protocol.value == 'fast'
    assert builder.training.engine.value == 'metatrain'
    assert builder.training.parameters.get_dict()['architecture']['name'] == 'pet'
    with pytest.raises(ValueError, match=r'codes\.train'):
        TrainsPotWorkChain.get_builder_from_protocol(
            {**loop_codes, 'train': loop_codes['md']}, carbon_structures(), protocol='fast'
        )
    with pytest.raises(ValueError, match=r"protocol: unknown protocol 'sloppy'; choose one of \["):
        TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes, carbon_structures(), protocol='sloppy', ase_calculator={'name': 'emt'}
        )
    with pytest.raises(ValueError, match='no file'):
        TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes, ['missing.xyz'], protocol='fast', ase_calculator={'name': 'emt'}
        )
    assert isinstance(builder.structures, orm.Data)


def test_calibration_port_defaults_to_the_committee_mean_error():
    """Without a protocol the work chain fits δ to the committee mean's error, as protocols do."""
    default = TrainsPotWorkChain.spec().inputs['calibration'].default().get_dict()
    assert default['error'] == DEFAULT_ERROR_KIND == 'committee_mean'
    assert default['splits'] == ['validation', 'test']


def test_calibration_defaults_have_one_source():
    """The port default, the protocols' defaults and the calibration step agree."""
    default = TrainsPotWorkChain.spec().inputs['calibration'].default().get_dict()
    assert default == CalibrationSettings(splits=HELD_OUT_SPLITS).to_dict()
    for name in ('fast', 'moderate', 'precise'):
        values = TrainsPotWorkChain.get_protocol_inputs(name)['calibration']
        settings = CalibrationSettings.from_dict(values)
        method = 'huber' if name == 'precise' else 'least_squares'
        assert settings == CalibrationSettings(splits=HELD_OUT_SPLITS, method=method)


@pytest.mark.parametrize(
    ('overrides', 'match'),
    [
        ({'calibration': {'min_points': 1}}, 'calibration.min_points: must be an integer >= 2'),
        ({'exploration': {'protocol': {'timestep_fs': 20.0}}}, r"protocol: 'timestep_fs' 20.0 fs"),
        ({'exploration': {'protocol': {'steps': 10}}}, "protocol: 'sample_interval' \\(20\\)"),
    ],
)
def test_settings_refused_at_submission(loop_codes, tersoff_file, overrides, match):
    """What the calibration step or the MD jobs would refuse is refused at submission."""
    builder = fast_tersoff_builder(loop_codes, tersoff_file, overrides)
    with pytest.raises(ValueError, match=match):
        instantiate_process(get_manager().get_runner(), builder)
