"""Per-iteration records of the active-learning loop (plain Python, no AiiDA import).

One record is written when an iteration ends, as a JSON-able dict; ``aiida-trainspot status``,
``aiida-trainspot plot`` and the benchmarks read nothing else. Its keys:

``iteration``
    1-based iteration number.
``n_labels_total``
    frames sent to labelling since the campaign began (failed ones included): what
    ``max_labels`` bounds.
``dataset``
    the labelled dataset after this iteration's training: ``n_frames``, ``split_counts``
    (train/validation/test/unassigned) and ``by_generation_method`` (frame counts).
``labelling`` / ``training`` / ``exploration``
    what each stage did in this iteration (``None`` when the stage was skipped or resumed):
    ``{'n_frames', 'n_labelled', 'n_failed'}``, ``{'n_members', 'n_failed', 'seeds'}``,
    ``{'n_frames', 'n_jobs_failed'}``.
``rmse``
    ``{split: {property: {'committee', 'member_mean', 'member_std', 'n_frames'}}}`` for the
    splits ``train``, ``validation``, ``test`` and ``all`` of the labelled dataset, in
    ``rmse_units`` (meV/atom, meV/Å, meV/Å³); ``None`` where a split has no labelled value.
``calibration``
    ``slopes``, ``thresholds`` (τ), ``error_thresholds`` (ε_thr), ``r2``, ``n_points`` and
    ``reused_previous`` by property, in eV units (eV/atom, eV/Å, eV/Å³); ``splits``: the splits
    it was fitted on; ``error``: whose error ε is (``'committee_mean'`` or ``'members'``).
``tpr`` / ``ppv``
    by property, of the calibrated criterion on the calibration frames (``None`` when undefined).
``selection``
    counts: ``frames`` (explored), ``candidates``, ``rejected``, ``thinned``, ``capped``,
    ``selected``.
``stop_reason``
    ``None`` while the loop goes on, else one of :data:`STOP_REASONS`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from aiida_trainspot.evaluation.disagreement import LEGACY_ERROR_KIND

#: Why a campaign ended (``stop_reason``): every explored frame below the calibrated
#: thresholds; the iteration limit; the label budget would be exceeded by the selection.
STOP_REASONS = ('converged', 'max_iterations', 'max_labels')
SPLITS = ('train', 'validation', 'test', 'all')
PROPERTIES = ('energy', 'forces', 'stress')
RMSE_UNITS = {'energy': 'meV/atom', 'forces': 'meV/Angstrom', 'stress': 'meV/Angstrom^3'}
SELECTION_COUNTS = ('frames', 'candidates', 'rejected', 'thinned', 'capped', 'selected')


def rmse_by_split(metrics: Mapping[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """RMSEs of one evaluated dataset (its ``metrics['datasets'][name]``) by split and property."""
    splits = metrics.get('splits', {})
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for split in SPLITS:
        entry = splits.get(split)
        if entry is None:
            continue
        out[split] = {
            prop: {
                'committee': entry[prop].get('committee_rmse'),
                'member_mean': entry[prop].get('member_rmse_mean'),
                'member_std': entry[prop].get('member_rmse_std'),
                'n_frames': int(entry[prop].get('n_frames', 0)),
            }
            for prop in PROPERTIES
            if prop in entry
        }
    return out


def dataset_summary(
    n_frames: int, split_counts: Mapping[str, int], methods: Sequence[str]
) -> dict[str, Any]:
    """Size, split counts and composition by generation method of a dataset."""
    counts = Counter(str(m) if m else 'unknown' for m in methods)
    return {
        'n_frames': int(n_frames),
        'split_counts': {k: int(v) for k, v in split_counts.items()},
        'by_generation_method': dict(sorted(counts.items())),
    }


def stage_summaries(
    labelling: Mapping[str, Any] | None,
    training: Mapping[str, Any] | None,
    exploration: Mapping[str, Any] | None,
) -> dict[str, dict[str, Any] | None]:
    """The counts of each stage from its summary/report output (``None`` when it did not run)."""
    out: dict[str, dict[str, Any] | None] = {
        'labelling': None,
        'training': None,
        'exploration': None,
    }
    if labelling is not None:
        out['labelling'] = {
            key: int(labelling.get(key, 0)) for key in ('n_frames', 'n_labelled', 'n_failed')
        }
    if training is not None:
        seeds = list(training.get('seeds', []))
        n_members = int(training.get('n_trained', 0))
        out['training'] = {
            'n_members': n_members,
            'n_failed': len(seeds) - n_members,
            'seeds': seeds,
        }
    if exploration is not None:
        out['exploration'] = {
            'n_frames': int(exploration.get('n_frames', 0)),
            'n_jobs_failed': len(exploration.get('failed_jobs', {})),
        }
    return out


def iteration_record(
    *,
    iteration: int,
    n_labels_total: int,
    dataset: Mapping[str, Any],
    stages: Mapping[str, Any],
    metrics: Mapping[str, Any],
    calibration: Mapping[str, Any],
    diagnostics: Mapping[str, Any],
    selection: Mapping[str, Any],
    stop_reason: str | None = None,
) -> dict[str, Any]:
    """Assemble the record of one iteration (see the module docstring for its keys)."""
    if stop_reason is not None and stop_reason not in STOP_REASONS:
        raise ValueError(f'unknown stop reason {stop_reason!r}; known: {STOP_REASONS}')
    at_thresholds = diagnostics.get('at_thresholds', {})
    counts = selection.get('counts', {})
    return {
        'iteration': int(iteration),
        'n_labels_total': int(n_labels_total),
        'dataset': dict(dataset),
        **{key: stages.get(key) for key in ('labelling', 'training', 'exploration')},
        'rmse': rmse_by_split(metrics),
        'rmse_units': dict(RMSE_UNITS),
        'calibration': {
            key: dict(calibration.get(key, {}))
            for key in (
                'slopes',
                'thresholds',
                'error_thresholds',
                'r2',
                'n_points',
                'reused_previous',
            )
        }
        | {
            'splits': list(diagnostics.get('splits', [])),
            'error': calibration.get('error', LEGACY_ERROR_KIND),
        },
        'tpr': {k: v.get('tpr') for k, v in at_thresholds.items()},
        'ppv': {k: v.get('ppv') for k, v in at_thresholds.items()},
        'selection': {key: int(counts.get(key, 0)) for key in SELECTION_COUNTS},
        'stop_reason': stop_reason,
    }


def status_rows(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per record for a table: sizes, counts, validation RMSE, TPR/PPV."""
    rows = []
    for record in sorted(records, key=lambda r: r['iteration']):
        validation = record.get('rmse', {}).get('validation', {})
        rows.append(
            {
                'iteration': record['iteration'],
                'frames': record['dataset'].get('n_frames'),
                'labels': record['n_labels_total'],
                'failed': (record.get('labelling') or {}).get('n_failed', 0),
                'explored': record['selection']['frames'],
                'candidates': record['selection']['candidates'],
                'selected': record['selection']['selected'],
                'rmse_e': validation.get('energy', {}).get('committee'),
                'rmse_f': validation.get('forces', {}).get('committee'),
                'tpr_f': record.get('tpr', {}).get('forces'),
                'ppv_f': record.get('ppv', {}).get('forces'),
                'stop': record.get('stop_reason') or '',
            }
        )
    return rows
