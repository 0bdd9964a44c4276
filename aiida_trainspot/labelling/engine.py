"""The labelling engine contract, and the results every engine returns in the same shape.

A labelling engine (registered under the entry point group ``trainspot.labelling.engines``)
turns a dataset into processes and finished processes into labels and failures:

- :meth:`LabellingEngine.prepare`: the dataset to label -> the keys of the processes to run
  (one per frame, one per batch, one for all: the engine decides);
- :meth:`LabellingEngine.submit`: one key -> a submitted process (the stage keeps at most
  ``max_concurrent`` in flight and calls this as slots free up);
- :meth:`LabellingEngine.collect`: the finished processes by key -> the stage's outputs
  ``labelled`` (the labelled frames, with their labels), ``failed`` (every other frame with
  ``failure_reason`` and ``exit_status``) and ``summary`` (:func:`labelling_summary`), all made
  by calcfunctions or parsers so that every label links to the process that computed it.

:func:`failed_frames` and :func:`labelling_summary` give every engine the same failure record
and summary; a frame is never dropped in silence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from aiida_trainspot.common.engines import Engine
from aiida_trainspot.data import PESData

#: Columns of the ``failed`` output.
FAILURE_REASON = 'failure_reason'
EXIT_STATUS = 'exit_status'


class LabellingEngine(Engine):
    """Base of labelling engines (see the module docstring for the contract)."""

    @classmethod
    def campaign_settings(
        cls, inputs: Mapping[str, Any], species: Iterable[str], restored: Any = None
    ) -> Any:
        """The settings every labelling of a campaign uses, or None (the engine has none).

        Labels computed with different settings (DFT cutoffs, smearing, k-points) are not on one
        scale, so a campaign decides them once, before its first labelling, from every species
        it can contain, and passes them to every labelling (:meth:`with_campaign_settings`).
        ``inputs``: the engine's namespace of the campaign's labelling inputs; ``restored``: the
        settings of the run a restart continues. May run a calcfunction (provenance).
        """
        return None

    @classmethod
    def with_campaign_settings(cls, inputs: dict[str, Any], settings: Any) -> dict[str, Any]:
        """The engine's namespace of a labelling's inputs, with the campaign's settings in."""
        return inputs

    @classmethod
    def describe_settings(cls, settings: Any) -> str:
        """One line for the campaign's report."""
        return f'labelling settings <{settings.pk}>'

    def prepare(self, dataset: PESData) -> list[str]:
        """The keys of the processes that label ``dataset``; keep what ``submit`` needs in state.

        May run calcfunctions (padding frames, deciding settings) and emit outputs the engine
        declared in :meth:`define`.
        """
        raise NotImplementedError

    def submit(self, key: str) -> Any:
        """Submit the process of ``key`` (with ``self.process.submit``) and return its node."""
        raise NotImplementedError

    def collect(self, finished: Mapping[str, Any]) -> dict[str, Any]:
        """The ``labelled``, ``failed`` and ``summary`` outputs from the finished processes.

        Raise :class:`~aiida_trainspot.common.engines.EngineError` when the processes gave
        nothing the stage can report frame by frame (e.g. a job that failed as a whole).
        """
        raise NotImplementedError


def failed_frames(dataset: PESData, failures: Mapping[int, tuple[int, str]]) -> PESData:
    """The frames of ``dataset`` named in ``failures`` (index -> (exit status, reason)), in order.

    They carry ``failure_reason`` and ``exit_status`` columns, so a user (or a restart) sees
    why each frame has no label.
    """
    indices = sorted(int(i) for i in failures)
    if not indices:
        return dataset.subset([])
    return dataset.with_columns(
        np.asarray(indices, dtype=np.int64),
        {
            FAILURE_REASON: np.array([str(failures[i][1]) for i in indices], dtype=object),
            EXIT_STATUS: np.array([int(failures[i][0]) for i in indices], dtype=np.int64),
        },
        validate=False,
    ).subset(indices)


def labelling_summary(
    n_frames: int,
    labelled: Sequence[int],
    failures: Mapping[int, tuple[int, str]],
    n_stress: int,
    **extra: Any,
) -> dict[str, Any]:
    """The counts, indices and failure reasons of one labelling, as every engine reports them."""
    failed = sorted(int(i) for i in failures)
    return {
        **extra,
        'n_frames': int(n_frames),
        'n_labelled': len(labelled),
        'n_failed': len(failed),
        'n_stress': int(n_stress),
        'labelled_indices': [int(i) for i in labelled],
        'failed_indices': failed,
        'failure_reasons': {str(i): str(failures[i][1]) for i in failed},
    }
