"""The package's calculations through ``core.ssh`` + ``core.slurm`` on a real Slurm cluster.

The cluster is ``.ci/cluster.sh`` (one node, this machine, sshd on 127.0.0.1:2222); the fixtures
``slurm_cluster``, ``slurm_computer`` and ``slurm_code_factory`` are in ``conftest.py``.
"""

import os
import shutil
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk

from aiida_trainspot.data import PESData
from aiida_trainspot.labelling.ase.calculation import AseLabelCalculation
from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family
from aiida_trainspot.labelling.workchain import AbInitioLabellingWorkChain

pytestmark = pytest.mark.slow

FAMILY = 'trainspot-test-C'
OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'withmpi': False}
PW_EXECUTABLE = os.environ.get('TRAINSPOT_TEST_PW', '/usr/bin/pw.x')


def _cluster():
    return sys.modules['aiida_trainspot_tests_cluster']  # loaded by conftest.py


def _runner(name: str) -> str:
    path = shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        pytest.fail(f'{name} is not installed: run `pip install --no-deps -e .`', pytrace=False)
    return path


@pytest.fixture
def slurm_ase_code(slurm_code_factory):
    return slurm_code_factory(
        'trainspot-ase-label', _runner('trainspot-ase-label'), 'trainspot.ase.label'
    )


def _calcjobs(node: orm.ProcessNode) -> list[orm.CalcJobNode]:
    return [n for n in node.called_descendants if isinstance(n, orm.CalcJobNode)]


def _assert_ran_through_slurm(calculation: orm.CalcJobNode, state: str = 'COMPLETED') -> None:
    """The job has a Slurm id, and Slurm's completion log has it ending in ``state``."""
    job_id = calculation.get_job_id()
    assert job_id is not None and job_id.isdigit(), job_id
    assert calculation.computer.label == 'slurm-localhost'
    record = _cluster().jobcomp_records().get(job_id)
    assert record is not None, f'job {job_id} is not in the jobcomp log'
    assert record['JobState'] == state, record
    assert record['NodeList'] == 'localhost'
    assert record['WorkDir'] == calculation.get_remote_workdir()


def test_computer_through_ssh_and_slurm(slurm_computer):
    """The transport opens, the login shell finds Slurm, and `verdi computer test` passes."""
    from aiida.cmdline.commands.cmd_verdi import verdi
    from aiida.manage import get_manager
    from click.testing import CliRunner

    with slurm_computer.get_transport() as transport:
        assert transport.whoami() == 'root'
        assert transport.isdir(slurm_computer.get_workdir().format(username='root'))
        # a login shell, as AiiDA's scheduler commands: SLURM_CONF comes from the sshd
        retval, stdout, stderr = transport.exec_command_wait(
            'echo $SLURM_CONF; sinfo --noheader --Node --format=%N:%t'
        )
        assert retval == 0, stderr
        conf, node = stdout.split()
        assert conf == str(_cluster().slurm_conf())
        assert node in ('localhost:idle', 'localhost:mix', 'localhost:alloc')
        scheduler = slurm_computer.get_scheduler()
        scheduler.set_transport(transport)
        assert isinstance(scheduler.get_jobs(as_dict=True), dict)  # squeue, parsed by AiiDA

    profile = get_manager().get_profile().name
    result = CliRunner().invoke(
        verdi, ['-p', profile, 'computer', 'test', '--print-traceback', slurm_computer.label]
    )
    assert result.exit_code == 0, result.output
    assert 'tests succeeded' in result.output, result.output


def test_qe_labelling_through_slurm(slurm_code_factory):
    if not (os.path.isfile(PW_EXECUTABLE) and os.access(PW_EXECUTABLE, os.X_OK)):
        pytest.fail(f'{PW_EXECUTABLE} is not an executable (TRAINSPOT_TEST_PW)', pytrace=False)
    pw_code = slurm_code_factory('pw', PW_EXECUTABLE, 'quantumespresso.pw')
    create_pseudo_family(FAMILY, ['C'])
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase([bulk('C', 'diamond', a=3.567)]),
        qe={
            'code': pw_code,
            'pseudo_family': orm.Str(FAMILY),
            'overrides': orm.Dict({'kpoints_distance': 0.6}),
            'options': orm.Dict(OPTIONS),
        },
    )
    assert node.is_finished_ok, node.exit_message
    assert len(results['labelled']) == 1 and len(results['failed']) == 0
    energy, _ = results['labelled'].get_column('energy')
    assert -320.0 < energy[0] < -300.0  # C2 diamond with the Debian pseudos, eV
    calculations = _calcjobs(node)
    assert [c.process_label for c in calculations] == ['PwCalculation']
    for calculation in calculations:
        assert calculation.is_finished_ok
        _assert_ran_through_slurm(calculation)


