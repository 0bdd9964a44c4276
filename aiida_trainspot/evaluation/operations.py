"""Calibration and selection as calcfunctions, so every decision is in the provenance graph.

Both read the columns an :class:`~.calculation.EvaluationCalculation` wrote
(``delta_*``, ``eps_*``, ``forces_mean``, ``non_finite``) and call the pure functions of
:mod:`.calibration` and :mod:`.selection`. Frames flagged ``non_finite`` (a member's prediction
was not finite) are left out of the calibration and are candidates of the selection.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase.neighborlist import neighbor_list

from aiida_trainspot.data import PESData

from .calibration import Calibration, CalibrationSettings, calibrate, diagnostics, rate_grid
from .disagreement import PROPERTIES, errors_of, json_float, max_force_norm
from .selection import SelectionSettings, select_frames

GRID_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _column(dataset: PESData, name: str) -> np.ndarray | None:
    if name not in dataset.column_names:
        return None
    values, present = dataset.get_column(name)
    values = np.asarray(values, dtype=float).copy()
    values[~present] = np.nan
    return values


def non_finite_frames(dataset: PESData) -> np.ndarray:
    """(F,) the frames flagged ``non_finite`` by the evaluation (none without the column)."""
    if 'non_finite' not in dataset.column_names:
        return np.zeros(len(dataset), dtype=bool)
    values, present = dataset.get_column('non_finite')
    return np.asarray(values, dtype=bool).reshape(-1) & np.asarray(present, dtype=bool)


def disagreement_and_errors(
    dataset: PESData,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-frame δ and ε by property, from the evaluation columns (NaN where missing)."""
    deltas = {p: v for p in PROPERTIES if (v := _column(dataset, f'delta_{p}')) is not None}
    errors = {p: v for p in PROPERTIES if (v := _column(dataset, f'eps_{p}')) is not None}
    if not deltas:
        raise ValueError('the dataset has no delta_* columns: evaluate it with the committee first')
    return deltas, errors


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return json_float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


@calcfunction
def calibrate_committee(
    predictions: PESData,
    error_thresholds: orm.Dict,
    settings: orm.Dict,
    previous: orm.Dict | None = None,
) -> dict[str, orm.Dict]:
    """Fit δ ≈ a·ε on labelled held-out frames; thresholds τ = a·ε_thr; TPR/PPV diagnostics.

    ``settings``: a :class:`.CalibrationSettings` dictionary (``method``, ``min_points``,
    ``power_law``, ``error``: whose error ε is, ``'committee_mean'`` when absent, see
    :mod:`.calibration`; ``splits``: the splits whose frames the fit uses, e.g.
    ``['validation', 'test']``; all frames when absent or empty, or when those splits hold fewer
    than ``min_points`` labelled frames); a bad or unknown key raises ValueError.
    ``diagnostics['splits']`` records which frames were used; its rates score δ against the
    same kind of error.
    Frames flagged ``non_finite`` (some member's prediction was not finite, so their δ and ε
    come from fewer members) are never used (``diagnostics['n_non_finite']`` counts them).
    """
    deltas, mean_errors = disagreement_and_errors(predictions)
    flagged = non_finite_frames(predictions)
    mean_errors = {k: np.where(flagged, np.nan, v) for k, v in mean_errors.items()}
    options = CalibrationSettings.from_dict(settings.get_dict())
    kind = options.error
    used, used_splits = calibration_frames(
        predictions, mean_errors, list(options.splits), options.min_points
    )
    used = used & ~flagged
    deltas = {k: v[used] for k, v in deltas.items()}
    mean_errors = {k: v[used] for k, v in mean_errors.items()}
    errors = errors_of(kind, deltas, mean_errors)  # the ε that δ is fitted to and scored against
    min_points = options.min_points
    previous_calibration = (
        Calibration.from_dict(previous.get_dict()) if previous is not None else None
    )
    if previous_calibration is not None and previous_calibration.error != kind:
        previous_calibration = None  # its slopes relate δ to another error: nothing to reuse
    names, skipped = calibratable(deltas, errors, min_points, previous_calibration)
    if not names:
        raise ValueError(
            f'no property has {min_points} labelled frames with a disagreement ({skipped}) '
            'and there is no previous calibration'
        )
    calibration = calibrate(
        deltas,
        mean_errors,
        error_thresholds=error_thresholds.get_dict(),
        method=options.method,
        min_points=min_points,
        previous=previous_calibration,
        properties=names,
        power_law=options.power_law,
        error=kind,
    )
    report = {
        'skipped': skipped,
        'at_thresholds': diagnostics(calibration, deltas, errors),
        'grid': {},
        'splits': used_splits,
        'n_frames': int(used.sum()),
        'n_non_finite': int(flagged.sum()),
    }
    for name, tau in calibration.thresholds.items():
        if name in errors:
            factors = np.array(GRID_FACTORS)
            grid = rate_grid(
                deltas[name],
                errors[name],
                tau * factors,
                calibration.error_thresholds[name] * factors,
            )
            report['grid'][name] = {
                'factors': list(GRID_FACTORS),
                'tpr': grid['tpr'],
                'ppv': grid['ppv'],
            }
    return {
        'calibration': orm.Dict(calibration.to_dict()),
        'diagnostics': orm.Dict(_jsonable(report)),
    }


