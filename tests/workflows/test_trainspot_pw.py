"""A two-element campaign labelled by real pw.x: one set of DFT settings for every frame."""

import time
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node, submit
from aiida.engine.processes.control import kill_processes
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family
from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

EXAMPLES = Path(__file__).resolve().parents[2] / 'examples'
#: Different cutoffs per element (Ry), so that a per-frame choice would show.
CUTOFFS = {'Si': (20.0, 80.0), 'C': (25.0, 200.0)}
FAMILY = 'trainspot-test-SiC-campaign'
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False}
SYSTEM_KEYS = ('ecutwfc', 'ecutrho', 'occupations', 'smearing', 'degauss')


def sic_builder(codes, **extra):
    structure = bulk('SiC', 'zincblende', a=4.36)
    overrides = {
        'seed': 5,
        'max_iterations': 2,
        'max_selected': 2,
        'augmentation': {
            'parameters': {
                'n_configs_per_input': 6,  # a validation frame for training
                'vacuum': 5.0,
                'isolated_atoms': {'enabled': True},
            }
        },
        'labelling': {
            'qe': {'vacuum': 5.0, 'overrides': {'kpoints_distance': 0.6}, 'options': OPTIONS}
        },
        'training': {
            'committee_size': 2,
            'parameters': {'mace': {'max_num_epochs': 8, 'batch_size': 2}},
        },
        'exploration': {'n_structures': 2, 'protocol': {'steps': 40, 'sample_interval': 10}},
    }
    builder = TrainsPotWorkChain.get_builder_from_protocol(
        codes, [structure], protocol='fast', overrides=overrides, pseudo_family=FAMILY, **extra
    )
    builder.md_structures = PESData.from_ase([structure])
    return builder


@pytest.mark.slow
def test_campaign_labels_every_frame_with_one_setting(
    pw_code, mace_code, ase_md_code, evaluate_code
):
    create_pseudo_family(FAMILY, ['Si', 'C'], cutoffs=CUTOFFS)
    codes = {'pw': pw_code, 'train': mace_code, 'md': ase_md_code, 'evaluate': evaluate_code}
    results, node = run_get_node(sic_builder(codes))
    assert node.is_finished_ok, node.exit_message
    settings = results['dft_settings']
    assert settings['species'] == ['C', 'Si']
    assert (settings['system']['ecutwfc'], settings['system']['ecutrho']) == (25.0, 200.0)
    labellings = [
        child for child in node.called if child.process_label == 'AbInitioLabellingWorkChain'
    ]
    assert len(labellings) == 2  # the initial frames and the first selection
    calculations = [n for n in node.called_descendants if n.process_label == 'PwCalculation']
    n_labels = results['summary']['n_labels_total']
    assert len(calculations) == n_labels
    systems = [calc.inputs.parameters.get_dict()['SYSTEM'] for calc in calculations]
    for key in SYSTEM_KEYS:
        assert len({system[key] for system in systems}) == 1, key
    # the isolated Si atom, alone 20/80 Ry, was computed at the campaign's cutoffs
    atoms = [c for c in calculations if len(c.inputs.structure.sites) == 1]
    assert {c.inputs.structure.get_formula() for c in atoms} == {'Si', 'C'}
    assert {c.inputs.parameters['SYSTEM']['ecutwfc'] for c in atoms} == {25.0}
    for labelling in labellings:  # every labelling got the campaign's node, none decided its own
        assert labelling.inputs.qe.dft_settings.uuid == settings.uuid
        assert labelling.outputs.dft_settings.uuid == settings.uuid

    # a restart reuses the settings of the run it continues
    restarted, again = run_get_node(sic_builder(codes), restart_from=orm.Str(node.uuid))
    assert again.is_finished_ok, again.exit_message
    assert restarted['dft_settings'].uuid == settings.uuid


def wait_for(condition, seconds, what):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f'timed out after {seconds} s waiting for {what}')
        time.sleep(1.0)


@pytest.mark.slow
def test_silicon_example_starts_labelling_with_pw(
    pw_code, mace_code, ase_md_code, evaluate_code, started_daemon_client
):
    """The README's own campaign (protocol `moderate`) is submitted and reaches pw.x."""
    from aiida_trainspot.cli.campaign import build, read_run_config

    create_pseudo_family('trainspot-pbe-Si', ['Si'])
    builder = build(read_run_config(EXAMPLES / 'silicon' / 'config.yaml'))
    builder.labelling.max_concurrent = orm.Int(1)  # one pw.x at a time on this 2-core machine
    node = submit(builder)

    def first_pw():
        calcs = [n for n in node.called_descendants if n.process_label == 'PwCalculation']
        return calcs[0] if calcs else None

    wait_for(lambda: first_pw() is not None or node.is_terminated, 600, 'the first pw.x run')
    assert not node.is_terminated, node.exit_message
    calculation = first_pw()
    kill_processes([node], timeout=120)
    wait_for(lambda: node.is_terminated, 120, 'the campaign to be killed')
    settings = node.outputs.dft_settings.get_dict()
    assert settings['protocol'] == 'balanced' and settings['kpoints_distance'] == 0.15
    system = calculation.inputs.parameters.get_dict()['SYSTEM']
    assert (system['ecutwfc'], system['ecutrho']) == (30.0, 120.0)  # the family's Si cutoffs
    assert calculation.caller.inputs.kpoints_distance.value == 0.15


@pytest.mark.slow
def test_campaign_whose_pw_runs_all_fail_stops_with_408(
    pw_code, mace_code, ase_md_code, evaluate_code
):
    """pw.x allowed one SCF step labels nothing: exit 408, each frame's pw.x failure recorded."""
    create_pseudo_family(FAMILY, ['Si', 'C'], cutoffs=CUTOFFS)
    codes = {'pw': pw_code, 'train': mace_code, 'md': ase_md_code, 'evaluate': evaluate_code}
    one_step = {'max_iterations': 1, 'pw': {'parameters': {'ELECTRONS': {'electron_maxstep': 1}}}}
    builder = sic_builder(codes)
    del builder['structures']  # two frames as the dataset: no augmentation
    frames = [bulk('SiC', 'zincblende', a=4.36), bulk('SiC', 'zincblende', a=4.30)]
    builder.dataset = PESData.from_ase(frames)
    builder.labelling.qe.overrides = orm.Dict({'kpoints_distance': 0.6, **one_step})
    _, node = run_get_node(builder)
    assert node.exit_status == TrainsPotWorkChain.exit_codes.ERROR_NO_LABELLED_FRAMES.status
    assert node.outputs.summary['status'] == 'failed: 408'
    labelling = next(c for c in node.called if c.process_label == 'AbInitioLabellingWorkChain')
    reasons = labelling.outputs.failed.get_column('failure_reason')[0]
    assert len(reasons) == 2
    assert all('PwBaseWorkChain' in r and 'exit 410' in r for r in reasons), reasons
    assert 'dataset' not in node.outputs  # nothing labelled, nothing claimed
