"""``AseLabelParser`` (``trainspot.ase.label``): the labels file into datasets.

Outputs ``labelled`` (the input frames that were labelled, with their labels, every
input column kept), ``failed`` (the frames that failed, with ``failure_reason`` and
``exit_status``) and ``summary``; see :class:`.calculation.AseLabelCalculation`.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_trainspot.common.runner import INPUT_FAILED
from aiida_trainspot.common.runner_job import RunnerParser
from aiida_trainspot.data.columns import Columns
from aiida_trainspot.data.pesdata import PESData
from aiida_trainspot.data.store import read_shard

from ..engine import failed_frames, labelling_summary
from .core import ERROR_COLUMN, LABELS_FILE, SETUP_FAILED

__all__ = ('AseLabelParser',)


class AseLabelParser(RunnerParser):
    """Parse ``labels.h5`` of an :class:`~.calculation.AseLabelCalculation`."""

    FAILURES = {SETUP_FAILED: 'ERROR_CALCULATOR_SETUP', INPUT_FAILED: 'ERROR_INPUT_UNREADABLE'}

    def parse(self, **kwargs) -> ExitCode | None:
        """Attach ``labelled``, ``failed`` and ``summary``; return an exit code on failure."""
        missing = self.missing_output([LABELS_FILE])
        if missing is not None:
            return missing
        dataset: PESData = self.node.inputs.dataset
        try:
            with self.retrieved.base.repository.open(LABELS_FILE, 'rb') as handle:
                labels = read_shard(handle)
            _check(labels, dataset)
        except Exception as exc:
            return self.unreadable(LABELS_FILE, exc)

        errors = np.array([str(e) for e in labels.frame[ERROR_COLUMN]], dtype=object)
        failed_mask = (errors != '') | ~labels.mask('energy') | ~labels.mask('forces')
        errors[failed_mask & (errors == '')] = 'no energy or forces in the labels file'
        ok = np.flatnonzero(~failed_mask)
        bad = np.flatnonzero(failed_mask)
        exit_code = None
        if ok.size == 0:
            exit_code = self.exit_codes.ERROR_ALL_FRAMES_FAILED.format(
                n_frames=len(dataset), reason=errors[0]
            )
        status = exit_code.status if exit_code is not None else 0

        if ok.size:
            self.out('labelled', _labelled(dataset, labels, ok))
        else:
            self.out('labelled', dataset.subset(ok))
        failures = {int(i): (status, str(errors[i])) for i in bad}
        self.out('failed', failed_frames(dataset, failures))
        n_stress = int((labels.mask('stress') & ~failed_mask).sum())
        self.out(
            'summary', orm.Dict(labelling_summary(labels.n_frames, ok.tolist(), failures, n_stress))
        )
        return exit_code


def _check(labels: Columns, dataset: PESData) -> None:
    """Raise if the labels do not belong to the frames of ``dataset``."""
    if labels.n_frames != len(dataset):
        raise ValueError(f'{labels.n_frames} frames labelled, the dataset has {len(dataset)}')
    if not np.array_equal(labels.n_atoms, dataset.n_atoms_per_frame()):
        raise ValueError('the atom counts of the labelled frames differ from the dataset')
    missing = [n for n in ('energy', 'forces', 'stress', ERROR_COLUMN) if n not in labels.names]
    if missing:
        raise ValueError(f'columns {missing} are missing')


def _labelled(dataset: PESData, labels: Columns, frames: np.ndarray) -> PESData:
    """The frames ``frames`` of ``dataset`` with their new labels (and only those frames).

    The stress is set (missing where not computed) whenever it was computed for one
    of the frames or the dataset has a stress column already: an old stress from
    another reference never stays next to new energies and forces.
    """
    chosen = labels.take(frames)
    frame_columns = {'energy': chosen.frame['energy']}
    present = {}
    stress_mask = chosen.mask('stress')
    if stress_mask.any() or 'stress' in dataset.column_names:
        frame_columns['stress'] = np.where(stress_mask[:, None], chosen.frame['stress'], np.nan)
        present['stress'] = stress_mask
    updated = dataset.with_columns(
        frames, frame_columns, {'forces': chosen.atom['forces']}, present
    )
    return updated.subset(frames)
