"""TrainingWorkChain and TrainingMemberWorkChain: committees, failures, restarts, bad input."""

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager

from aiida_trainspot.data import PESData
from aiida_trainspot.training.model import PotentialModel
from aiida_trainspot.training.restart import TrainingMemberWorkChain, training_calculation
from aiida_trainspot.training.workchain import (
    TrainingWorkChain,
    member_parameter_sets,
    member_seeds,
)

FAILED = TrainingMemberWorkChain.exit_codes.ERROR_TRAINING_FAILED.status

TINY_MACE = {
    'num_channels': 8,
    'max_L': 0,
    'r_max': 4.0,
    'num_interactions': 2,
    'correlation': 2,
    'batch_size': 4,
    'max_num_epochs': 3,
}


@pytest.fixture
def carbon_dataset(labelled_carbon_frames):
    return PESData.from_ase(labelled_carbon_frames)


def committee_inputs(dataset, engine: str, code, size: int = 2, **extra) -> dict:
    """Inputs of a TrainingWorkChain with ``size`` members, plus ``extra`` ports."""
    return {
        'dataset': dataset,
        'engine': orm.Str(engine),
        'code': code,
        'committee_size': orm.Int(size),
        **extra,
    }


def test_member_seeds_distinct_and_reproducible():
    for seed in range(50):
        seeds = member_seeds(seed, 8)
        assert len(set(seeds)) == 8
        assert all(0 <= s < 2**31 for s in seeds)
        assert seeds == member_seeds(seed, 8)
    assert member_seeds(1, 4) != member_seeds(2, 4)
    assert member_seeds(3, 4) == member_seeds(3, 6)[:4] or len(set(member_seeds(3, 6))) == 6


@pytest.mark.slow
def test_committee_with_one_broken_member_continues(carbon_dataset, mace_code, tmp_path):
    garbage = tmp_path / 'broken.model'
    garbage.write_bytes(b'not a model')
    broken = PotentialModel.from_files(
        garbage, engine='mace', architecture='MACE', species=['C'], cutoff=4.0, dtype='float64'
    )
    results, node = run_get_node(
        TrainingWorkChain,
        dataset=carbon_dataset,
        engine=orm.Str('mace'),
        code=mace_code,
        seed=orm.Int(11),
        committee_size=orm.Int(3),
        parameters=orm.Dict(TINY_MACE),
        previous_models={'member_1': broken},
    )
    assert node.is_finished_ok, node.exit_message
    models = results['models']
    assert sorted(models) == ['member_0', 'member_2']
    seeds = [m.seed for m in models.values()]
    assert len(set(seeds)) == 2
    report = results['report'].get_dict()
    assert report['seeds'] == member_seeds(11, 3)
    assert 'reason' in report['members']['member_1']
    # the split is sticky and recorded on the dataset output
    split, present = results['dataset'].get_column('split')
    assert present.all()
    assert set(split) <= {'train', 'validation', 'test'}
    # both members predict, and differently (different seeds)
    frame = carbon_dataset.get_atoms(0)
    energies = []
    for model in models.values():
        with model.calculator() as calculator:
            frame.calc = calculator
            energies.append(frame.get_potential_energy())
            assert np.isfinite(frame.get_forces()).all()
    assert energies[0] != energies[1]
    # with too few members left, the named exit code fires
    _, node = run_get_node(
        TrainingWorkChain,
        dataset=carbon_dataset,
        engine=orm.Str('mace'),
        code=mace_code,
        committee_size=orm.Int(2),
        min_members=orm.Int(2),
        parameters=orm.Dict(TINY_MACE),
        previous_models={'member_1': broken},
    )
    assert node.exit_status == TrainingWorkChain.exit_codes.ERROR_TOO_FEW_MEMBERS.status


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        ({'committee_size': (orm.Int, 1)}, 'committee_size: a committee needs at least 2'),
        ({'min_members': (orm.Int, 5)}, 'min_members'),
        ({'min_members': (orm.Int, 1)}, r'min_members: must be between 2 and committee_size'),
        ({'engine': (orm.Str, 'nequip')}, 'engine: unknown engine'),
        ({'parameters': (orm.Dict, {'no_such_key': 1})}, 'no_such_key'),
        ({'split_fractions': (orm.Dict, {'train': 0.5})}, 'split_fractions'),
        (
            {'member_parameters': (orm.List, [{'r_max': 4.0}, {'no_such_key': 1}])},
            r'member_parameters\[1\]: parameters: unknown mace configuration keys',
        ),
        ({'member_parameters': (orm.List, [{}] * 5)}, 'give 1 to committee_size'),
        ({'member_parameters': (orm.List, [])}, 'give 1 to committee_size'),
        ({'member_parameters': (orm.List, [{}, 4.0])}, r'member_parameters\[1\]: must be a'),
        ({'member_parameters': (orm.List, [{'seed': 3}])}, r'member_parameters\[0\]: .*seed'),
    ],
)
def test_bad_inputs_rejected_at_submission(carbon_dataset, mace_code, change, message):
    change = {port: kind(value) for port, (kind, value) in change.items()}
    inputs = {'dataset': carbon_dataset, 'engine': orm.Str('mace'), 'code': mace_code, **change}
    with pytest.raises(ValueError, match=message):
        run_get_node(TrainingWorkChain, **inputs)


