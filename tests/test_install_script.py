"""``.ci/install.sh``, the CI workflow and ``docs/installation.md`` agree; the services settings.

Nothing here installs or configures anything: the script is sourced (which only defines its
functions) and its functions that read files run on temporary ones.
"""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
INSTALL = ROOT / '.ci' / 'install.sh'


def _install_sh(script: str) -> str:
    """Run ``script`` in bash after sourcing ``.ci/install.sh`` (no sudo); return its stdout."""
    command = f'source {shlex.quote(str(INSTALL))}; sudo=""; {script}'
    result = subprocess.run(
        ['bash', '-c', command], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _services():
    return sys.modules['aiida_trainspot_tests_services']  # loaded by conftest.py


def test_install_script_is_valid_bash_and_sourcing_it_runs_nothing():
    subprocess.run(['bash', '-n', str(INSTALL)], check=True, timeout=30)
    assert _install_sh('echo sourced') == 'sourced\n'


def test_debian_packages_are_the_docs_table_and_each_says_what_for():
    packages = _install_sh('printf "%s\\n" "${debian_packages[@]}"').split()
    assert {'python3', 'python3-venv', 'postgresql', 'rabbitmq-server'} <= set(packages)
    text = INSTALL.read_text()
    for package in packages:  # one line each, with its comment
        assert re.search(rf'^\s+{re.escape(package)}\s+# \S', text, re.MULTILINE), package
    docs = (ROOT / 'docs' / 'installation.md').read_text()
    table = docs.split('### Debian packages', 1)[1].split('\n#', 1)[0]
    assert re.findall(r'^\| `([^`]+)` \| \S', table, re.MULTILINE) == packages


def test_ci_runs_in_debian_12_as_root():
    workflow = yaml.safe_load((ROOT / '.github' / 'workflows' / 'ci.yml').read_text())
    jobs = workflow['jobs']
    assert {name: job.get('container') for name, job in jobs.items()} == {
        'tests': 'debian:12',
        'docs': 'debian:12',
    }
    steps = jobs['tests']['steps']
    assert steps[-1]['run'] == 'bash .ci/run'
    assert all('setup-python' not in step.get('uses', '') for step in steps)
    assert all('sudo' not in step.get('run', '') for job in jobs.values() for step in job['steps'])


def test_loopback_addresses_as_proc_net_tcp_writes_them():
    listening = [
        '0100007F:1628',  # 127.0.0.1:5672
        '0101007F:1111',  # 127.0.1.1:4369
        '00000000000000000000000001000000:1111',  # [::1]:4369
        '0000000000000000FFFF00000100007F:6568',  # [::ffff:127.0.0.1]:25672
        '00000000:6568',  # 0.0.0.0:25672
        '0200000A:1628',  # 10.0.0.2:5672
        '00000000000000000000000000000000:1628',  # [::]:5672
    ]
    stdin = shlex.quote('\n'.join(listening))
    assert _install_sh(f'printf "%s\\n" {stdin} | beyond_loopback').split() == listening[4:]


def test_rabbitmq_settings_replace_what_conflicts_and_keep_the_rest(tmp_path):
    conf = tmp_path / 'rabbitmq.conf'
    conf.write_text('listeners.tcp.default = 5672\nconsumer_timeout = 36000000\n')
    wanted = _install_sh(
        f'with_settings {shlex.quote(str(conf))} "$rabbitmq_conf_replaces" '
        '"${rabbitmq_conf_lines[@]}"'
    ).splitlines()
    assert 'consumer_timeout = 36000000' in wanted
    assert [line for line in wanted if line.startswith('listeners.')] == [
        'listeners.tcp.local = 127.0.0.1:5672'
    ]
    env = tmp_path / 'rabbitmq-env.conf'
    env.write_text('NODE_IP_ADDRESS=0.0.0.0\nexport RABBITMQ_NODENAME=rabbit@h\nNODE_PORT=5672\n')
    wanted = _install_sh(
        f'with_settings {shlex.quote(str(env))} "$rabbitmq_env_replaces" '
        '"${rabbitmq_env_lines[@]}"'
    ).splitlines()
    assert [line for line in wanted if not line.startswith('#')] == [
        'NODE_PORT=5672',
        'NODENAME=rabbit@localhost',
        'ERL_EPMD_ADDRESS=127.0.0.1',
        'export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"',
    ]


def test_rabbitmq_settings_already_there_in_another_order_change_nothing(tmp_path):
    """A file that already sets what the script wants, comments and order aside: no rewrite."""
    env = tmp_path / 'rabbitmq-env.conf'
    env.write_text(
        '# set by hand\nexport ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"\n\n'
        'ERL_EPMD_ADDRESS=127.0.0.1\nNODENAME=rabbit@localhost\n'
    )
    path = shlex.quote(str(env))
    same = _install_sh(
        f'[ "$(settings < {path})" = "$(with_settings {path} "$rabbitmq_env_replaces" '
        '"${rabbitmq_env_lines[@]}" | settings)" ] && echo same'
    )
    assert same == 'same\n'


def test_services_settings_file_fills_in_what_the_environment_does_not_set(tmp_path):
    services = _services()
    path = tmp_path / 'services.env'
    path.write_text(
        '# by .ci/install.sh\nPGHOST=127.0.0.1\nPGPORT=5433\nPGUSER=trainspot_test\n'
        'PGPASSWORD=s3cret\nOTHER=ignored\n'
    )
    from_file = {
        'PGHOST': '127.0.0.1',
        'PGPORT': '5433',
        'PGUSER': 'trainspot_test',
        'PGPASSWORD': 's3cret',
    }
    assert services.read_settings_file(path) == from_file
    assert services.read_settings_file(tmp_path / 'missing.env') == {}

    environ = {}
    assert services.apply_settings_file(path, environ) == from_file
    assert environ == from_file

    environ = {'PGHOST': 'db.example', 'PATH': os.environ.get('PATH', '')}
    services.apply_settings_file(path, environ)
    assert environ['PGHOST'] == 'db.example'
    assert (environ['PGUSER'], environ['PGPASSWORD']) == ('trainspot_test', 's3cret')

    # the file's role and password come together, or not at all
    for own in ({'PGUSER': 'postgres'}, {'PGPASSWORD': 'mine'}):
        environ = dict(own)
        services.apply_settings_file(path, environ)
        assert environ == {**own, 'PGHOST': '127.0.0.1', 'PGPORT': '5433'}
