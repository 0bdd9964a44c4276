"""``aiida-trainspot setup``: a profile, computers, codes and pseudopotentials in one command.

Idempotent: anything that already exists with the same label (profile, computer, code, pseudo
family) is kept as it is, never changed nor duplicated. One line is printed per thing, created or
kept; a missing executable is one line and is skipped. Bad input (an unknown key in ``--config``,
a missing file) ends in one ``Error:`` line and a non-zero exit status, before anything is created.

- **Profile**: the one loaded already (in a Python session, in the tests), else the default
  profile, else a new one made the way ``verdi presto --use-zeromq`` makes it (``core.sqlite_dos``
  storage, the ZeroMQ broker: nothing to install); ``--use-postgres`` / ``--use-rabbitmq`` use
  PostgreSQL storage / the RabbitMQ broker instead (servers on localhost, as ``verdi presto``).
- **localhost**: ``core.local`` + ``core.direct``, with the codes of :data:`LOCAL_CODES` found on
  ``PATH`` or next to this Python (the package's runners, ``mace_run_train``, ``mtt``).
- **Pseudopotentials**: a ``CutoffsPseudoPotentialFamily`` from a folder of UPF files.
- **A remote computer** (``--config FILE.yaml``): a computer with its transport and scheduler,
  configured for the current user, and its codes; see :data:`COMPUTER_KEYS` and :data:`CODE_KEYS`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import click

#: label, executable, calculation plugin of the codes set up on localhost.
LOCAL_CODES: tuple[tuple[str, str, str], ...] = (
    ('pw', 'pw.x', 'quantumespresso.pw'),
    ('lmp', 'lmp', 'lammps.raw'),
    ('mace_run_train', 'mace_run_train', 'trainspot.mace.train'),
    ('mtt', 'mtt', 'trainspot.metatrain.train'),
    ('trainspot-ase-label', 'trainspot-ase-label', 'trainspot.ase.label'),
    ('trainspot-ase-md', 'trainspot-ase-md', 'trainspot.ase.md'),
    ('trainspot-evaluate', 'trainspot-evaluate', 'trainspot.evaluation'),
)
#: Executables of the Python environment: looked up next to ``sys.executable`` first.
PYTHON_EXECUTABLES = frozenset(
    {'mace_run_train', 'mtt', 'trainspot-ase-label', 'trainspot-ase-md', 'trainspot-evaluate'}
)
LOCALHOST = 'localhost'
DEFAULT_PSEUDO_FOLDER = '/usr/share/espresso/pseudo'
DEFAULT_PROFILE_NAME = 'trainspot'

#: Keys of the ``computer`` section of ``--config`` that set the computer up (besides those of its
#: transport's configuration, e.g. ``username``, ``port``, ``key_filename`` for ``core.ssh``).
COMPUTER_KEYS = {
    'label': 'the computer label (required)',
    'hostname': 'the host to connect to (required)',
    'description': 'free text',
    'transport': 'transport plugin (default core.ssh)',
    'scheduler': 'scheduler plugin (default core.slurm)',
    'work_dir': 'absolute work directory on the computer; {username} is replaced',
    'shebang': 'first line of job scripts (default #!/bin/bash)',
    'mpirun_command': 'e.g. "srun" or "mpirun -np {tot_num_mpiprocs}"',
    'default_mpiprocs_per_machine': 'MPI processes per machine by default',
    'default_memory_per_machine': 'memory per machine by default, in kB',
    'use_double_quotes': 'quote the arguments of job scripts with double quotes',
    'prepend_text': 'lines run at the start of every job script (module loads, ...)',
    'append_text': 'lines run at the end of every job script',
    'job_poll_interval': 'minimum seconds between two scheduler polls',
}
#: Keys of one entry of the ``codes`` section of ``--config``.
CODE_KEYS = {
    'filepath': 'absolute path of the executable on the computer (required)',
    'plugin': 'default calculation plugin, e.g. quantumespresso.pw (required)',
    'description': 'free text',
    'prepend_text': 'lines run before the executable (module loads, ...)',
    'append_text': 'lines run after the executable',
    'with_mpi': 'whether the code runs with the computer mpirun command',
    'use_double_quotes': 'quote the arguments with double quotes',
}
#: Defaults of the SSH configuration that differ from AiiDA's (look_for_keys: when no
#: key_filename is given; AiiDA's safe_interval is 5 s).
SSH_DEFAULTS = {'safe_interval': 1.0}


# --------------------------------------------------------------------------------------------------
# The YAML configuration: read and validated in full before anything is created.


def read_config(path: str) -> dict[str, Any]:
    """Return the validated ``computer`` and ``codes`` of a YAML file; ClickException if bad."""
    import yaml

    file = Path(path).expanduser()
    if not file.is_file():
        raise click.ClickException(f'--config: {path}: no such file')
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exception:
        detail = ' '.join(str(exception).split())
        raise click.ClickException(f'--config: {path}: not readable YAML: {detail}') from None
    if not isinstance(data, dict):
        raise click.ClickException(
            f'--config: {path}: expected a mapping with `computer` and `codes`'
        )
    _no_unknown_keys(path, '', data, {'computer', 'codes'})
    computer = data.get('computer')
    if not isinstance(computer, dict):
        raise click.ClickException(f'--config: {path}: `computer` must be a mapping')
    for key in ('label', 'hostname'):
        if not computer.get(key):
            raise click.ClickException(f'--config: {path}: `computer.{key}` is required')
    computer = {'transport': 'core.ssh', 'scheduler': 'core.slurm', **computer}
    transport = _entry_point(path, 'computer.transport', 'aiida.transports', computer['transport'])
    _entry_point(path, 'computer.scheduler', 'aiida.schedulers', computer['scheduler'])
    auth_keys = set(transport.get_valid_auth_params())
    _no_unknown_keys(path, 'computer.', computer, set(COMPUTER_KEYS) | auth_keys)
    codes = data.get('codes') or {}
    if not isinstance(codes, dict):
        raise click.ClickException(f'--config: {path}: `codes` must be a mapping of label: code')
    for label, code in codes.items():
        if not isinstance(code, dict):
            raise click.ClickException(f'--config: {path}: `codes.{label}` must be a mapping')
        _no_unknown_keys(path, f'codes.{label}.', code, set(CODE_KEYS))
        for key in ('filepath', 'plugin'):
            if not code.get(key):
                raise click.ClickException(f'--config: {path}: `codes.{label}.{key}` is required')
        _entry_point(path, f'codes.{label}.plugin', 'aiida.calculations', code['plugin'])
    return {'computer': computer, 'codes': codes, 'auth_keys': auth_keys}


def _no_unknown_keys(path: str, prefix: str, data: dict, known: set[str]) -> None:
    unknown = sorted(str(key) for key in data if key not in known)
    if unknown:
        raise click.ClickException(
            f'--config: {path}: unknown key `{prefix}{unknown[0]}` '
            f'(known: {", ".join(sorted(known))})'
        )


def _entry_point(path: str, key: str, group: str, name: Any):
    from aiida.common.exceptions import EntryPointError
    from aiida.plugins.entry_point import load_entry_point

    try:
        return load_entry_point(group, str(name))
    except EntryPointError:
        raise click.ClickException(
            f'--config: {path}: `{key}`: {name!r} is not an installed {group} plugin'
        ) from None


# --------------------------------------------------------------------------------------------------
# Profile.


def ensure_profile(name: str | None, use_postgres: bool, use_rabbitmq: bool) -> str:
    """Load the loaded, named or default profile, or create one; return its line."""
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    manager = get_manager()
    loaded = manager.get_profile()
    if loaded is not None and name in (None, loaded.name):
        return f'profile {loaded.name}: kept (loaded)'
    config = get_config(create=True)
    if name is None:
        name = config.default_profile_name
        if name is None:
            name = DEFAULT_PROFILE_NAME
    if name in config.profile_names:
        manager.load_profile(name, allow_switch=True)
        return f'profile {name}: kept'
    profile = _create_profile(config, name, use_postgres, use_rabbitmq)
    manager.load_profile(profile.name, allow_switch=True)
    return (
        f'profile {profile.name}: created ({profile.storage_backend}, '
        f'{profile.process_control_backend}), default profile'
    )


def _create_profile(config, name: str, use_postgres: bool, use_rabbitmq: bool):
    """What ``verdi presto`` does, with the broker chosen by the flags (ZeroMQ by default)."""
    from aiida.common import exceptions
    from aiida.manage.configuration import create_profile, get_config_option
    from aiida.plugins import BrokerFactory

    if use_rabbitmq:
        from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

        try:
            broker_config = detect_rabbitmq_config()
        except ConnectionError as exception:
            raise click.ClickException(f'--use-rabbitmq: {exception}') from None
        broker_backend = 'core.rabbitmq'
    else:
        broker_backend = 'core.zeromq'
        broker_config = BrokerFactory(broker_backend).get_default_config()
    storage_backend, storage_config = 'core.sqlite_dos', {}
    if use_postgres:  # after the broker check: no database is left behind when that fails
        storage_config = create_postgres_database(name, Path(config.dirpath))
        storage_backend = 'core.psql_dos'
    try:
        profile = create_profile(
            config,
            name=name,
            email=get_config_option('autofill.user.email') or 'aiida@localhost',
            storage_backend=storage_backend,
            storage_config=storage_config,
            broker_backend=broker_backend,
            broker_config=broker_config,
        )
    except (ValueError, TypeError, exceptions.AiidaException) as exception:
        raise click.ClickException(f'profile {name}: {exception}') from None
    config.set_option('runner.poll.interval', 1, scope=profile.name)
    config.set_default_profile(profile.name, overwrite=True)
    config.store()
    return profile


def create_postgres_database(profile: str, config_dir: Path) -> dict[str, Any]:
    """Create a role and a database it owns for a ``core.psql_dos`` profile; return its settings.

    Connects as the libpq environment says (``PGHOST``, ``PGPORT``, ``PGUSER``, ``PGPASSWORD``;
    default ``postgres`` on localhost:5432). The database takes the server's default locale
    (``TEMPLATE template0``): unlike ``verdi presto --use-postgres``, it does not need the
    ``en_US.UTF-8`` locale on the server.
    """
    import secrets

    import psycopg
    from psycopg import sql

    params = {
        'host': os.environ.get('PGHOST', 'localhost'),
        'port': int(os.environ.get('PGPORT', '5432')),
        'user': os.environ.get('PGUSER', 'postgres'),
        'dbname': 'postgres',
        'connect_timeout': 5,
    }
    if os.environ.get('PGPASSWORD'):
        params['password'] = os.environ['PGPASSWORD']
    safe = ''.join(c if c.isalnum() else '_' for c in profile.lower())
    name = f'aiida_{safe}_{secrets.token_hex(3)}'
    password = secrets.token_hex(16)
    where = f'{params["user"]}@{params["host"]}:{params["port"]}'
    try:
        with psycopg.connect(**params, autocommit=True) as connection:
            connection.execute(
                sql.SQL('CREATE ROLE {} LOGIN PASSWORD {}').format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )
            try:
                connection.execute(
                    sql.SQL(
                        "CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0"
                    ).format(sql.Identifier(name), sql.Identifier(name))
                )
            except psycopg.Error:
                connection.execute(sql.SQL('DROP ROLE {}').format(sql.Identifier(name)))
                raise
    except psycopg.Error as exception:
        detail = ' '.join(str(exception).split())
        raise click.ClickException(f'--use-postgres: PostgreSQL at {where}: {detail}') from None
    return {
        'database_hostname': params['host'],
        'database_port': params['port'],
        'database_name': name,
        'database_username': name,
        'database_password': password,
        'repository_uri': (config_dir / 'repository' / profile).as_uri(),
    }


# --------------------------------------------------------------------------------------------------
# Computers and codes.


def _existing_computer(label: str):
    from aiida import orm

    return orm.QueryBuilder().append(orm.Computer, filters={'label': label}).first(flat=True)


def ensure_localhost(work_dir: str | None) -> tuple[Any, str]:
    """Return the ``localhost`` computer (created and configured if missing) and its line."""
    from aiida import orm
    from aiida.manage import get_manager
    from aiida.manage.configuration import get_config

    computer = _existing_computer(LOCALHOST)
    if computer is not None:
        line = f'computer {LOCALHOST}: kept ({computer.get_workdir()})'
    else:
        if work_dir is None:
            profile = get_manager().get_profile().name
            work_dir = str(Path(get_config().dirpath) / 'scratch' / profile)
        work_dir = os.path.abspath(os.path.expanduser(work_dir))
        computer = orm.Computer(
            label=LOCALHOST,
            hostname='localhost',
            description='This machine (aiida-trainspot setup)',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=work_dir,
        )
        mpirun = ['mpirun', '-np', '{tot_num_mpiprocs}']
        if hasattr(os, 'geteuid') and os.geteuid() == 0:
            mpirun.insert(1, '--allow-run-as-root')  # OpenMPI refuses root otherwise
        computer.set_mpirun_command(mpirun)
        computer.set_prepend_text('export OMP_NUM_THREADS=1')
        computer.set_default_mpiprocs_per_machine(1)
        computer.set_minimum_job_poll_interval(1.0)
        computer.store()
        line = f'computer {LOCALHOST}: created (core.local + core.direct, {work_dir})'
    if not computer.is_configured:
        computer.configure(safe_interval=0.0)
    return computer, line


def find_executable(name: str) -> str | None:
    """Absolute path of ``name``: next to this Python first for the Python tools, on PATH."""
    here = os.path.dirname(sys.executable)
    if name in PYTHON_EXECUTABLES:
        found = shutil.which(name, path=here) or shutil.which(name)
    else:
        found = shutil.which(name) or shutil.which(name, path=here)
    return os.path.abspath(found) if found else None


def ensure_code(computer, label: str, filepath: str, plugin: str, **kwargs: Any) -> str:
    """Create the InstalledCode ``label@computer`` unless it exists; return its line."""
    from aiida import orm

    existing = (
        orm.QueryBuilder()
        .append(orm.InstalledCode, filters={'label': label, 'dbcomputer_id': computer.pk})
        .first(flat=True)
    )
    name = f'{label}@{computer.label}'
    if existing is not None:
        return (
            f'code {name}: kept ({existing.filepath_executable}, '
            f'{existing.default_calc_job_plugin})'
        )
    orm.InstalledCode(
        label=label,
        computer=computer,
        filepath_executable=filepath,
        default_calc_job_plugin=plugin,
        **{k: v for k, v in kwargs.items() if v is not None},
    ).store()
    return f'code {name}: created ({filepath}, {plugin})'


def ensure_remote(config: dict[str, Any]) -> list[str]:
    """Set up and configure the computer of ``--config`` and create its codes; return the lines."""
    from aiida import orm

    settings = dict(config['computer'])
    label = str(settings['label'])
    auth = {k: settings.pop(k) for k in list(settings) if k in config['auth_keys']}
    lines = []
    computer = _existing_computer(label)
    if computer is not None:
        lines.append(
            f'computer {label}: kept ({computer.hostname}, {computer.transport_type} + '
            f'{computer.scheduler_type})'
        )
    else:
        computer = orm.Computer(
            label=label,
            hostname=str(settings['hostname']),
            description=str(settings.get('description', '')),
            transport_type=settings['transport'],
            scheduler_type=settings['scheduler'],
            workdir=str(settings.get('work_dir', '/scratch/{username}/aiida')),
        )
        if 'shebang' in settings:
            computer.set_shebang(str(settings['shebang']))
        if 'mpirun_command' in settings:
            command = settings['mpirun_command']
            computer.set_mpirun_command(
                shlex.split(command) if isinstance(command, str) else list(command)
            )
        if settings.get('default_mpiprocs_per_machine') is not None:
            computer.set_default_mpiprocs_per_machine(int(settings['default_mpiprocs_per_machine']))
        if settings.get('default_memory_per_machine') is not None:
            computer.set_default_memory_per_machine(int(settings['default_memory_per_machine']))
        if 'use_double_quotes' in settings:
            computer.set_use_double_quotes(bool(settings['use_double_quotes']))
        if 'prepend_text' in settings:
            computer.set_prepend_text(str(settings['prepend_text']))
        if 'append_text' in settings:
            computer.set_append_text(str(settings['append_text']))
        if 'job_poll_interval' in settings:
            computer.set_minimum_job_poll_interval(float(settings['job_poll_interval']))
        try:
            computer.validate()
        except Exception as exception:
            raise click.ClickException(f'computer {label}: {exception}') from None
        computer.store()
        lines.append(
            f'computer {label}: created ({computer.hostname}, {computer.transport_type} + '
            f'{computer.scheduler_type}, {computer.get_workdir()})'
        )
    if computer.is_configured:
        lines.append(f'computer {label}: configuration kept')
    else:
        if 'key_filename' in auth:
            auth['key_filename'] = os.path.expanduser(str(auth['key_filename']))
        if 'username' in config['auth_keys']:  # an SSH transport
            auth = {**SSH_DEFAULTS, 'look_for_keys': 'key_filename' not in auth, **auth}
        try:
            computer.configure(**auth)
        except ValueError as exception:
            raise click.ClickException(f'computer {label}: {exception}') from None
        shown = ', '.join(f'{k}={auth[k]}' for k in sorted(auth))
        lines.append(f'computer {label}: configured ({shown})')
    for code_label, code in config['codes'].items():
        lines.append(
            ensure_code(
                computer,
                str(code_label),
                str(code['filepath']),
                str(code['plugin']),
                description=code.get('description'),
                prepend_text=code.get('prepend_text'),
                append_text=code.get('append_text'),
                with_mpi=code.get('with_mpi'),
                use_double_quotes=code.get('use_double_quotes'),
            )
        )
    return lines


def ensure_pseudo_family(label: str, elements: tuple[str, ...], folder: str) -> str:
    """Create the pseudopotential family unless it exists; return its line."""
    from aiida import orm
    from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily

    from aiida_trainspot.labelling.qe.pseudos import create_pseudo_family

    existed = (
        orm.QueryBuilder()
        .append(CutoffsPseudoPotentialFamily, filters={'label': label})
        .first(flat=True)
    )
    if existed is None and not Path(folder).is_dir():
        return f'pseudo family {label}: skipped, no folder {folder}'
    try:
        family = create_pseudo_family(label, elements, folder=folder)
    except ValueError as exception:
        raise click.ClickException(f'pseudo family {label}: {exception}') from None
    state = 'kept' if existed is not None else f'created from {folder}'
    return f'pseudo family {label}: {state} ({", ".join(sorted(family.elements))})'


def local_codes(computer) -> list[str]:
    """Create (or keep) the codes of :data:`LOCAL_CODES` on ``computer``; one line each."""
    lines = []
    for label, executable, plugin in LOCAL_CODES:
        path = find_executable(executable)
        if path is None:
            lines.append(f'code {label}@{LOCALHOST}: skipped, {executable} not found')
            continue
        lines.append(ensure_code(computer, label, path, plugin))
    return lines


# --------------------------------------------------------------------------------------------------
# The command.


@click.command('setup')
@click.option(
    '--profile',
    'profile_name',
    metavar='NAME',
    help='Profile to use, created if missing. Default: the loaded profile, else the default '
    f'profile, else a new one named {DEFAULT_PROFILE_NAME}.',
)
@click.option(
    '--use-postgres', is_flag=True, help='A new profile stores its data in PostgreSQL (localhost).'
)
@click.option(
    '--use-rabbitmq', is_flag=True, help='A new profile uses RabbitMQ (localhost), not ZeroMQ.'
)
@click.option(
    '--work-dir',
    type=click.Path(file_okay=False),
    help='Work directory of a new localhost computer. Default: scratch/<profile> in the '
    'AiiDA configuration folder.',
)
@click.option(
    '--localhost/--no-localhost',
    default=True,
    show_default=True,
    help='Set up the localhost computer and its codes.',
)
@click.option(
    '--pseudo-family',
    metavar='LABEL',
    help='Label of the pseudopotential family. Default: trainspot-pbe-<elements>.',
)
@click.option(
    '-e',
    '--element',
    'elements',
    multiple=True,
    default=('C',),
    show_default=True,
    help='Element of the pseudopotential family (repeat).',
)
@click.option(
    '--pseudo-folder',
    type=click.Path(file_okay=False),
    default=DEFAULT_PSEUDO_FOLDER,
    show_default=True,
    help='Folder of UPF files; no family is made if it does not exist.',
)
@click.option(
    '--config',
    'config_file',
    metavar='FILE.yaml',
    help='A remote computer and its codes to register (see docs/scale-out.md).',
)
def setup(
    profile_name: str | None,
    use_postgres: bool,
    use_rabbitmq: bool,
    work_dir: str | None,
    localhost: bool,
    pseudo_family: str | None,
    elements: tuple[str, ...],
    pseudo_folder: str,
    config_file: str | None,
) -> None:
    """Set up a profile, localhost with its codes, pseudopotentials and a remote computer.

    Idempotent: what already exists with the same label is kept as it is.
    """
    config = read_config(config_file) if config_file else None
    elements = tuple(sorted(set(elements)))
    click.echo(ensure_profile(profile_name, use_postgres, use_rabbitmq))
    if localhost:
        computer, line = ensure_localhost(work_dir)
        click.echo(line)
        for line in local_codes(computer):
            click.echo(line)
    label = pseudo_family or f'trainspot-pbe-{"-".join(elements)}'
    click.echo(ensure_pseudo_family(label, elements, pseudo_folder))
    if config is not None:
        for line in ensure_remote(config):
            click.echo(line)