@pytest.mark.parametrize(
    ('change', 'message'),
    [
        ({'min_members': 1}, r'min_members: must be between 2 and committee_size \(2\), got 1'),
        ({'min_members': 0}, r'min_members: must be between 2 and committee_size \(2\), got 0'),
        ({'committee_size': 1}, 'committee_size: a committee needs at least 2 members, got 1'),
        (
            {'committee_size': 1, 'min_members': 1},
            'committee_size: a committee needs at least 2 members, got 1',
        ),
    ],
)
def test_one_member_committees_refused_at_submission(carbon_dataset, mace_code, change, message):
    # a committee of one has no disagreement: it would always look converged
    builder = TrainingWorkChain.get_builder()
    for port, value in {**committee_inputs(carbon_dataset, 'mace', mace_code), **change}.items():
        builder[port] = orm.Int(value) if isinstance(value, int) else value
    with pytest.raises(ValueError, match=message):
        instantiate_process(get_manager().get_runner(), builder)
    builder.min_members = orm.Int(2)
    builder.committee_size = orm.Int(2)
    instantiate_process(get_manager().get_runner(), builder)  # the smallest committee passes


def test_one_member_committees_refused_through_trainspot(
    ase_code, mace_code, ase_md_code, evaluate_code
):
    # TrainsPotWorkChain exposes these ports under `training`: the same check runs there
    from ase.build import bulk

    from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

    def builder(**training):
        return TrainsPotWorkChain.get_builder_from_protocol(
            {
                'ase_label': ase_code,
                'train': mace_code,
                'md': ase_md_code,
                'evaluate': evaluate_code,
            },
            [bulk('Cu', 'fcc', a=3.6)],
            protocol='fast',
            overrides={'training': training},
            ase_calculator={'name': 'emt'},
        )

    runner = get_manager().get_runner()
    instantiate_process(runner, builder(committee_size=2, min_members=2))
    assert TrainsPotWorkChain.spec().inputs['training'].validator is not None
    for training, port in (
        ({'committee_size': 2, 'min_members': 1}, 'min_members'),
        ({'committee_size': 1, 'min_members': 1}, 'committee_size'),
    ):
        with pytest.raises(ValueError, match=f'training.*{port}: ') as error:
            instantiate_process(runner, builder(**training))
        assert 'at least 2' in str(error.value) or 'between 2' in str(error.value)


def test_member_parameter_sets_cycle_and_merge():
    shared = {'r_max': 4.0, 'architecture': {'name': 'pet', 'model': {'d_pet': 16}}}
    assert member_parameter_sets(shared, None, 2) == [shared, shared]
    sets = member_parameter_sets(shared, [{'r_max': 3.5}, {'architecture': {'model': {}}}], 3)
    # member i takes entry i mod 2, merged over the shared parameters without changing them
    assert [s['r_max'] for s in sets] == [3.5, 4.0, 3.5]
    assert sets[1]['architecture'] == shared['architecture']
    nested = member_parameter_sets(shared, [{'architecture': {'model': {'cutoff': 5.0}}}], 2)
    assert nested[0]['architecture']['model'] == {'d_pet': 16, 'cutoff': 5.0}
    assert shared['architecture']['model'] == {'d_pet': 16}
    with pytest.raises(ValueError, match='got 3'):
        member_parameter_sets(shared, [{}, {}, {}], 2)


def test_metatrain_member_overrides_are_checked_nested(carbon_dataset, mtt_code):
    # an override replaces one nested option; what metatrain would refuse is named by entry
    inputs = committee_inputs(
        carbon_dataset,
        'metatrain',
        mtt_code,
        parameters=orm.Dict({'architecture': {'name': 'pet'}}),
    )
    good = orm.List([{}, {'architecture': {'model': {'cutoff': 4.5}}}])
    instantiate_process(
        get_manager().get_runner(), TrainingWorkChain, member_parameters=good, **inputs
    )
    bad = orm.List([{}, {'architecture': {'model': 3}}])
    with pytest.raises(
        ValueError, match=r'member_parameters\[1\]: parameters: `architecture.model`'
    ):
        instantiate_process(
            get_manager().get_runner(), TrainingWorkChain, member_parameters=bad, **inputs
        )


