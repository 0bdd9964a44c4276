"""Test harness: temporary AiiDA profiles, a localhost computer and the codes of the project.

Profiles
--------
* Default, for every test: ``core.sqlite_dos`` storage with the ``core.zeromq`` broker, which needs
  no server (aiida-core >= 2.9; what ``verdi presto --use-zeromq`` sets up). It is the upstream
  ``aiida_profile`` fixture of ``aiida.tools.pytest_fixtures`` with only the broker changed; the
  upstream ``run_aiida_broker_service`` fixture runs the ZeroMQ broker service for the session and
  ``daemon_client`` / ``started_daemon_client`` / ``submit_and_await`` work as documented upstream.
* Services, for tests marked ``services``: ``core.psql_dos`` on PostgreSQL with ``core.rabbitmq``.
  See ``aiida_services_profile`` below.

Everything AiiDA writes goes to temporary folders: ``AIIDA_PATH`` is set below before anything
imports AiiDA, and the session's configuration folder lives in pytest's ``tmp_path_factory``.

pytest-xdist (``-n N``) works: each worker is its own session with its own configuration folder,
profiles, ZeroMQ broker service, database, virtual host and daemons.
"""

import atexit
import contextlib
import importlib.util
import os
import pathlib
import shutil
import sys
import tempfile
import warnings

import pytest  # Neither these nor pytest import AiiDA: the environment can still be set.

_OWN_AIIDA_PATH = None
if not os.environ.get('AIIDA_PATH'):
    # Before any AiiDA import: nothing may create ``~/.aiida``. The fixtures below then switch to a
    # configuration folder of their own; this one only catches what would run before them.
    _OWN_AIIDA_PATH = tempfile.mkdtemp(prefix='aiida-trainspot-test-')
    os.makedirs(os.path.join(_OWN_AIIDA_PATH, '.aiida'))
    os.environ['AIIDA_PATH'] = _OWN_AIIDA_PATH

# The daemon runs `verdi`, found on PATH: make it this interpreter's even when the virtual
# environment is not activated (``.venv/bin/pytest``).
if os.path.dirname(sys.executable) not in os.environ.get('PATH', '').split(os.pathsep):
    os.environ['PATH'] = os.pathsep.join([os.path.dirname(sys.executable), os.environ['PATH']])

pytest_plugins = ['aiida.tools.pytest_fixtures']

if _OWN_AIIDA_PATH:
    atexit.register(shutil.rmtree, _OWN_AIIDA_PATH, ignore_errors=True)


def pytest_configure(config):
    # Upstream's configuration fixtures announce each temporary configuration folder they create.
    config.addinivalue_line(
        'filterwarnings', 'ignore:Creating AiiDA configuration folder:UserWarning'
    )
    # aiida-core validates the links of a process node before adding it to the SQLAlchemy session,
    # which warns on every process function launched (aiida-core 2.9.4); not ours to fix.
    config.addinivalue_line(
        'filterwarnings',
        'ignore:Object of type <DbNode> not in session:sqlalchemy.exc.SAWarning',
    )
    # the same aiida-core behaviour when aiida-pseudo creates a family group
    config.addinivalue_line(
        'filterwarnings',
        'ignore:Object of type <DbGroup> not in session:sqlalchemy.exc.SAWarning',
    )


def _load_services_module():
    """Import ``tests/services.py`` by path: works whether or not ``tests`` is a package."""
    name = 'aiida_trainspot_tests_services'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, pathlib.Path(__file__).with_name('services.py')
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


services = _load_services_module()

PW_EXECUTABLE = os.environ.get('TRAINSPOT_TEST_PW', '/usr/bin/pw.x')
LAMMPS_EXECUTABLE = os.environ.get('TRAINSPOT_TEST_LMP', '/usr/bin/lmp')
MPIRUN_COMMAND = ['/usr/bin/mpirun', '--allow-run-as-root', '-np', '{tot_num_mpiprocs}']
TEST_EMAIL = 'test@localhost'


# --------------------------------------------------------------------------------------------------
# Default profile: SQLite + ZeroMQ.


