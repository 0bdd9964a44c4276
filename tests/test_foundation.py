"""Foundation: the package imports cleanly, its entry points load, both daemons run processes."""

import importlib.metadata
import json
import os
import pathlib
import subprocess
import sys
import textwrap
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DISTRIBUTION = 'aiida-trainspot'
VERDI = pathlib.Path(sys.executable).with_name('verdi')


def _ours(group: str, name: str) -> bool:
    """Whether an entry point is one this project must provide and load."""
    if group.startswith('aiida.'):
        return name.startswith('trainspot.')
    if group == 'console_scripts':
        return name == 'aiida-trainspot' or name.startswith('trainspot.')
    return False


def declared_entry_points() -> set[tuple[str, str, str]]:
    """Return ``(group, name, value)`` of the entry points that pyproject.toml declares."""
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    groups = dict(project.get('entry-points', {}))
    groups['console_scripts'] = project.get('scripts', {})
    return {
        (group, name, value)
        for group, entries in groups.items()
        for name, value in entries.items()
        if _ours(group, name)
    }


def installed_entry_points() -> set[tuple[str, str, str]]:
    """Return ``(group, name, value)`` of the same entry points as installed in the environment."""
    distribution = importlib.metadata.distribution(DISTRIBUTION)
    return {
        (ep.group, ep.name, ep.value)
        for ep in distribution.entry_points
        if _ours(ep.group, ep.name)
    }


def _run(command, **kwargs):
    """Run ``command`` with the session's environment (its ``AIIDA_PATH`` included)."""
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
        check=False,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# Importing the package.

_IMPORT_PROBE = textwrap.dedent(
    """
    import importlib, json, pkgutil, traceback
    import aiida_trainspot
    from aiida.manage import get_manager

    errors, modules = {}, ['aiida_trainspot']
    loaded_by = ['aiida_trainspot'] if get_manager().get_profile() is not None else []
    def onerror(name):
        errors[name] = traceback.format_exc(limit=3)
    walk = pkgutil.walk_packages(aiida_trainspot.__path__, 'aiida_trainspot.', onerror=onerror)
    for info in walk:
        modules.append(info.name)
        try:
            importlib.import_module(info.name)
        except BaseException:
            errors[info.name] = traceback.format_exc(limit=3)
        if get_manager().get_profile() is not None and not loaded_by:
            loaded_by.append(info.name)
    profile = get_manager().get_profile()
    print(json.dumps({
        'modules': modules,
        'errors': errors,
        'profile': None if profile is None else profile.name,
        'loaded_by': loaded_by,
    }))
    """
)


