"""A campaign survives a daemon kill in any stage, and every failure exit is reached for real.

Real daemon, real codes (ASE oracles, mace_run_train, the ASE MD and evaluation runners); the
failures come from real misconfigurations (an oracle that cannot compute an element, a training
code that cannot start, ...), each fixed by the next run's ``restart_from``.
"""

import contextlib
import time

import numpy as np
import psutil
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node, submit
from ase.build import bulk

from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

from .conftest import carbon_structures
from .test_trainspot_loop import call_labels, check_consistent, one_iteration

POTENTIALS = '/usr/share/lammps/potentials'
#: The stages of a one-iteration campaign, by the call link label of their process.
STAGE_LINKS = (
    'augmentation',
    'iteration_01_labelling',
    'iteration_01_training',
    'iteration_01_exploration',
    'iteration_01_evaluation',
)


def stage_process(node, label):
    """The process ``node`` called with link ``label`` (None before it is called)."""
    links = node.base.links.get_outgoing(
        link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC), link_label_filter=label
    ).all()
    return links[0].node if links else None


def wait_until(condition, timeout, what, interval=0.1):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {timeout} s waiting for {what}')
        time.sleep(interval)


def kill_daemon(client):
    """SIGKILL the daemon with its whole process tree (circus, workers, stats): no clean-up."""
    daemon = psutil.Process(client.get_daemon_pid())
    victims = [daemon, *daemon.children(recursive=True)]
    assert any('worker' in ' '.join(p.cmdline()) for p in victims[1:])
    for process in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(victims, timeout=30)


def positions(dataset):
    return dataset.get_columns([]).atom['positions']


def member_seeds(models):
    return {label: model.seed for label, model in models.items()}


@pytest.mark.slow
def test_daemon_killed_in_every_stage_gives_the_same_campaign(
    loop_codes, tersoff_file, started_daemon_client
):
    """One campaign, SIGKILLed with its daemon once in each stage, ends as an uninterrupted one."""
    reference, reference_node = run_get_node(one_iteration(loop_codes, tersoff_file, seed=9))
    assert reference_node.is_finished_ok, reference_node.exit_message
    reference_selected = reference['iterations']['iteration_01']['selected']
    assert len(reference_selected) > 0  # so that comparing the selections can fail

    client = started_daemon_client
    node = submit(one_iteration(loop_codes, tersoff_file, seed=9))
    for label in STAGE_LINKS:
        wait_until(
            lambda label=label: stage_process(node, label) is not None or node.is_terminated,
            900,
            f'{label} to start',
        )
        assert not node.is_terminated, node.exit_message
        kill_daemon(client)
        stage = stage_process(node, label)
        assert not stage.is_terminated, f'{label} ended before the kill'
        time.sleep(1.0)
        assert not node.is_terminated and not stage.is_terminated
        client.start_daemon()
    wait_until(lambda: node.is_terminated, 900, 'the run to finish', interval=1.0)
    assert node.is_finished_ok, node.exit_message
    for label in STAGE_LINKS:  # each stage ran once: continued after the kill, not resubmitted
        assert sorted(call_labels(node)).count(label) == 1

    results = node.base.links.get_outgoing(link_type=LinkType.RETURN).nested()
    np.testing.assert_allclose(
        results['dataset'].get_column('energy')[0], reference['dataset'].get_column('energy')[0]
    )
    np.testing.assert_allclose(positions(results['dataset']), positions(reference['dataset']))
    assert member_seeds(results['models']) == member_seeds(reference['models'])
    assert None not in member_seeds(results['models']).values()
    selected = results['iterations']['iteration_01']['selected']
    np.testing.assert_allclose(positions(selected), positions(reference_selected))
    record = results['iterations']['iteration_01']['record'].get_dict()
    assert record['selection'] == reference['iterations']['iteration_01']['record']['selection']

    # restart_from a finished run, with one iteration more: it labels the pending selection
    builder = one_iteration(loop_codes, tersoff_file, seed=9)
    builder.max_iterations = orm.Int(2)
    builder.restart_from = orm.Str(node.uuid)
    more, again = run_get_node(builder)
    assert again.is_finished_ok, again.exit_message
    labels = call_labels(again)
    assert 'iteration_02_labelling' in labels
    assert not any(label.startswith(('iteration_01', 'augmentation')) for label in labels)
    relabelled = stage_process(again, 'iteration_02_labelling')
    assert relabelled.inputs.dataset.uuid == results['pending'].uuid
    records = check_consistent(again, more)
    assert [r['iteration'] for r in records] == [1, 2]


# ---------------------------------------------------------------------------- failure exits


