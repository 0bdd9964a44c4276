"""Check, start and provision the PostgreSQL and RabbitMQ servers used by tests marked ``services``.

Kept free of AiiDA and pytest imports so that it can also be run on its own, e.g. by a CI script
that wants the servers up before the test session starts::

    .venv/bin/python tests/services.py          # start what is down, report, exit 1 on failure

Connection settings, all optional:

* PostgreSQL admin role: the libpq variables ``PGHOST`` (default ``127.0.0.1``), ``PGPORT``
  (``5432``), ``PGUSER`` (``postgres``), ``PGPASSWORD`` (none).
* RabbitMQ: ``TRAINSPOT_TEST_RMQ_HOST`` (``127.0.0.1``), ``TRAINSPOT_TEST_RMQ_PORT`` (``5672``),
  ``TRAINSPOT_TEST_RMQ_USER`` / ``TRAINSPOT_TEST_RMQ_PASSWORD`` (``guest`` / ``guest``).

Where they come from: the environment first; then the settings file that ``.ci/install.sh``
writes, ``TRAINSPOT_SERVICES_ENV`` (default ``/etc/aiida-trainspot/services.env``: ``KEY=value``
lines naming the role it provisions, ``trainspot_test``, with its password); then the defaults
above. The file's role and password count only together, and only when neither ``PGUSER`` nor
``PGPASSWORD`` is set. On import, the settings taken from the file are put into ``os.environ``,
so that programs the tests start (``aiida-trainspot setup --use-postgres``) connect the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PG_START_TIMEOUT = 30.0
RMQ_START_TIMEOUT = 60.0
_LOCK_FILE = pathlib.Path(tempfile.gettempdir()) / 'aiida-trainspot-test-services.lock'
SETTINGS_FILE = pathlib.Path(
    os.environ.get('TRAINSPOT_SERVICES_ENV', '/etc/aiida-trainspot/services.env')
)
_SETTINGS_KEYS = (
    'PGHOST',
    'PGPORT',
    'PGUSER',
    'PGPASSWORD',
    'TRAINSPOT_TEST_RMQ_HOST',
    'TRAINSPOT_TEST_RMQ_PORT',
    'TRAINSPOT_TEST_RMQ_USER',
    'TRAINSPOT_TEST_RMQ_PASSWORD',
)


class ServiceUnavailableError(RuntimeError):
    """A server is down and cannot be started; the message says what was tried and what failed."""


def read_settings_file(path: pathlib.Path = SETTINGS_FILE) -> dict[str, str]:
    """Return the known ``KEY=value`` settings of ``path``; empty if it is missing or unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    settings = {}
    for line in lines:
        key, sep, value = line.strip().partition('=')
        if sep and key in _SETTINGS_KEYS:
            settings[key] = value.strip().strip('\'"')
    return settings


def apply_settings_file(path: pathlib.Path = SETTINGS_FILE, environ=os.environ) -> dict[str, str]:
    """Put the settings of ``path`` into ``environ`` where the environment does not set them.

    The role and its password go together: both are taken from the file, or neither (when the
    environment names a role or a password of its own).

    :returns: the settings that were added.
    """
    settings = read_settings_file(path)
    if environ.get('PGUSER') or environ.get('PGPASSWORD'):
        settings.pop('PGUSER', None)
        settings.pop('PGPASSWORD', None)
    added = {key: value for key, value in settings.items() if not environ.get(key)}
    environ.update(added)
    return added


def pg_admin_params() -> dict:
    """Return the connection parameters of the PostgreSQL admin role (libpq environment)."""
    params = {
        'host': os.environ.get('PGHOST', '127.0.0.1'),
        'port': int(os.environ.get('PGPORT', '5432')),
        'user': os.environ.get('PGUSER', 'postgres'),
        'dbname': 'postgres',
        'connect_timeout': 3,
    }
    if os.environ.get('PGPASSWORD'):
        params['password'] = os.environ['PGPASSWORD']
    return params