@pytest.fixture(scope='module')
def import_probe(aiida_profile):
    """Import every module of the package in a fresh interpreter; return what happened.

    The interpreter sees the test configuration, whose default profile could be loaded: a module
    that loads a profile on import (``load_profile()``, ``orm.load_node`` ...) would succeed there
    and be caught, instead of failing for want of a profile.
    """
    result = _run([sys.executable, '-c', _IMPORT_PROBE], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_does_not_load_profile(import_probe):
    assert import_probe['profile'] is None, (
        f'importing aiida_trainspot loaded the profile {import_probe["profile"]!r}; '
        f'first seen after importing {import_probe["loaded_by"]}'
    )


def test_every_module_imports(import_probe):
    assert len(import_probe['modules']) >= 1
    assert not import_probe['errors'], '\n'.join(
        f'{name}:\n{error}' for name, error in import_probe['errors'].items()
    )


# --------------------------------------------------------------------------------------------------
# Entry points.


def test_entry_points_declared_are_installed():
    declared, installed = declared_entry_points(), installed_entry_points()
    assert declared, 'pyproject.toml declares no entry point of aiida-trainspot'
    assert declared == installed, (
        f'declared only: {sorted(declared - installed)}; '
        f'installed only: {sorted(installed - declared)} (reinstall the package: pip install -e .)'
    )


def test_aiida_entry_points_use_trainspot_prefix():
    project = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
    wrong = [
        f'{group}: {name}'
        for group, entries in project.get('entry-points', {}).items()
        if group.startswith('aiida.')
        for name in entries
        if not name.startswith('trainspot.')
    ]
    assert not wrong, f'AiiDA entry points must be named trainspot.*: {wrong}'


def _expected_type(group):
    """Return a predicate the loaded object of ``group`` must satisfy, with its description."""
    from aiida import engine, orm, parsers

    def process(base):
        return lambda obj: (
            (isinstance(obj, type) and issubclass(obj, base))
            or bool(getattr(obj, 'is_process_function', False))
        )

    return {
        'aiida.data': (
            lambda obj: isinstance(obj, type) and issubclass(obj, orm.Data),
            'a Data class',
        ),
        'aiida.calculations': (process(engine.CalcJob), 'a CalcJob or a calcfunction'),
        'aiida.workflows': (process(engine.WorkChain), 'a WorkChain or a workfunction'),
        'aiida.parsers': (
            lambda obj: isinstance(obj, type) and issubclass(obj, parsers.Parser),
            'a Parser class',
        ),
    }.get(group, (callable, 'callable'))


@pytest.mark.parametrize(
    ('group', 'name', 'value'),
    sorted(declared_entry_points()),
    ids=lambda value: str(value),
)
def test_entry_point_loads(group, name, value):
    found = [
        ep for ep in importlib.metadata.entry_points(group=group, name=name) if ep.value == value
    ]
    assert len(found) == 1, f'installed as {found}, not once: reinstall (pip install -e .)'
    (entry_point,) = found
    loaded = entry_point.load()
    predicate, description = _expected_type(group)
    assert predicate(loaded), f'{group} {name} = {value} loads {loaded!r}, not {description}'


def test_verdi_lists_pes_data():
    result = _run([str(VERDI), 'plugin', 'list', 'aiida.data'])
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'trainspot.pes' in result.stdout.split(), result.stdout
    detail = _run([str(VERDI), 'plugin', 'list', 'aiida.data', 'trainspot.pes'])
    assert detail.returncode == 0, detail.stdout + detail.stderr


# --------------------------------------------------------------------------------------------------
# Profiles, computer and codes.


def test_default_profile_is_sqlite_zeromq(aiida_profile, tmp_path_factory):
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    assert get_manager().get_profile().name == aiida_profile.name
    assert aiida_profile.storage_backend == 'core.sqlite_dos'
    assert aiida_profile.process_control_backend == 'core.zeromq'
    basetemp = tmp_path_factory.getbasetemp()
    assert pathlib.Path(get_config().dirpath).is_relative_to(basetemp)
    assert pathlib.Path(os.environ['AIIDA_PATH']).is_relative_to(basetemp)


def test_codes(aiida_localhost, pw_code, lammps_code, code_factory):
    assert aiida_localhost.get_mpirun_command()[:2] == ['/usr/bin/mpirun', '--allow-run-as-root']
    assert aiida_localhost.is_configured
    assert aiida_localhost.get_transport().__class__.__name__ == 'LocalTransport'
    assert pw_code.computer.pk == lammps_code.computer.pk == aiida_localhost.pk
    assert pw_code.get_builder().process_class.__name__ == 'PwCalculation'
    assert lammps_code.get_builder().process_class.__name__ == 'LammpsBaseCalculation'
    assert code_factory('pw', pw_code.filepath_executable, 'quantumespresso.pw').pk == pw_code.pk
    with pytest.raises(ValueError, match='exists with'):
        code_factory('pw', '/bin/true', 'quantumespresso.pw')


# --------------------------------------------------------------------------------------------------
# Daemon round trips.


def _add_multiply(submit_and_await):
    """Submit the ``add_multiply`` work function (two calcfunctions, no code) and await it."""
    from aiida.engine import submit
    from aiida.orm import Int
    from aiida.plugins import WorkflowFactory

    add_multiply = WorkflowFactory('core.arithmetic.add_multiply')
    # ``submit_and_await`` only submits classes and builders; it awaits any node.
    node = submit_and_await(submit(add_multiply, x=Int(3), y=Int(4), z=Int(5)), timeout=60)
    assert node.is_finished_ok, (node.process_state, node.exit_status, node.exit_message)
    assert node.outputs.result.value == (3 + 4) * 5
    assert len(node.called) == 2  # add, then multiply
    return node


@pytest.mark.timeout(180)
def test_daemon_sqlite_zeromq(aiida_profile, submit_and_await, started_daemon_client):
    assert started_daemon_client.profile.name == aiida_profile.name
    assert started_daemon_client.profile.process_control_backend == 'core.zeromq'
    _add_multiply(submit_and_await)


@pytest.mark.timeout(180)
def test_localhost_runs_mpi_calcjob(aiida_localhost, code_factory, submit_and_await):
    """A CalcJob through the daemon, the localhost transport and scheduler, and ``mpirun -np 1``."""
    from aiida.orm import Int

    builder = code_factory('bash', '/bin/bash', 'core.arithmetic.add').get_builder()
    builder.x, builder.y = Int(1), Int(2)
    builder.metadata.options.withmpi = True
    node = submit_and_await(builder, timeout=60)
    assert node.is_finished_ok, (node.process_state, node.exit_status, node.exit_message)
    assert node.outputs.sum.value == 3
    assert node.computer.pk == aiida_localhost.pk
    workdir = pathlib.Path(node.outputs.remote_folder.get_remote_path())
    assert workdir.is_relative_to(aiida_localhost.get_workdir())
    script = (workdir / '_aiidasubmit.sh').read_text()
    assert 'export OMP_NUM_THREADS=1' in script
    assert "'/usr/bin/mpirun' '--allow-run-as-root' '-np' '1' '/bin/bash'" in script


@pytest.mark.services
@pytest.mark.timeout(300)
def test_daemon_psql_rabbitmq(aiida_services_profile, submit_and_await, started_daemon_client):
    from aiida.manage import get_manager

    assert get_manager().get_profile().name == aiida_services_profile.name
    assert aiida_services_profile.storage_backend == 'core.psql_dos'
    assert aiida_services_profile.process_control_backend == 'core.rabbitmq'
    assert started_daemon_client.profile.name == aiida_services_profile.name
    node = _add_multiply(submit_and_await)
    assert node.backend.__class__.__name__ == 'PsqlDosBackend'
