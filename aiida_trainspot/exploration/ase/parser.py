"""``AseMdParser`` (``trainspot.ase.md``): the sampled frames and the run summaries into outputs.

Outputs ``trajectory`` (the sampled frames, unlabelled, with their metadata columns) and
``summary``; see :class:`.calculation.AseMdCalculation` for both and for the exit codes. When
no run sampled a frame the outputs are still attached (an empty ``trajectory``) and the job
fails with ``ERROR_ALL_RUNS_ABORTED``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import ExitCode

from aiida_trainspot.common.runner_job import RunnerParser
from aiida_trainspot.data.columns import Columns
from aiida_trainspot.data.pesdata import PESData
from aiida_trainspot.data.store import read_shard

from ..md import METADATA_COLUMNS
from .calculation import SUMMARY_FILE, TRAJECTORY_FILE

__all__ = ('AseMdParser',)


class AseMdParser(RunnerParser):
    """Parse ``trajectory.h5`` and ``summary.json`` of an :class:`~.AseMdCalculation`."""

    def parse(self, **kwargs) -> ExitCode | None:
        """Attach ``trajectory`` and ``summary``; return an exit code on failure."""
        missing = self.missing_output([SUMMARY_FILE, TRAJECTORY_FILE])
        if missing is not None:
            return missing
        structures: PESData = self.node.inputs.structures
        try:
            summary = json.loads(
                self.retrieved.base.repository.get_object_content(SUMMARY_FILE, mode='r')
            )
            with self.retrieved.base.repository.open(TRAJECTORY_FILE, 'rb') as handle:
                columns = read_shard(handle)
            _check(columns, summary, structures)
            trajectory = PESData(columns)
        except Exception as exc:
            return self.unreadable(f'{TRAJECTORY_FILE} / {SUMMARY_FILE}', exc)
        self.out('trajectory', trajectory)
        self.out('summary', orm.Dict(summary))
        if columns.n_frames == 0:
            return self.exit_codes.ERROR_ALL_RUNS_ABORTED.format(
                n_runs=len(summary['runs']), reason=_first_reason(summary['runs'])
            )
        return None


def _first_reason(runs: list[dict[str, Any]]) -> str:
    for run in runs:
        if run.get('aborted'):
            return f'run {run["run_id"]}: step {run["abort_step"]}, {run["abort_reason"]}'
        if run.get('skipped'):
            return f'run {run["run_id"]}: skipped, {run["skip_reason"]}'
    return 'no run reached a sampling step'


def _check(columns: Columns, summary: dict[str, Any], structures: PESData) -> None:
    """Raise if the outputs do not belong to the job's starting frames."""
    runs = summary.get('runs')
    if not isinstance(runs, list) or len(runs) != len(structures):
        raise ValueError(f'the summary has no run per starting frame ({len(structures)})')
    missing = [name for name in METADATA_COLUMNS if name not in columns.frame]
    if missing:
        raise ValueError(f'the trajectory has no columns {missing}')
    sources = np.asarray(columns.frame['source_frame'], dtype=np.int64)
    if sources.size and (sources.min() < 0 or sources.max() >= len(structures)):
        raise ValueError('a frame comes from a starting frame the job does not have')
    counts = np.bincount(sources, minlength=len(structures))
    expected = np.array([int(run['n_sampled']) for run in runs])
    if not np.array_equal(counts, expected):
        raise ValueError('the frames per run differ between the trajectory and the summary')
    n_atoms = structures.n_atoms_per_frame()
    if not np.array_equal(columns.n_atoms, n_atoms[sources]):
        raise ValueError('the atom counts of the sampled frames differ from their starting frames')