@pytest.fixture(scope='session', autouse=True)
def aiida_profile(aiida_config, aiida_profile_factory):
    """Return the default test profile: ``core.sqlite_dos`` storage and the ``core.zeromq`` broker.

    Overrides the upstream fixture only to add the broker (upstream defines none, so no daemon).
    Session-scoped and loaded for every test; ``aiida_profile_clean`` empties it for one test.
    """
    with aiida_profile_factory(aiida_config, broker_backend='core.zeromq') as profile:
        # a loaded 2-core machine answers the daemon's circus controller slowly (default 2 s)
        aiida_config.set_option('daemon.timeout', 30, scope=profile.name)
        yield profile


# --------------------------------------------------------------------------------------------------
# Services profile: PostgreSQL + RabbitMQ.
#
# Why in-process profile switching (and not a subprocess): aiida-core's own fixtures switch profiles
# in one process (``aiida_profile_factory`` / ``profile_context(..., allow_switch=True)``), and the
# manager closes the storage session, the broker connection and the runner on each switch, so a
# test marked ``services`` can use the ORM, ``submit`` and the other fixtures exactly like any other
# test. The switch is function-scoped and always undone (try/finally), so no other test ever sees
# the PostgreSQL profile. The profile itself (database, role, vhost) is created once per session and
# lives in the same temporary configuration folder as the default profile, which stays the default
# (``verdi`` in a subprocess still sees the SQLite profile unless given ``-p``).


def _services_unavailable(reason: str):
    """Skip (loudly) or, with ``TRAINSPOT_REQUIRE_SERVICES=1``, fail: the servers are missing."""
    message = f'SERVICES UNAVAILABLE, tests marked `services` cannot run: {reason}'
    if os.environ.get('TRAINSPOT_REQUIRE_SERVICES', '') not in ('', '0'):
        pytest.fail(message, pytrace=False)
    warnings.warn(message, pytest.PytestWarning, stacklevel=2)
    pytest.skip(message)


@pytest.fixture(scope='session')
def aiida_services_profile(aiida_config, tmp_path_factory):
    """Return a ``core.psql_dos`` + ``core.rabbitmq`` profile on a fresh database and vhost.

    Starts PostgreSQL / RabbitMQ when they are down; skips with the reason when that fails, or
    when the database cannot be created (fails instead if ``TRAINSPOT_REQUIRE_SERVICES=1``). Not
    loaded here: tests marked ``services`` get it loaded automatically (``_load_services_profile``).
    At the end of the session its daemon is stopped, the profile removed from the config, the
    database and role dropped, and the vhost deleted.
    """
    from aiida.manage import get_manager
    from aiida.manage.configuration import create_profile

    try:
        services.ensure_postgres()
        services.ensure_rabbitmq()
    except services.ServiceUnavailableError as exception:
        _services_unavailable(str(exception))
    try:
        storage_config = services.create_database()
    except Exception as exception:
        _services_unavailable(f'PostgreSQL is up but creating a test database failed: {exception}')
    name = f'services-{storage_config["database_name"]}'
    vhost = None
    try:
        # A vhost of our own, deleted with its queues at the end; if rabbitmqctl cannot make one,
        # the default vhost does: AiiDA names its queues after the profile's UUID.
        vhost = services.create_vhost()
        broker_config = {**services.rmq_params(), 'broker_virtual_host': vhost or ''}
        storage_config['repository_uri'] = tmp_path_factory.mktemp('psql-repository').as_uri()
        profile = create_profile(
            aiida_config,
            storage_backend='core.psql_dos',
            storage_config=storage_config,
            broker_backend='core.rabbitmq',
            broker_config=broker_config,
            name=name,
            email=TEST_EMAIL,
            is_test_profile=True,
        )
        profile.set_option('warnings.development_version', False)
        # Debian 12's RabbitMQ 3.10 has a consumer timeout (30 min) that breaks long workflows;
        # the tests are short, so the warning aiida-core prints on every connection is noise here.
        profile.set_option('warnings.rabbitmq_version', False)
        aiida_config.update_profile(profile)
        aiida_config.store()
        yield profile
    finally:
        from aiida.engine.daemon.client import DaemonException, get_daemon_client

        if name in aiida_config.profile_names:
            try:
                client = get_daemon_client(name)
                if client.is_daemon_running:
                    client.stop_daemon(wait=True)
            except DaemonException:
                pass
            manager = get_manager()
            if manager.get_profile() is not None and manager.get_profile().name == name:
                manager.unload_profile()
            aiida_config.remove_profile(name)
            aiida_config.store()
        services.drop_database(storage_config['database_name'], storage_config['database_username'])
        if vhost:
            services.delete_vhost(vhost)