def chain_builder(codes, calculator, parameter_file=None, restart=None, **changes):
    """The failure chain's campaign: carbon and SiC structures, one iteration, seed 4."""
    structures = [*carbon_structures(), bulk('SiC', 'zincblende', a=4.36)]
    overrides = {
        'seed': 4,
        'max_iterations': 1,
        'exploration': {'n_structures': 2, 'protocol': {'steps': 40, 'sample_interval': 10}},
        'training': {
            'committee_size': 3,
            'parameters': {'mace': {'max_num_epochs': 8, 'batch_size': 4}},
        },
        'augmentation': {'parameters': {'n_configs_per_input': 3}},
        'labelling': {'max_failed_fraction': 0.1},
    }
    for key, value in changes.items():
        overrides[key] = {**overrides.get(key, {}), **value} if isinstance(value, dict) else value
    extra = {'ase_parameter_file': parameter_file} if parameter_file is not None else {}
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        codes, structures, protocol='fast', overrides=overrides, ase_calculator=calculator, **extra
    )
    if restart is not None:
        builder.restart_from = orm.Str(restart.uuid)
    return builder


def failed_with(node, status, *words):
    """``node`` failed with ``status``, its message names ``words``, its summary says so."""
    assert node.exit_status == status, (node.exit_status, node.exit_message)
    for word in words:
        assert word in node.exit_message, (word, node.exit_message)
    summary = node.outputs.summary.get_dict()
    assert summary['status'] == f'failed: {status}'
    return node.base.links.get_outgoing(link_type=LinkType.RETURN).nested()


