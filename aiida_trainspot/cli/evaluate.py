r"""``aiida-trainspot evaluate PK FILE``: a campaign's committee on any structures, with error bars.

Every frame of FILE (any format ASE reads) goes through
:meth:`CommitteeCalculator.from_campaign <aiida_trainspot.calculator.CommitteeCalculator.
from_campaign>` (the campaign's final committee and its last calibration), so each number is the
one the campaign's evaluation stage would compute for that frame: committee-mean energy and
forces, the disagreements δ and the calibrated error bars :math:`\hat\varepsilon = \delta / a`.

Where a frame carries labels (a single-point calculator, as extxyz's ``energy=``/forces give, or
keys named by ``--label-prefix``), its true errors are those of the evaluation stage
(:func:`~aiida_trainspot.evaluation.disagreement.true_errors`: energy per atom, RMS over the
force components, RMS over the nine stress components, of the committee mean) and, for the error
that the calibration estimates (:func:`~aiida_trainspot.evaluation.disagreement.errors_of`: the
committee mean's, or the members' RMS for an ``error='members'`` calibration), whether it is
within the error bar.

Names (the ``predictions.xyz`` info/arrays keys and the ``predictions.csv`` columns) follow the
evaluation stage's columns (:data:`~aiida_trainspot.evaluation.inference.FRAME_COLUMNS`); units
are eV, eV/atom, eV/Å and eV/Å³ (the table shows meV).
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from .data import PREFIX_HELP, _label_keys, _one_line, read_frames

PROPERTIES = ('energy', 'forces', 'stress')
#: Short names of the properties in the table.
SHORT = {'energy': 'E', 'forces': 'F', 'stress': 'S'}
#: Files written under ``--out``.
XYZ_FILE, CSV_FILE, PLOT_FILE = 'predictions.xyz', 'predictions.csv', 'error_bars.png'
_MILLI = 1000.0


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def predict_frames(committee: Any, frames: Sequence[Any]) -> list[dict[str, Any]]:
    """The committee's results on each frame (a copy of ``committee.results`` per frame)."""
    from ase import Atoms

    results = []
    for index, frame in enumerate(frames):
        atoms = Atoms(frame.numbers, frame.positions, cell=frame.cell, pbc=frame.pbc)
        atoms.calc = committee
        try:
            atoms.get_potential_energy()
        except Exception as exception:
            raise click.ClickException(
                f'frame {index} ({atoms.get_chemical_formula()}): the committee failed: '
                f'{_one_line(exception)}'
            ) from None
        results.append(dict(committee.results))
    return results


def _committee_mean(results: Sequence[Mapping[str, Any]], n_atoms: np.ndarray) -> Any:
    """The committee means as a one-member ``CommitteePredictions`` (for ``true_errors``)."""
    from aiida_trainspot.evaluation.disagreement import CommitteePredictions

    stress = np.full((1, len(results), 6), np.nan)
    has_stress = np.array(['stress' in r for r in results])
    for index, result in enumerate(results):
        if has_stress[index]:
            stress[0, index] = result['stress']
    return CommitteePredictions(
        n_atoms=n_atoms,
        energy=np.array([[r['energy'] for r in results]]),
        forces=np.concatenate([r['forces'] for r in results])[None],
        stress=stress,
        stress_mask=has_stress,
    )


