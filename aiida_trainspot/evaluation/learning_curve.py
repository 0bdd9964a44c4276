"""Every iteration's committee scored on the same held-out frames: a learning curve that compares.

A campaign's per-iteration validation RMSE is over that iteration's validation frames, a set that
grows with the exploration and gets harder as the MD reaches new regions of the potential energy
surface (the paper sees the force error rise from the first iteration to the second). Its rows
therefore do not compare: a committee that improved can score worse on the harder set. Scoring
every iteration's committee on one set of frames that none of them trained on (the final
validation and test splits: splits are sticky, so no committee ever trained on them) does
compare, and shows whether the campaign learned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiida_trainspot.data.columns import Columns

from .disagreement import error_metrics
from .inference import predict_committee, reference_labels

__all__ = ('CurvePoint', 'held_out_curve')


@dataclass(frozen=True)
class CurvePoint:
    """One committee's RMSE of the committee mean on the held-out frames (meV units).

    ``stress`` is None when no held-out frame has a stress label and prediction.
    """

    iteration: int
    n_frames: int
    energy: float
    forces: float
    stress: float | None


def held_out_curve(
    committees: Mapping[int, Sequence[Any]], columns: Columns, *, batch_size: int = 1
) -> list[CurvePoint]:
    """The RMSE of each committee (by iteration) on the labelled frames of ``columns``.

    :param committees: ASE calculators of each iteration's members, by iteration number.
    :param columns: the held-out frames, with their labels.
    :raises ValueError: without frames or labels, or without a committee.
    """
    if not committees:
        raise ValueError('no committee to score')
    labels = reference_labels(columns)
    if columns.n_frames == 0 or labels is None:
        raise ValueError('the held-out frames carry no labels: nothing to score against')
    points = []
    for iteration, calculators in sorted(committees.items()):
        predictions = predict_committee(list(calculators), columns, batch_size=batch_size)
        metrics = error_metrics(predictions, labels)
        stress = metrics['stress']
        points.append(
            CurvePoint(
                iteration=int(iteration),
                n_frames=metrics['energy'].n_frames,
                energy=metrics['energy'].committee_rmse,
                forces=metrics['forces'].committee_rmse,
                stress=stress.committee_rmse if stress.n_frames else None,
            )
        )
    return points
