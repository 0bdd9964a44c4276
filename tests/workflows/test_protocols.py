"""get_builder_from_protocol: every protocol builds and validates; overrides; bad input."""

import warnings

import pytest
from aiida import orm
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager

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
    assert inputs.calibration.get_dict()['error'] == 'members'


def test_overrides_merge_and_unknown_keys_warn(loop_codes, tersoff_file):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        builder = TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes,
            carbon_structures(),
            protocol='fast',
            overrides={
                'max_iterations': 7,
                'training': {'parameters': {'mace': {'max_num_epochs': 3}}},
                'exploration': {'protocol': {'steps': 10}},
                'no_such_input': 1,
            },
            ase_calculator={'name': 'tersoff'},
            ase_parameter_file=tersoff_file,
        )
    assert builder.max_iterations.value == 7
    parameters = builder.training.parameters.get_dict()
    assert parameters['max_num_epochs'] == 3 and parameters['num_channels'] == 8
    protocol = builder.exploration.protocol.get_dict()
    assert protocol['steps'] == 10 and protocol['sample_interval'] == 20
    assert any('no_such_input' in str(w.message) for w in caught)


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
    with pytest.raises(ValueError, match='not a valid protocol'):
        TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes, carbon_structures(), protocol='sloppy', ase_calculator={'name': 'emt'}
        )
    with pytest.raises(ValueError, match='no file'):
        TrainsPotWorkChain.get_builder_from_protocol(
            loop_codes, ['missing.xyz'], protocol='fast', ase_calculator={'name': 'emt'}
        )
    assert isinstance(builder.structures, orm.Data)


def test_calibration_port_defaults_to_the_members_errors():
    """Without a protocol the work chain fits δ to the members' errors, like the protocols."""
    default = TrainsPotWorkChain.spec().inputs['calibration'].default().get_dict()
    assert default['error'] == DEFAULT_ERROR_KIND == 'members'
    assert default['splits'] == ['validation', 'test']
