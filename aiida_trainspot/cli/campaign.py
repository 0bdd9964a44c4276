"""``aiida-trainspot run | status | plot | export | example``: drive and inspect a campaign.

A run is described by a small YAML file (every key optional but ``codes`` and ``structures``
or ``dataset``)::

    structures: [diamond.xyz, graphite.xyz]   # any format ASE reads; relative to the YAML file
    dataset: [labelled.xyz]                   # frames whose labels are kept, never recomputed
    protocol: fast                            # fast | moderate | precise
    codes: {pw: pw@localhost, train: mace_run_train@localhost,
            md: trainspot-ase-md@localhost, evaluate: trainspot-evaluate@localhost}
    pseudo_family: trainspot-pbe-C            # the pw engine
    ase_calculator: {name: emt}               # or the ase_label engine
    ase_parameter_file: SiC.tersoff
    options: {max_wallclock_seconds: 3600}    # metadata.options of every job
    overrides: {max_iterations: 3}            # merged over the protocol
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import click

from .data import _load_profile, _one_line, write_extxyz

CONFIG_KEYS = frozenset(
    {
        'structures',
        'dataset',
        'protocol',
        'codes',
        'pseudo_family',
        'ase_calculator',
        'ase_parameter_file',
        'options',
        'overrides',
    }
)
#: The calibration's file beside the exported models (``export --models DIR``).
CALIBRATION_FILE = 'calibration.json'
EXAMPLES = Path(__file__).resolve().parents[2] / 'examples'


def _unknown_config_keys(path: Path, unknown: list[str]) -> str:
    """The message for unknown top-level keys: the nearest known key, or where such keys go."""
    from aiida_trainspot.common.settings import nearest_key, unknown_keys

    message = unknown_keys(str(path), unknown, CONFIG_KEYS)
    if any(nearest_key(key, CONFIG_KEYS) is None for key in unknown):
        message += '; inputs of the workflow (max_iterations, training, ...) go under `overrides:`'
    return message


def _paths(config: dict[str, Any], key: str, folder: Path) -> None:
    """``config[key]`` as a list of absolute paths, relative ones taken from ``folder``."""
    value = config.get(key)
    if value is None:
        return
    items = [value] if isinstance(value, str) else list(value)
    config[key] = [str((folder / str(item)).resolve()) for item in items]


def read_run_config(path: Path) -> dict[str, Any]:
    """The YAML of a run, with paths resolved against its folder; bad input: ClickException."""
    import yaml

    if not path.is_file():
        raise click.ClickException(f'no such file: {path}')
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exception:
        raise click.ClickException(f'{path}: not valid YAML ({_one_line(exception)})') from None
    if not isinstance(config, dict):
        raise click.ClickException(f'{path}: expected a mapping of keys to values')
    unknown = sorted(set(config) - CONFIG_KEYS)
    if unknown:
        raise click.ClickException(_unknown_config_keys(path, unknown))
    if 'codes' not in config:
        raise click.ClickException(f'{path}: `codes` is missing')
    if 'structures' not in config and 'dataset' not in config:
        raise click.ClickException(f'{path}: `structures` is missing (or give a `dataset`)')
    _paths(config, 'structures', path.parent)
    _paths(config, 'dataset', path.parent)
    if config.get('ase_parameter_file'):
        config['ase_parameter_file'] = str((path.parent / config['ase_parameter_file']).resolve())
    return config


def build(config: dict[str, Any]) -> Any:
    """The TrainsPotWorkChain builder of a run configuration (warnings become messages)."""
    from aiida_trainspot.workflows.trainspot import TrainsPotWorkChain

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            builder = TrainsPotWorkChain.get_builder_from_protocol(
                config['codes'],
                config.get('structures'),
                protocol=config.get('protocol'),
                overrides=config.get('overrides') or {},
                dataset=config.get('dataset'),
                pseudo_family=config.get('pseudo_family'),
                ase_calculator=config.get('ase_calculator'),
                ase_parameter_file=config.get('ase_parameter_file'),
                options=config.get('options'),
            )
        except (ValueError, TypeError, KeyError) as exception:
            raise click.ClickException(_one_line(exception)) from None
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            click.echo(f'Warning: {warning.message}', err=True)
    return builder


#: Processes whose reports make the live progress of a foreground run (one line per stage).
PROGRESS_PROCESSES = (
    'TrainsPotWorkChain',
    'DatasetAugmentationWorkChain',
    'AbInitioLabellingWorkChain',
    'TrainingWorkChain',
    'ExplorationWorkChain',
)


class _ReportEcho(logging.Handler):
    """Print the stage reports of a foreground run as they come, and every error."""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR or any(
            f'|{name}|' in message for name in PROGRESS_PROCESSES
        ):
            click.echo(f'{self.format(record)}')


def foreground_runner(manager: Any) -> Any:
    """The profile's runner; without a broker service running, one that needs none.

    A foreground run executes every sub-process in this Python process, so it needs no broker;
    only `verdi process kill/pause` cannot reach it then (Ctrl-C still kills it).
    """
    broker = manager.get_broker()
    reachable = getattr(broker, 'check_service_reachable', None)
    if broker is None or reachable is None or reachable():
        return manager.get_runner()
    runner = manager.create_runner(communicator=None)
    manager._runner = runner  # so that calcfunctions and sub-processes use this runner too
    return runner


def run_foreground(builder: Any) -> Any:
    """Run in this process; print the PK first, then every report line; return the node."""
    from aiida.engine.utils import instantiate_process
    from aiida.manage import get_manager

    runner = foreground_runner(get_manager())
    process = instantiate_process(runner, builder)
    click.echo(f'TrainsPotWorkChain<{process.node.pk}> running in the foreground (Ctrl-C kills)')
    handler = _ReportEcho(level=logging.INFO)
    handler.setFormatter(logging.Formatter('%(asctime)s %(message)s', '%H:%M:%S'))
    logger = logging.getLogger('aiida')
    console = [h for h in logger.handlers if type(h) is logging.StreamHandler]
    for existing in console:  # aiida's console handler would print every sub-process line
        logger.removeHandler(existing)
    logger.addHandler(handler)
    try:
        runner.run(process)
    finally:
        logger.removeHandler(handler)
        for existing in console:
            logger.addHandler(existing)
    return process.node


#: Entry points of the work chains a command takes, and their names in messages.
RUN_KINDS = {'trainspot.trainspot': 'TrainsPotWorkChain', 'trainspot.training': 'TrainingWorkChain'}


def load_run(identifier: str, kinds: tuple[str, ...] = ('trainspot.trainspot',)) -> Any:
    """The TrainsPotWorkChain node (or one of ``kinds``) with PK or UUID ``identifier``."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    _load_profile()
    try:
        node = orm.load_node(int(identifier) if identifier.isdigit() else identifier)
    except (NotExistent, MultipleObjectsError, ValueError):
        raise click.ClickException(f'no node with PK or UUID {identifier}') from None
    process_type = getattr(node, 'process_type', None) or ''
    if not any(process_type.endswith(kind) for kind in kinds):
        expected = ' or '.join(RUN_KINDS.get(kind, kind) for kind in kinds)
        raise click.ClickException(
            f'node {node.pk} is not a {expected} (it is a {type(node).__name__})'
        )
    return node


