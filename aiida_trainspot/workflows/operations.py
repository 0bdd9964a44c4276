"""Calcfunctions of the active-learning loop: each of its decisions is in the provenance graph."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_trainspot.data import PESData
from aiida_trainspot.data.pesdata import STRATUM_COLUMN
from aiida_trainspot.evaluation.inference import (
    ATOM_COLUMNS,
    ESTIMATED_ERROR_COLUMNS,
    FRAME_COLUMNS,
)

from .records import dataset_summary, iteration_record, stage_summaries

#: Columns an evaluation adds: a frame sent to labelling must not carry them into the dataset.
PREDICTION_COLUMNS = tuple(FRAME_COLUMNS) + tuple(ATOM_COLUMNS) + tuple(ESTIMATED_ERROR_COLUMNS)
ITERATION_COLUMN = 'iteration'
#: Columns a labelling adds to the frames it could not label.
FAILURE_COLUMNS = ('failure_reason', 'exit_status')
EXPLORATION_METHOD = 'md'


def labelled_mask(dataset: PESData) -> np.ndarray:
    """Frames labelled with both energy and forces (what training needs)."""
    names = dataset.column_names
    if 'energy' not in names or 'forces' not in names:
        return np.zeros(len(dataset), dtype=bool)
    return dataset.get_column('energy')[1] & dataset.get_column('forces')[1]


@calcfunction
def partition_by_labels(dataset: PESData) -> dict[str, PESData]:
    """``labelled`` (energy and forces) and ``unlabelled`` frames of a dataset, in order."""
    mask = labelled_mask(dataset)
    return {'labelled': dataset.subset(mask), 'unlabelled': dataset.subset(~mask)}


@calcfunction
def join_datasets(**parts: PESData) -> PESData:
    """Frames of ``part_0``, ``part_1``, ... in that order (empty parts allowed)."""
    return _concatenate_parts(parts)


def _concatenate_parts(parts: dict[str, PESData]) -> PESData:
    ordered = [parts[k] for k in sorted(parts, key=lambda k: int(k.rsplit('_', 1)[1]))]
    return PESData.concatenate(ordered)


@calcfunction
def frames_to_retry(**failed: PESData) -> PESData:
    """The frames whose labelling failed (``part_0``, ``part_1``, ... in order), ready to label.

    The failure columns are dropped: the frames go back to labelling as they were first sent,
    and a frame that fails again gets its new reason.
    """
    return _concatenate_parts(failed).without_columns(FAILURE_COLUMNS)


@calcfunction
def prepare_selection(selected: PESData, iteration: orm.Int) -> PESData:
    """Selected frames ready for labelling: predictions dropped, generation method and iteration.

    The MD metadata (run, step, temperature, source frame) is kept; ``generation_method`` becomes
    ``'md'`` so that the split stays stratified and the composition plots can tell them apart.
    """
    clean = selected.without_columns((*PREDICTION_COLUMNS, 'split'))
    n = len(clean)
    return clean.with_columns(
        np.arange(n),
        {
            STRATUM_COLUMN: np.array([EXPLORATION_METHOD] * n, dtype=object),
            ITERATION_COLUMN: np.full(n, iteration.value, dtype=np.int64),
        },
        validate=False,
    )


def _generation_methods(dataset: PESData) -> list[str]:
    if STRATUM_COLUMN not in dataset.column_names:
        return [''] * len(dataset)
    values, present = dataset.get_column(STRATUM_COLUMN)
    return [str(v) if p else '' for v, p in zip(values, present, strict=True)]


@calcfunction
def record_iteration(
    iteration: orm.Int,
    n_labels: orm.Int,
    dataset: PESData,
    metrics: orm.Dict,
    calibration: orm.Dict,
    diagnostics: orm.Dict,
    selection: orm.Dict,
    stop_reason: orm.Str,
    labelling: orm.Dict | None = None,
    training: orm.Dict | None = None,
    exploration: orm.Dict | None = None,
) -> orm.Dict:
    """The record of one iteration (see :mod:`.records`), from the outputs of its stages."""
    attributes = dataset.base.attributes
    summary = dataset_summary(
        len(dataset), attributes.get('split_counts', {}), _generation_methods(dataset)
    )
    stages = stage_summaries(
        labelling.get_dict() if labelling is not None else None,
        training.get_dict() if training is not None else None,
        exploration.get_dict() if exploration is not None else None,
    )
    return orm.Dict(
        iteration_record(
            iteration=iteration.value,
            n_labels_total=n_labels.value,
            dataset=summary,
            stages=stages,
            metrics=metrics.get_dict()['datasets']['labelled'],
            calibration=calibration.get_dict(),
            diagnostics=diagnostics.get_dict(),
            selection=selection.get_dict(),
            stop_reason=stop_reason.value or None,
        )
    )


@calcfunction
def summarise_campaign(
    status: orm.Str,
    stop_reason: orm.Str,
    iterations: orm.Int,
    n_labels: orm.Int,
    dataset: PESData | None = None,
) -> orm.Dict:
    """How a campaign ended: status, stop reason, iterations, labels used, dataset size."""
    return orm.Dict(
        {
            'status': status.value,
            'stop_reason': stop_reason.value or None,
            'iterations': iterations.value,
            'n_labels_total': n_labels.value,
            'n_frames': len(dataset) if dataset is not None else 0,
        }
    )