def rmq_params() -> dict:
    """Return the RabbitMQ connection parameters, as ``core.rabbitmq`` broker settings."""
    return {
        'broker_protocol': 'amqp',
        'broker_username': os.environ.get('TRAINSPOT_TEST_RMQ_USER', 'guest'),
        'broker_password': os.environ.get('TRAINSPOT_TEST_RMQ_PASSWORD', 'guest'),
        'broker_host': os.environ.get('TRAINSPOT_TEST_RMQ_HOST', '127.0.0.1'),
        'broker_port': int(os.environ.get('TRAINSPOT_TEST_RMQ_PORT', '5672')),
        'broker_virtual_host': '',
    }


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Return whether a TCP connection to ``host:port`` can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _services_lock():
    """Serialise starting servers between concurrent sessions (e.g. pytest-xdist workers)."""
    with open(_LOCK_FILE, 'a+') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: list[str], timeout: float = 120.0) -> str:
    """Run ``command``; return a one-line summary of its outcome for error messages."""
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exception:
        return f'`{" ".join(command)}` could not run: {exception}'
    output = ' '.join((result.stdout + result.stderr).split())[-500:]
    return f'`{" ".join(command)}` exited {result.returncode}: {output or "(no output)"}'


def _which(program: str) -> str | None:
    """Return the path of ``program``, looking in the sbin folders too (servers live there)."""
    path = os.pathsep.join([os.environ.get('PATH', ''), '/usr/local/sbin', '/usr/sbin', '/sbin'])
    return shutil.which(program, path=path)


def _pg_connect(**overrides):
    import psycopg

    return psycopg.connect(**{**pg_admin_params(), **overrides}, autocommit=True)


def _pg_error() -> str | None:
    """Return ``None`` if the admin role can connect, else the connection error."""
    try:
        with _pg_connect():
            return None
    except Exception as exception:
        return f'{type(exception).__name__}: {" ".join(str(exception).split())}'


def ensure_postgres(timeout: float = PG_START_TIMEOUT) -> str:
    """Make sure PostgreSQL accepts admin connections, starting the local clusters if it is down.

    :returns: what was done, for the log.
    :raises ServiceUnavailableError: naming the connection error and each start attempt.
    """
    params = pg_admin_params()
    where = f'{params["user"]}@{params["host"]}:{params["port"]}'
    with _services_lock():
        error = _pg_error()
        if error is None:
            return f'PostgreSQL up at {where}'
        if port_open(params['host'], params['port']):
            # The server runs but refuses us: starting it again cannot help.
            raise ServiceUnavailableError(
                f'PostgreSQL at {where} is up but refuses the admin role: {error} (`bash '
                f'.ci/install.sh` provisions a role and writes its password to {SETTINGS_FILE}; '
                'or set PGUSER and PGPASSWORD)'
            )

        attempts = []
        etc = pathlib.Path('/etc/postgresql')
        clusters = sorted(
            (v.name, c.name) for v in etc.glob('*') for c in v.glob('*') if c.is_dir()
        )
        pg_ctlcluster = _which('pg_ctlcluster')
        if not pg_ctlcluster or not clusters:
            raise ServiceUnavailableError(
                f'PostgreSQL is down at {where} ({error}) and there is no local cluster to start '
                '(need pg_ctlcluster and /etc/postgresql/<version>/<cluster>; '
                'Debian: apt-get install postgresql)'
            )
        for version, cluster in clusters:
            command = [pg_ctlcluster, '--skip-systemctl-redirect', version, cluster, 'start']
            attempts.append(_run(command))

        deadline = time.monotonic() + timeout
        while (error := _pg_error()) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        if error is not None:
            raise ServiceUnavailableError(
                f'PostgreSQL is down at {where} and starting it failed: {"; ".join(attempts)}; '
                f'after {timeout:.0f} s the connection still fails: {error}'
            )
        return f'PostgreSQL started at {where}'