def records_of(node: Any) -> list[dict[str, Any]]:
    """The per-iteration records a run has emitted so far."""
    from aiida_trainspot.workflows.trainspot import iteration_checkpoints

    iterations = iteration_checkpoints(node).get('iterations', {})
    return [
        iterations[key]['record'].get_dict()
        for key in sorted(iterations)
        if 'record' in iterations[key]
    ]


def last_checkpoint(node: Any, name: str) -> Any:
    """The latest ``iterations.<it>.<name>`` output of a run, or None."""
    from aiida_trainspot.workflows.trainspot import last_checkpoint as latest

    return latest(node, name)


def _cell(value: Any) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.3g}'
    return str(value)


def status_table(node: Any) -> str:
    """A text table, one row per finished iteration, under the run's state."""
    from aiida_trainspot.workflows.records import status_rows

    rows = status_rows(records_of(node))
    state = node.process_state.value if node.process_state else 'created'
    if node.is_finished:
        state += f' [{node.exit_status}]'
    lines = [f'TrainsPotWorkChain<{node.pk}> {state}']
    if not rows:
        return '\n'.join([*lines, 'no iteration finished yet'])
    lines.extend(_text_table(rows))
    lines.append(
        "rmse_e: meV/atom, rmse_f: meV/Angstrom (committee mean, on that iteration's validation "
        'frames: a set that grows and hardens with the exploration; `status --learning-curve` '
        'scores every committee on the same frames)'
    )
    return '\n'.join(lines)