@pytest.fixture(autouse=True)
def _load_services_profile(request):
    """Load the PostgreSQL + RabbitMQ profile for the duration of each test marked ``services``.

    Autouse, so it runs before the test's other function-scoped fixtures: computers, codes and
    nodes they create land in the services profile.
    """
    if request.node.get_closest_marker('services') is None:
        yield None
        return

    from aiida.manage import get_manager

    profile = request.getfixturevalue('aiida_services_profile')
    manager = get_manager()
    previous = manager.get_profile()
    manager.load_profile(profile, allow_switch=True)
    try:
        yield profile
    finally:
        if previous is not None:
            manager.load_profile(previous, allow_switch=True)
        else:
            manager.unload_profile()


@pytest.fixture(scope='session')
def services_daemon_client(aiida_services_profile):
    """Return the daemon client of the services profile; its daemon is stopped after the session."""
    from aiida.engine.daemon.client import DaemonNotRunningException, get_daemon_client

    client = get_daemon_client(aiida_services_profile.name)
    try:
        yield client
    finally:
        with contextlib.suppress(DaemonNotRunningException):
            client.stop_daemon(wait=True)


@pytest.fixture
def started_daemon_client(request):
    """Return a running daemon's client for the profile loaded in this test.

    Overrides the upstream fixture (which ``submit_and_await`` uses) so that tests marked
    ``services`` get the services profile's daemon; other tests get upstream's ``daemon_client``.
    Daemons are stopped at the end of the session, not after each test.
    """
    if request.node.get_closest_marker('services') is None:
        client = request.getfixturevalue('daemon_client')
    else:
        client = request.getfixturevalue('services_daemon_client')
    if not client.is_daemon_running:
        client.start_daemon()
        assert client.is_daemon_running
    return client


# --------------------------------------------------------------------------------------------------
# Computer and codes. Function-scoped get-or-create (one query when they exist): they stay valid
# after ``aiida_profile_clean`` empties the storage and in tests that run on the services profile.


@pytest.fixture(scope='session')
def aiida_localhost_workdir(tmp_path_factory):
    """Return the folder in which the localhost computer runs calculations (one per session)."""
    return tmp_path_factory.mktemp('aiida-workdir')


@pytest.fixture
def aiida_localhost(aiida_localhost_workdir):
    """Return the configured ``localhost`` computer (overrides the upstream fixture).

    ``core.local`` transport, ``core.direct`` scheduler, OpenMPI's ``mpirun`` (as root too), one MPI
    process per machine by default, ``OMP_NUM_THREADS=1``, safe interval 0 and the work directory in
    the session's temporary folder. Upstream fixtures such as ``aiida_code_installed`` use it too.
    """
    from aiida.common.exceptions import NotExistent
    from aiida.orm import Computer

    try:
        computer = Computer.collection.get(label='localhost')
    except NotExistent:
        computer = Computer(
            label='localhost',
            hostname='localhost',
            description='localhost for the aiida-trainspot tests',
            transport_type='core.local',
            scheduler_type='core.direct',
            workdir=str(aiida_localhost_workdir),
        )
        computer.set_mpirun_command(MPIRUN_COMMAND)
        computer.set_prepend_text('export OMP_NUM_THREADS=1')
        computer.set_default_mpiprocs_per_machine(1)
        computer.set_minimum_job_poll_interval(0.0)
        computer.store()
    if not computer.is_configured:
        computer.configure(safe_interval=0.0)
    return computer