@pytest.mark.slow
def test_members_take_their_own_parameters(carbon_dataset, mace_code):
    members = orm.List([{'r_max': 3.5}, {'r_max': 4.5, 'num_channels': 16}])
    parameters = orm.Dict({**TINY_MACE, 'max_num_epochs': 1})
    inputs = committee_inputs(
        carbon_dataset, 'mace', mace_code, 3, parameters=parameters, member_parameters=members
    )
    results, node = run_get_node(TrainingWorkChain, **inputs)
    assert node.is_finished_ok, node.exit_message
    models = results['models']
    # the trained models carry the cutoffs they were given (member 2 takes entry 0 again)
    cutoffs = [models[f'member_{i}'].base.attributes.get('cutoff') for i in range(3)]
    assert cutoffs == [3.5, 4.5, 3.5]
    given = [models[f'member_{i}'].creator.inputs.parameters.get_dict() for i in range(3)]
    assert [p['num_channels'] for p in given] == [8, 16, 8]
    assert all(p['max_num_epochs'] == 1 for p in given)  # the shared parameters stay
    # each member's parameters are derived, in the provenance graph, from the work chain's inputs
    derived = models['member_0'].creator.inputs.parameters.creator
    assert derived.process_label == 'derive_member_parameters'
    assert derived.inputs.member_parameters.pk == node.inputs.member_parameters.pk


def test_unlabelled_or_tiny_datasets_rejected(labelled_carbon_frames, mace_code):
    unlabelled = PESData.from_ase([a.copy() for a in labelled_carbon_frames])
    with pytest.raises(ValueError, match='dataset: no frame is labelled'):
        run_get_node(TrainingWorkChain, dataset=unlabelled, engine=orm.Str('mace'), code=mace_code)
    tiny = PESData.from_ase(labelled_carbon_frames[:2])
    with pytest.raises(ValueError, match='dataset: the validation split has no labelled frames'):
        run_get_node(TrainingWorkChain, dataset=tiny, engine=orm.Str('mace'), code=mace_code)


def _finished_training_node(engine: str, exit_code_name: str, with_checkpoint: bool):
    """A stored CalcJobNode of ``engine`` that ended with ``exit_code_name``."""
    calculation = training_calculation(engine)
    node = orm.CalcJobNode(process_type=f'aiida.calculations:trainspot.{engine}.train')
    node.set_process_state('finished')
    node.set_exit_status(calculation.exit_codes[exit_code_name].status)
    node.store()
    if with_checkpoint:
        folder = orm.FolderData()
        folder.base.repository.put_object_from_bytes(b'checkpoint', 'member_run-1.pt')
        folder.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='checkpoint')
        folder.store()
    node.seal()
    return node


@pytest.mark.parametrize('engine', ['mace', 'metatrain'])
def test_walltime_handler_resumes_from_checkpoint(carbon_dataset, mace_code, engine):
    training = carbon_dataset.subset(range(24))
    validation = carbon_dataset.subset(range(24, 30))
    inputs = {
        'engine': orm.Str(engine),
        'train': {
            'code': mace_code,
            'training': training,
            'validation': validation,
            'seed': orm.Int(1),
        },
    }
    process = instantiate_process(get_manager().get_runner(), TrainingMemberWorkChain, **inputs)
    process.setup()
    assert process.process_class is training_calculation(engine)
    node = _finished_training_node(engine, 'ERROR_OUT_OF_WALLTIME', with_checkpoint=True)
    report = process.handle_out_of_walltime(node)
    assert report.do_break and report.exit_code.status == 0
    assert process.ctx.inputs['restart_checkpoint'].pk == node.outputs.checkpoint.pk
    # without a checkpoint there is nothing to resume from: a named failure
    bare = _finished_training_node(engine, 'ERROR_OUT_OF_WALLTIME', with_checkpoint=False)
    report = process.handle_out_of_walltime(bare)
    assert report.exit_code.status == FAILED
    # a crash is not retried
    crashed = _finished_training_node(engine, 'ERROR_TRAINING_CRASHED', with_checkpoint=False)
    report = process.handle_unrecoverable(crashed)
    assert report.exit_code.status == FAILED


@pytest.mark.slow
def test_warm_start_from_the_previous_committee(carbon_dataset, mace_code):
    common = committee_inputs(carbon_dataset, 'mace', mace_code, seed=orm.Int(3))
    first, node = run_get_node(
        TrainingWorkChain, parameters=orm.Dict({**TINY_MACE, 'max_num_epochs': 6}), **common
    )
    assert node.is_finished_ok, node.exit_message
    second, node = run_get_node(
        TrainingWorkChain,
        parameters=orm.Dict({**TINY_MACE, 'max_num_epochs': 1}),
        previous_models=dict(first['models']),
        **common,
    )
    assert node.is_finished_ok, node.exit_message
    for label, model in second['models'].items():
        calculation = model.creator
        assert calculation.inputs.initial_model.pk == first['models'][label].pk
        fresh = first['models'][label].creator.outputs.metrics['validation']['loss'][0]
        warm = calculation.outputs.metrics['initial']['validation']['loss']
        # a warm-started member begins (before any step) below a fresh one after its first epoch
        assert warm < fresh
