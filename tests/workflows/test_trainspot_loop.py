"""TrainsPotWorkChain end to end with real codes: ASE oracle, MACE, metatrain, pw.x, restarts."""

import time

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node, submit
from aiida.engine.processes.control import kill_processes
from ase.io import read, write
from click.testing import CliRunner

from aiida_trainspot.cli import cli
from aiida_trainspot.data import PESData
from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

from .conftest import TERSOFF_FILE, carbon_structures

FAST_OVERRIDES = {
    'max_iterations': 2,
    'exploration': {'n_structures': 2, 'protocol': {'steps': 60, 'sample_interval': 10}},
    'training': {
        'committee_size': 2,
        'parameters': {'mace': {'max_num_epochs': 10, 'batch_size': 4}},
    },
}


def tersoff_builder(codes, tersoff_file, overrides=None, seed=3):
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        codes,
        carbon_structures(),
        protocol='fast',
        overrides={**FAST_OVERRIDES, 'seed': seed, **(overrides or {})},
        ase_calculator={'name': 'tersoff'},
        ase_parameter_file=tersoff_file,
    )
    return builder


def check_consistent(node, results):
    """The dataset holds exactly the labelled frames; one record per iteration."""
    dataset = results['dataset']
    attributes = dataset.base.attributes
    assert attributes.get('n_labelled_energy') == len(dataset)
    assert attributes.get('n_labelled_forces') == len(dataset)
    iterations = results['iterations']
    records = [iterations[k]['record'].get_dict() for k in sorted(iterations)]
    assert [r['iteration'] for r in records] == list(range(1, len(records) + 1))
    assert records[-1]['dataset']['n_frames'] == len(dataset)
    summary = results['summary'].get_dict()
    assert summary['iterations'] == len(records)
    assert summary['stop_reason'] == records[-1]['stop_reason']
    labelled_so_far = sum(
        iterations[k]['labelling_summary']['n_labelled']
        for k in iterations
        if 'labelling_summary' in iterations[k]
    )
    assert labelled_so_far == len(dataset)
    if 'pending' in results:
        assert summary['stop_reason'] in ('max_iterations', 'max_labels')
        assert len(results['pending']) == records[-1]['selection']['selected']
        # pending frames were never labelled, and carry no prediction columns
        assert 'delta_forces' not in results['pending'].column_names
    return records


_FAST_LOOP = {}


def run_config(tmp_path, codes, seed=3):
    """The YAML of `aiida-trainspot run` for the fast Tersoff campaign of these tests.

    It leaves the calibration to the protocol, so the campaign tests check its default (the
    committee mean's error) end to end; the calcfunction tests cover the members'.
    """
    for index, atoms in enumerate(carbon_structures()):
        write(tmp_path / f'structure-{index}.xyz', atoms, format='extxyz')
    config = {
        'structures': [f'structure-{index}.xyz' for index in range(3)],
        'protocol': 'fast',
        'codes': {role: code.full_label for role, code in codes.items()},
        'ase_calculator': {'name': 'tersoff'},
        'ase_parameter_file': TERSOFF_FILE,
        'overrides': {**FAST_OVERRIDES, 'seed': seed},
    }
    path = tmp_path / 'config.yaml'
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def fast_loop(loop_codes, tmp_path):
    """One 2-iteration campaign (Tersoff oracle, 2 MACE members) run by `aiida-trainspot run`,
    once, shared by the tests of the loop and of the CLI (code fixtures are function-scoped)."""
    if 'run' not in _FAST_LOOP:
        result = CliRunner().invoke(cli, ['run', str(run_config(tmp_path, loop_codes))])
        assert result.exit_code == 0, result.output
        first = next(
            line for line in result.output.splitlines() if line.startswith('TrainsPotWorkChain<')
        )
        assert 'running in the foreground' in first
        assert 'iteration 1 training' in result.output  # the live progress
        node = orm.load_node(int(first.split('<')[1].split('>')[0]))
        outputs = node.base.links.get_outgoing(link_type=LinkType.RETURN).nested()
        _FAST_LOOP['run'] = (outputs, node)
    return _FAST_LOOP['run']


def test_run_command_bad_input(tmp_path, loop_codes):
    runner = CliRunner()
    missing = runner.invoke(cli, ['run', str(tmp_path / 'nope.yaml')])
    assert missing.exit_code != 0 and 'no such file' in missing.output
    config = run_config(tmp_path, loop_codes)
    text = config.read_text()
    config.write_text(text + 'iterations: 3\n')
    unknown = runner.invoke(cli, ['run', str(config)])
    assert unknown.exit_code != 0 and "unknown keys ['iterations']" in unknown.output
    config.write_text(text.replace(loop_codes['train'].full_label, 'no-such-code'))
    bad_code = runner.invoke(cli, ['run', str(config)])
    assert bad_code.exit_code != 0 and 'codes.train' in bad_code.output
    for result in (missing, unknown, bad_code):
        assert 'Traceback' not in result.output
        assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_fast_loop_with_tersoff_oracle(fast_loop):
    results, node = fast_loop
    assert node.is_finished_ok, node.exit_message
    records = check_consistent(node, results)
    assert len(records) == 2
    assert sorted(results['models']) == ['member_0', 'member_1']
    first, second = records
    assert first['labelling']['n_labelled'] > 0
    assert second['dataset']['n_frames'] > first['dataset']['n_frames']
    assert 'md' in second['dataset']['by_generation_method']
    assert second['n_labels_total'] == first['n_labels_total'] + first['selection']['selected']
    for record in records:
        assert record['calibration']['error'] == 'committee_mean'  # the protocol's default
        assert record['calibration']['slopes']['forces'] > 0
        assert np.isfinite(record['rmse']['all']['forces']['committee'])