def ensure_rabbitmq(timeout: float = RMQ_START_TIMEOUT) -> str:
    """Make sure RabbitMQ listens on its AMQP port, starting ``rabbitmq-server -detached`` if not.

    :returns: what was done, for the log.
    :raises ServiceUnavailableError: naming what was tried and what failed.
    """
    params = rmq_params()
    host, port = params['broker_host'], params['broker_port']
    with _services_lock():
        if port_open(host, port):
            return f'RabbitMQ up at {host}:{port}'
        rabbitmq_server = _which('rabbitmq-server')
        if not rabbitmq_server:
            raise ServiceUnavailableError(
                f'RabbitMQ is down at {host}:{port} and `rabbitmq-server` is not installed '
                '(Debian: apt-get install rabbitmq-server)'
            )
        attempt = _run([rabbitmq_server, '-detached'])
        deadline = time.monotonic() + timeout
        while not port_open(host, port) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not port_open(host, port):
            raise ServiceUnavailableError(
                f'RabbitMQ is down at {host}:{port}; {attempt}; the port is still closed after '
                f'{timeout:.0f} s'
            )
        return f'RabbitMQ started at {host}:{port}'


def create_database(prefix: str = 'trainspot_test') -> dict:
    """Create a fresh role and a database it owns, with unique names.

    :returns: the ``core.psql_dos`` storage settings (without ``repository_uri``).
    """
    from psycopg import sql

    params = pg_admin_params()
    name = f'{prefix}_{os.getpid()}_{secrets.token_hex(4)}'
    password = secrets.token_hex(16)
    with _pg_connect() as connection:
        connection.execute(
            sql.SQL('CREATE ROLE {} LOGIN PASSWORD {}').format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        connection.execute(
            sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template0").format(
                sql.Identifier(name), sql.Identifier(name)
            )
        )
    return {
        'database_engine': 'postgresql_psycopg',
        'database_hostname': params['host'],
        'database_port': params['port'],
        'database_name': name,
        'database_username': name,
        'database_password': password,
    }


def drop_database(name: str, role: str | None = None) -> None:
    """Drop a database created by :func:`create_database` (closing its connections) and its role."""
    from psycopg import sql

    with _pg_connect() as connection:
        connection.execute(
            sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name))
        )
        if role:
            connection.execute(sql.SQL('DROP ROLE IF EXISTS {}').format(sql.Identifier(role)))


def list_databases(prefix: str = 'trainspot_test') -> list[str]:
    """Return the names of the databases whose name starts with ``prefix``."""
    with _pg_connect() as connection:
        rows = connection.execute(
            'SELECT datname FROM pg_database WHERE starts_with(datname, %s)', (prefix,)
        ).fetchall()
    return [row[0] for row in rows]


def create_vhost(prefix: str = 'trainspot-test') -> str | None:
    """Create a fresh RabbitMQ virtual host that the broker user may use.

    Needs ``rabbitmqctl`` on this machine (with the rights to talk to the node, e.g. as root).

    :returns: its name, or ``None`` if it could not be created: callers then use the default vhost,
        where AiiDA still keeps each profile apart, since its queue names contain the profile UUID.
    """
    rabbitmqctl = _which('rabbitmqctl')
    if not rabbitmqctl:
        return None
    name = f'{prefix}-{os.getpid()}-{secrets.token_hex(4)}'
    user = rmq_params()['broker_username']
    for command in (
        [rabbitmqctl, '-q', 'add_vhost', name],
        [rabbitmqctl, '-q', 'set_permissions', '-p', name, user, '.*', '.*', '.*'],
    ):
        result = subprocess.run(command, capture_output=True, timeout=60, check=False)
        if result.returncode != 0:
            delete_vhost(name)
            return None
    return name


def delete_vhost(name: str) -> None:
    """Delete a RabbitMQ virtual host with all its queues and exchanges; errors are ignored."""
    rabbitmqctl = _which('rabbitmqctl')
    if rabbitmqctl:
        subprocess.run(
            [rabbitmqctl, '-q', 'delete_vhost', name], capture_output=True, timeout=60, check=False
        )


def main() -> int:
    """Start what is down and report; return 1 if a server cannot be made available."""
    status = 0
    for ensure in (ensure_postgres, ensure_rabbitmq):
        try:
            print(ensure())
        except ServiceUnavailableError as exception:
            print(f'ERROR: {exception}', file=sys.stderr)
            status = 1
    return status


# At import (conftest.py imports this module first): the tests and what they start see it.
apply_settings_file()

if __name__ == '__main__':
    sys.exit(main())