@pytest.fixture
def code_factory(aiida_localhost):
    """Return ``factory(label, filepath, plugin, **kwargs)`` giving an InstalledCode on localhost.

    Gets the code ``label@localhost`` if it exists (it must then have the same executable and
    plugin, else ``ValueError``), creates and stores it otherwise. ``kwargs`` go to
    ``InstalledCode`` (e.g. ``with_mpi``, ``prepend_text``) when the code is created.
    """
    from aiida.common.exceptions import NotExistent
    from aiida.orm import InstalledCode, QueryBuilder

    def factory(label: str, filepath: str, plugin: str | None = None, **kwargs) -> InstalledCode:
        query = QueryBuilder().append(
            InstalledCode, filters={'label': label, 'dbcomputer_id': aiida_localhost.pk}
        )
        try:
            code = query.one()[0]
        except NotExistent:
            code = InstalledCode(
                label=label,
                computer=aiida_localhost,
                filepath_executable=str(filepath),
                default_calc_job_plugin=plugin,
                **kwargs,
            )
            return code.store()
        if str(code.filepath_executable) != str(filepath) or code.default_calc_job_plugin != plugin:
            raise ValueError(
                f'code {label}@localhost exists with {code.filepath_executable} and plugin '
                f'{code.default_calc_job_plugin}, not {filepath} and {plugin}'
            )
        return code

    return factory


def _executable(path: str, variable: str) -> str:
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f'{path} is not an executable: install it (.ci/install.sh) or point {variable} to it',
            pytrace=False,
        )
    return path


@pytest.fixture
def pw_code(code_factory):
    """Return the Quantum ESPRESSO ``pw.x`` code (``quantumespresso.pw``) on localhost."""
    return code_factory('pw', _executable(PW_EXECUTABLE, 'TRAINSPOT_TEST_PW'), 'quantumespresso.pw')


@pytest.fixture
def lammps_code(code_factory):
    """Return the LAMMPS ``lmp`` code (``lammps.base``) on localhost."""
    return code_factory('lmp', _executable(LAMMPS_EXECUTABLE, 'TRAINSPOT_TEST_LMP'), 'lammps.base')


def runner_path(name: str) -> str:
    """Absolute path of one of the package's console scripts in this environment."""
    path = shutil.which(name, path=os.path.dirname(sys.executable)) or shutil.which(name)
    if path is None:
        pytest.fail(f'{name} is not installed: run `pip install --no-deps -e .`')
    return path


@pytest.fixture
def ase_code(code_factory):
    """The ``trainspot-ase-label`` runner of this environment as an InstalledCode on localhost."""
    return code_factory(
        'trainspot-ase-label', runner_path('trainspot-ase-label'), 'trainspot.ase.label'
    )


@pytest.fixture
def mace_code(code_factory):
    """``mace_run_train`` of this environment as an InstalledCode on localhost."""
    return code_factory('mace_run_train', runner_path('mace_run_train'), 'trainspot.mace.train')


@pytest.fixture
def mtt_code(code_factory):
    """metatrain's ``mtt`` of this environment as an InstalledCode on localhost."""
    return code_factory('mtt', runner_path('mtt'), 'trainspot.metatrain.train')


TERSOFF_FILE = '/usr/share/lammps/potentials/SiC.tersoff'


def tersoff_carbon():
    """ASE's Tersoff calculator with the carbon parameters of Debian's SiC.tersoff."""
    from ase.calculators.tersoff import Tersoff

    return Tersoff.from_lammps(TERSOFF_FILE)