def test_ase_labelling_through_slurm(slurm_ase_code):
    from ase.calculators.emt import EMT

    frames = []
    for seed in range(4):
        atoms = bulk('Cu', 'fcc', a=3.6, cubic=True)
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase(frames),
        engine=orm.Str('ase'),
        ase={'code': slurm_ase_code, 'calculator': orm.Dict({'name': 'emt'})},
    )
    assert node.is_finished_ok, node.exit_message
    energy, _ = results['labelled'].get_column('energy')
    expected = []
    for atoms in frames:
        atoms.calc = EMT()
        expected.append(atoms.get_potential_energy())
    np.testing.assert_allclose(energy, expected, rtol=1e-12)
    (calculation,) = _calcjobs(node)
    _assert_ran_through_slurm(calculation)


STARTED = 'job-started'


class _Canceller(threading.Thread):
    """Wait until the Slurm job whose comment is ``token`` runs its script, then ``scancel`` it.

    Running means the script wrote ``STARTED`` in its work directory: Slurm says RUNNING as soon
    as it allocates the node, before slurmd launched the script. Talks to Slurm and the file system
    only (no AiiDA in this thread): the main thread runs the work chain.
    """

    def __init__(self, token: str, timeout: float = 60.0):
        super().__init__(daemon=True)
        self.token, self.timeout = token, timeout
        self.job_id: str | None = None
        self.error: str | None = None

    def run(self):
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline:
                for job in _cluster().squeue():
                    started = os.path.join(job['workdir'], STARTED)
                    if job['comment'] == self.token and os.path.exists(started):
                        _cluster().scancel(job['id'])
                        self.job_id = job['id']
                        return
                time.sleep(0.2)
            self.error = f'no running job with comment {self.token} in {self.timeout} s'
        except Exception as exception:
            self.error = f'{type(exception).__name__}: {exception}'


def _exit_code_name(process_class, node: orm.ProcessNode) -> str | None:
    names = {code.status: name for name, code in process_class.exit_codes.items()}
    return names.get(node.exit_status)


def test_scancel_ends_in_named_exit_codes(slurm_ase_code):
    """A job cancelled while it runs: the calculation and the work chain fail with named codes."""
    token = f'trainspot-cancel-{uuid.uuid4().hex[:12]}'
    canceller = _Canceller(token)
    canceller.start()
    options = {
        # the job sleeps before the labeller starts: it is still running when scancel comes
        'prepend_text': f'touch {STARTED}\nsleep 60',
        'custom_scheduler_commands': f'#SBATCH --comment={token}',
    }
    frames = [bulk('Cu', 'fcc', a=3.6, cubic=True)] * 2
    start = time.monotonic()
    results, node = run_get_node(
        AbInitioLabellingWorkChain,
        dataset=PESData.from_ase(frames),
        engine=orm.Str('ase'),
        ase={
            'code': slurm_ase_code,
            'calculator': orm.Dict({'name': 'emt'}),
            'metadata': {'options': options},
        },
    )
    canceller.join(timeout=5)
    assert canceller.error is None, canceller.error
    assert time.monotonic() - start < 50, 'the job ran to its end: it was not cancelled'

    (calculation,) = _calcjobs(node)
    assert calculation.get_job_id() == canceller.job_id
    _assert_ran_through_slurm(calculation, state='CANCELLED')
    assert 'CANCELLED' in (calculation.get_scheduler_stderr() or '')
    # the calculation: a non-zero, named exit code (our parser: no labels file)
    assert calculation.is_failed and calculation.exit_status != 0
    assert _exit_code_name(AseLabelCalculation, calculation) == 'ERROR_OUTPUT_MISSING'
    # the work chain: its own named code for a failed labelling job, and no outputs
    assert _exit_code_name(AbInitioLabellingWorkChain, node) == 'ERROR_ENGINE_FAILED'
    assert 'labels.h5' in node.exit_message
    assert not results
