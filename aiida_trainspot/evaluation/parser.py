"""``EvaluationParser`` (``trainspot.evaluation``): predictions shards and metrics into outputs.

For every input dataset ``<name>`` the shard ``predictions/<name>.h5`` written by
``trainspot-evaluate`` becomes ``predictions.<name>``: the input dataset with the prediction
columns set on all its frames (:meth:`PESData.with_columns`, so labels, metadata and shards are
shared with the input). ``metrics.json`` becomes the ``metrics`` Dict, which always holds
``dropped_members`` (a list of member labels) and ``non_finite_frames`` (``{dataset: [frame
indices]}``), empty when every prediction was finite. See
:class:`~aiida_trainspot.evaluation.calculation.EvaluationCalculation` for the exit codes.
"""

from __future__ import annotations

import json

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_trainspot.common.runner_job import RunnerParser
from aiida_trainspot.data.columns import Columns
from aiida_trainspot.data.pesdata import PESData
from aiida_trainspot.data.store import read_shard

from .calculation import METRICS_FILE, PREDICTIONS_DIR, member_order
from .inference import ATOM_COLUMNS, ESTIMATED_ERROR_COLUMNS, FRAME_COLUMNS, INFERENCE_FAILED

__all__ = ('EvaluationParser',)

COMMITTEE_ATTRIBUTE = 'committee_members'


class EvaluationParser(RunnerParser):
    """Parse the outputs of an :class:`~.calculation.EvaluationCalculation`."""

    FAILURES = {**RunnerParser.FAILURES, INFERENCE_FAILED: 'ERROR_INFERENCE_FAILED'}

    def parse(self, **kwargs) -> ExitCode | None:
        """Attach ``predictions.<name>`` for every dataset and ``metrics``."""
        missing = self.missing_output([METRICS_FILE])
        if missing is not None:
            return missing
        try:
            with self.retrieved.base.repository.open(METRICS_FILE, 'r') as handle:
                metrics = json.load(handle)
        except Exception as exc:
            return self.unreadable(METRICS_FILE, exc)
        members = member_order(self.node.inputs.models)
        datasets = dict(self.node.inputs.datasets)
        if metrics.get('members') != members or set(metrics.get('datasets', {})) != set(datasets):
            return self.unreadable(
                METRICS_FILE,
                f'it describes members {metrics.get("members")} and datasets '
                f'{sorted(metrics.get("datasets", {}))}, not {members} and {sorted(datasets)}',
            )
        metrics.setdefault('dropped_members', [])
        metrics.setdefault('non_finite_frames', {})
        problem = _non_finite_problem(metrics, members, datasets)
        if problem:
            return self.unreadable(METRICS_FILE, problem)
        available = []
        if PREDICTIONS_DIR in self.retrieved_names():
            available = self.retrieved.base.repository.list_object_names(PREDICTIONS_DIR)
        outputs = {}
        for name in sorted(datasets):
            filename = f'{PREDICTIONS_DIR}/{name}.h5'
            if f'{name}.h5' not in available:
                return self.exit_codes.ERROR_OUTPUT_MISSING.format(
                    filename=filename, detail='the metrics were written but not the predictions'
                )
            try:
                with self.retrieved.base.repository.open(filename, 'rb') as handle:
                    columns = read_shard(handle)
                outputs[name] = _with_predictions(datasets[name], columns, members)
            except Exception as exc:
                return self.unreadable(filename, exc)
        self.out('predictions', outputs)
        self.out('metrics', orm.Dict(metrics))
        return None


def _non_finite_problem(
    metrics: dict, members: list[str], datasets: dict[str, PESData]
) -> str | None:
    """Why ``dropped_members`` or ``non_finite_frames`` of ``metrics`` are inconsistent, or None."""
    dropped = metrics['dropped_members']
    if not isinstance(dropped, list) or not set(dropped) <= set(members):
        return f'dropped_members {dropped!r} are not members {members}'
    flagged = metrics['non_finite_frames']
    if not isinstance(flagged, dict) or not set(flagged) <= set(datasets):
        return f'non_finite_frames names datasets other than {sorted(datasets)}'
    for name, frames in flagged.items():
        n_frames = len(datasets[name])
        if not all(isinstance(i, int) and 0 <= i < n_frames for i in frames):
            return f'non_finite_frames of {name!r} are not frame indices below {n_frames}'
    return None


def _with_predictions(dataset: PESData, columns: Columns, members: list[str]) -> PESData:
    """``dataset`` with the prediction columns of ``columns`` set on all its frames."""
    if columns.n_frames != len(dataset):
        raise ValueError(f'{columns.n_frames} frames predicted, the dataset has {len(dataset)}')
    if not np.array_equal(columns.n_atoms, dataset.n_atoms_per_frame()):
        raise ValueError('the atom counts of the predicted frames differ from the dataset')
    missing = sorted((set(FRAME_COLUMNS) | set(ATOM_COLUMNS)) - set(columns.names))
    if missing:
        raise ValueError(f'columns {missing} are missing')
    unknown = sorted(
        set(columns.names) - set(FRAME_COLUMNS) - set(ATOM_COLUMNS) - set(ESTIMATED_ERROR_COLUMNS)
    )
    if unknown:
        raise ValueError(f'unexpected columns {unknown}')
    n_members = columns.frame['energy_members'].shape[1:]
    if n_members != (len(members),):
        raise ValueError(f'predictions of {n_members} members, the committee has {len(members)}')
    frame = dict(columns.frame)
    present = dict(columns.present)
    # estimated errors of an earlier evaluation that this one does not replace would be stale
    for name in sorted(set(ESTIMATED_ERROR_COLUMNS) & set(dataset.column_names) - set(frame)):
        frame[name] = np.full(columns.n_frames, np.nan)
        present[name] = np.zeros(columns.n_frames, dtype=bool)
    predicted = dataset.with_columns(
        np.arange(len(dataset)), frame, columns.atom, present, validate=False
    )
    predicted.base.attributes.set(COMMITTEE_ATTRIBUTE, list(members))
    return predicted