def emt_copper_frames(seed: int, n_frames: int) -> list:
    """EMT-labelled Cu cells (8 atoms), strained by up to ±6 % and rattled: energy and stress
    vary with the volume, which forces alone do not teach. Labels on a SinglePointCalculator."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk('Cu', 'fcc', a=3.61).repeat(2)
        atoms.set_cell(atoms.cell * (1.0 + rng.uniform(-0.06, 0.06)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        atoms.calc = EMT()
        results = {
            'energy': atoms.get_potential_energy(),
            'forces': atoms.get_forces(),
            'stress': atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


@pytest.fixture(scope='session')
def emt_copper():
    """:func:`emt_copper_frames`, ``(seed, n_frames) -> frames``."""
    return emt_copper_frames


@pytest.fixture(scope='session')
def labelled_carbon_frames():
    """~30 small carbon frames (diamond, graphite-like, rattled and strained) with Tersoff labels.

    A cheap stand-in for DFT: real energies, forces and stresses from a classical potential.
    """
    import numpy as np
    from ase.build import bulk
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(7)
    calculator = tersoff_carbon()
    frames = []
    bases = [bulk('C', 'diamond', a=3.567), bulk('C', 'diamond', a=3.567, cubic=True)]
    for index in range(30):
        atoms = bases[index % 2].copy()
        atoms.set_cell(atoms.cell * rng.uniform(0.97, 1.05), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
        atoms.calc = calculator
        results = {
            'energy': atoms.get_potential_energy(),
            'forces': atoms.get_forces(),
            'stress': atoms.get_stress(),
        }
        atoms.calc = SinglePointCalculator(atoms, **results)
        atoms.info['generation_method'] = 'rattle'
        frames.append(atoms)
    return frames


# --------------------------------------------------------------------------------------------------
# A real Slurm cluster over SSH: ``.ci/cluster.sh`` runs slurmctld + slurmd (one node, this machine)
# and an sshd of its own on 127.0.0.1:2222; the computer below reaches it through ``core.ssh`` +
# ``core.slurm`` exactly as a remote HPC machine. Python side: ``tests/cluster.py``.


def _load_cluster_module():
    """Import ``tests/cluster.py`` by path: works whether or not ``tests`` is a package."""
    name = 'aiida_trainspot_tests_cluster'
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, pathlib.Path(__file__).with_name('cluster.py')
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


cluster = _load_cluster_module()

SLURM_COMPUTER_LABEL = 'slurm-localhost'


@pytest.fixture(scope='session')
def slurm_cluster():
    """Have the single-node Slurm cluster up for the session; return its one-line status.

    Runs ``bash .ci/cluster.sh start`` when it is down, and ``stop`` at the end of the session only
    if a test session started it (reference-counted across pytest-xdist workers). Fails, never
    skips, when the cluster cannot start: the message has the script's output and log tails.
    """
    with contextlib.ExitStack() as stack:
        try:
            line = stack.enter_context(cluster.session())
        except cluster.ClusterUnavailableError as exception:
            pytest.fail(f'SLURM CLUSTER UNAVAILABLE: {exception}', pytrace=False)
        yield line


@pytest.fixture(scope='session')
def slurm_computer_workdir(tmp_path_factory):
    """Return the folder in which the Slurm computer runs calculations (one per session, in /tmp).

    The "remote" machine is this one, so a local temporary folder is a valid remote path.
    """
    return tmp_path_factory.mktemp('slurm-workdir')


@pytest.fixture
def slurm_computer(slurm_cluster, slurm_computer_workdir):
    """Return the configured ``slurm-localhost`` computer: ``core.ssh`` + ``core.slurm``.

    SSH as root to 127.0.0.1:2222 with the cluster's key (AutoAddPolicy, system host keys not
    loaded: the host key is the cluster's own and changes with its folder), safe interval 0, job
    poll interval 1 s (default 10 s), OpenMPI's ``mpirun`` (as root too), one MPI process per
    machine by default, ``OMP_NUM_THREADS=1``. Slurm commands find the cluster's configuration
    through ``SLURM_CONF``, which its sshd sets in every session. Get-or-create, like
    ``aiida_localhost``.
    """
    from aiida.common.exceptions import NotExistent
    from aiida.orm import Computer

    try:
        computer = Computer.collection.get(label=SLURM_COMPUTER_LABEL)
    except NotExistent:
        computer = Computer(
            label=SLURM_COMPUTER_LABEL,
            hostname=cluster.HOST,
            description='single-node Slurm cluster over SSH (.ci/cluster.sh) for the tests',
            transport_type='core.ssh',
            scheduler_type='core.slurm',
            workdir=str(slurm_computer_workdir),
        )
        computer.set_mpirun_command(MPIRUN_COMMAND)
        computer.set_prepend_text('export OMP_NUM_THREADS=1')
        computer.set_default_mpiprocs_per_machine(1)
        computer.set_minimum_job_poll_interval(1.0)
        computer.store()
    if not computer.is_configured:
        computer.configure(
            username=cluster.USERNAME,
            port=cluster.ssh_port(),
            key_filename=str(cluster.key_filename()),
            look_for_keys=False,
            allow_agent=False,
            load_system_host_keys=False,
            key_policy='AutoAddPolicy',
            timeout=30,
            safe_interval=0.0,
        )
    return computer


@pytest.fixture
def slurm_code_factory(slurm_computer):
    """Return ``factory(label, filepath, plugin, **kwargs)`` giving an InstalledCode on Slurm.

    Like ``code_factory``, on ``slurm-localhost``: gets the code ``label@slurm-localhost`` if it
    exists (same executable and plugin, else ``ValueError``), creates and stores it otherwise.
    """
    from aiida.common.exceptions import NotExistent
    from aiida.orm import InstalledCode, QueryBuilder

    def factory(label: str, filepath: str, plugin: str | None = None, **kwargs) -> InstalledCode:
        query = QueryBuilder().append(
            InstalledCode, filters={'label': label, 'dbcomputer_id': slurm_computer.pk}
        )
        try:
            code = query.one()[0]
        except NotExistent:
            code = InstalledCode(
                label=label,
                computer=slurm_computer,
                filepath_executable=str(filepath),
                default_calc_job_plugin=plugin,
                **kwargs,
            )
            return code.store()
        if str(code.filepath_executable) != str(filepath) or code.default_calc_job_plugin != plugin:
            raise ValueError(
                f'code {label}@{SLURM_COMPUTER_LABEL} exists with {code.filepath_executable} and '
                f'plugin {code.default_calc_job_plugin}, not {filepath} and {plugin}'
            )
        return code

    return factory


# --------------------------------------------------------------------------------------------------
# Evaluation: the ``trainspot-evaluate`` runner, and two tiny trained committees (model files only,
# trained by the real codes in subprocesses, with no AiiDA training job) for the tests of the
# evaluation and of the stages after it.

TINY_MACE_ARGS = [
    '--model', 'MACE', '--num_channels', '8', '--max_L', '0', '--r_max', '4.0',
    '--num_interactions', '2', '--correlation', '2', '--E0s', 'average', '--batch_size', '4',
    '--max_num_epochs', '3', '--device', 'cpu', '--default_dtype', 'float64',
    '--energy_key', 'REF_energy', '--forces_key', 'REF_forces', '--stress_key', 'REF_stress',
]  # fmt: skip
TINY_PET_MODEL_HYPERS = {
    'cutoff': 4.0, 'd_pet': 16, 'd_head': 16, 'd_node': 32, 'd_feedforward': 32, 'num_heads': 2,
    'num_gnn_layers': 1, 'num_attention_layers': 1,
}  # fmt: skip
TINY_COMMITTEE_SEEDS = (1, 2)


@pytest.fixture
def evaluate_code(code_factory):
    """The ``trainspot-evaluate`` runner of this environment as an InstalledCode on localhost."""
    return code_factory(
        'trainspot-evaluate', runner_path('trainspot-evaluate'), 'trainspot.evaluation'
    )


@pytest.fixture(scope='session')
def tiny_committee_files(labelled_carbon_frames, tmp_path_factory):
    """Model files of a tiny MACE and a tiny PET committee trained on ``labelled_carbon_frames``.

    ``{'mace': [member, member], 'metatrain': [member, member]}``, one member per seed of
    ``TINY_COMMITTEE_SEEDS``, each ``{'model': Path, 'extensions': Path | None, 'seed': int,
    'architecture': str, 'cutoff': 4.0, 'dtype': 'float64', 'species': ['C']}`` (the keyword
    arguments of ``PotentialModel.from_files`` but ``engine``). Trained on frames 0-23, validated
    on 24-29, 3 epochs, float64; the four runs (``mace_run_train``, ``mtt train``) go at once in
    subprocesses with one thread each, once per session (about 30 s on 2 cores).
    """
    import subprocess

    import yaml

    from aiida_trainspot.data.convert import write_labelled_extxyz

    root = tmp_path_factory.mktemp('tiny-committees')
    write_labelled_extxyz(labelled_carbon_frames[:24], root / 'train.xyz')
    write_labelled_extxyz(labelled_carbon_frames[24:], root / 'valid.xyz')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    runs = []
    for seed in TINY_COMMITTEE_SEEDS:
        folder = root / f'mace-{seed}'
        folder.mkdir()
        command = [runner_path('mace_run_train'), '--name', 'tiny', *TINY_MACE_ARGS]
        command += ['--train_file', '../train.xyz', '--valid_file', '../valid.xyz']
        command += ['--seed', str(seed)]
        runs.append(('mace', seed, folder, command))
        folder = root / f'pet-{seed}'
        folder.mkdir()
        dataset = {
            'systems': {'length_unit': 'angstrom'},
            'targets': {
                'energy': {
                    'key': 'REF_energy',
                    'unit': 'eV',
                    'forces': {'key': 'REF_forces'},
                    'stress': False,
                    'virial': False,
                }
            },
        }
        options = {
            'seed': seed,
            'base_precision': 64,
            'device': 'cpu',
            'architecture': {
                'name': 'pet',
                'model': TINY_PET_MODEL_HYPERS,
                'training': {'batch_size': 4, 'num_epochs': 3},
            },
            'training_set': {**dataset, 'systems': {'read_from': '../train.xyz'}},
            'validation_set': {**dataset, 'systems': {'read_from': '../valid.xyz'}},
            'test_set': 0.0,
        }
        (folder / 'options.yaml').write_text(yaml.safe_dump(options))
        command = [runner_path('mtt'), 'train', 'options.yaml', '-o', 'model.pt']
        command += ['-e', 'extensions']
        runs.append(('metatrain', seed, folder, command))
    processes = []
    for _, _, folder, command in runs:
        with open(folder / 'train.log', 'w') as log:
            processes.append(
                subprocess.Popen(command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
            )
    committees = {'mace': [], 'metatrain': []}
    for (engine, seed, folder, command), process in zip(runs, processes, strict=True):
        status = process.wait()
        model = folder / ('tiny.model' if engine == 'mace' else 'model.pt')
        if status != 0 or not model.is_file():
            tail = (folder / 'train.log').read_text()[-3000:]
            pytest.fail(f'{" ".join(command)} failed (status {status}):\n{tail}', pytrace=False)
        extensions = folder / 'extensions'
        committees[engine].append(
            {
                'model': model,
                'extensions': extensions if extensions.is_dir() else None,
                'seed': seed,
                'architecture': 'MACE' if engine == 'mace' else 'pet',
                'cutoff': 4.0,
                'dtype': 'float64',
                'species': ['C'],
            }
        )
    return committees


# --------------------------------------------------------------------------------------------------
# Exploration: the ``trainspot-ase-md`` runner, and one member of each tiny committee above as a
# stored ``PotentialModel`` (no training of their own: ``tiny_committee_files`` trains them).


@pytest.fixture
def ase_md_code(code_factory):
    """The ``trainspot-ase-md`` runner of this environment as an InstalledCode on localhost."""
    return code_factory('trainspot-ase-md', runner_path('trainspot-ase-md'), 'trainspot.ase.md')


def _tiny_potential_model(member, engine):
    from aiida_trainspot.training.model import PotentialModel

    return PotentialModel.from_files(
        member['model'],
        engine=engine,
        architecture=member['architecture'],
        species=member['species'],
        cutoff=member['cutoff'],
        dtype=member['dtype'],
        seed=member['seed'],
        extensions_dir=member['extensions'],
    ).store()


_TINY_MODEL_PKS: dict[str, int] = {}


def _stored_tiny_model(engine, tiny_committee_files):
    """The stored model of ``engine``'s first tiny member, stored once and loaded by PK after.

    Loaded anew in every test (not kept as a session object): a test that switches profiles
    closes the storage a session-scoped node would be bound to.
    """
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    pk = _TINY_MODEL_PKS.get(engine)
    if pk is not None:
        try:
            return orm.load_node(pk)
        except NotExistent:  # a test emptied the storage
            pass
    node = _tiny_potential_model(tiny_committee_files[engine][0], engine)
    _TINY_MODEL_PKS[engine] = node.pk
    return node


@pytest.fixture
def tiny_mace_model(aiida_profile, tiny_committee_files):
    """The first tiny MACE member (carbon, float64, r_max 4 Å) as a stored ``PotentialModel``.

    Stored once per session in the default profile (not for tests marked ``services``).
    """
    return _stored_tiny_model('mace', tiny_committee_files)


@pytest.fixture
def tiny_metatrain_model(aiida_profile, tiny_committee_files):
    """The first tiny PET member (carbon, float64, cutoff 4 Å) as a stored ``PotentialModel``.

    Stored once per session in the default profile (not for tests marked ``services``).
    """
    return _stored_tiny_model('metatrain', tiny_committee_files)


# A ``trainspot-evaluate`` whose members named in ``bad`` return a NaN energy: the real runner and
# parser, with chosen members' calculators wrapped (no trained model returns NaN on demand).
POISONED_RUNNER = """#!{python}
import sys

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from aiida_trainspot.runners import evaluate