@pytest.mark.slow
def test_every_failure_exit_is_reached_and_restart_continues_after_the_fix(
    loop_codes, code_factory, poisoned_evaluate_code
):
    """401 to 408, each from a real failing stage, each fixed by the next run's restart_from;
    then non-finite predictions cost frames and a member, not the campaign."""
    tersoff_sic = orm.SinglefileData(f'{POTENTIALS}/SiC.tersoff')
    tersoff_gan = orm.SinglefileData(f'{POTENTIALS}/GaN.tersoff')  # no parameters for C or Si
    emt = {'name': 'emt'}  # EMT has carbon, not silicon
    tersoff = {'name': 'tersoff'}
    codes = dict(loop_codes)
    broken = {
        'train': code_factory('false-train', '/bin/false', 'trainspot.mace.train'),
        'md': code_factory('false-md', '/bin/false', 'trainspot.ase.md'),
        'evaluate': code_factory('false-evaluate', '/bin/false', 'trainspot.evaluation'),
    }

    # 401: every rattle draw puts two atoms closer than the augmentation's min_distance
    impossible = {
        'n_configs_per_input': 3,
        'min_distance': 1.3,
        'max_retries': 1,
        'rattle': {'fraction': 1.0},
    }
    _, first = run_get_node(chain_builder(codes, emt, augmentation={'parameters': impossible}))
    outputs = failed_with(first, 401, 'Augmentation failed', 'min_distance')
    assert 'initial_dataset' not in outputs and 'dataset' not in outputs

    # 408: an oracle without parameters for any species labels nothing
    _, second = run_get_node(chain_builder(codes, tersoff, tersoff_gan, restart=first))
    outputs = failed_with(second, 408, 'No frame could be labelled')
    assert 'augmentation' in call_labels(second)  # nothing to continue from: started afresh
    assert 'initial_dataset' in outputs and 'dataset' not in outputs
    n_initial = len(outputs['initial_dataset'])

    # 402: EMT labels the carbon frames and fails on every frame with silicon
    _, third = run_get_node(chain_builder(codes, emt, restart=second))
    outputs = failed_with(third, 402, 'Labelling failed', 'AbInitioLabellingWorkChain')
    assert 'augmentation' not in call_labels(third)
    checkpoints = outputs['iterations']['iteration_01']
    failed = checkpoints['failed']
    assert len(failed) > 0 and len(checkpoints['labelled']) + len(failed) == n_initial
    reasons = set(failed.get_column('failure_reason')[0])
    assert all('EMT' in reason for reason in reasons), reasons
    assert all('Si' in atoms.get_chemical_symbols() for atoms in failed.iter_atoms())
    assert outputs['dataset'].uuid == checkpoints['labelled'].uuid  # partial outputs

    # 403: with the retry turned off, training starts on the frames EMT labelled; its code
    # cannot start
    training_broken = {**codes, 'train': broken['train']}
    no_retry = chain_builder(training_broken, tersoff, tersoff_sic, restart=third)
    no_retry.retry_failed_labels = orm.Bool(False)
    _, skipped = run_get_node(no_retry)
    outputs = failed_with(skipped, 403, 'Training failed', 'TrainingWorkChain')
    assert not any('labelling' in label for label in call_labels(skipped))
    assert len(outputs['dataset']) == len(checkpoints['labelled'])
    assert 'retried' not in outputs['iterations']['iteration_01']

    # 403: the next restart, with the fixed oracle, labels the failed frames again (the run it
    # continues left them untouched)
    _, fourth = run_get_node(chain_builder(training_broken, tersoff, tersoff_sic, restart=skipped))
    outputs = failed_with(fourth, 403, 'Training failed', 'TrainingWorkChain')
    labels = call_labels(fourth)
    assert 'iteration_01_relabelling' in labels and 'iteration_01_labelling' not in labels
    iteration = outputs['iterations']['iteration_01']
    assert len(iteration['retried']) == len(failed)
    assert iteration['retry_summary']['n_labelled'] == len(failed)
    assert iteration['retry_summary']['n_failed'] == 0
    assert 'failure_reason' not in iteration['retried'].column_names
    assert len(outputs['dataset']) == n_initial  # every frame labelled now
    assert outputs['dataset'].base.attributes.get('n_labelled_energy') == n_initial

    # 404: training works; the MD code cannot start
    md_broken = {**codes, 'md': broken['md']}
    _, fifth = run_get_node(chain_builder(md_broken, tersoff, tersoff_sic, restart=fourth))
    outputs = failed_with(fifth, 404, 'Exploration failed', 'ExplorationWorkChain')
    labels = call_labels(fifth)
    assert 'iteration_01_training' in labels
    assert not any('labelling' in label for label in labels)  # the retry is not repeated
    assert sorted(outputs['models']) == ['member_0', 'member_1', 'member_2']  # partial outputs
    assert len(outputs['dataset']) == n_initial

    # 405: the evaluation code cannot start
    evaluation_broken = {**codes, 'evaluate': broken['evaluate']}
    _, sixth = run_get_node(chain_builder(evaluation_broken, tersoff, tersoff_sic, restart=fifth))
    failed_with(sixth, 405, 'Evaluation failed', 'EvaluationCalculation')
    assert 'iteration_01_exploration' in call_labels(sixth)
    assert 'iteration_01_training' not in call_labels(sixth)

    # 406: more calibration frames asked for than the campaign has
    calibration = {'min_points': 10_000}
    _, seventh = run_get_node(
        chain_builder(codes, tersoff, tersoff_sic, restart=sixth, calibration=calibration)
    )
    failed_with(seventh, 406, 'Calibration failed', '10000')
    assert set(call_labels(seventh)) >= {'iteration_01_evaluation'}
    assert 'iteration_01_exploration' not in call_labels(seventh)

    # 407: frames exceed the thresholds, and every one is rejected as unphysical (in the last
    # iteration that is a stop at max_iterations, not a failure: this run allows a second one)
    selection = {'min_distance': 5.0}
    _, eighth = run_get_node(
        chain_builder(
            codes, tersoff, tersoff_sic, restart=seventh, selection=selection, max_iterations=2
        )
    )
    outputs = failed_with(eighth, 407, 'rejected as unphysical')
    assert 'record' not in outputs['iterations']['iteration_01']  # evaluated again on restart
    assert 'calibration' in outputs  # partial outputs: the calibration it made

    # fixed: evaluates again, selects, finishes; member_2 is NaN on every frame and member_0 on
    # the isolated atoms (an evaluation code whose calculators are wrapped to return NaN)
    poisoned = poisoned_evaluate_code({'member_2': None, 'member_0': 1})
    results, last = run_get_node(
        chain_builder({**codes, 'evaluate': poisoned}, tersoff, tersoff_sic, restart=eighth)
    )
    assert last.is_finished_ok, last.exit_message
    assert call_labels(last) >= {'iteration_01_evaluation'}
    iteration = results['iterations']['iteration_01']
    metrics = iteration['metrics'].get_dict()
    assert metrics['dropped_members'] == ['member_2']
    atoms = [i for i, n in enumerate(results['dataset'].n_atoms_per_frame()) if n == 1]
    assert len(atoms) == 2 and metrics['non_finite_frames'] == {'labelled': atoms}
    assert iteration['diagnostics']['n_non_finite'] == 2  # left out of the calibration
    assert sorted(results['models']) == ['member_0', 'member_1']  # member_2 left the committee
    record = iteration['record'].get_dict()
    assert record['selection']['selected'] > 0
    assert record['n_labels_total'] == n_initial + len(failed)  # the retry's labels counted
    assert len(results['dataset']) == n_initial