def _text_table(rows: list[dict[str, Any]]) -> list[str]:
    """Right-aligned text lines of rows that share their keys (the header first)."""
    header = list(rows[0])
    table = [[_cell(row[key]) for key in header] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(header)]
    lines = ['  '.join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines.extend('  '.join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in table)
    return lines


def held_out_frames(node: Any) -> tuple[Any, Any]:
    """(the run's labelled dataset, indices of its validation and test frames)."""
    import numpy as np

    outputs = node.outputs
    dataset = outputs.dataset if 'dataset' in outputs else last_checkpoint(node, 'dataset')
    if dataset is None:
        raise click.ClickException(f'run {node.pk} has no labelled dataset (yet)')
    held_out = np.union1d(dataset.split_indices('validation'), dataset.split_indices('test'))
    return dataset, held_out


def learning_curve_table(node: Any) -> str:
    """Every iteration's committee scored on the run's final validation and test frames.

    No committee trained on these frames (splits are sticky), so the rows compare: they show
    whether the campaign learned, which the per-iteration validation RMSE cannot (its frames
    change with each iteration).
    """
    from aiida_trainspot.evaluation.learning_curve import held_out_curve
    from aiida_trainspot.workflows.trainspot import iteration_checkpoints

    iterations = iteration_checkpoints(node).get('iterations', {})
    models = {
        int(key.rsplit('_', 1)[1]): dict(stage['models'])
        for key, stage in iterations.items()
        if 'models' in stage
    }
    if not models:
        raise click.ClickException(f'run {node.pk} has trained no committee yet')
    dataset, held_out = held_out_frames(node)
    if held_out.size == 0:
        raise click.ClickException(f'run {node.pk} has no validation or test frame to score on')
    with contextlib.ExitStack() as stack:
        # MACE sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD itself and torch then warns at every load
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings('ignore', 'Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD')
        committees = {
            iteration: [stack.enter_context(m.calculator()) for _, m in sorted(members.items())]
            for iteration, members in models.items()
        }
        points = held_out_curve(committees, dataset.get_columns(frames=held_out))
    rows = [
        {
            'iteration': p.iteration,
            'frames': p.n_frames,
            'rmse_e': p.energy,
            'rmse_f': p.forces,
            'rmse_s': p.stress,
        }
        for p in points
    ]
    return '\n'.join(
        [
            f'learning curve: each committee on the same {held_out.size} held-out frames (the '
            'final validation and test splits, which no committee trained on)',
            *_text_table(rows),
            'rmse_e: meV/atom, rmse_f: meV/Angstrom, rmse_s: meV/Angstrom^3 (committee mean)',
        ]
    )


def write_plots(node: Any, out: Path) -> list[Path]:
    """The campaign's PNGs: RMSE history, composition, parity and calibration."""
    from aiida_trainspot.plots import write_campaign_plots

    records = records_of(node)
    if not records:
        raise click.ClickException(f'run {node.pk} has finished no iteration yet: nothing to plot')
    predictions = last_checkpoint(node, 'predictions')
    calibration = last_checkpoint(node, 'calibration')
    return write_campaign_plots(
        records,
        out,
        predictions=predictions['labelled'] if predictions else None,
        calibration=calibration.get_dict() if calibration is not None else None,
    )


def export_run(node: Any, dataset_file: Path | None, models_dir: Path | None) -> list[str]:
    """Write the labelled dataset (extxyz, REF_ keys) and the committee's model files.

    With the models goes the run's last calibration, as ``models_dir/calibration.json``
    (``Calibration.to_dict``), for :class:`aiida_trainspot.calculator.CommitteeCalculator`.
    """
    lines = []
    if dataset_file is not None:
        if 'dataset' not in node.outputs:
            raise click.ClickException(f'run {node.pk} has no dataset output (yet)')
        count = write_extxyz(node.outputs.dataset, dataset_file)
        lines.append(f'dataset: {count} frames -> {dataset_file}')
    if models_dir is not None:
        if 'models' not in node.outputs:
            raise click.ClickException(f'run {node.pk} has no committee output (yet)')
        for label, _, paths in write_models(dict(node.outputs.models.items()), models_dir):
            lines.append(f'{label}: {paths["model"]}')
        if 'calibration' in node.outputs:  # what CommitteeCalculator reads for its uncertainty
            path = write_calibration(node.outputs.calibration, models_dir)
            lines.append(f'calibration: {path}')
    return lines


def write_models(models: dict[str, Any], models_dir: Path) -> list[tuple[str, Any, dict]]:
    """Export each model into ``models_dir/<label>/``: ``(label, model, paths)`` by label."""
    from aiida_trainspot.data.paths import path_inside, plain_filename

    written = []
    for label, model in sorted(models.items()):
        try:  # the folder and file names come from the nodes: none may leave models_dir
            paths = model.export(path_inside(models_dir, plain_filename(label, 'models')))
        except ValueError as exception:
            raise click.ClickException(
                f'model {label} <{model.pk}> not exported: {_one_line(exception)}'
            ) from None
        written.append((label, model, paths))
    return written


def write_calibration(calibration: Any, folder: Path) -> Path:
    """Write a calibration ``Dict`` as ``folder/calibration.json`` (``Calibration.to_dict``)."""
    path = folder / CALIBRATION_FILE
    path.write_text(json.dumps(calibration.get_dict(), indent=2))
    return path


@click.command('run')
@click.argument('config_file', metavar='CONFIG.yaml', type=click.Path(path_type=Path))
@click.option('--daemon', is_flag=True, help='Submit to the daemon and return.')
@click.option(
    '--dry-run',
    is_flag=True,
    help='Build and validate every input as a submission would, print the resolved settings '
    '(codes, DFT, committee, MD, budgets) and stop: nothing is stored or submitted.',
)
def run(config_file: Path, daemon: bool, dry_run: bool) -> None:
    """Run a campaign described by CONFIG.yaml (protocol, structures, codes, overrides)."""
    config = read_run_config(config_file)
    _load_profile()
    builder = build(config)
    if dry_run:
        from .dry_run import dry_run_report, validate_builder

        try:
            with contextlib.redirect_stdout(io.StringIO()):  # what imported plugins print
                inputs = validate_builder(builder)
            report = dry_run_report(inputs, config, config_file)
        except (ValueError, TypeError, KeyError) as exception:
            raise click.ClickException(_one_line(exception)) from None
        click.echo(report)
        click.echo('dry run: OK, nothing submitted')
        return
    if daemon:
        from aiida.engine import submit

        node = submit(builder)
        click.echo(
            f'TrainsPotWorkChain<{node.pk}> submitted; follow it with '
            f'`aiida-trainspot status {node.pk}`'
        )
        return
    node = run_foreground(builder)
    click.echo(status_table(node))
    if not node.is_finished_ok:
        raise click.ClickException(f'run {node.pk} did not finish ok: {node.exit_message}')


@click.command('status')
@click.argument('identifier', metavar='PK')
@click.option(
    '--learning-curve',
    is_flag=True,
    help="Also score every iteration's committee on the same held-out frames (the run's "
    'validation and test splits; loads every committee).',
)
def status(identifier: str, learning_curve: bool) -> None:
    """One row per iteration of a run (works while it runs)."""
    node = load_run(identifier)
    click.echo(status_table(node))
    if learning_curve:
        click.echo(learning_curve_table(node))


@click.command('plot')
@click.argument('identifier', metavar='PK')
@click.option(
    '--out',
    type=click.Path(file_okay=False, path_type=Path),
    default=Path('trainspot-plots'),
    show_default=True,
    help='Folder of the PNG files.',
)
def plot(identifier: str, out: Path) -> None:
    """PNG plots of a run: RMSE per iteration, parity, calibration, composition."""
    for path in write_plots(load_run(identifier), out):
        click.echo(str(path))


@click.command('export')
@click.argument('identifier', metavar='PK')
@click.option('--dataset', 'dataset_file', type=click.Path(dir_okay=False, path_type=Path))
@click.option('--models', 'models_dir', type=click.Path(file_okay=False, path_type=Path))
def export(identifier: str, dataset_file: Path | None, models_dir: Path | None) -> None:
    """Write a run's dataset (extxyz for MACE and metatrain) and model files."""
    if dataset_file is None and models_dir is None:
        raise click.ClickException('give --dataset FILE.xyz and/or --models DIR')
    for line in export_run(load_run(identifier), dataset_file, models_dir):
        click.echo(line)


@click.command('example')
@click.argument('name', type=click.Choice(['carbon']))
@click.option(
    '--out',
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help='Folder of the plots and exports (default: examples/NAME/results).',
)
def example(name: str, out: Path | None) -> None:
    """Run a bundled example (examples/NAME) end to end, then plot and export it."""
    config_file = EXAMPLES / name / 'config.yaml'
    if not config_file.is_file():
        raise click.ClickException(f'the example needs the source tree: no {config_file}')
    config = read_run_config(config_file)
    _load_profile()
    from aiida_trainspot.cli.setup import ensure_localhost, ensure_pseudo_family, local_codes

    computer, line = ensure_localhost(None)
    click.echo(line)
    for line in local_codes(computer):
        click.echo(line)
    click.echo(ensure_pseudo_family(config['pseudo_family'], ('C',), '/usr/share/espresso/pseudo'))
    node = run_foreground(build(config))
    click.echo(status_table(node))
    if node.is_finished_ok:
        click.echo(learning_curve_table(node))
    out = out or EXAMPLES / name / 'results'
    for path in write_plots(node, out / 'plots'):
        click.echo(f'plot: {path}')
    if node.is_finished_ok:
        for line in export_run(node, out / 'dataset.xyz', out / 'models'):
            click.echo(line)
    click.echo(f'results in {out}; provenance: verdi node graph generate {node.pk}')
    if not node.is_finished_ok:
        raise click.ClickException(f'run {node.pk} did not finish ok: {node.exit_message}')