def frame_table(
    frames: Sequence[Any],
    results: Sequence[Mapping[str, Any]],
    calibration: Any,
    label_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """One row per frame: predictions, δ, error bars and, where labelled, the true errors.

    Keys: ``frame``, ``n_atoms``, ``formula``, ``energy_mean`` (eV), ``energy_mean_per_atom``,
    ``max_force`` (largest committee-mean force norm, eV/Å), ``delta_<p>`` and
    ``delta_forces_max``, ``estimated_error_<p>`` (the error bar, where calibrated),
    ``eps_<p>`` (the committee mean's true error, where labelled), ``error_<p>`` (the true error
    of the kind the calibration estimates) and ``within_<p>`` (``error_<p>`` <= the error bar);
    NaN or None where a value is missing.
    """
    from aiida_trainspot.data.convert import columns_from_atoms
    from aiida_trainspot.evaluation.disagreement import errors_of, true_errors
    from aiida_trainspot.evaluation.inference import reference_labels

    n_atoms = np.array([len(frame) for frame in frames])
    keys = _label_keys(label_prefix) if label_prefix else {}
    try:
        columns = columns_from_atoms(
            frames,
            energy_key=keys.get('energy'),
            forces_key=keys.get('forces'),
            stress_key=keys.get('stress'),
        )
        labels = reference_labels(columns)
    except (ValueError, TypeError) as exception:
        raise click.ClickException(f'labels not read: {_one_line(exception)}') from None
    delta = {
        name: np.array([_float(r.get(f'{name}_disagreement')) for r in results])
        for name in PROPERTIES
    }
    eps = errors = None
    if labels is not None:
        eps = true_errors(_committee_mean(results, n_atoms), labels).as_dict()
        kind = calibration.error if calibration is not None else 'committee_mean'
        errors = errors_of(kind, delta, eps)
    rows = []
    for index, (frame, result) in enumerate(zip(frames, results, strict=True)):
        forces = np.asarray(result['forces'])
        row: dict[str, Any] = {
            'frame': index,
            'n_atoms': len(frame),
            'formula': frame.get_chemical_formula(),
            'energy_mean': float(result['energy']),
            'energy_mean_per_atom': float(result['energy']) / len(frame),
            'max_force': float(np.linalg.norm(forces, axis=1).max()),
            'delta_forces_max': float(result['forces_disagreement_max']),
        }
        for name in PROPERTIES:
            row[f'delta_{name}'] = float(delta[name][index])
            row[f'estimated_error_{name}'] = _float(result.get(f'{name}_uncertainty'))
        if eps is not None:
            for name in PROPERTIES:
                row[f'eps_{name}'] = float(eps[name][index])
                error = float(errors[name][index])
                row[f'error_{name}'] = error
                bar = row[f'estimated_error_{name}']
                row[f'within_{name}'] = (
                    bool(error <= bar) if math.isfinite(error) and math.isfinite(bar) else None
                )
        rows.append(row)
    return rows


def _present(rows: Sequence[Mapping[str, Any]], key: str) -> bool:
    """Whether any row has a finite value (or a boolean) under ``key``."""
    for row in rows:
        value = row.get(key)
        if isinstance(value, bool) or (value is not None and math.isfinite(value)):
            return True
    return False


def _milli(value: Any) -> float | None:
    return None if value is None or not math.isfinite(value) else value * _MILLI


def text_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The rows as text (meV units), with only the columns some frame has a value in."""
    from .campaign import _text_table

    shown = [
        name for name in PROPERTIES if _present(rows, f'delta_{name}')
    ]  # a cluster-only file has no stress column
    labelled = [name for name in shown if _present(rows, f'error_{name}')]
    table = []
    for row in rows:
        line: dict[str, Any] = {
            'frame': row['frame'],
            'n_atoms': row['n_atoms'],
            'E/atom': row['energy_mean_per_atom'],
            'Fmax': row['max_force'],
        }
        for name in shown:
            line[f'd{SHORT[name]}'] = _milli(row[f'delta_{name}'])
            line[f'±{SHORT[name]}'] = _milli(row[f'estimated_error_{name}'])
        for name in labelled:
            line[f'err{SHORT[name]}'] = _milli(row[f'error_{name}'])
        if labelled:
            marks = {True: 'y', False: 'n', None: '-'}
            line['within'] = ' '.join(
                f'{SHORT[name]}:{marks[row[f"within_{name}"]]}' for name in labelled
            )
        table.append(line)
    return _text_table(table)


def legend(rows: Sequence[Mapping[str, Any]], calibration: Any) -> str:
    """What the table's columns are."""
    text = (
        'E/atom: eV, committee mean; Fmax: eV/Angstrom, largest committee-mean force; '
        'dE dF dS: disagreement; ±E ±F ±S: calibrated error bar (delta / slope); '
        'meV/atom, meV/Angstrom, meV/Angstrom^3'
    )
    if calibration is None:
        text += '; no calibration: no error bar'
    if any(_present(rows, f'error_{name}') for name in PROPERTIES):
        whose = (
            "the members' RMS"
            if calibration and calibration.error == 'members'
            else 'the committee mean'
        )
        text += f'; errE errF errS: true error of {whose} against the labels; within: error <= bar'
    return text


# ----------------------------------------------------------------------------- files


def write_predictions_xyz(
    frames: Sequence[Any],
    results: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    path: Path,
) -> Path:
    """Extended XYZ: each frame with its labels (``REF_*``) and the predictions in info/arrays.

    info: the scalar entries of :func:`frame_table` (missing ones left out), ``stress_mean``
    (Voigt, where predicted) and ``estimated_error_<p>_sigma`` (a power-law calibration); arrays:
    ``forces_mean``, ``delta_forces_per_atom`` and ``estimated_error_forces_per_atom``.
    """
    from aiida_trainspot.data.convert import write_labelled_extxyz

    out = []
    for frame, result, row in zip(frames, results, rows, strict=True):
        atoms = frame.copy()
        atoms.calc = frame.calc  # write_labelled_extxyz moves its labels under REF_ keys
        for key, value in row.items():
            if key in ('frame', 'formula') or value is None:
                continue
            if isinstance(value, bool) or not math.isfinite(value):
                if isinstance(value, bool):
                    atoms.info[key] = value
                continue
            atoms.info[key] = value
        if 'stress' in result:
            atoms.info['stress_mean'] = np.asarray(result['stress'], dtype=float)
        for name in PROPERTIES:
            if f'{name}_uncertainty_sigma' in result:
                atoms.info[f'estimated_error_{name}_sigma'] = result[f'{name}_uncertainty_sigma']
        atoms.arrays['forces_mean'] = np.asarray(result['forces'], dtype=float)
        atoms.arrays['delta_forces_per_atom'] = result['forces_disagreement_per_atom']
        if 'forces_uncertainty_per_atom' in result:
            atoms.arrays['estimated_error_forces_per_atom'] = result['forces_uncertainty_per_atom']
        out.append(atoms)
    write_labelled_extxyz(out, path)
    return path


def write_predictions_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """One line per frame, the columns of :func:`frame_table` (empty where missing)."""

    def cell(value: Any) -> Any:
        if isinstance(value, (bool, np.bool_)) or value is None:
            return '' if value is None else bool(value)
        if isinstance(value, (float, np.floating)):
            return repr(float(value)) if math.isfinite(value) else ''
        return value

    with open(path, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({key: cell(value) for key, value in row.items()})
    return path


def plot_error_bars(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Error bar against frame index per property; labelled: true error against error bar."""
    from aiida_trainspot.plots import TITLES, VALUE_UNITS, _figure, _message, _save

    shown = [name for name in PROPERTIES if _present(rows, f'estimated_error_{name}')]
    if not shown:
        return _message(path, 'Error bars', 'the campaign has no calibration: no error bar')
    labelled = [name for name in shown if _present(rows, f'error_{name}')]
    n_columns = 2 if labelled else 1
    figure = _figure(5.0 * n_columns, 3.2 * len(shown))
    axes = figure.subplots(len(shown), n_columns, squeeze=False)
    frames = np.array([row['frame'] for row in rows])
    for line, name in enumerate(shown):
        unit = VALUE_UNITS[name]
        bars = np.array([row[f'estimated_error_{name}'] for row in rows], dtype=float)
        ax = axes[line][0]
        ax.plot(frames, bars, 'o-', ms=3, lw=0.8, color='tab:blue', label='error bar')
        if name in labelled:
            errors = np.array([row[f'error_{name}'] for row in rows], dtype=float)
            ax.plot(frames, errors, 'x', ms=4, color='tab:red', label='true error')
            ax.legend(fontsize=8)
        ax.set_xlabel('frame')
        ax.set_ylabel(f'{TITLES[name]} error bar ({unit})')
        ax.set_title(f'{TITLES[name]}: calibrated error bar')
        if n_columns == 1:
            continue
        ax = axes[line][1]
        if name not in labelled:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f'no {name} label', ha='center', va='center')
            continue
        keep = np.isfinite(errors) & np.isfinite(bars)
        within = keep & (errors <= bars)
        ax.scatter(bars[within], errors[within], s=12, color='tab:green', label='within')
        ax.scatter(bars[keep & ~within], errors[keep & ~within], s=12, color='tab:red')
        top = float(max(bars[keep].max(), errors[keep].max())) * 1.05 if keep.any() else 1.0
        ax.plot([0.0, top], [0.0, top], 'k--', lw=0.8, label='y = x')
        ax.set_xlim(0.0, top)
        ax.set_ylim(0.0, top)
        ax.set_xlabel(f'error bar ({unit})')
        ax.set_ylabel(f'true error ({unit})')
        ax.set_title(f'{TITLES[name]}: {int(within.sum())}/{int(keep.sum())} within the bar')
        ax.legend(fontsize=8)
    return _save(figure, path)


# ----------------------------------------------------------------------------- command


@click.command('evaluate')
@click.argument('identifier', metavar='PK')
@click.argument('file', type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    '--out',
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f'Folder of {XYZ_FILE}, {CSV_FILE} and {PLOT_FILE} (left out: the table only).',
)
@click.option(
    '-F',
    '--format',
    'file_format',
    default=None,
    help='ASE format name of FILE (e.g. extxyz); guessed from the file if left out.',
)
@click.option(
    '--label-prefix',
    default=None,
    help=PREFIX_HELP + ' Left out: labels from the calculator results ASE attaches.',
)
@click.option('--device', default='cpu', show_default=True, help='Device of the models.')
def evaluate(
    identifier: str,
    file: Path,
    out: Path | None,
    file_format: str | None,
    label_prefix: str | None,
    device: str,
) -> None:
    """Predictions and calibrated error bars of campaign PK's final committee on FILE.

    One row per frame of FILE (any format ASE reads): committee-mean energy, largest force,
    disagreements and calibrated error bars and, for labelled frames, the true errors and
    whether they are within the bars.
    """
    frames = read_frames(file, file_format)
    from aiida_trainspot.calculator import CommitteeCalculator

    from .campaign import load_run

    node = load_run(identifier)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            committee = CommitteeCalculator.from_campaign(node, device=device)
        except (ValueError, KeyError) as exception:
            raise click.ClickException(_one_line(exception)) from None
    for warning in caught:
        if issubclass(warning.category, UserWarning) and f'<{node.pk}>' in str(warning.message):
            click.echo(f'warning: {_one_line(warning.message)}', err=True)
    try:
        results = predict_frames(committee, frames)
    finally:
        committee.close()
    rows = frame_table(frames, results, committee.calibration, label_prefix)
    click.echo(
        f'TrainsPotWorkChain<{node.pk}>: {committee.n_members} members on {len(frames)} frames '
        f'of {file}'
    )
    for line in text_table(rows):
        click.echo(line)
    click.echo(legend(rows, committee.calibration))
    if out is None:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = [
            write_predictions_xyz(frames, results, rows, out / XYZ_FILE),
            write_predictions_csv(rows, out / CSV_FILE),
            plot_error_bars(rows, out / PLOT_FILE),
        ]
    except OSError as exception:
        raise click.ClickException(f'cannot write to {out}: {_one_line(exception)}') from None
    for path in paths:
        click.echo(str(path))
