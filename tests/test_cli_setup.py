"""``aiida-trainspot setup``: profile, localhost and its codes, pseudos, a remote computer (YAML).

In-process (click's CliRunner) on the test profile, which ``setup`` must use and not replace; one
test runs the command in a subprocess with an empty AiiDA configuration folder to see it create a
profile; the YAML test registers the real Slurm test cluster of ``tests/cluster.py``.
"""

import json
import os
import subprocess
import sys

import pytest
import yaml
from aiida import orm
from aiida.manage import get_manager
from aiida.manage.configuration import get_config
from click.testing import CliRunner

from aiida_trainspot.cli import cli
from aiida_trainspot.cli.setup import LOCAL_CODES


def _cluster():
    return sys.modules['aiida_trainspot_tests_cluster']  # loaded by conftest.py


def _runner(name: str) -> str:
    return os.path.join(os.path.dirname(sys.executable), name)


def _installed_codes() -> dict[int, tuple[str, str]]:
    query = orm.QueryBuilder().append(orm.InstalledCode, project=['id', 'label', 'dbcomputer_id'])
    return {
        pk: (label, orm.load_computer(pk=computer).label) for pk, label, computer in query.all()
    }


@pytest.fixture
def restore_storage():
    """Delete the codes and computers a test created: other tests get-or-create their own.

    (``code_factory`` in conftest wants ``lmp@localhost`` with ``lammps.base``, and the test
    session's storage lives on after this module.)
    """
    from aiida.tools import delete_nodes

    codes = set(_installed_codes())
    computers = {c.pk for c in orm.Computer.collection.all()}
    yield
    new_codes = set(_installed_codes()) - codes
    if new_codes:
        delete_nodes(new_codes, dry_run=False)
    for computer in orm.Computer.collection.all():
        if computer.pk not in computers:
            orm.Computer.collection.delete(computer.pk)


def _invoke(*args: str):
    return CliRunner().invoke(cli, ['setup', *args])


def _lines(result) -> list[str]:
    return result.output.strip().splitlines()


def test_setup_uses_the_loaded_profile_and_is_idempotent(aiida_profile, restore_storage, tmp_path):
    profiles = sorted(get_config().profile_names)
    args = ['--work-dir', str(tmp_path / 'work'), '--pseudo-family', 'cli-setup-C']
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    lines = _lines(first)
    assert lines[0] == f'profile {aiida_profile.name}: kept (loaded)'
    assert sorted(get_config().profile_names) == profiles  # no profile created
    assert get_manager().get_profile().name == aiida_profile.name
    codes = _installed_codes()

    computer = orm.load_computer('localhost')
    assert computer.transport_type == 'core.local'
    assert computer.scheduler_type == 'core.direct'
    assert computer.is_configured
    for label, executable, plugin in LOCAL_CODES:
        skipped = f'code {label}@localhost: skipped, {executable} not found'
        if skipped in lines:
            continue
        code = orm.load_code(f'{label}@localhost')
        assert code.default_calc_job_plugin in (plugin, 'lammps.base'), label  # conftest's lmp
        assert os.path.isabs(str(code.filepath_executable))
    for runner in ('trainspot-ase-label', 'trainspot-ase-md', 'trainspot-evaluate'):
        code = orm.load_code(f'{runner}@localhost')  # always found: next to this Python
        assert str(code.filepath_executable) == _runner(runner)
    family = [line for line in lines if line.startswith('pseudo family cli-setup-C: ')]
    assert family == ['pseudo family cli-setup-C: created from /usr/share/espresso/pseudo (C)']

    second = _invoke(*args)
    assert second.exit_code == 0, second.output
    assert not [line for line in _lines(second) if 'created' in line], second.output
    assert len(_lines(second)) == len(lines)
    assert _installed_codes() == codes  # the same codes, none added
    labels = [label for label, computer in codes.values() if computer == 'localhost']
    assert len(labels) == len(set(labels))