BAD = {bad!r}  # member label -> atom count of the frames it fails on (None: every frame)


class Poisoned(Calculator):
    implemented_properties = ('energy', 'forces', 'stress')

    def __init__(self, inner, n_atoms):
        super().__init__()
        self.inner, self.n_atoms = inner, n_atoms

    def calculate(self, atoms=None, properties=None, system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        frame = self.atoms.copy()
        frame.calc = self.inner
        self.results = {{'energy': frame.get_potential_energy(), 'forces': frame.get_forces()}}
        if 'stress' in properties:
            self.results['stress'] = frame.get_stress()
        if self.n_atoms is None or len(frame) == self.n_atoms:
            self.results['energy'] = np.nan


load_members = evaluate.load_members


def poisoned_members(config):
    calculators = load_members(config)
    return [
        Poisoned(calculator, BAD[member['label']]) if member['label'] in BAD else calculator
        for member, calculator in zip(config['members'], calculators)
    ]


evaluate.load_members = poisoned_members
sys.exit(evaluate.main())
"""


@pytest.fixture
def poisoned_evaluate_code(code_factory, tmp_path):
    """``factory(bad)``: an evaluation code whose members in ``bad`` return NaN energies.

    ``bad`` maps a member label to the atom count of the frames it fails on (None: every frame).
    """

    def factory(bad):
        executable = tmp_path / 'poisoned-evaluate'
        executable.write_text(POISONED_RUNNER.format(python=sys.executable, bad=bad))
        executable.chmod(0o755)
        return code_factory(f'poisoned-{tmp_path.name}', str(executable), 'trainspot.evaluation')

    return factory


# --------------------------------------------------------------------------------------------------
# A stand-in TrainsPotWorkChain: a stored node with a campaign's output links (committee and
# calibration), for ``CommitteeCalculator.from_campaign`` and the commands that load a campaign.


def fake_campaign_node(models, calibration, final=True, uncalibrated_iteration=False):
    """A stored TrainsPotWorkChain-like node returning ``models`` and ``calibration``."""
    from aiida import orm
    from aiida.common.links import LinkType

    node = orm.WorkflowNode()
    node.set_process_type('aiida.workflows:trainspot.trainspot')
    node.store()
    calibration_node = orm.Dict(calibration.to_dict()).store()
    links = {f'iterations__iteration_01__models__{k}': m for k, m in models.items()}
    links['iterations__iteration_01__calibration'] = calibration_node
    if uncalibrated_iteration:
        links.update({f'iterations__iteration_02__models__{k}': m for k, m in models.items()})
    if final:
        links.update({f'models__{k}': m for k, m in models.items()})
        links['calibration'] = calibration_node
    for label, target in links.items():
        target.base.links.add_incoming(node, LinkType.RETURN, label)
    return node


@pytest.fixture
def fake_campaign(aiida_profile):
    """:func:`fake_campaign_node`, ``(models, calibration, final=True, ...) -> node``."""
    return fake_campaign_node


@pytest.fixture
def tiny_mace_committee(aiida_profile, tiny_committee_files):
    """The tiny MACE committee as stored ``PotentialModel`` nodes, ``{'member_<i>': model}``."""
    return {
        f'member_{i}': _tiny_potential_model(member, 'mace')
        for i, member in enumerate(tiny_committee_files['mace'])
    }
