"""The single-node Slurm test cluster of ``.ci/cluster.sh``, from Python.

A real Slurm (slurmctld + slurmd, munge) on this machine, reached over SSH on 127.0.0.1:2222 with a
key of its own, so that calculations are tested through ``core.ssh`` + ``core.slurm`` as on a remote
HPC machine. Kept free of AiiDA and pytest imports; run on its own it starts the cluster::

    .venv/bin/python tests/cluster.py          # start it (if down), print its status line

Settings, all optional, shared with the script: ``TRAINSPOT_CLUSTER_DIR`` (its folder, default
``/var/lib/trainspot-cluster``) and ``TRAINSPOT_CLUSTER_SSH_PORT`` (``2222``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import subprocess
import sys
import tempfile
from collections.abc import Iterator

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / '.ci' / 'cluster.sh'
HOST = '127.0.0.1'
USERNAME = 'root'
START_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
_LOCK_FILE = pathlib.Path(tempfile.gettempdir()) / 'aiida-trainspot-test-cluster.lock'
_STARTED_MARKER = 'started-by-pytest'
_SESSIONS = 'pytest-sessions'


class ClusterUnavailableError(RuntimeError):
    """The cluster is down and cannot be started; the message says why (script output, logs)."""


def cluster_dir() -> pathlib.Path:
    """Return the folder of the cluster (keys, configuration, logs, state)."""
    return pathlib.Path(os.environ.get('TRAINSPOT_CLUSTER_DIR', '/var/lib/trainspot-cluster'))


def ssh_port() -> int:
    """Return the port of the cluster's sshd on 127.0.0.1."""
    return int(os.environ.get('TRAINSPOT_CLUSTER_SSH_PORT', '2222'))


def key_filename() -> pathlib.Path:
    """Return the private key authorised for root on the cluster's sshd."""
    return cluster_dir() / 'ssh' / 'id_ed25519'


def slurm_conf() -> pathlib.Path:
    """Return the cluster's ``slurm.conf`` (what ``SLURM_CONF`` points to in its SSH sessions)."""
    return cluster_dir() / 'etc' / 'slurm.conf'


def slurm_env() -> dict[str, str]:
    """Return this process's environment with ``SLURM_CONF``: Slurm commands run here see it."""
    return {**os.environ, 'SLURM_CONF': str(slurm_conf())}


def _script(action: str, timeout: float) -> subprocess.CompletedProcess:
    if not SCRIPT.is_file():
        raise ClusterUnavailableError(f'{SCRIPT} is missing')
    try:
        return subprocess.run(
            ['bash', str(SCRIPT), action], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exception:
        raise ClusterUnavailableError(f'`{SCRIPT.name} {action}` timed out: {exception}') from None


def _log_tails(lines: int = 15) -> str:
    tails = []
    for name in ('slurmctld.log', 'slurmd.log', 'sshd.log'):
        path = cluster_dir() / 'log' / name
        if path.is_file():
            text = path.read_text(errors='replace').splitlines()[-lines:]
            tails.append(f'--- {path} (last {len(text)} lines)\n' + '\n'.join(text))
    return '\n'.join(tails)


def status() -> tuple[bool, str]:
    """Return whether the cluster is up, and the script's one-line status."""
    result = _script('status', timeout=30)
    return result.returncode == 0, result.stdout.strip()


def start() -> str:
    """Start what is down and wait until the node is idle and SSH works; return the status line.

    Raises :class:`ClusterUnavailableError` with the script's output and the daemons' log tails.
    """
    result = _script('start', timeout=START_TIMEOUT)
    if result.returncode != 0:
        output = f'{result.stdout}{result.stderr}'.strip()
        errors = [line for line in output.splitlines() if 'ERROR' in line]
        raise ClusterUnavailableError(
            f'`bash {SCRIPT} start` failed (exit {result.returncode}): '
            f'{errors[-1] if errors else output.splitlines()[-1:]}\n{output}\n{_log_tails()}'
        )
    return result.stdout.strip()


def stop() -> str:
    """Stop what the script started; return the status line."""
    result = _script('stop', timeout=STOP_TIMEOUT)
    return (result.stdout + result.stderr).strip()


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    with open(_LOCK_FILE, 'a+') as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def session() -> Iterator[str]:
    """Have the cluster up for a test session; yield its status line.

    Reference-counted across concurrent sessions (pytest-xdist workers, parallel runs): the
    cluster is stopped when the last session using it ends, and only if a test session started
    it; a cluster that was up before (``bash .ci/cluster.sh start`` by hand) is left running.
    """
    sessions = cluster_dir() / _SESSIONS
    marker = cluster_dir() / _STARTED_MARKER
    mine = sessions / str(os.getpid())
    with _lock():
        up, line = status()
        if not up:
            try:
                line = start()
            except ClusterUnavailableError:
                stop()  # what came up before the failure; a working cluster is never left broken
                raise
            marker.write_text(f'{os.getpid()}\n')
        sessions.mkdir(exist_ok=True)
        mine.touch()
    try:
        yield line
    finally:
        with _lock():
            mine.unlink(missing_ok=True)
            others = [p for p in sessions.iterdir() if p.name.isdigit()]
            for path in others:
                if not _pid_alive(int(path.name)):
                    path.unlink(missing_ok=True)
            if marker.exists() and not any(p.exists() for p in others):
                stop()
                marker.unlink(missing_ok=True)


def _slurm(*args: str, check: bool = True) -> str:
    result = subprocess.run(args, capture_output=True, text=True, env=slurm_env(), timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f'{" ".join(args)} failed: {result.stderr.strip()}')
    return result.stdout


def squeue() -> list[dict[str, str]]:
    """Return the jobs Slurm knows: ``id``, ``name``, ``state`` (long), ``workdir``, ``comment``."""
    out = _slurm('squeue', '--noheader', '--states=all', '--format=%i|%j|%T|%Z|%k')
    keys = ('id', 'name', 'state', 'workdir', 'comment')
    return [dict(zip(keys, line.split('|', 4), strict=True)) for line in out.splitlines()]


def scancel(job_id: str) -> None:
    """Cancel one job, as a user would."""
    _slurm('scancel', str(job_id))


def jobcomp_records() -> dict[str, dict[str, str]]:
    """Return the finished jobs of the cluster's job completion log, by job id.

    Each record maps the log's fields (``JobState``, ``ExitCode``, ``NodeList``, ``WorkDir``, ...)
    to their values; Slurm appends a record when a job ends, whatever its end.
    """
    path = cluster_dir() / 'log' / 'jobcomp.txt'
    records: dict[str, dict[str, str]] = {}
    if not path.is_file():
        return records
    for line in path.read_text(errors='replace').splitlines():
        fields = dict(item.split('=', 1) for item in line.split() if '=' in item)
        if 'JobId' in fields:
            records[fields['JobId']] = fields
    return records


if __name__ == '__main__':
    try:
        print(start())
    except ClusterUnavailableError as error:
        print(error, file=sys.stderr)
        sys.exit(1)
