"""Training, exploration and evaluation through ``core.ssh`` + ``core.slurm`` on a real Slurm.

The same cluster as ``test_cluster.py`` (``.ci/cluster.sh``, one node, sshd on 127.0.0.1:2222),
with the same fixtures (``slurm_cluster``, ``slurm_computer``, ``slurm_code_factory``). Every
stage runs with tiny models and a few frames: what is tested is that each CalcJob of the package
runs unchanged on a remote computer through its scheduler (console-script runners, relative paths).
"""

import os
import shutil
import sys

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.evaluation.calculation import EvaluationCalculation
from aiida_trainspot.exploration.workchain import ExplorationWorkChain
from aiida_trainspot.training.model import PotentialModel
from aiida_trainspot.training.workchain import TrainingWorkChain

pytestmark = pytest.mark.slow

TINY_MACE = {
    'num_channels': 8,
    'max_L': 0,
    'r_max': 4.0,
    'num_interactions': 2,
    'correlation': 2,
    'batch_size': 4,
    'max_num_epochs': 2,
}


def _cluster():
    return sys.modules['aiida_trainspot_tests_cluster']  # loaded by conftest.py


def _runner(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        pytest.fail(f'{name} is not installed: run `pip install --no-deps -e .`', pytrace=False)
    return path


def _calcjobs(node: orm.ProcessNode) -> list[orm.CalcJobNode]:
    return [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]


def _assert_ran_through_slurm(calculation: orm.CalcJobNode) -> None:
    """The job finished ok on the Slurm computer, with a Slurm id that Slurm logged as completed."""
    assert calculation.is_finished_ok, (calculation.process_label, calculation.exit_message)
    job_id = calculation.get_job_id()
    assert job_id is not None and job_id.isdigit(), job_id
    assert calculation.computer.label == 'slurm-localhost'
    assert calculation.computer.scheduler_type == 'core.slurm'
    assert calculation.computer.transport_type == 'core.ssh'
    record = _cluster().jobcomp_records().get(job_id)
    assert record is not None, f'job {job_id} is not in the jobcomp log'
    assert record['JobState'] == 'COMPLETED', record
    assert record['WorkDir'] == calculation.get_remote_workdir()


def test_mace_committee_training_through_slurm(slurm_code_factory, labelled_carbon_frames):
    code = slurm_code_factory('mace_run_train', _runner('mace_run_train'), 'trainspot.mace.train')
    results, node = run_get_node(
        TrainingWorkChain,
        dataset=PESData.from_ase(labelled_carbon_frames),
        engine=orm.Str('mace'),
        code=code,
        seed=orm.Int(5),
        committee_size=orm.Int(2),
        parameters=orm.Dict(TINY_MACE),
    )
    assert node.is_finished_ok, node.exit_message
    models = results['models']
    assert sorted(models) == ['member_0', 'member_1']
    assert all(isinstance(m, PotentialModel) for m in models.values())
    calculations = _calcjobs(node)
    assert len(calculations) == 2
    for calculation in calculations:
        _assert_ran_through_slurm(calculation)
    # the models trained on the cluster load and predict here
    atoms = labelled_carbon_frames[0].copy()
    with models['member_0'].calculator() as calculator:
        atoms.calc = calculator
        assert np.isfinite(atoms.get_potential_energy())


def test_ase_md_exploration_through_slurm(slurm_code_factory, tiny_mace_model):
    code = slurm_code_factory('trainspot-ase-md', _runner('trainspot-ase-md'), 'trainspot.ase.md')
    pool = [bulk('C', 'diamond', a=3.567), bulk('C', 'diamond', a=3.567, cubic=True)]
    results, node = run_get_node(
        ExplorationWorkChain,
        structures=PESData.from_ase(pool),
        n_structures=orm.Int(2),
        engine=orm.Str('ase'),
        code=code,
        model=tiny_mace_model,
        protocol=orm.Dict(
            {
                'steps': 20,
                'sample_interval': 10,
                'thermalisation_steps': 0,
                'temperature_range': [300, 600],
                'pressures_kbar': [0.0],
            }
        ),
        max_concurrent=orm.Int(1),
        seed=orm.Int(3),
    )
    assert node.is_finished_ok, node.exit_message
    assert len(results['trajectory']) == 4  # 2 runs x 20 steps / 10
    assert results['summary']['failed_jobs'] == {}
    (calculation,) = _calcjobs(node)
    assert calculation.process_label == 'AseMdCalculation'
    _assert_ran_through_slurm(calculation)


def test_committee_evaluation_through_slurm(
    slurm_code_factory, tiny_committee_files, labelled_carbon_frames
):
    code = slurm_code_factory(
        'trainspot-evaluate', _runner('trainspot-evaluate'), 'trainspot.evaluation'
    )
    models = {
        f'member_{index}': PotentialModel.from_files(
            member['model'],
            engine='mace',
            architecture=member['architecture'],
            species=member['species'],
            cutoff=member['cutoff'],
            dtype=member['dtype'],
            seed=member['seed'],
            extensions_dir=member['extensions'],
        ).store()
        for index, member in enumerate(tiny_committee_files['mace'])
    }
    frames = PESData.from_ase(labelled_carbon_frames[:3])
    results, node = run_get_node(
        EvaluationCalculation, code=code, models=models, datasets={'frames': frames}
    )
    _assert_ran_through_slurm(node)
    predictions = results['predictions']['frames']
    assert len(predictions) == 3
    assert 'frames' in results['metrics']['datasets']
    energies = predictions.get_columns().column('energy_members')
    assert energies.shape == (3, 2) and np.isfinite(energies).all()