def test_setup_creates_a_profile_when_there_is_none(tmp_path):
    """A fresh AiiDA configuration folder: an SQLite + ZeroMQ profile, set as the default."""
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'config')}
    env.pop('AIIDA_PROFILE', None)
    command = [_runner('aiida-trainspot'), 'setup', '--work-dir', str(tmp_path / 'work')]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == 'profile trainspot: created (core.sqlite_dos, core.zeromq), default profile'
    assert f'computer localhost: created (core.local + core.direct, {tmp_path / "work"})' in lines
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.splitlines()[0] == 'profile trainspot: kept'
    assert 'created' not in second.stdout, second.stdout
    check = (
        'import json; from aiida import load_profile, orm; p = load_profile(); '
        'q = orm.QueryBuilder().append(orm.InstalledCode, project="label"); '
        'print(json.dumps([p.name, sorted(q.all(flat=True)), '
        'orm.load_code("trainspot-evaluate@localhost").default_calc_job_plugin]))'
    )
    result = subprocess.run(
        [sys.executable, '-c', check], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    name, labels, plugin = json.loads(result.stdout)
    assert name == 'trainspot'
    assert len(labels) == len(set(labels)) >= 3
    assert plugin == 'trainspot.evaluation'


@pytest.mark.services
def test_setup_creates_a_postgres_rabbitmq_profile(tmp_path):
    """``--use-postgres --use-rabbitmq``: a role and database of its own, the RabbitMQ broker."""
    services = sys.modules['aiida_trainspot_tests_services']  # loaded by conftest.py
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'config')}
    env.pop('AIIDA_PROFILE', None)
    command = [_runner('aiida-trainspot'), 'setup', '--profile', 'cli-pg', '--use-postgres']
    command += ['--use-rabbitmq', '--no-localhost', '--pseudo-folder', str(tmp_path / 'none')]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    config = tmp_path / 'config' / '.aiida' / 'config.json'
    storage = {}
    if config.is_file():
        storage = json.loads(config.read_text())['profiles'].get('cli-pg', {}).get('storage', {})
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        line = result.stdout.splitlines()[0]
        assert line == 'profile cli-pg: created (core.psql_dos, core.rabbitmq), default profile'
        check = (
            'from aiida import load_profile, orm; p = load_profile(); '
            'print(p.name, orm.User.collection.get_default().email, orm.Node.collection.count())'
        )
        status = subprocess.run(
            [sys.executable, '-c', check], env=env, capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stderr
        assert status.stdout.split() == ['cli-pg', 'aiida@localhost', '0']
    finally:
        name = storage.get('config', {}).get('database_name')
        if name:
            services.drop_database(name, storage['config']['database_username'])


@pytest.mark.slow
def test_setup_registers_the_slurm_cluster_from_yaml(slurm_cluster, restore_storage, tmp_path):
    cluster = _cluster()
    config = {
        'computer': {
            'label': 'cli-cluster',
            'hostname': cluster.HOST,
            'port': cluster.ssh_port(),
            'username': cluster.USERNAME,
            'key_filename': str(cluster.key_filename()),
            'key_policy': 'AutoAddPolicy',  # the cluster's host key is its own
            'load_system_host_keys': False,
            'safe_interval': 0.0,
            'scheduler': 'core.slurm',
            'transport': 'core.ssh',
            'work_dir': str(tmp_path / 'remote' / '{username}'),
            'mpirun_command': 'srun',
            'default_mpiprocs_per_machine': 1,
            'prepend_text': 'export OMP_NUM_THREADS=1',
            'job_poll_interval': 1.0,
        },
        'codes': {
            'trainspot-evaluate': {
                'filepath': _runner('trainspot-evaluate'),
                'plugin': 'trainspot.evaluation',
                'prepend_text': 'export MKL_NUM_THREADS=1',
            },
            'pw': {'filepath': '/usr/bin/pw.x', 'plugin': 'quantumespresso.pw'},
        },
    }
    path = tmp_path / 'cluster.yaml'
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    args = ['--no-localhost', '--pseudo-folder', str(tmp_path / 'none'), '--config', str(path)]
    first = _invoke(*args)
    assert first.exit_code == 0, first.output
    lines = _lines(first)
    assert lines[1] == 'pseudo family trainspot-pbe-C: skipped, no folder ' + str(tmp_path / 'none')
    assert lines[2].startswith('computer cli-cluster: created (127.0.0.1, core.ssh + core.slurm')
    assert lines[3].startswith('computer cli-cluster: configured (')
    assert lines[4].startswith('code trainspot-evaluate@cli-cluster: created (')
    assert lines[5] == 'code pw@cli-cluster: created (/usr/bin/pw.x, quantumespresso.pw)'
    assert len(lines) == 6

    computer = orm.load_computer('cli-cluster')
    assert computer.get_mpirun_command() == ['srun']
    assert computer.get_default_mpiprocs_per_machine() == 1
    assert computer.get_prepend_text() == 'export OMP_NUM_THREADS=1'
    auth = computer.get_configuration()
    assert auth['port'] == cluster.ssh_port() and auth['look_for_keys'] is False
    code = orm.load_code('trainspot-evaluate@cli-cluster')
    assert code.prepend_text == 'export MKL_NUM_THREADS=1'
    with computer.get_transport() as transport:
        assert transport.whoami() == 'root'
        for label in ('trainspot-evaluate', 'pw'):
            executable = str(orm.load_code(f'{label}@cli-cluster').filepath_executable)
            assert transport.isfile(executable), executable
        scheduler = computer.get_scheduler()
        scheduler.set_transport(transport)
        assert isinstance(scheduler.get_jobs(as_dict=True), dict)  # squeue over SSH

    second = _invoke(*args)
    assert second.exit_code == 0, second.output
    assert 'created' not in second.output and 'configured' not in second.output, second.output
    assert 'computer cli-cluster: configuration kept' in _lines(second)


@pytest.mark.parametrize(
    ('content', 'key'),
    [
        ({'computer': {'label': 'x', 'hostname': 'h'}, 'queues': {}}, '`queues`'),
        ({'computer': {'label': 'x', 'hostname': 'h', 'portt': 22}}, '`computer.portt`'),
        (
            {
                'computer': {'label': 'x', 'hostname': 'h'},
                'codes': {'pw': {'filepath': '/bin/pw.x', 'plugin': 'quantumespresso.pw', 'x': 1}},
            },
            '`codes.pw.x`',
        ),
        ({'computer': {'label': 'x', 'hostname': 'h', 'scheduler': 'core.sge2'}}, 'core.sge2'),
        ({'computer': {'hostname': 'h'}}, '`computer.label` is required'),
        (
            {'computer': {'label': 'x', 'hostname': 'h', 'transport': 'core.local', 'port': 1}},
            'port',
        ),
    ],
)
def test_bad_config_is_one_line(content, key, tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(content))
    computers = orm.Computer.collection.count()
    result = _invoke('--config', str(path))
    assert result.exit_code != 0
    assert len(_lines(result)) == 1, result.output
    assert key in result.output and str(path) in result.output
    assert result.output.startswith('Error: --config:')
    assert 'Traceback' not in result.output
    assert orm.Computer.collection.count() == computers  # validated before anything is created


def test_missing_or_broken_config_is_one_line(tmp_path):
    missing = _invoke('--config', str(tmp_path / 'missing.yaml'))
    assert missing.exit_code != 0
    assert _lines(missing) == [f'Error: --config: {tmp_path / "missing.yaml"}: no such file']
    broken = tmp_path / 'broken.yaml'
    broken.write_text('computer: {label: x\n  hostname: [')
    result = _invoke('--config', str(broken))
    assert result.exit_code != 0
    assert len(_lines(result)) == 1 and 'not readable YAML' in result.output, result.output
    assert 'Traceback' not in result.output