def call_labels(node):
    return {
        link.link_label
        for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_WORK, LinkType.CALL_CALC))
    }


def wait_for(condition, timeout, what):
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f'timed out after {timeout} s waiting for {what}')
        time.sleep(1.0)


def one_iteration(codes, tersoff_file, seed=5):
    return tersoff_builder(codes, tersoff_file, overrides={'max_iterations': 1}, seed=seed)


@pytest.mark.slow
def test_restart_from_run_killed_during_exploration(
    loop_codes, tersoff_file, started_daemon_client
):
    node = submit(one_iteration(loop_codes, tersoff_file))
    wait_for(
        lambda: 'iteration_01_exploration' in call_labels(node) or node.is_terminated,
        600,
        'the exploration to start',
    )
    kill_processes([node], timeout=120)
    wait_for(lambda: node.is_terminated, 120, 'the run to be killed')
    assert node.is_killed
    checkpoints = node.outputs.iterations.iteration_01
    assert 'models' in checkpoints and 'explored' not in checkpoints

    builder = node.get_builder_restart()
    builder.restart_from = node
    results, restarted = run_get_node(builder)
    assert restarted.is_finished_ok, restarted.exit_message
    labels = call_labels(restarted)
    assert 'iteration_01_exploration' in labels
    assert not any('labelling' in label or 'training' in label for label in labels)
    assert not any(label == 'augmentation' for label in labels)
    old = {m.uuid for m in checkpoints.models.values()}
    assert {m.uuid for m in results['models'].values()} == old
    assert results['dataset'].uuid == checkpoints.dataset.uuid
    check_consistent(restarted, results)


@pytest.mark.slow
def test_cli_status_plot_export(fast_loop, tmp_path):
    results, node = fast_loop
    runner = CliRunner()
    status = runner.invoke(cli, ['status', str(node.pk)])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    assert lines[0].startswith(f'TrainsPotWorkChain<{node.pk}> finished [0]')
    assert len([line for line in lines if line.strip().startswith(('1 ', '2 '))]) == 2
    # the learning curve: each iteration's committee on the final validation and test frames
    curve = runner.invoke(cli, ['status', str(node.pk), '--learning-curve'])
    assert curve.exit_code == 0, curve.output
    lines = curve.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('learning curve'))
    dataset = results['dataset']
    held_out = len(dataset.split_indices('validation')) + len(dataset.split_indices('test'))
    assert f'the same {held_out} held-out frames' in lines[start]
    header, *rows = lines[start + 1 : start + 4]
    assert header.split() == ['iteration', 'frames', 'rmse_e', 'rmse_f', 'rmse_s']
    assert [row.split()[:2] for row in rows] == [['1', str(held_out)], ['2', str(held_out)]]
    assert all(float(value) > 0 for row in rows for value in row.split()[2:4])
    plot = runner.invoke(cli, ['plot', str(node.pk), '--out', str(tmp_path / 'plots')])
    assert plot.exit_code == 0, plot.output
    names = sorted(p.name for p in (tmp_path / 'plots').glob('*.png'))
    assert names == ['calibration.png', 'composition.png', 'parity.png', 'rmse.png']
    export = runner.invoke(
        cli,
        [
            'export',
            str(node.pk),
            '--dataset',
            str(tmp_path / 'data.xyz'),
            '--models',
            str(tmp_path / 'models'),
        ],
    )
    assert export.exit_code == 0, export.output
    frames = read(tmp_path / 'data.xyz', index=':')
    assert len(frames) == len(results['dataset'])
    assert all('REF_energy' in atoms.info for atoms in frames)
    assert len(list((tmp_path / 'models').glob('member_*/*.model'))) == 2
    # bad input: one line, non-zero exit, no traceback
    for args in (['status', '999999'], ['status', str(results['dataset'].pk)], ['export', '1']):
        bad = runner.invoke(cli, args)
        assert bad.exit_code != 0
        assert 'Traceback' not in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_metatrain_committee_one_iteration(
    ase_code, mtt_code, ase_md_code, evaluate_code, tersoff_file
):
    codes = {'ase_label': ase_code, 'train': mtt_code, 'md': ase_md_code, 'evaluate': evaluate_code}
    builder = tersoff_builder(codes, tersoff_file, overrides={'max_iterations': 1})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert {m.engine for m in results['models'].values()} == {'metatrain'}
    records = check_consistent(node, results)
    assert len(records) == 1 and records[0]['training']['n_members'] == 2


def test_bad_inputs_are_named_at_submission(loop_codes, tersoff_file):
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    def problem(**changes):
        builder = tersoff_builder(loop_codes, tersoff_file)
        for key, value in changes.items():
            builder[key] = value
        with pytest.raises(ValueError) as error:
            instantiate_process(get_manager().get_runner(), builder)
        return str(error.value)

    assert 'error_thresholds' in problem(error_thresholds=orm.Dict({'force': 0.1}))
    assert 'calibration.method' in problem(calibration=orm.Dict({'method': 'magic'}))
    assert 'calibration.error' in problem(calibration=orm.Dict({'error': 'median'}))
    assert 'selection' in problem(selection=orm.Dict({'min_distanse': 0.3}))
    assert 'cap_order' in problem(selection=orm.Dict({'cap_order': 'largest'}))
    assert 'explored' in problem(explored=PESData.from_ase(carbon_structures()))
    assert 'restart_from' in problem(restart_from=orm.Str('not-a-uuid'))
    assert 'max_iterations' in problem(max_iterations=orm.Int(0))