def calibratable(
    deltas: dict[str, np.ndarray],
    errors: dict[str, np.ndarray],
    min_points: int,
    previous: Calibration | None,
) -> tuple[list[str], dict[str, str]]:
    """Properties that can be calibrated, and why the others cannot.

    A property needs ``min_points`` frames with both δ and ε (stress, for instance, exists only
    for frames periodic along two or three axes) or a previous slope to reuse; one without either
    is left out of the calibration, and so out of the selection criterion, rather than failing
    the campaign.
    """
    names, skipped = [], {}
    for name in PROPERTIES:
        if name not in deltas:
            continue
        error = errors.get(name)
        n_pairs = (
            0 if error is None else int(np.sum(np.isfinite(deltas[name]) & np.isfinite(error)))
        )
        if n_pairs >= min_points or (previous is not None and name in previous.slopes):
            names.append(name)
        else:
            skipped[name] = f'{n_pairs} frames with disagreement and error (< {min_points})'
    return names, skipped


def calibration_frames(
    predictions: PESData,
    errors: dict[str, np.ndarray],
    splits: list[str] | None,
    min_points: int,
) -> tuple[np.ndarray, list[str]]:
    """Mask of the frames to calibrate on: those of ``splits`` if enough are labelled, else all.

    Frames the committee trained on have smaller errors than new ones, so held-out frames
    calibrate better; a young campaign may not have ``min_points`` of them yet.
    """
    everything = (np.ones(len(predictions), dtype=bool), ['all'])
    if not splits or 'split' not in predictions.column_names:
        return everything
    values, present = predictions.get_column('split')
    chosen = present & np.isin(np.asarray(values, dtype=object), list(splits))
    labelled = np.zeros(len(predictions), dtype=bool)
    for error in errors.values():
        labelled |= np.isfinite(error)
    if int((chosen & labelled).sum()) >= min_points:
        return chosen, list(splits)
    return everything


def min_distances(dataset: PESData, cutoff: float) -> np.ndarray:
    """Shortest interatomic distance of every frame (periodic images included), up to ``cutoff``."""
    out = np.full(len(dataset), np.inf)
    for index, atoms in enumerate(dataset.iter_atoms()):
        if len(atoms) > 1 or atoms.pbc.any():
            distances = neighbor_list('d', atoms, cutoff)
            if distances.size:
                out[index] = distances.min()
    return out


@calcfunction
def select_for_labelling(
    predictions: PESData, calibration: orm.Dict, settings: orm.Dict, seed: orm.Int
) -> dict[str, orm.Data]:
    """Candidates above τ or flagged ``non_finite``, minus unphysical frames, thinned, capped."""
    deltas, _ = disagreement_and_errors(predictions)
    options = SelectionSettings.from_dict(settings.get_dict())
    columns = predictions.get_columns(
        [c for c in ('run_id', 'step', 'forces_mean') if c in predictions.column_names]
    )
    n_atoms = columns.n_atoms
    max_forces = (
        max_force_norm(columns.atom['forces_mean'], n_atoms)
        if 'forces_mean' in columns.atom
        else None
    )
    result = select_frames(
        deltas,
        Calibration.from_dict(calibration.get_dict()),
        seed=seed.value,
        n_atoms=n_atoms,
        positions=columns.atom['positions'],
        run_id=columns.frame.get('run_id'),
        step=columns.frame.get('step'),
        numbers=columns.atom['numbers'],
        cells=columns.frame['cell'],
        pbc=columns.frame['pbc'],
        min_distances=min_distances(predictions, 2.0 * options.min_distance),
        max_forces=max_forces,
        non_finite=non_finite_frames(predictions),
        settings=options,
    )
    return {
        'selected': predictions.subset(result.selected),
        'rejected': predictions.subset(result.rejected),
        'report': orm.Dict(_jsonable(result.to_dict())),
    }
